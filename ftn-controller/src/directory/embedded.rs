//! [`EmbeddedDirectory`] is the default for a single gateway: a durable local store in one
//! directory:
//! - `state.json`: a full snapshot, replaced atomically (write a temporary file, fsync it,
//!   rename over, fsync the directory);
//! - `wal.jsonl`: one line per commit since that snapshot
//!   (`{"revision":N,"update":{..},"events":3,"crc":"1c291ca3"}`: the records it set or
//!   removed and how many events it numbered, the events being in `events.jsonl`), appended
//!   and fdatasync'ed before the commit returns; folded into a new snapshot every
//!   [`COMPACT_EVERY`] commits, in the background (`wal.1.jsonl` holds the lines being folded
//!   meanwhile: see the `compact` module);
//! - `events.jsonl`: the event log, one [`Event`] per line, append-only, fdatasync'ed with the
//!   commit, never rewritten except to cut a torn or uncommitted tail. Once it holds
//!   [`EVENTS_KEPT`] events (after the commit that reaches that count) it becomes
//!   `events.1.jsonl`, replacing the one before, and a new `events.jsonl` starts: the disk keeps
//!   between [`EVENTS_KEPT`] and twice as many events (or one commit's more), the newest ones.
//!   The rotation is two renames and a directory fsync (a new empty file is created as
//!   `events.jsonl.new` first); a crash between them leaves `events.jsonl` missing, which
//!   opening takes as empty (the events are all in `events.1.jsonl`), removing the stray
//!   `.new`. `events.1.jsonl` holds committed events only: opening refuses it when it has a
//!   torn or uncommitted tail, or when it does not end just before `events.jsonl` begins.
//!
//! After a crash (even `kill -9` in the middle of a commit) opening the directory yields
//! exactly the last commit that returned: a torn WAL line is cut, and events that belong to a
//! revision that never committed are cut too. Anything else that is wrong with the files
//! refuses the open ([`DirectoryError::Corrupt`]) and changes nothing on disk.
//!
//! # Checksums
//!
//! Every record — each line of both logs, and `state.json` — ends with one more field,
//! `"crc":"<8 lowercase hex digits>"`: the CRC-32C of the record's exact JSON as serialized
//! without that field (that is, of the line with `,"crc":"…"` taken out, without its newline).
//! The field goes last so that a line still starts with what it records (`{"seq":12,...`), is
//! still one JSON object (`jq` reads the files as they are, `grep '"seq":12,'` finds a line),
//! and so that a version from before checksums, which ignores fields it does not know, still
//! reads the files if ftn is downgraded.
//!
//! # What opening accepts, and why
//!
//! A commit appends its events, fdatasyncs them, appends its WAL line and fdatasyncs that; it
//! returns only then. Everything before the bytes a commit is appending is therefore durable,
//! and a crash can damage only those bytes, at the end of the files. What it leaves there is a
//! prefix of them, or — where the file's new length reached the disk before its data (some
//! filesystems, after a power loss) — NUL bytes in their place, ending at the end of the
//! file. Either way the last line has no newline. So:
//! - a last line without its newline (a prefix of a record, NUL bytes, anything) is a torn
//!   tail: it is cut, with a WARN. That commit had not returned.
//! - a complete, newline-terminated line was written whole by a commit that went on to
//!   fdatasync, so its checksum holds — unless the line was changed afterwards (a failing disk,
//!   a bad copy or restore, a hand edit). A complete line that is empty, holds NUL bytes, fails
//!   its checksum or does not read as a record refuses the open, wherever it is, the last line
//!   included: cutting it, as versions before checksums did, would silently drop commits that
//!   returned (and every line after it). The one crash that could leave such a line is a
//!   writeback that reached the disk out of order within one append (a zeroed block before a
//!   written one); it is not told apart from damage, but the error says when a line holds NUL
//!   bytes, and the operations guide says how to remove such a last line by hand.
//! - the records must also fit together: WAL revisions go up by one, and the first one
//!   continues `state.json` (lines at or below its revision are folded in already: a crash
//!   between the snapshot's rename and the WAL's truncation; when every line is, the WAL is
//!   emptied, finishing that compaction). Event sequence numbers go up by one and their
//!   revisions never go back. A gap, or events of a revision beyond the commit after the
//!   last one in the WAL (the WAL lost commits), refuses the open.
//! - events of the revision after the last committed one are the commit that was in progress
//!   (its events landed, its WAL line did not, or only torn): they are cut, but only as the
//!   end of the events file — an event of a committed revision after them refuses the open.
//!
//! A WAL that lost whole lines at its end cannot be seen unless events refer to the lost
//! revisions; events of exactly the next revision are taken for the commit in progress.
//!
//! Every file is read and checked before any is cut, so a refused open leaves the files as it
//! found them.
//!
//! # Files from before checksums
//!
//! Older versions wrote the same records without the `crc` field. An upgrade must not refuse
//! to start, so such records are accepted, but only before the first record that has a
//! checksum: that is the shape of a file written by an older version and then appended to by
//! this one (the event log is never rewritten; the WAL is emptied at the next compaction, and
//! `state.json` is rewritten with a checksum then). A record without a checksum after one with
//! it is corruption. An older complete line that does not read as a record still refuses the
//! open (older versions cut the file there), but a changed byte that leaves valid JSON cannot
//! be seen in them. The order of events (sequence numbers, revisions) is checked only where
//! the later record has a checksum: older versions could leave a failed commit's events behind
//! and number its retry's events the same.

use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::*;

mod compact;
mod events;
use events::{read_events, read_previous_events, EventsRead};

/// The single-gateway durable store (see the module docs).
pub struct EmbeddedDirectory {
    dir: PathBuf,
    inner: Mutex<Inner>,
    revision_tx: tokio::sync::watch::Sender<Revision>,
}

struct Inner {
    snapshot: Snapshot,
    wal: File,
    wal_lines: u64,
    events: File,
    /// Events in `events.jsonl` (committed ones).
    events_in_file: u64,
    /// Rotate `events.jsonl` once it holds this many ([`EVENTS_KEPT`]; smaller in tests).
    events_kept: u64,
    recent: VecDeque<Event>,
    /// Set when a failed commit could not be undone on disk: no further commit is accepted
    /// (the files' state is unknown) until the directory is opened again.
    poisoned: Option<String>,
    /// The compaction running in the background, if any.
    compaction: Option<compact::Compaction>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DirectoryError + '_ {
    move |source| DirectoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// CRC-32C (Castagnoli): the checksum of ext4's and Btrfs's metadata, iSCSI and SCTP; it
/// catches every error of up to 3 bits in a record of this size and every burst of up to 32.
static CRC32C: crc::Crc<u32, crc::Table<16>> =
    crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);

/// What a record's checksum field starts with; 8 lowercase hex digits and `"}` follow.
const CRC_FIELD: &[u8] = b",\"crc\":\"";
/// `,"crc":"01234567"}`
const SEAL_LEN: usize = CRC_FIELD.len() + 8 + 2;

/// `value` as a JSON object with its checksum as the last field (see the module docs).
fn seal<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut json = serde_json::to_vec(value)?;
    if json.len() < 3 || json.first() != Some(&b'{') || json.last() != Some(&b'}') {
        return Err(serde::ser::Error::custom(
            "only a non-empty JSON object can carry a checksum",
        ));
    }
    let crc = CRC32C.checksum(&json);
    json.pop();
    json.extend_from_slice(CRC_FIELD);
    json.extend_from_slice(format!("{crc:08x}\"}}").as_bytes());
    Ok(json)
}

/// A record's bytes before its checksum field (the record's JSON without its closing brace)
/// and the checksum it records; None when it does not end with a well-formed field.
fn split_seal(body: &[u8]) -> Option<(&[u8], u32)> {
    let cut = body.len().checked_sub(SEAL_LEN)?;
    let (head, field) = body.split_at(cut);
    let hex = field.strip_prefix(CRC_FIELD)?.strip_suffix(b"\"}")?;
    if !hex.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
    Some((head, crc))
}

/// Why a record was refused; where it is, the caller says.
#[derive(Debug)]
enum BadRecord {
    Empty,
    /// `last`: the file's last line, where a crash can leave them (see the module docs).
    Nul {
        last: bool,
    },
    Checksum {
        recorded: u32,
        computed: u32,
    },
    DamagedField,
    Json(serde_json::Error),
    MissingChecksum,
}

