//! The directory: the record of every resource (its ordered servers, the server it is on now,
//! a generation, since when and why) and every server (health, drain, last change, evidence),
//! plus an append-only event log that explains every change.
//!
//! [`Directory`] is the interface; the controller reads a [`Snapshot`] at start and then
//! commits [`Update`]s with compare-and-swap on the [`Revision`] it decided from. That is the
//! shape an etcd backend needs (a transaction comparing the mod-revision, watches, leases), so
//! a replicated backend fits the same trait.
//!
//! Two backends: [`EmbeddedDirectory`] ([`embedded`]: files in one local directory, the default
//! for a single gateway) and [`etcd::EtcdDirectory`] (a shared directory on etcd, for several
//! gateways).

mod embedded;
pub mod etcd;

pub use embedded::EmbeddedDirectory;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::model::Health;

/// A directory version. Every commit increments it by one.
pub type Revision = u64;

/// Commits between two snapshots of the embedded store.
pub const COMPACT_EVERY: u64 = 256;
/// Events the directory keeps at least (both backends): the etcd layout trims those beyond the
/// newest this many at each checkpoint; the embedded one rotates its log at this many and keeps
/// one generation before it (between this and twice as many on disk).
pub const EVENTS_KEPT: u64 = 100_000;
/// Events kept in memory for `ftn events` (the file keeps them all).
pub const EVENTS_IN_MEMORY: usize = 10_000;

/// Milliseconds since the Unix epoch (the directory's clock).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
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
    /// Persistent maps (`imbl`): a clone shares every node, so the engine hands the API an O(1)
    /// copy to build a status from, and a commit copies only the nodes it changes.
    pub servers: imbl::OrdMap<String, ServerRecord>,
    /// Shared with the updates that set them (and the engine's snapshot): a record is
    /// written once and never copied.
    pub resources: imbl::OrdMap<String, Arc<ResourceRecord>>,
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
    pub set_resources: Vec<Arc<ResourceRecord>>,
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

/// One commit as a log records it (the embedded WAL line, an etcd `P/log/<revision>` key):
/// the records it set or removed, and how many events it numbered (the events themselves are
/// in the event log). Borrows the update; read back as [`LogEntry`].
#[derive(Serialize)]
pub(crate) struct LogEntryRef<'a> {
    pub(crate) revision: Revision,
    pub(crate) update: RecordsRef<'a>,
    #[serde(skip_serializing_if = "is_zero")]
    pub(crate) events: u64,
}

/// An [`Update`]'s records, without its events.
#[derive(Serialize)]
pub(crate) struct RecordsRef<'a> {
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    set_servers: &'a [ServerRecord],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    remove_servers: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    set_resources: &'a [Arc<ResourceRecord>],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    remove_resources: &'a [String],
}

impl<'a> LogEntryRef<'a> {
    pub(crate) fn new(revision: Revision, u: &'a Update) -> Self {
        LogEntryRef {
            revision,
            update: RecordsRef {
                set_servers: &u.set_servers,
                remove_servers: &u.remove_servers,
                set_resources: &u.set_resources,
                remove_resources: &u.remove_resources,
            },
            events: u.events.len() as u64,
        }
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A log entry as read. Embedded WAL lines written by earlier versions carry the events in
/// the update instead of their count; both are read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    pub revision: Revision,
    pub update: Update,
    #[serde(default)]
    pub events: u64,
}

impl LogEntry {
    /// Applies the entry's records to `snapshot`, and numbers its events (revision + 1).
    pub fn apply_to(&self, snapshot: &mut Snapshot) {
        snapshot.advance(&self.update);
        if self.events > 0 {
            snapshot.next_event = snapshot.next_event.max(1) + self.events;
        }
    }
}

impl Snapshot {
    /// Applies an update in memory: records, revision + 1, event numbers (the log holds the
    /// events themselves; they are returned).
    pub fn apply(&mut self, update: &Update) -> Vec<Event> {
        let events = self.number_events(&update.events, self.revision + 1, now_ms());
        self.advance(update);
        events
    }

    /// [`Snapshot::apply`] without building the events (their numbers are taken all the
    /// same).
    pub fn advance(&mut self, update: &Update) {
        for s in &update.set_servers {
            self.next_server_id = self.next_server_id.max(s.id + 1);
            self.servers.insert(s.name.clone(), s.clone());
        }
        for s in &update.remove_servers {
            self.servers.remove(s);
        }
        for r in &update.set_resources {
            self.next_resource_id = self.next_resource_id.max(r.id + 1);
            match self.resources.get_mut(&r.name) {
                Some(slot) => *slot = r.clone(),
                None => {
                    self.resources.insert(r.name.clone(), r.clone());
                }
            }
        }
        for r in &update.remove_resources {
            self.resources.remove(r);
        }
        self.revision += 1;
        if !update.events.is_empty() {
            self.next_event = self.next_event.max(1) + update.events.len() as u64;
        }
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
    /// A record that a crash cannot have left (see the module docs): the store is not opened,
    /// and nothing on disk was changed.
    #[error("directory store {path}: corrupt record at line {line} (byte offset {offset}): {reason}. Refusing to open the directory; nothing on disk was changed. Keep a copy of the directory, then see docs/OPERATIONS.md, \"Hardening: recovering a corrupt store\"")]
    Corrupt {
        path: PathBuf,
        /// Where the line starts, in bytes from the start of the file.
        offset: u64,
        /// From 1.
        line: u64,
        reason: String,
    },
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
    async fn commit(&self, expected: Revision, update: &Update)
        -> Result<Revision, DirectoryError>;
    /// Events with `seq > after`, oldest first, at most `limit`.
    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, DirectoryError>;
    /// Latest revision; changes whenever a commit lands (ours or, for a shared backend, another
    /// gateway's).
    fn watch(&self) -> tokio::sync::watch::Receiver<Revision>;
    /// "embedded", "etcd", ...
    fn backend(&self) -> &'static str;
}
