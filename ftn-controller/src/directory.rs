//! The directory: the record of every resource (its ordered servers, the server it is on now,
//! a generation, since when and why) and every server (health, drain, last change, evidence),
//! plus an append-only event log that explains every change.
//!
//! [`Directory`] is the interface; the controller reads a [`Snapshot`] at start and then
//! commits [`Update`]s with compare-and-swap on the [`Revision`] it decided from. That is the
//! shape an etcd backend needs (a transaction comparing the mod-revision, watches, leases), so
//! a replicated backend fits the same trait.
//!
//! [`EmbeddedDirectory`] is the default for a single gateway: a durable local store in one
//! directory:
//! - `state.json`: a full snapshot, replaced atomically (write a temporary file, fsync it,
//!   rename over, fsync the directory);
//! - `wal.jsonl`: one line per commit since that snapshot (`{"revision":N,"update":{..}}`),
//!   appended and fdatasync'ed before the commit returns; folded into a new snapshot every
//!   [`COMPACT_EVERY`] commits;
//! - `events.jsonl`: the event log, append-only, fdatasync'ed with the commit, never rewritten
//!   except to cut a torn last line.
//!
//! After a crash (even `kill -9` in the middle of a commit) opening the directory yields
//! exactly the last commit that returned: a torn WAL line is cut, and events that belong to a
//! revision that never committed are cut too.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// A directory version. Every commit increments it by one.
pub type Revision = u64;

/// Commits between two snapshots of the embedded store.
pub const COMPACT_EVERY: u64 = 256;
/// Events kept in memory for `ftn events` (the file keeps them all).
pub const EVENTS_IN_MEMORY: usize = 10_000;

/// Milliseconds since the Unix epoch (the directory's clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Health of a server as the directory records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Down,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    pub name: String,
    /// Index in the dataplane's server table; stable for the life of the server.
    pub id: u32,
    pub address: IpAddr,
    pub health: Health,
    /// Set by `ftn drain`: the unix-ms time the drain started.
    pub drained_at_ms: Option<u64>,
    /// What the dataplane holds: up = its established flows stay on it. False when the
    /// server is down, or drained for longer than the drain time.
    pub dataplane_up: bool,
    /// Bumped on every change the dataplane sees.
    pub generation: u32,
    /// Last change of health or drain.
    pub since_ms: u64,
    /// Why it is in its current state ("2 consecutive tcp:80 checks failed: connection refused").
    pub evidence: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRecord {
    pub name: String,
    /// Index of the resource's counters in the dataplane; stable for the life of the resource.
    pub id: u32,
    /// Ordered: primary first.
    pub servers: Vec<String>,
    /// Where new flows go; None when no server is live.
    pub current: Option<String>,
    /// Set by `ftn switchover`: the resource stays on this server until it fails or the
    /// operator switches again.
    pub pinned: Option<String>,
    /// Bumped on every change of `current`.
    pub generation: u32,
    pub since_ms: u64,
    pub reason: String,
}

/// One line of the event log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Position in the log, from 1.
    pub seq: u64,
    /// The revision the event belongs to.
    pub revision: Revision,
    pub at_ms: u64,
    /// failover | failback | switchover | no-server | server-down | server-up | drain |
    /// undrain | config | start
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resource: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub server: Option<String>,
    pub message: String,
}

/// An event before the directory numbers it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventDraft {
    pub kind: String,
    pub resource: Option<String>,
    pub server: Option<String>,
    pub message: String,
}

/// Everything the directory holds, at one revision.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub revision: Revision,
    pub servers: BTreeMap<String, ServerRecord>,
    pub resources: BTreeMap<String, ResourceRecord>,
    /// Sequence number the next event gets.
    pub next_event: u64,
    /// Ids are handed out in increasing order (wrapping at the dataplane's capacity) so that
    /// an id freed by a removed server is not reused while flows may still name it.
    #[serde(default)]
    pub next_server_id: u32,
    #[serde(default)]
    pub next_resource_id: u32,
}

/// One atomic change of the directory.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Update {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_servers: Vec<ServerRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_servers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_resources: Vec<ResourceRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove_resources: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventDraft>,
}

impl Update {
    pub fn is_empty(&self) -> bool {
        self.set_servers.is_empty()
            && self.remove_servers.is_empty()
            && self.set_resources.is_empty()
            && self.remove_resources.is_empty()
            && self.events.is_empty()
    }
}