impl fmt::Display for BadRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadRecord::Empty => write!(f, "it is empty"),
            BadRecord::Nul { last: true } => write!(f, "it holds NUL bytes: disk blocks that were never written, or were zeroed (a damaged disk, or a crash while this last line was being written, with the disk writing its blocks out of order)"),
            BadRecord::Nul { last: false } => write!(f, "it holds NUL bytes: disk blocks that were never written, or were zeroed (a damaged disk or filesystem; a crash leaves them only in the lines it was appending, at the end of the file)"),
            BadRecord::Checksum { recorded, computed } => write!(f, "checksum mismatch: it records crc {recorded:08x} but its content gives {computed:08x}, so bytes changed after it was written"),
            BadRecord::DamagedField => write!(f, "its checksum field is damaged (a record ends with ,\"crc\":\"<8 lowercase hex digits>\"}})"),
            BadRecord::Json(e) => write!(f, "not a valid record: {e}"),
            BadRecord::MissingChecksum => write!(f, "it has no checksum but follows records that have one (only records written before checksums may lack one, and only before the first record that has one)"),
        }
    }
}

/// Checks and reads one record (a line without its newline, or `state.json`): its value, and
/// whether it had a checksum (records from before checksums have none). `last`: it ends the
/// file.
fn unseal<T: DeserializeOwned>(body: &[u8], last: bool) -> Result<(T, bool), BadRecord> {
    if body.is_empty() {
        return Err(BadRecord::Empty);
    }
    // serde_json never writes a raw NUL (it escapes control characters).
    if body.contains(&0) {
        return Err(BadRecord::Nul { last });
    }
    if let Some((head, recorded)) = split_seal(body) {
        let mut record = Vec::with_capacity(head.len() + 1);
        record.extend_from_slice(head);
        record.push(b'}');
        let computed = CRC32C.checksum(&record);
        if computed != recorded {
            return Err(BadRecord::Checksum { recorded, computed });
        }
        return serde_json::from_slice(&record)
            .map(|v| (v, true))
            .map_err(BadRecord::Json);
    }
    // No record type has a `crc` key, and a JSON string cannot hold an unescaped quote: this
    // is a record whose checksum field was damaged, not one from before checksums.
    if body.windows(6).any(|w| w == b"\"crc\":") {
        return Err(BadRecord::DamagedField);
    }
    serde_json::from_slice(body)
        .map(|v| (v, false))
        .map_err(BadRecord::Json)
}

/// Where a line is in its file.
#[derive(Clone, Copy, Debug, Default)]
struct At {
    /// Of its first byte.
    offset: u64,
    /// From 1.
    line: u64,
    /// With its newline.
    len: u64,
}

impl At {
    fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// What [`scan_records`] found after the last complete line.
#[derive(Debug, Default)]
struct Scanned {
    /// Bytes of complete (newline-terminated) lines.
    complete: u64,
    /// Bytes after them: a torn last line.
    torn: u64,
    /// The torn line is NUL bytes only.
    torn_nul: bool,
}

impl Scanned {
    fn torn_desc(&self) -> Option<String> {
        match (self.torn, self.torn_nul) {
            (0, _) => None,
            (n, true) => Some(format!("a torn last line ({n} NUL bytes)")),
            (n, false) => Some(format!("a torn last line ({n} bytes)")),
        }
    }
}

/// "revision 4 is missing", "revisions 4 to 9 are missing".
fn missing(what: &str, first: u64, last: u64) -> String {
    if first == last {
        format!("{what} {first} is missing")
    } else {
        format!("{what}s {first} to {last} are missing")
    }
}

fn corrupt(path: &Path, at: At, reason: String) -> DirectoryError {
    DirectoryError::Corrupt {
        path: path.to_path_buf(),
        offset: at.offset,
        line: at.line,
        reason,
    }
}

/// Reads a JSON-lines file without changing it: hands every complete line's record, whether it
/// has a checksum and where it is to `each`, which may refuse it. Any record that is not
/// sound (see the module docs), or that `each` refuses, is a [`DirectoryError::Corrupt`]. A
/// last line without its newline is torn: it is counted, not read. A missing file is empty.
fn scan_records<T: DeserializeOwned>(
    path: &Path,
    mut each: impl FnMut(T, bool, At) -> Result<(), String>,
) -> Result<Scanned, DirectoryError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Scanned::default()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = Vec::new();
    let mut at = At::default();
    let mut sealed_seen = false;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(io_err(path))? as u64;
        if n == 0 {
            return Ok(Scanned {
                complete: at.end(),
                ..Scanned::default()
            });
        }
        at = At {
            offset: at.end(),
            line: at.line + 1,
            len: n,
        };
        let Some(body) = buf.strip_suffix(b"\n") else {
            return Ok(Scanned {
                complete: at.offset,
                torn: n,
                torn_nul: buf.iter().all(|&b| b == 0),
            });
        };
        let last = reader.fill_buf().map_err(io_err(path))?.is_empty();
        let (value, sealed) =
            unseal::<T>(body, last).map_err(|b| corrupt(path, at, b.to_string()))?;
        if sealed_seen && !sealed {
            return Err(corrupt(path, at, BadRecord::MissingChecksum.to_string()));
        }
        sealed_seen |= sealed;
        each(value, sealed, at).map_err(|reason| corrupt(path, at, reason))?;
    }
}

/// Opens a log for appending, first cutting it to `keep` bytes (what [`EmbeddedDirectory::open`]
/// decided after checking everything; `cut` says what goes).
fn open_append(path: &Path, keep: u64, cut: &str) -> Result<File, DirectoryError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    let len = f.metadata().map_err(io_err(path))?.len();
    if len < keep {
        // Never extend: that would write zeros. Something else is writing the store.
        return Err(DirectoryError::Store {
            path: path.to_path_buf(),
            detail: format!("the file shrank from at least {keep} to {len} bytes while it was being opened; is another ftn using this directory?"),
        });
    }
    if len > keep {
        tracing::warn!(path = %path.display(), keep_bytes = keep, cut_bytes = len - keep, what = cut, "cutting a torn or uncommitted tail");
        f.set_len(keep).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(f)
}

fn sync_dir(dir: &Path) -> Result<(), DirectoryError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Sets the log `name` aside as `aside` (replacing what was there) and puts a new empty one in
/// its place, crash-safe: the new file is created and fsync'ed as `<name>.new` first, then two
/// renames and a directory fsync (a crash between them leaves no `name`, which opening takes as
/// empty, and a stray `.new`, which it removes). Returns the new file, open for appending. When
/// the second rename fails the log is renamed back (the caller's handle follows the file); if
/// even that fails the store is poisoned: the files no longer say what the handle writes.
fn set_aside(
    dir: &Path,
    name: &str,
    aside: &str,
    poisoned: &mut Option<String>,
) -> Result<File, DirectoryError> {
    let current = dir.join(name);
    let previous = dir.join(aside);
    let fresh = dir.join(format!("{name}.new"));
    File::create(&fresh)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&fresh))?;
    fs::rename(&current, &previous).map_err(io_err(&previous))?;
    if let Err(e) = fs::rename(&fresh, &current) {
        if let Err(back) = fs::rename(&previous, &current) {
            let why = format!("setting {name} aside: {e}; renaming {aside} back failed: {back}");
            tracing::error!("directory store poisoned: {why}");
            *poisoned = Some(why);
        }
        return Err(io_err(&current)(e));
    }
    sync_dir(dir)?;
    OpenOptions::new()
        .append(true)
        .open(&current)
        .map_err(io_err(&current))
}

/// Removes the `<name>.new` a [`set_aside`] interrupted by a crash left behind.
fn remove_stray(dir: &Path, name: &str) -> Result<(), DirectoryError> {
    let stray = dir.join(format!("{name}.new"));
    match fs::remove_file(&stray) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(&stray)(e)),
    }
}

fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), DirectoryError> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let dst = dir.join(name);
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    sync_dir(dir)
}

