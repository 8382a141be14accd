//! Reading the operator's small files (the configuration, the API token, the etcd password)
//! without ever blocking on them or reading without bound.
//!
//! A path in the configuration can name anything: a FIFO (a plain `open` blocks until a writer
//! appears — and the decision engine with it), `/dev/zero` (a plain read never ends), a
//! directory, a huge file. [`read_regular`] opens with `O_NONBLOCK` (so opening a FIFO or a
//! device returns at once), accepts only a regular file, refuses one larger than the limit
//! before reading it, and never reads more than the limit even if the file grows meanwhile.
//! What is left that can block is the filesystem itself (a hung NFS mount): callers on the
//! engine task run the read on the blocking pool under a timeout (see `daemon::read_config`).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest configuration file ftn reads. 100,000 resources with their servers take about
/// 15 MB of TOML; a larger file is almost certainly a mistake (the wrong path, a log file).
pub const MAX_CONFIG_BYTES: u64 = 32 << 20;
/// The largest token or password file ftn reads (a secret is one line).
pub const MAX_SECRET_BYTES: u64 = 64 << 10;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("it is {0}, not a regular file (only a regular file is read, so that reading can never block)")]
    NotRegular(&'static str),
    #[error("it is {size} bytes, more than the {limit} bytes accepted for it")]
    TooLarge { size: u64, limit: u64 },
    #[error("it is not UTF-8 text")]
    NotUtf8,
}

/// The contents of the regular file at `path`, at most `limit` bytes, as UTF-8 text.
/// Errors say what is wrong with the file; the caller names the file and the field.
pub fn read_regular(path: &Path, limit: u64) -> Result<String, FileError> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(FileError::NotRegular(if kind.is_dir() {
            "a directory"
        } else if kind.is_fifo() {
            "a FIFO (named pipe)"
        } else if kind.is_char_device() {
            "a character device"
        } else if kind.is_block_device() {
            "a block device"
        } else if kind.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        }));
    }
    if meta.len() > limit {
        return Err(FileError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    read_bounded(&mut file, limit, meta.len())
}

/// Reads at most `limit` bytes; more than that (a file that grew after `fstat`) is an error.
fn read_bounded(file: &mut File, limit: u64, size_hint: u64) -> Result<String, FileError> {
    // One allocation for a file read whole (a configuration can be megabytes).
    let mut bytes = Vec::with_capacity(size_hint.min(limit) as usize + 1);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    let size = bytes.len() as u64;
    if size > limit {
        return Err(FileError::TooLarge { size, limit });
    }
    String::from_utf8(bytes).map_err(|_| FileError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regular_files_are_read_within_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "secret\n").unwrap();
        assert_eq!(read_regular(&p, 100).unwrap(), "secret\n");
        let e = read_regular(&p, 3).unwrap_err();
        assert_eq!(
            e.to_string(),
            "it is 7 bytes, more than the 3 bytes accepted for it"
        );
        std::fs::write(&p, [0xff, 0xfe]).unwrap();
        assert!(matches!(read_regular(&p, 100), Err(FileError::NotUtf8)));
        let e = read_regular(&dir.path().join("missing"), 100).unwrap_err();
        assert!(e.to_string().contains("No such file"), "{e}");
    }

    /// A FIFO with no writer, /dev/zero and a directory are refused at once (a plain read
    /// would block forever or never end).
    #[test]
    fn fifo_device_and_directory_are_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = std::time::Instant::now();
        let e = read_regular(&fifo, 100).unwrap_err();
        assert!(
            e.to_string().starts_with("it is a FIFO (named pipe)"),
            "{e}"
        );
        let e = read_regular(Path::new("/dev/zero"), 100).unwrap_err();
        assert!(e.to_string().starts_with("it is a character device"), "{e}");
        let e = read_regular(dir.path(), 100).unwrap_err();
        assert!(e.to_string().starts_with("it is a directory"), "{e}");
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