impl Snapshot {
    /// Applies an update in memory: records, revision + 1, event numbers (the log holds the
    /// events themselves; they are returned).
    pub fn apply(&mut self, update: &Update) -> Vec<Event> {
        for s in &update.set_servers {
            self.next_server_id = self.next_server_id.max(s.id + 1);
            self.servers.insert(s.name.clone(), s.clone());
        }
        for s in &update.remove_servers {
            self.servers.remove(s);
        }
        for r in &update.set_resources {
            self.next_resource_id = self.next_resource_id.max(r.id + 1);
            self.resources.insert(r.name.clone(), r.clone());
        }
        for r in &update.remove_resources {
            self.resources.remove(r);
        }
        self.revision += 1;
        let events = self.number_events(&update.events, self.revision, now_ms());
        self.next_event = events.last().map_or(self.next_event, |e| e.seq + 1);
        events
    }

    /// The events `drafts` become at `revision` (numbered from `next_event`), without changing
    /// anything.
    pub fn number_events(
        &self,
        drafts: &[EventDraft],
        revision: Revision,
        at_ms: u64,
    ) -> Vec<Event> {
        let first = self.next_event.max(1);
        drafts
            .iter()
            .enumerate()
            .map(|(i, d)| Event {
                seq: first + i as u64,
                revision,
                at_ms,
                kind: d.kind.clone(),
                resource: d.resource.clone(),
                server: d.server.clone(),
                message: d.message.clone(),
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("the directory moved on: the change was decided at revision {expected} but it is at {actual}")]
    Conflict {
        expected: Revision,
        actual: Revision,
    },
    #[error("etcd: {0}")]
    Etcd(String),
    #[error("this gateway is not the leader of the shared directory: only the leader writes")]
    NotLeader,
    #[error("refused by the fence: this gateway's leadership (leader key created at etcd revision {fence}) has ended; the leader is now {leader}")]
    Fenced { fence: i64, leader: String },
    #[error("directory store {path}: {detail}")]
    Store { path: PathBuf, detail: String },
    #[error("directory store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The directory interface (see the module docs).
#[async_trait::async_trait]
pub trait Directory: Send + Sync {
    /// The whole record at its latest revision.
    async fn snapshot(&self) -> Result<Snapshot, DirectoryError>;
    /// Applies `update` if the directory is still at `expected`; returns the new revision.
    /// Nothing is applied on any error.
    async fn commit(&self, expected: Revision, update: Update) -> Result<Revision, DirectoryError>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, DirectoryError>;
    /// Latest revision; changes whenever a commit lands (ours or, for a shared backend, another
    /// gateway's).
    fn watch(&self) -> tokio::sync::watch::Receiver<Revision>;
    /// "embedded", "etcd", ...
    fn backend(&self) -> &'static str;
}

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
    recent: VecDeque<Event>,
    /// Set when a failed commit could not be undone on disk: no further commit is accepted
    /// (the files' state is unknown) until the directory is opened again.
    poisoned: Option<String>,
}

/// [`WalLine`] as written (borrowing the update).
#[derive(Serialize)]
struct WalLineRef<'a> {
    revision: Revision,
    update: &'a Update,
}

#[derive(Serialize, Deserialize)]
struct WalLine {
    revision: Revision,
    update: Update,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DirectoryError + '_ {
    move |source| DirectoryError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Reads a JSON-lines file: the complete, parseable lines for which `keep` holds, each with
/// its length in bytes, stopping at the first that is not (a torn or uncommitted tail).
fn read_lines<T: for<'de> Deserialize<'de>>(
    path: &Path,
    keep: impl Fn(&T) -> bool,
) -> Result<Vec<(T, u64)>, DirectoryError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut reader = BufReader::new(file);
    let mut out = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(io_err(path))?;
        if n == 0 || !line.ends_with('\n') {
            break;
        }
        match serde_json::from_str::<T>(line.trim_end()) {
            Ok(v) if keep(&v) => out.push((v, n as u64)),
            _ => break,
        }
    }
    Ok(out)
}