/// `state.json`, or an empty snapshot when there is none.
fn read_state(state_path: &Path) -> Result<Snapshot, DirectoryError> {
    let snapshot = match fs::read(state_path) {
        Ok(bytes) => {
            // Written without a newline; one added by hand is no damage. Replaced only
            // once complete and synced, so NULs in it are never a crash's.
            let body = bytes.trim_ascii_end();
            unseal::<Snapshot>(body, false).map(|(s, _)| s).map_err(|bad| DirectoryError::Store {
            path: state_path.to_path_buf(),
            detail: format!("unreadable snapshot ({bad}); refusing to start with a guessed directory — restore it from a backup, or move the whole directory away to start empty (moving only state.json would replay the log onto nothing)"),
        })?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
        Err(e) => return Err(io_err(state_path)(e)),
    };
    Ok(snapshot)
}

/// What replaying the WAL found.
struct WalReplay {
    scan: Scanned,
    /// The last revision in the file (folded in or not).
    last: Option<Revision>,
    /// Lines applied on top of the snapshot.
    lines: u64,
}

/// Applies the commits made after the snapshot, in order; refuses a gap.
fn replay_wal(wal_path: &Path, snapshot: &mut Snapshot) -> Result<WalReplay, DirectoryError> {
    let base = snapshot.revision;
    let mut wal_last: Option<Revision> = None;
    let mut wal_lines = 0;
    let scan = scan_records::<LogEntry>(wal_path, |l, _, _| {
        match wal_last {
            None if l.revision > base + 1 => {
                let snap = if base == 0 {
                    "there is no snapshot (state.json) before it".to_string()
                } else {
                    format!("state.json is at revision {base}")
                };
                return Err(format!("the WAL starts at revision {}, but {snap}: {} (a WAL cut at its start, or state.json and wal.jsonl from different moments)", l.revision, missing("revision", base + 1, l.revision - 1)));
            }
            Some(prev) if l.revision != prev + 1 => {
                let what = if l.revision > prev + 1 {
                    missing("revision", prev + 1, l.revision - 1)
                } else {
                    "revisions must go up by one".to_string()
                };
                return Err(format!(
                    "revision {} follows revision {prev}: {what}",
                    l.revision
                ));
            }
            _ => {}
        }
        wal_last = Some(l.revision);
        // Lines at or below the snapshot's revision are folded in already (a crash between
        // the snapshot's rename and the WAL's truncation).
        if l.revision > base {
            l.apply_to(snapshot);
            wal_lines += 1;
        }
        Ok(())
    })?;
    Ok(WalReplay {
        scan,
        last: wal_last,
        lines: wal_lines,
    })
}

impl EmbeddedDirectory {
    /// Opens (or creates) the store in `dir`, recovering from a crash as described above, or
    /// refusing with [`DirectoryError::Corrupt`] (and changing nothing) when a file holds what
    /// a crash cannot have left.
    pub fn open(dir: &Path) -> Result<Self, DirectoryError> {
        Self::open_keeping(dir, EVENTS_KEPT)
    }

    /// [`EmbeddedDirectory::open`], rotating the event log every `events_kept` events (tests).
    pub fn open_keeping(dir: &Path, events_kept: u64) -> Result<Self, DirectoryError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut snapshot = read_state(&dir.join("state.json"))?;
        let wal_path = dir.join("wal.jsonl");
        let base = snapshot.revision;
        // The lines a background compaction had set aside, if it did not finish.
        let old_wal = dir.join("wal.1.jsonl");
        let old = replay_wal(&old_wal, &mut snapshot)?;
        if let Some(torn) = old.scan.torn_desc() {
            let at = At {
                offset: old.scan.complete,
                ..At::default()
            };
            return Err(corrupt(
                &old_wal,
                at,
                format!("{torn}: wal.1.jsonl was complete when a compaction set it aside"),
            ));
        }
        let WalReplay {
            scan: wal_scan,
            last: wal_last,
            lines: wal_lines,
        } = replay_wal(&wal_path, &mut snapshot)?;
        let events_path = dir.join("events.jsonl");
        let rev = snapshot.revision;
        let EventsRead {
            scan: events_scan,
            first,
            count,
            mut recent,
            committed_end,
            uncommitted,
        } = read_events(&events_path, rev)?;
        let previous_path = dir.join("events.1.jsonl");
        if recent.len() < EVENTS_IN_MEMORY && previous_path.exists() {
            let older = read_previous_events(&previous_path, rev, first)?;
            let room = EVENTS_IN_MEMORY - recent.len();
            for e in older.into_iter().rev().take(room) {
                recent.push_front(e);
            }
        }
        // Everything is read and checked: only now may anything on disk change.
        let mut wal_cut: Vec<String> = wal_scan.torn_desc().into_iter().collect();
        let wal_keep = if wal_lines == 0 && wal_last.is_some() {
            // Every line is in state.json: finish the compaction that was interrupted.
            wal_cut.insert(0, format!("commits up to revision {base}, all in state.json already (an interrupted compaction)"));
            0
        } else {
            wal_scan.complete
        };
        let wal = open_append(&wal_path, wal_keep, &wal_cut.join(", "))?;
        if old.last.is_some() && old.lines == 0 {
            // Every line set aside is in state.json: finish that compaction.
            tracing::info!(path = %old_wal.display(), "removing commits already in state.json (an interrupted compaction)");
            fs::remove_file(&old_wal).map_err(io_err(&old_wal))?;
        }
        remove_stray(dir, "wal.jsonl")?;
        let mut events_cut: Vec<String> = events_scan.torn_desc().into_iter().collect();
        if uncommitted > 0 {
            events_cut.insert(
                0,
                format!(
                    "{uncommitted} events of revision {}, which never committed",
                    rev + 1
                ),
            );
        }
        let events_file = open_append(&events_path, committed_end, &events_cut.join(", "))?;
        // A rotation interrupted before its second rename.
        remove_stray(dir, "events.jsonl")?;
        if let Some(e) = recent.back() {
            if snapshot.next_event > e.seq + 1 {
                // The file ends before the events the directory numbered (its tail was removed
                // by hand, see the recovery procedure): number on from the file, or the next
                // event would leave a gap that the next start refuses.
                tracing::warn!(
                    path = %events_path.display(),
                    "events.jsonl ends at event {} but the directory numbered events up to {}: those are gone; numbering continues at {}",
                    e.seq,
                    snapshot.next_event - 1,
                    e.seq + 1
                );
            }
            snapshot.next_event = e.seq + 1;
        }
        let (revision_tx, _) = tokio::sync::watch::channel(snapshot.revision);
        Ok(EmbeddedDirectory {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                snapshot,
                wal,
                wal_lines: wal_lines + old.lines,
                events: events_file,
                events_in_file: count,
                events_kept,
                recent,
                poisoned: None,
                compaction: None,
            }),
            revision_tx,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn commit_sync(&self, expected: Revision, update: &Update) -> Result<Revision, DirectoryError> {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let actual = inner.snapshot.revision;
        if actual != expected {
            return Err(DirectoryError::Conflict { expected, actual });
        }
        // No copy of the whole snapshot: number the events, make the change durable, then
        // apply it in memory.
        let revision = inner.snapshot.revision + 1;
        let events = inner
            .snapshot
            .number_events(&update.events, revision, now_ms());
        if let Some(why) = &inner.poisoned {
            return Err(DirectoryError::Store {
                path: self.dir.clone(),
                detail: format!("refusing commits after an earlier write failure that could not be undone ({why}); restart ftn to reopen the directory from what is on disk"),
            });
        }
        // Events first: they carry the new revision, so if the WAL line never lands they are
        // cut at the next open. Any failure undoes both files to their length before this
        // commit; if that fails too, or a flush failed (what the disk holds is then unknown),
        // the directory refuses further commits.
        let events_path = self.dir.join("events.jsonl");
        let wal_path = self.dir.join("wal.jsonl");
        let events_len = inner.events.metadata().map_err(io_err(&events_path))?.len();
        let wal_len = inner.wal.metadata().map_err(io_err(&wal_path))?.len();
        let mut buf = Vec::new();
        for e in &events {
            buf.extend(seal(e).map_err(|e| DirectoryError::Store {
                path: events_path.clone(),
                detail: e.to_string(),
            })?);
            buf.push(b'\n');
        }
        let mut line =
            seal(&LogEntryRef::new(revision, update)).map_err(|e| DirectoryError::Store {
                path: wal_path.clone(),
                detail: e.to_string(),
            })?;
        line.push(b'\n');
        let mut flush_failed = false;
        let written = (|| -> Result<(), DirectoryError> {
            if !buf.is_empty() {
                inner.events.write_all(&buf).map_err(io_err(&events_path))?;
                if let Err(e) = inner.events.sync_data() {
                    flush_failed = true;
                    return Err(io_err(&events_path)(e));
                }
            }
            inner.wal.write_all(&line).map_err(io_err(&wal_path))?;
            if let Err(e) = inner.wal.sync_data() {
                flush_failed = true;
                return Err(io_err(&wal_path)(e));
            }
            Ok(())
        })();
        if let Err(e) = written {
            // The commit did not happen: neither file may keep any of it.
            let undone = inner
                .wal
                .set_len(wal_len)
                .and_then(|_| inner.wal.sync_all())
                .and_then(|_| inner.events.set_len(events_len))
                .and_then(|_| inner.events.sync_all());
            if flush_failed || undone.is_err() {
                let why = match undone {
                    Err(u) => format!("{e}; undoing it failed: {u}"),
                    Ok(()) => format!("{e} (a failed flush leaves the disk's content unknown)"),
                };
                tracing::error!("directory store poisoned: {why}");
                inner.poisoned = Some(why);
            }
            return Err(e);
        }
        inner.wal_lines += 1;
        inner.snapshot.advance(update);
        debug_assert_eq!(inner.snapshot.revision, revision);
        inner.events_in_file += events.len() as u64;
        for e in events {
            if inner.recent.len() == EVENTS_IN_MEMORY {
                inner.recent.pop_front();
            }
            inner.recent.push_back(e);
        }
        if inner.wal_lines >= COMPACT_EVERY {
            // The commit is durable already; a failed compaction only leaves a longer WAL.
            if let Err(e) = compact::start(&self.dir, &mut inner) {
                tracing::warn!(error = %e, "directory compaction failed; the WAL keeps growing");
            }
        }
        if inner.events_in_file >= inner.events_kept {
            // The commit is durable already; a failed rotation only leaves a longer log.
            if let Err(e) = events::rotate(&self.dir, &mut inner) {
                tracing::warn!(error = %e, "event log rotation failed; events.jsonl keeps growing");
            }
        }
        drop(inner);
        self.revision_tx.send_replace(revision);
        Ok(revision)
    }

    /// Waits for a compaction running in the background (tests; the store's drop does too).
    pub fn wait_compaction(&self) {
        let c = self
            .inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .compaction
            .take();
        if let Some(c) = c {
            c.finish();
        }
    }

    /// The snapshot now (synchronous, for tests and the status page).
    pub fn current(&self) -> Snapshot {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot
            .clone()
    }
}

#[async_trait::async_trait]
impl Directory for EmbeddedDirectory {
    async fn snapshot(&self) -> Result<Snapshot, DirectoryError> {
        Ok(self.current())
    }

    async fn commit(
        &self,
        expected: Revision,
        update: &Update,
    ) -> Result<Revision, DirectoryError> {
        // fdatasync takes a few milliseconds at most on a local disk; the controller's
        // engine task is the only committer, so blocking it briefly is what we want (the
        // map write must wait for the record anyway).
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => {
                tokio::task::block_in_place(|| self.commit_sync(expected, update))
            }
            // A current-thread runtime (tests) cannot hand its thread over; it waits.
            _ => self.commit_sync(expected, update),
        }
    }

    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, DirectoryError> {
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        Ok(inner
            .recent
            .iter()
            .filter(|e| e.seq > after)
            .take(limit)
            .cloned()
            .collect())
    }

    fn watch(&self) -> tokio::sync::watch::Receiver<Revision> {
        self.revision_tx.subscribe()
    }

    fn backend(&self) -> &'static str {
        "embedded"
    }
}

