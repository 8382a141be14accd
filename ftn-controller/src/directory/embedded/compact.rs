//! Compaction off the commit path. Once `wal.jsonl` holds [`COMPACT_EVERY`] lines, the commit
//! that reached that count moves them aside: a new empty `wal.jsonl.new` is created and fsync'ed,
//! `wal.jsonl` is renamed `wal.1.jsonl`, the new file renamed `wal.jsonl`, the directory
//! fsync'ed (a few ms). A thread then writes the snapshot as it was at that commit (an O(1) copy:
//! its record maps are persistent) to `state.json` (atomically, as before) and removes
//! `wal.1.jsonl`. Commits go on meanwhile, into the new `wal.jsonl`.
//!
//! Whatever a crash interrupts, opening finds the commits: `state.json` (old or new), then
//! `wal.1.jsonl` if it is still there (its lines at or below `state.json`'s revision are folded
//! in already), then `wal.jsonl`; a missing `wal.jsonl` (a crash between the two renames) is
//! empty, and a stray `wal.jsonl.new` is removed. `wal.1.jsonl` was complete when it was
//! renamed: a torn line in it is corruption. One compaction runs at a time; when one could not
//! finish (`wal.1.jsonl` still there at the next one), the next compacts on the commit path, in
//! one step, as before.

use super::*;

/// A compaction running on its own thread.
pub(super) struct Compaction {
    handle: std::thread::JoinHandle<Result<(), DirectoryError>>,
}

impl Compaction {
    /// Waits for it; logs a failure (the files stay as a crash at that point would leave them).
    pub(super) fn finish(self) {
        match self.handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "directory compaction failed; the next one runs on the commit path")
            }
            Err(_) => tracing::warn!("directory compaction thread panicked"),
        }
    }
}

/// `state.json` from `snapshot`.
fn write_snapshot(dir: &Path, snapshot: &Snapshot) -> Result<(), DirectoryError> {
    let bytes = seal(snapshot).map_err(|e| DirectoryError::Store {
        path: dir.join("state.json"),
        detail: e.to_string(),
    })?;
    write_atomic(dir, "state.json", &bytes)
}

/// Removes `path` if it exists, and syncs the directory.
fn remove(dir: &Path, path: &Path) -> Result<(), DirectoryError> {
    match fs::remove_file(path) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Compacts `inner` (under the store's lock, after a commit returned durable): in the
/// background when it can, else (an earlier compaction left `wal.1.jsonl`) here.
pub(super) fn start(dir: &Path, inner: &mut Inner) -> Result<(), DirectoryError> {
    if let Some(c) = inner.compaction.take() {
        if !c.handle.is_finished() {
            // Still writing: this one waits for a later commit.
            inner.compaction = Some(c);
            return Ok(());
        }
        c.finish();
    }
    let old = dir.join("wal.1.jsonl");
    if old.exists() {
        return now(dir, inner);
    }
    inner.wal = set_aside(dir, "wal.jsonl", "wal.1.jsonl", &mut inner.poisoned)?;
    inner.wal_lines = 0;
    let snapshot = inner.snapshot.clone();
    let d = dir.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("ftn-compact".into())
        .spawn(move || {
            write_snapshot(&d, &snapshot)?;
            remove(&d, &d.join("wal.1.jsonl"))
        })
        .map_err(io_err(dir))?;
    inner.compaction = Some(Compaction { handle });
    Ok(())
}

/// Compacts on the caller's thread: `state.json` at the current revision, then `wal.jsonl`
/// emptied and `wal.1.jsonl` removed. No background compaction may be running.
pub(super) fn now(dir: &Path, inner: &mut Inner) -> Result<(), DirectoryError> {
    write_snapshot(dir, &inner.snapshot)?;
    let p = dir.join("wal.jsonl");
    inner.wal.set_len(0).map_err(io_err(&p))?;
    inner.wal.sync_all().map_err(io_err(&p))?;
    remove(dir, &dir.join("wal.1.jsonl"))?;
    inner.wal_lines = 0;
    Ok(())
}