fn open_append(path: &Path, cut_at: u64) -> Result<File, DirectoryError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    if f.metadata().map_err(io_err(path))?.len() != cut_at {
        tracing::warn!(path = %path.display(), keep_bytes = cut_at, "cutting a torn or uncommitted tail");
        f.set_len(cut_at).map_err(io_err(path))?;
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(f)
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
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    Ok(())
}

impl EmbeddedDirectory {
    /// Opens (or creates) the store in `dir`, recovering from a crash as described above.
    pub fn open(dir: &Path) -> Result<Self, DirectoryError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let state_path = dir.join("state.json");
        let mut snapshot = match fs::read(&state_path) {
            Ok(bytes) => {
                serde_json::from_slice::<Snapshot>(&bytes).map_err(|e| DirectoryError::Store {
                    path: state_path.clone(),
                    detail: format!("unreadable snapshot ({e}); refusing to start with a guessed directory — restore it from a backup, or move the whole directory away to start empty (moving only state.json would replay the log onto nothing)"),
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Snapshot::default(),
            Err(e) => return Err(io_err(&state_path)(e)),
        };
        // Replay the commits made after the snapshot, in order, stopping at a torn line.
        let wal_path = dir.join("wal.jsonl");
        let base = snapshot.revision;
        let mut wal_lines = 0;
        let mut wal_keep = 0u64;
        let mut expected = base + 1;
        for (l, len) in read_lines::<WalLine>(&wal_path, |_| true)? {
            // Lines at or below the snapshot's revision are folded in already (a crash between
            // the snapshot's rename and the WAL's truncation).
            if l.revision > base {
                if l.revision != expected {
                    break;
                }
                snapshot.apply(&l.update);
                expected += 1;
                wal_lines += 1;
            }
            wal_keep += len;
        }
        let wal = open_append(&wal_path, wal_keep)?;
        // Events: keep those of committed revisions only.
        let events_path = dir.join("events.jsonl");
        let rev = snapshot.revision;
        let events = read_lines::<Event>(&events_path, |e| e.revision <= rev)?;
        let events_file = open_append(&events_path, events.iter().map(|(_, n)| n).sum())?;
        let events: Vec<Event> = events.into_iter().map(|(e, _)| e).collect();
        if let Some(last) = events.last() {
            snapshot.next_event = snapshot.next_event.max(last.seq + 1);
        }
        let recent: VecDeque<Event> = events
            .into_iter()
            .rev()
            .take(EVENTS_IN_MEMORY)
            .rev()
            .collect();
        let (revision_tx, _) = tokio::sync::watch::channel(snapshot.revision);
        Ok(EmbeddedDirectory {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner {
                snapshot,
                wal,
                wal_lines,
                events: events_file,
                recent,
                poisoned: None,
            }),
            revision_tx,
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn commit_sync(&self, expected: Revision, update: Update) -> Result<Revision, DirectoryError> {
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
            serde_json::to_writer(&mut buf, e).map_err(|e| DirectoryError::Store {
                path: events_path.clone(),
                detail: e.to_string(),
            })?;
            buf.push(b'\n');
        }
        let mut line = serde_json::to_vec(&WalLineRef {
            revision,
            update: &update,
        })
        .map_err(|e| DirectoryError::Store {
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
        inner.snapshot.apply(&update);
        debug_assert_eq!(inner.snapshot.revision, revision);
        for e in events {
            if inner.recent.len() == EVENTS_IN_MEMORY {
                inner.recent.pop_front();
            }
            inner.recent.push_back(e);
        }
        if inner.wal_lines >= COMPACT_EVERY {
            // The commit is durable already; a failed compaction only leaves a longer WAL.
            if let Err(e) = self.compact(&mut inner) {
                tracing::warn!(error = %e, "directory compaction failed; the WAL keeps growing");
            }
        }
        drop(inner);
        self.revision_tx.send_replace(revision);
        Ok(revision)
    }

    fn compact(&self, inner: &mut Inner) -> Result<(), DirectoryError> {
        let bytes = serde_json::to_vec(&inner.snapshot).map_err(|e| DirectoryError::Store {
            path: self.dir.join("state.json"),
            detail: e.to_string(),
        })?;
        write_atomic(&self.dir, "state.json", &bytes)?;
        let p = self.dir.join("wal.jsonl");
        inner.wal.set_len(0).map_err(io_err(&p))?;
        inner.wal.sync_all().map_err(io_err(&p))?;
        inner.wal_lines = 0;
        Ok(())
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

    async fn commit(&self, expected: Revision, update: Update) -> Result<Revision, DirectoryError> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap()
    }

    #[test]
    fn commits_survive_reopen_and_compaction() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        rt().block_on(async {
            let r = dir
                .commit(
                    0,
                    Update {
                        set_servers: vec![server("p1", 0, Health::Up), server("b1", 1, Health::Up)],
                        set_resources: vec![resource("web", "p1", 1)],
                        events: vec![event("config")],
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            assert_eq!(r, 1);
            // Enough commits to force a compaction in the middle.
            for i in 0..(COMPACT_EVERY + 10) {
                let cur = if i % 2 == 0 { "b1" } else { "p1" };
                dir.commit(
                    r + i,
                    Update {
                        set_resources: vec![resource("web", cur, 2 + i as u32)],
                        events: vec![event("failover")],
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
            }
        });
        let before = dir.current();
        assert_eq!(before.revision, COMPACT_EVERY + 11);
        drop(dir);
        let again = EmbeddedDirectory::open(tmp.path()).unwrap();
        assert_eq!(again.current(), before);
        let events = rt().block_on(again.events(0, usize::MAX)).unwrap();
        assert_eq!(events.len() as u64, COMPACT_EVERY + 11);
        assert_eq!(events[0].kind, "config");
        assert_eq!(events.last().unwrap().seq, COMPACT_EVERY + 11);
        assert!(events.windows(2).all(|w| w[1].seq == w[0].seq + 1));
    }

    #[test]
    fn stale_revision_is_refused_and_nothing_applies() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        rt().block_on(async {
            dir.commit(
                0,
                Update {
                    set_resources: vec![resource("web", "p1", 1)],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
            let err = dir
                .commit(
                    0,
                    Update {
                        set_resources: vec![resource("web", "b1", 2)],
                        events: vec![event("failover")],
                        ..Default::default()
                    },
                )
                .await
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
            assert_eq!(dir.events(0, 10).await.unwrap().len(), 0);
        });
        assert_eq!(
            dir.current().resources["web"].current.as_deref(),
            Some("p1")
        );
    }

    #[test]
    fn torn_tails_are_cut_at_open() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = EmbeddedDirectory::open(tmp.path()).unwrap();
        rt().block_on(async {
            dir.commit(
                0,
                Update {
                    set_resources: vec![resource("web", "p1", 1)],
                    events: vec![event("config")],
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        });
        let committed = dir.current();
        drop(dir);
        // A crash in the middle of the next commit: its events landed, its WAL line is torn.
        let mut ev = OpenOptions::new()
            .append(true)
            .open(tmp.path().join("events.jsonl"))
            .unwrap();
        let orphan = Event {
            seq: 2,
            revision: 2,
            at_ms: 5,
            kind: "failover".into(),
            resource: Some("web".into()),
            server: None,
            message: "never committed".into(),
        };
        writeln!(ev, "{}", serde_json::to_string(&orphan).unwrap()).unwrap();
        let mut wal = OpenOptions::new()
            .append(true)
            .open(tmp.path().join("wal.jsonl"))
            .unwrap();
        wal.write_all(b"{\"revision\":2,\"update\":{\"set_reso")
            .unwrap();
        drop((ev, wal));

        let again = EmbeddedDirectory::open(tmp.path()).unwrap();
        assert_eq!(again.current(), committed);
        let events = rt().block_on(again.events(0, 10)).unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        // The next commit continues cleanly after the cut.
        rt().block_on(async {
            again
                .commit(
                    1,
                    Update {
                        set_resources: vec![resource("web", "b1", 2)],
                        events: vec![event("failover")],
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
        });
        drop(again);
        let third = EmbeddedDirectory::open(tmp.path()).unwrap();
        assert_eq!(third.current().revision, 2);
        assert_eq!(
            third.current().resources["web"].current.as_deref(),
            Some("b1")
        );
        let events = rt().block_on(third.events(0, 10)).unwrap();
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(events[1].message, "failover happened");
    }

    #[test]
    fn corrupt_snapshot_is_refused_loudly() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("state.json"), b"{not json").unwrap();
        let err = EmbeddedDirectory::open(tmp.path())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("state.json") && err.contains("unreadable snapshot"),
            "{err}"
        );
    }
}