impl Drop for EmbeddedDirectory {
    /// A compaction in the background is waited for: the next open sees its files settled.
    fn drop(&mut self) {
        self.wait_compaction();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use tempfile::TempDir;

    fn server(name: &str, id: u32, health: Health) -> ServerRecord {
        ServerRecord {
            name: name.into(),
            id,
            address: format!("198.18.2.{}", id + 10).parse().unwrap(),
            health,
            drained_at_ms: None,
            dataplane_up: health == Health::Up,
            generation: 1,
            since_ms: 1,
            evidence: "test".into(),
        }
    }

    fn resource(name: &str, current: &str, generation: u32) -> ResourceRecord {
        ResourceRecord {
            name: name.into(),
            id: 0,
            servers: vec!["p1".into(), "b1".into()],
            current: Some(current.into()),
            pinned: None,
            generation,
            since_ms: 1,
            reason: "test".into(),
        }
    }

    fn event(kind: &str) -> EventDraft {
        EventDraft {
            kind: kind.into(),
            resource: Some("web".into()),
            server: None,
            message: format!("{kind} happened"),
        }
    }

    /// An update that only logs one event of each of `kinds`.
    fn events_of(kinds: &[&str]) -> Update {
        Update {
            events: kinds.iter().map(|k| event(k)).collect(),
            ..Default::default()
        }
    }

    /// An update that puts `web` on `current`, logging one event of each of `kinds`.
    fn web_on(current: &str, generation: u32, kinds: &[&str]) -> Update {
        Update {
            set_resources: vec![resource("web", current, generation).into()],
            ..events_of(kinds)
        }
    }

    /// The first commit of a store: servers p1 and b1, `web` on p1, a config event.
    fn configured() -> Update {
        Update {
            set_servers: vec![server("p1", 0, Health::Up), server("b1", 1, Health::Up)],
            ..web_on("p1", 1, &["config"])
        }
    }

    /// An event as the log holds it.
    fn logged(seq: u64, revision: Revision, message: &str) -> Event {
        Event {
            seq,
            revision,
            at_ms: 1,
            kind: "failover".into(),
            resource: Some("web".into()),
            server: None,
            message: message.into(),
        }
    }

    /// `value` as a line of a log: with its checksum (`sealed`) or as versions before
    /// checksums wrote it.
    fn record_line<T: Serialize>(value: &T, sealed: bool) -> Vec<u8> {
        let mut line = if sealed {
            seal(value).unwrap()
        } else {
            serde_json::to_vec(value).unwrap()
        };
        line.push(b'\n');
        line
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap()
    }

    /// Commits `update` at `expected`; returns the new revision.
    fn commit(dir: &EmbeddedDirectory, expected: Revision, update: Update) -> Revision {
        rt().block_on(dir.commit(expected, &update)).unwrap()
    }

    /// Every event `dir` holds in memory, oldest first.
    fn all_events(dir: &EmbeddedDirectory) -> Vec<Event> {
        rt().block_on(dir.events(0, usize::MAX)).unwrap()
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.seq).collect()
    }

    /// Opens the store in `path`, which must hold `want`.
    fn reopened(path: &Path, want: &Snapshot) -> EmbeddedDirectory {
        let dir = EmbeddedDirectory::open(path).unwrap();
        assert_eq!(&dir.current(), want);
        dir
    }

    /// Commits `update` at `expected`, closes `dir` and opens it again, which must give the same
    /// snapshot. Returns that snapshot and the reopened directory's events.
    fn commit_and_reopen(
        dir: EmbeddedDirectory,
        expected: Revision,
        update: Update,
    ) -> (Snapshot, Vec<Event>) {
        commit(&dir, expected, update);
        let after = dir.current();
        let path = dir.path().to_path_buf();
        drop(dir);
        let events = all_events(&reopened(&path, &after));
        (after, events)
    }

    /// A new store with three commits (revisions 1..=3), one event each, closed; and what it
    /// holds.
    fn three_commits() -> (TempDir, Snapshot) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        commit(&dir, 0, configured());
        for (rev, cur) in [(1, "b1"), (2, "p1")] {
            commit(&dir, rev, web_on(cur, rev as u32 + 1, &["failover"]));
        }
        let committed = dir.current();
        (tmp, committed)
    }

    /// Every file of the store, to compare before and after an open.
    fn files(path: &Path) -> BTreeMap<String, Vec<u8>> {
        fs::read_dir(path)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                (
                    e.file_name().to_string_lossy().into_owned(),
                    fs::read(e.path()).unwrap(),
                )
            })
            .collect()
    }

    /// The byte ranges of the lines of `bytes` (with their newlines).
    fn lines(bytes: &[u8]) -> Vec<std::ops::Range<usize>> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                out.push(start..i + 1);
                start = i + 1;
            }
        }
        out
    }

    /// The records of `bytes`: its lines without their newlines.
    fn bodies(bytes: &[u8]) -> Vec<&[u8]> {
        lines(bytes)
            .into_iter()
            .map(|r| &bytes[r.start..r.end - 1])
            .collect()
    }

    /// Removes line `i` (from 0).
    fn remove_line(bytes: &mut Vec<u8>, i: usize) {
        let r = lines(bytes)[i].clone();
        bytes.drain(r);
    }

    fn append(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new().append(true).open(path).unwrap();
        f.write_all(bytes).unwrap();
    }

    /// [`three_commits`], then `file` changed by `damage` (which must change it). Returns the
    /// store and the file as it was before.
    fn damaged(file: &str, damage: impl FnOnce(&mut Vec<u8>)) -> (TempDir, Vec<u8>) {
        let (tmp, _) = three_commits();
        let p = tmp.path().join(file);
        let original = fs::read(&p).unwrap();
        let mut bytes = original.clone();
        damage(&mut bytes);
        assert_ne!(bytes, original, "{file}: the damage changed nothing");
        fs::write(&p, &bytes).unwrap();
        (tmp, original)
    }

    /// Flips one bit of a value in the record at `r`: the JSON stays valid, only the checksum
    /// can tell.
    fn flip_a_value_byte(bytes: &mut [u8], r: std::ops::Range<usize>) {
        let i = r.start
            + bytes[r]
                .windows(5)
                .position(|w| w == b"test\"" || w == b"happe")
                .unwrap();
        bytes[i] ^= 0x01;
    }

    /// Opens `path`, which must refuse, and checks that no file changed. Returns the error.
    fn refusal(path: &Path) -> DirectoryError {
        let before = files(path);
        let err = EmbeddedDirectory::open(path)
            .err()
            .expect("open must refuse");
        assert_eq!(
            files(path),
            before,
            "a refused open changed the files: {err}"
        );
        err
    }

    fn assert_names(msg: &str, parts: &[&str]) {
        for part in parts {
            assert!(msg.contains(part), "{part:?} is not in: {msg}");
        }
    }

    /// Opens `path`, expects a refusal naming `file`, line `line` (from 1), the offset of that
    /// line in `original` and each of `reasons`, and checks that no file changed.
    fn refused(path: &Path, file: &str, original: &[u8], line: usize, reasons: &[&str]) {
        let err = refusal(path);
        let offset = lines(original)[line - 1].start;
        match &err {
            DirectoryError::Corrupt {
                path: p,
                offset: o,
                line: l,
                ..
            } => {
                assert!(p.ends_with(file), "{err}");
                assert_eq!((*o, *l), (offset as u64, line as u64), "{err}");
            }
            other => panic!("not a Corrupt error: {other}"),
        }
        let msg = err.to_string();
        assert_names(
            &msg,
            &[
                file,
                &format!("line {line} (byte offset {offset})"),
                "docs/OPERATIONS.md",
                "recovering a corrupt store",
                "nothing on disk was changed",
            ],
        );
        assert_names(&msg, reasons);
    }

    /// The event log rotates once it holds `events_kept` events: one generation before it is
    /// kept, older ones go; numbering and the in-memory history go on across the files and
    /// across a reopen.
    #[test]
    fn the_event_log_rotates_and_keeps_one_generation() {
        let tmp = TempDir::new().unwrap();
        let dir = EmbeddedDirectory::open_keeping(tmp.path(), 4).unwrap();
        let mut rev = commit(&dir, 0, configured());
        // Events 1 to 9 (numbering starts at 1): rotations after the 2nd commit (events 1–4
        // in the file) and the 4th (5–8); the file then holds event 9.
        for kinds in [&["a", "b", "c"][..], &["d"], &["e", "f", "g"], &["h"]] {
            rev = commit(&dir, rev, events_of(kinds));
        }
        let count = |name: &str| {
            fs::read(tmp.path().join(name))
                .map(|b| bodies(&b).len())
                .unwrap_or(0)
        };
        assert_eq!(count("events.jsonl"), 1);
        assert_eq!(count("events.1.jsonl"), 4);
        assert!(!tmp.path().join("events.2.jsonl").exists());
        assert!(!tmp.path().join("events.jsonl.new").exists());
        rev = commit(&dir, rev, events_of(&["i"]));
        assert_eq!(count("events.jsonl"), 2);
        // In memory: all 10 (fewer than EVENTS_IN_MEMORY); on disk: the newest 6.
        assert_eq!(seqs(&all_events(&dir)), (1..=10).collect::<Vec<_>>());
        drop(dir);
        let dir = EmbeddedDirectory::open_keeping(tmp.path(), 4).unwrap();
        assert_eq!(seqs(&all_events(&dir)), (5..=10).collect::<Vec<_>>());
        let rev2 = commit(&dir, rev, events_of(&["j"]));
        assert_eq!(rev2, rev + 1);
        assert_eq!(seqs(&all_events(&dir)), (5..=11).collect::<Vec<_>>());
    }

    /// A crash between the rotation's two renames leaves no `events.jsonl`: the open takes it
    /// as empty, finds the events in `events.1.jsonl`, removes the stray new file and numbers on.
    #[test]
    fn a_rotation_interrupted_between_its_renames_is_finished_at_open() {
        let tmp = TempDir::new().unwrap();
        let dir = EmbeddedDirectory::open_keeping(tmp.path(), 100).unwrap();
        let rev = commit(&dir, 0, configured());
        let rev = commit(&dir, rev, events_of(&["a", "b"]));
        drop(dir);
        fs::rename(
            tmp.path().join("events.jsonl"),
            tmp.path().join("events.1.jsonl"),
        )
        .unwrap();
        fs::write(tmp.path().join("events.jsonl.new"), b"").unwrap();
        let dir = EmbeddedDirectory::open_keeping(tmp.path(), 100).unwrap();
        assert!(!tmp.path().join("events.jsonl.new").exists());
        assert_eq!(seqs(&all_events(&dir)), vec![1, 2, 3]);
        commit(&dir, rev, events_of(&["c"]));
        assert_eq!(seqs(&all_events(&dir)), vec![1, 2, 3, 4]);
    }

    /// The previous generation must end where the current log begins, and hold committed
    /// events only; anything else refuses the open.
    #[test]
    fn a_previous_event_log_that_does_not_meet_the_current_one_is_refused() {
        let tmp = TempDir::new().unwrap();
        let dir = EmbeddedDirectory::open_keeping(tmp.path(), 3).unwrap();
        let rev = commit(&dir, 0, configured());
        let rev = commit(&dir, rev, events_of(&["a", "b"]));
        commit(&dir, rev, events_of(&["c"]));
        drop(dir);
        // events.1.jsonl: events 1 to 3; events.jsonl: 4. Remove the previous one's last line.
        let prev = tmp.path().join("events.1.jsonl");
        let original = fs::read(&prev).unwrap();
        let mut bytes = original.clone();
        remove_line(&mut bytes, 2);
        fs::write(&prev, &bytes).unwrap();
        match EmbeddedDirectory::open_keeping(tmp.path(), 3) {
            Err(DirectoryError::Corrupt { path, reason, .. }) => {
                assert_eq!(path, prev);
                assert!(
                    reason.contains("ends at event 2 but events.jsonl begins at event 4"),
                    "{reason}"
                );
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a previous log that does not meet the current one was accepted"),
        }
        // A torn tail there is refused too (it was complete when rotated).
        fs::write(&prev, [&original[..], b"{\"seq\":4"].concat()).unwrap();
        match EmbeddedDirectory::open_keeping(tmp.path(), 3) {
            Err(DirectoryError::Corrupt { reason, .. }) => {
                assert!(reason.contains("torn last line"), "{reason}")
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a torn previous log was accepted"),
        }
        // Whole again: it opens.
        fs::write(&prev, &original).unwrap();
        EmbeddedDirectory::open_keeping(tmp.path(), 3).unwrap();
    }

    #[test]
    fn commits_survive_reopen_and_compaction() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        let r = commit(&dir, 0, configured());
        assert_eq!(r, 1);
        // Enough commits to force a compaction in the middle.
        for i in 0..(COMPACT_EVERY + 10) {
            let cur = if i % 2 == 0 { "b1" } else { "p1" };
            commit(&dir, r + i, web_on(cur, 2 + i as u32, &["failover"]));
        }
        let before = dir.current();
        assert_eq!(before.revision, COMPACT_EVERY + 11);
        drop(dir);
        let events = all_events(&reopened(tmp.path(), &before));
        assert_eq!(events.len() as u64, COMPACT_EVERY + 11);
        assert_eq!(events[0].kind, "config");
        assert_eq!(events.last().unwrap().seq, COMPACT_EVERY + 11);
        assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    }

    /// A WAL line holds the records and the count of the commit's events, not the events
    /// (they are in events.jsonl); a line of an earlier version, with the events inline, is
    /// still read, and both number the events the same.
    #[test]
    fn wal_lines_count_events_and_old_lines_with_events_still_replay() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        commit(&dir, 0, web_on("p1", 1, &["config", "failover"]));
        let want = dir.current();
        assert_eq!(want.next_event, 3);
        drop(dir);
        let wal = fs::read(tmp.path().join("wal.jsonl")).unwrap();
        let text = String::from_utf8(wal).unwrap();
        assert!(text.contains(r#""events":2"#), "{text}");
        assert!(
            !text.contains("happened"),
            "events inline in the WAL: {text}"
        );
        // Without events.jsonl the count alone numbers on.
        fs::remove_file(tmp.path().join("events.jsonl")).unwrap();
        assert_eq!(EmbeddedDirectory::open(tmp.path()).unwrap().current(), want);
        // The same commit as an earlier version wrote it: events inside the update.
        let old = LogEntry {
            revision: 1,
            update: web_on("p1", 1, &["config", "failover"]),
            events: 0,
        };
        let mut line = seal(&old).unwrap();
        line.push(b'\n');
        fs::write(tmp.path().join("wal.jsonl"), line).unwrap();
        assert_eq!(EmbeddedDirectory::open(tmp.path()).unwrap().current(), want);
    }

    #[test]
    fn stale_revision_is_refused_and_nothing_applies() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        commit(&dir, 0, web_on("p1", 1, &[]));
        let err = rt()
            .block_on(dir.commit(0, &web_on("b1", 2, &["failover"])))
            .unwrap_err();
        assert!(
            matches!(
                err,
                DirectoryError::Conflict {
                    expected: 0,
                    actual: 1
                }
            ),
            "{err}"
        );
        assert_eq!(all_events(&dir).len(), 0);
        assert_eq!(
            dir.current().resources["web"].current.as_deref(),
            Some("p1")
        );
    }

    #[test]
    fn torn_tails_are_cut_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        commit(&dir, 0, web_on("p1", 1, &["config"]));
        let committed = dir.current();
        drop(dir);
        // A crash in the middle of the next commit: its events landed, its WAL line is torn.
        let orphan = record_line(&logged(2, 2, "never committed"), true);
        append(&tmp.path().join("events.jsonl"), &orphan);
        append(
            &tmp.path().join("wal.jsonl"),
            b"{\"revision\":2,\"update\":{\"set_reso",
        );

        let again = reopened(tmp.path(), &committed);
        let events = all_events(&again);
        assert_eq!(events.len(), 1, "{events:?}");
        // The next commit continues cleanly after the cut.
        let (third, events) = commit_and_reopen(again, 1, web_on("b1", 2, &["failover"]));
        assert_eq!(third.revision, 2);
        assert_eq!(third.resources["web"].current.as_deref(), Some("b1"));
        assert_eq!(seqs(&events), vec![1, 2]);
        assert_eq!(events[1].message, "failover happened");
    }

    #[test]
    fn corrupt_snapshot_is_refused_loudly() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("state.json"), b"{not json").unwrap();
        let msg = refusal(tmp.path()).to_string();
        assert_names(&msg, &["state.json", "unreadable snapshot"]);
    }

    #[test]
    fn records_carry_a_crc32c_of_their_json() {
        // The check value of CRC-32C.
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
        let e = logged(7, 3, "p1 down");
        let json = serde_json::to_vec(&e).unwrap();
        let line = seal(&e).unwrap();
        let want = format!(
            "{},\"crc\":\"{:08x}\"}}",
            std::str::from_utf8(&json[..json.len() - 1]).unwrap(),
            CRC32C.checksum(&json)
        );
        assert_eq!(std::str::from_utf8(&line).unwrap(), want);
        assert!(line.starts_with(b"{\"seq\":7,"));
        assert_eq!(unseal::<Event>(&line, true).unwrap(), (e.clone(), true));
        assert_eq!(unseal::<Event>(&json, true).unwrap(), (e.clone(), false));
        // Still one JSON object, which a version without checksums (ignoring the field it does
        // not know) reads as the record.
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["seq"], 7);
        assert_eq!(serde_json::from_slice::<Event>(&line).unwrap(), e);
        assert!(seal(&42).is_err());
    }

    #[test]
    fn written_files_have_a_checksum_on_every_record() {
        let (tmp, _) = three_commits();
        for name in ["wal.jsonl", "events.jsonl"] {
            let bytes = fs::read(tmp.path().join(name)).unwrap();
            let records = bodies(&bytes);
            assert_eq!(records.len(), 3, "{name}");
            for body in records {
                assert!(split_seal(body).is_some(), "{name}: {body:?}");
                assert!(unseal::<serde_json::Value>(body, true).unwrap().1);
            }
        }
    }

    #[test]
    fn torn_last_event_line_is_cut() {
        let (tmp, committed) = three_commits();
        let path = tmp.path().join("events.jsonl");
        let good = fs::read(&path).unwrap();
        append(&path, b"{\"seq\":4,\"revision\":4,\"at_ms\":1,\"kin");
        let again = reopened(tmp.path(), &committed);
        assert_eq!(fs::read(&path).unwrap(), good);
        assert_eq!(all_events(&again).len(), 3);
        let (third, events) = commit_and_reopen(again, 3, events_of(&["drain"]));
        assert_eq!(third.revision, 4);
        assert_eq!(seqs(&events), vec![1, 2, 3, 4]);
    }

    #[test]
    fn nul_tails_are_torn_and_cut() {
        // Where the new length of a file reached the disk before its data, a crash leaves
        // NUL bytes where the appended lines should be, and no newline after them.
        let (tmp, committed) = three_commits();
        let mut good = BTreeMap::new();
        for name in ["wal.jsonl", "events.jsonl"] {
            let p = tmp.path().join(name);
            good.insert(name, fs::read(&p).unwrap());
            append(&p, &[0u8; 300]);
        }
        let again = reopened(tmp.path(), &committed);
        for (name, bytes) in &good {
            assert_eq!(&fs::read(tmp.path().join(name)).unwrap(), bytes, "{name}");
        }
        commit_and_reopen(again, 3, web_on("b1", 9, &["switchover"]));
    }

    /// Every way of damaging a complete line, in both logs: the open is refused with the file,
    /// line and offset, and no file changes.
    #[test]
    fn damaged_complete_lines_are_refused_anywhere() {
        type Damage = fn(&mut Vec<u8>, std::ops::Range<usize>);
        let damages: [(&str, usize, Damage, &str); 8] = [
            (
                "garbled first line",
                1,
                |b, r| b[r.start..r.end - 1].fill(b'#'),
                "not a valid record",
            ),
            (
                "garbled middle line",
                2,
                |b, r| b[r.start..r.start + 9].copy_from_slice(b"xx\x7f@!garb"),
                "checksum mismatch",
            ),
            (
                "emptied middle line",
                2,
                |b, r| {
                    b.drain(r.start..r.end - 1);
                },
                "it is empty",
            ),
            (
                "one flipped byte in the middle record",
                2,
                |b, r| flip_a_value_byte(b, r),
                "checksum mismatch",
            ),
            (
                "one flipped byte in the middle record's checksum",
                2,
                |b, r| b[r.end - 4] ^= 0x01,
                "",
            ),
            (
                "NUL bytes in the middle line",
                2,
                |b, r| b[r.start + 2..r.start + 40].fill(0),
                "NUL bytes: disk blocks that were never written, or were zeroed (a damaged disk or filesystem;",
            ),
            (
                "NUL bytes in the complete last line",
                3,
                |b, r| b[r.start..r.start + 40].fill(0),
                "NUL bytes: disk blocks that were never written, or were zeroed (a damaged disk, or a crash while this last line was being written",
            ),
            (
                "a bad checksum on the complete last line",
                3,
                |b, r| {
                    let i = r.start + 20;
                    b[i] = if b[i] == b'7' { b'8' } else { b'7' };
                },
                "",
            ),
        ];
        for file in ["wal.jsonl", "events.jsonl"] {
            for (what, line, damage, reason) in damages {
                let (tmp, original) = damaged(file, |b| {
                    let r = lines(b)[line - 1].clone();
                    damage(b, r)
                });
                if file == "events.jsonl" {
                    // A torn WAL tail that a sound open would cut: a refused one must not.
                    append(&tmp.path().join("wal.jsonl"), b"{\"revision\":4,\"upd");
                }
                eprintln!("{file}: {what}");
                refused(tmp.path(), file, &original, line, &[reason]);
            }
        }
    }

    #[test]
    fn a_missing_wal_record_is_refused() {
        // A revision gap in the middle.
        let (tmp, original) = damaged("wal.jsonl", |b| remove_line(b, 1));
        // The third record, now on line 2, starts where the second did.
        refused(
            tmp.path(),
            "wal.jsonl",
            &original,
            2,
            &["revision 3 follows revision 1: revision 2 is missing"],
        );
        // The first record gone: the WAL no longer continues from the (absent) snapshot.
        let (tmp, original) = damaged("wal.jsonl", |b| remove_line(b, 0));
        refused(
            tmp.path(),
            "wal.jsonl",
            &original,
            1,
            &["the WAL starts at revision 2", "revision 1 is missing"],
        );
    }

    #[test]
    fn a_truncated_wal_is_refused() {
        // The WAL cut at a line boundary to fewer commits than the events refer to.
        let (tmp, _) = damaged("wal.jsonl", |b| b.truncate(lines(b)[0].end));
        let events = fs::read(tmp.path().join("events.jsonl")).unwrap();
        refused(
            tmp.path(),
            "events.jsonl",
            &events,
            3,
            &["event 3 belongs to revision 3, but state.json and wal.jsonl end at revision 1: wal.jsonl has lost commits (revision 2 is missing)"],
        );
    }

    #[test]
    fn a_wal_that_does_not_continue_the_snapshot_is_refused() {
        // state.json and wal.jsonl from different moments: a snapshot at revision 1 under a
        // WAL that continues revision 2.
        let (tmp, wal) = damaged("wal.jsonl", |b| {
            b.drain(..lines(b)[2].start);
        });
        let rev1: LogEntry = unseal(bodies(&wal)[0], true).unwrap().0;
        let mut snap = Snapshot::default();
        snap.apply(&rev1.update);
        fs::write(tmp.path().join("state.json"), seal(&snap).unwrap()).unwrap();
        refused(
            tmp.path(),
            "wal.jsonl",
            &wal,
            1,
            &["the WAL starts at revision 3, but state.json is at revision 1: revision 2 is missing"],
        );
    }

    #[test]
    fn committed_events_after_uncommitted_ones_are_refused() {
        let (tmp, _) = three_commits();
        // An event of the never-committed revision 4 in the middle of the file, written in
        // the older format (no checksums, no order checks) so that only that rule can object.
        let legacy: Vec<u8> = [(1, 1), (2, 4), (3, 3)]
            .into_iter()
            .flat_map(|(seq, revision)| record_line(&logged(seq, revision, ""), false))
            .collect();
        fs::write(tmp.path().join("events.jsonl"), &legacy).unwrap();
        refused(
            tmp.path(),
            "events.jsonl",
            &legacy,
            3,
            &["follows events of revision 4, which never committed"],
        );
        // With checksums, the order checks see it first.
        let (tmp, _) = damaged("events.jsonl", |b| {
            let second = lines(b)[1].clone();
            let mut e: Event = unseal(bodies(b)[1], true).unwrap().0;
            e.revision = 4;
            b.splice(second, record_line(&e, true));
        });
        let p = tmp.path().join("events.jsonl");
        refused(
            tmp.path(),
            "events.jsonl",
            &fs::read(p).unwrap(),
            3,
            &["revisions never go back"],
        );
    }

    #[test]
    fn a_missing_event_is_refused() {
        let (tmp, original) = damaged("events.jsonl", |b| remove_line(b, 1));
        refused(
            tmp.path(),
            "events.jsonl",
            &original,
            2,
            &["event 3 follows event 1: event 2 is missing"],
        );
    }

    #[test]
    fn legacy_files_without_checksums_open_and_continue_with_them() {
        let (tmp, committed) = three_commits();
        // Rewrite both logs as a version before checksums wrote them.
        for name in ["wal.jsonl", "events.jsonl"] {
            let p = tmp.path().join(name);
            let bytes = fs::read(&p).unwrap();
            let mut legacy = Vec::new();
            for body in bodies(&bytes) {
                let (head, _) = split_seal(body).unwrap();
                legacy.extend_from_slice(head);
                legacy.extend_from_slice(b"}\n");
            }
            assert!(!legacy.windows(5).any(|w| w == b"\"crc\""));
            fs::write(&p, &legacy).unwrap();
        }
        assert!(fs::read(tmp.path().join("wal.jsonl"))
            .unwrap()
            .starts_with(b"{\"revision\":1,"));
        let again = reopened(tmp.path(), &committed);
        assert_eq!(all_events(&again).len(), 3);
        let (_, events) = commit_and_reopen(again, 3, web_on("b1", 9, &["switchover"]));
        assert_eq!(seqs(&events), vec![1, 2, 3, 4]);
        // The new records have checksums, after the old ones.
        for name in ["wal.jsonl", "events.jsonl"] {
            let bytes = fs::read(tmp.path().join(name)).unwrap();
            let sealed: Vec<bool> = bodies(&bytes)
                .into_iter()
                .map(|body| split_seal(body).is_some())
                .collect();
            assert_eq!(sealed, vec![false, false, false, true], "{name}");
        }

        // But a record without a checksum after one with it is corruption.
        let p = tmp.path().join("events.jsonl");
        let mut late = events[3].clone();
        late.seq = 5;
        append(&p, &record_line(&late, false));
        refused(
            tmp.path(),
            "events.jsonl",
            &fs::read(&p).unwrap(),
            5,
            &["no checksum but follows records that have one"],
        );
    }

    #[test]
    fn legacy_and_damaged_snapshots() {
        let (tmp, committed) = three_commits();
        // A snapshot as a version before checksums wrote it (here, after an interrupted
        // compaction: every WAL line is in it already).
        let state = tmp.path().join("state.json");
        fs::write(&state, serde_json::to_vec(&committed).unwrap()).unwrap();
        let again = reopened(tmp.path(), &committed);
        // The interrupted compaction is finished: the WAL is emptied.
        assert_eq!(fs::read(tmp.path().join("wal.jsonl")).unwrap().len(), 0);
        let (after, _) = commit_and_reopen(again, 3, events_of(&["drain"]));

        // A sealed snapshot with one flipped byte is refused.
        let mut bytes = seal(&after).unwrap();
        let i = bytes.windows(4).position(|w| w == b"test").unwrap();
        bytes[i] ^= 0x01;
        fs::write(&state, &bytes).unwrap();
        let msg = refusal(tmp.path()).to_string();
        assert_names(
            &msg,
            &["state.json", "unreadable snapshot", "checksum mismatch"],
        );
    }

    /// The hand repair of a bad `wal.jsonl` line in docs/OPERATIONS.md ("Recovering a corrupt
    /// store"): delete it and every line after it, and the events of the revisions lost with
    /// them; the store then opens at the last commit kept, and goes on from there.
    #[test]
    fn hand_repair_by_removing_the_tail_opens() {
        let (tmp, original) = damaged("wal.jsonl", |b| {
            let r = lines(b)[1].clone();
            flip_a_value_byte(b, r)
        });
        refused(
            tmp.path(),
            "wal.jsonl",
            &original,
            2,
            &["checksum mismatch"],
        );
        // `sed -i '2,$d' wal.jsonl`: only revision 1 is left.
        let wal = tmp.path().join("wal.jsonl");
        fs::write(&wal, &original[..lines(&original)[0].end]).unwrap();
        // The events of revision 3 are of a commit that the WAL lost: the open refuses them
        // (those of revision 2, the commit after the last kept, it would cut by itself).
        let events = fs::read(tmp.path().join("events.jsonl")).unwrap();
        refused(
            tmp.path(),
            "events.jsonl",
            &events,
            3,
            &["wal.jsonl has lost commits"],
        );
        // `sed -i '2,$d' events.jsonl`: every event of a revision after 1 goes too.
        fs::write(
            tmp.path().join("events.jsonl"),
            &events[..lines(&events)[0].end],
        )
        .unwrap();
        let mut kept = Snapshot::default();
        kept.apply(&configured());
        let again = reopened(tmp.path(), &kept);
        assert_eq!(seqs(&all_events(&again)), vec![1]);
        let (after, events) = commit_and_reopen(again, 1, web_on("b1", 2, &["failover"]));
        assert_eq!(after.revision, 2);
        assert_eq!(seqs(&events), vec![1, 2]);

        // NUL bytes in the complete last line (a crash while it was written, with the disk
        // writing out of order): deleting that line alone loses only that commit; the open
        // cuts its events.
        let (tmp, original) = damaged("wal.jsonl", |b| {
            let r = lines(b)[2].clone();
            b[r.start..r.end - 1].fill(0);
        });
        refused(tmp.path(), "wal.jsonl", &original, 3, &["NUL bytes"]);
        fs::write(
            tmp.path().join("wal.jsonl"),
            &original[..lines(&original)[1].end],
        )
        .unwrap();
        let again = EmbeddedDirectory::open(tmp.path()).unwrap();
        assert_eq!(again.current().revision, 2);
        assert_eq!(seqs(&all_events(&again)), vec![1, 2]);
    }

    /// The hand repair of a bad `events.jsonl` line in docs/OPERATIONS.md: deleting that line
    /// alone leaves a gap, which is refused; deleting it and every line before it loses that
    /// part of the history, and the numbering goes on. (Deleting it and every line after it
    /// would open once, but the next event is numbered after the deleted ones, and the open
    /// after that refuses the gap.)
    #[test]
    fn hand_repair_of_events_by_removing_the_head_opens() {
        let (tmp, committed) = three_commits();
        let p = tmp.path().join("events.jsonl");
        let original = fs::read(&p).unwrap();
        let ls = lines(&original);
        let mut bytes = original.clone();
        flip_a_value_byte(&mut bytes, ls[1].clone());
        fs::write(&p, &bytes).unwrap();
        refused(
            tmp.path(),
            "events.jsonl",
            &original,
            2,
            &["checksum mismatch"],
        );
        // `sed -i '2d' events.jsonl`
        fs::write(&p, [&bytes[ls[0].clone()], &bytes[ls[2].clone()]].concat()).unwrap();
        refused(
            tmp.path(),
            "events.jsonl",
            &original,
            2,
            &["event 2 is missing"],
        );
        // `sed -i '1,2d' events.jsonl`
        fs::write(&p, &bytes[ls[2].clone()]).unwrap();
        let again = reopened(tmp.path(), &committed);
        assert_eq!(seqs(&all_events(&again)), vec![3]);
        let (_, events) = commit_and_reopen(again, 3, events_of(&["drain"]));
        assert_eq!(seqs(&events), vec![3, 4]);
    }

    /// Removing the events file's tail (from a bad line on) opens, and the numbering goes on
    /// from the file's last event, so the next start does not find a gap.
    #[test]
    fn hand_repair_of_events_by_removing_the_tail_opens_and_stays_open() {
        let (tmp, committed) = three_commits();
        let p = tmp.path().join("events.jsonl");
        let original = fs::read(&p).unwrap();
        let ls = lines(&original);
        // `sed -i '2,$d' events.jsonl`
        fs::write(&p, &original[ls[0].clone()]).unwrap();
        let again = EmbeddedDirectory::open(tmp.path()).unwrap();
        let mut want = committed.clone();
        want.next_event = 2;
        assert_eq!(again.current(), want);
        assert_eq!(seqs(&all_events(&again)), vec![1]);
        let (_, events) = commit_and_reopen(again, 3, events_of(&["drain"]));
        assert_eq!(seqs(&events), vec![1, 2]);
    }

    /// A compaction sets the WAL aside and writes state.json in the background: commits made
    /// meanwhile go to the new WAL, and the store reopens with all of them.
    #[test]
    fn compaction_runs_in_the_background_and_commits_go_on() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        for i in 0..COMPACT_EVERY {
            commit(&dir, i, web_on("p1", i as u32, &[]));
        }
        // The commit that reached the count set the WAL aside; three more follow at once.
        for i in COMPACT_EVERY..COMPACT_EVERY + 3 {
            commit(&dir, i, web_on("b1", i as u32, &[]));
        }
        dir.wait_compaction();
        let (snap, _) =
            unseal::<Snapshot>(&fs::read(tmp.path().join("state.json")).unwrap(), true).unwrap();
        assert_eq!(snap.revision, COMPACT_EVERY);
        assert!(!tmp.path().join("wal.1.jsonl").exists());
        assert!(!tmp.path().join("wal.jsonl.new").exists());
        let wal = fs::read(tmp.path().join("wal.jsonl")).unwrap();
        assert_eq!(bodies(&wal).len(), 3);
        let want = dir.current();
        drop(dir);
        reopened(tmp.path(), &want);
    }

    /// Every point a crash can interrupt a compaction at opens with every commit: after the
    /// first rename (no wal.jsonl, a stray wal.jsonl.new), after both (the set-aside lines and
    /// the new WAL, no new state.json), after state.json (wal.1.jsonl not removed yet: removed at
    /// open). A set-aside WAL with a torn line is refused. When a compaction left wal.1.jsonl
    /// behind, the next one compacts on the commit path.
    #[test]
    fn an_interrupted_compaction_opens_with_every_commit() {
        let build = || {
            let tmp = tempfile::tempdir().unwrap();
            let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
            let mut at_two = None;
            for i in 0..5 {
                commit(
                    &dir,
                    i,
                    web_on(if i % 2 == 0 { "p1" } else { "b1" }, i as u32, &[]),
                );
                if i == 1 {
                    at_two = Some(dir.current());
                }
            }
            let want = dir.current();
            drop(dir);
            (tmp, at_two.unwrap(), want)
        };
        let split = |path: &Path, k: usize| {
            let wal = fs::read(path.join("wal.jsonl")).unwrap();
            let l = lines(&wal);
            fs::write(path.join("wal.1.jsonl"), &wal[..l[k - 1].end]).unwrap();
            fs::write(path.join("wal.jsonl"), &wal[l[k - 1].end..]).unwrap();
        };
        // After the first rename.
        let (tmp, _, want) = build();
        fs::rename(tmp.path().join("wal.jsonl"), tmp.path().join("wal.1.jsonl")).unwrap();
        fs::write(tmp.path().join("wal.jsonl.new"), b"").unwrap();
        drop(reopened(tmp.path(), &want));
        assert!(!tmp.path().join("wal.jsonl.new").exists());
        // After both renames: revisions 1–2 set aside, 3–5 in the new WAL.
        let (tmp, at_two, want) = build();
        split(tmp.path(), 2);
        drop(reopened(tmp.path(), &want));
        assert!(
            tmp.path().join("wal.1.jsonl").exists(),
            "its commits are not in state.json"
        );
        // After state.json (at revision 2): wal.1.jsonl is removed at open.
        fs::write(tmp.path().join("state.json"), seal(&at_two).unwrap()).unwrap();
        drop(reopened(tmp.path(), &want));
        assert!(!tmp.path().join("wal.1.jsonl").exists());
        // A torn line in the set-aside WAL.
        let (tmp, _, _) = build();
        split(tmp.path(), 2);
        let old = tmp.path().join("wal.1.jsonl");
        let mut bytes = fs::read(&old).unwrap();
        bytes.truncate(bytes.len() - 5);
        fs::write(&old, &bytes).unwrap();
        match EmbeddedDirectory::open(tmp.path()) {
            Err(DirectoryError::Corrupt { path, reason, .. }) => {
                assert_eq!(path, old);
                assert!(reason.contains("torn last line"), "{reason}");
            }
            Err(e) => panic!("refused for another reason: {e}"),
            Ok(_) => panic!("a torn set-aside WAL was accepted"),
        }
        // wal.1.jsonl left behind: the next compaction is done on the commit path, whole.
        let (tmp, _, _) = build();
        split(tmp.path(), 2);
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        let mut rev = 5;
        while rev < COMPACT_EVERY {
            rev = commit(&dir, rev, web_on("p1", rev as u32, &[]));
        }
        assert!(!tmp.path().join("wal.1.jsonl").exists());
        let (snap, _) =
            unseal::<Snapshot>(&fs::read(tmp.path().join("state.json")).unwrap(), true).unwrap();
        assert_eq!(snap.revision, COMPACT_EVERY);
        assert_eq!(fs::read(tmp.path().join("wal.jsonl")).unwrap().len(), 0);
        let want = dir.current();
        drop(dir);
        reopened(tmp.path(), &want);
    }

    #[test]
    fn compaction_writes_a_sealed_snapshot() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        for i in 0..COMPACT_EVERY {
            commit(&dir, i, web_on("p1", i as u32, &[]));
        }
        dir.wait_compaction();
        let bytes = fs::read(tmp.path().join("state.json")).unwrap();
        let (snap, sealed) = unseal::<Snapshot>(&bytes, true).unwrap();
        assert!(sealed);
        assert_eq!(snap, dir.current());
    }
}
