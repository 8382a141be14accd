//! Layout 2 (see the module docs): reading the directory (the checkpoint, then the log after
//! it), the leader's checkpoints and trimming, and the migration from layout 1.

use super::blob::{self, Blob};
use super::*;

/// The layout this version reads and writes.
pub const LAYOUT: u32 = 2;
/// Commits between two checkpoints; the log keeps at most about this many entries.
pub const CHECKPOINT_EVERY: u64 = 256;
/// Events kept in etcd (about: the events of a commit are trimmed together); older ones are
/// trimmed with each checkpoint.
pub use crate::directory::EVENTS_KEPT;
/// Log entries read per request when the directory is read.
const LOG_PAGE: i64 = 64;

/// `P/head`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(super) struct Head {
    pub(super) layout: u32,
    pub(super) revision: Revision,
}

impl Head {
    pub(super) fn value(revision: Revision) -> Vec<u8> {
        serde_json::to_vec(&Head {
            layout: LAYOUT,
            revision,
        })
        .unwrap_or_default()
    }

    pub(super) fn parse(keys: &Keys, value: &[u8]) -> Result<Head, DirectoryError> {
        let h: Head = serde_json::from_slice(value).map_err(|e| {
            DirectoryError::Etcd(format!("etcd key {} is not an ftn head: {e}", keys.head()))
        })?;
        if h.layout != LAYOUT {
            return Err(DirectoryError::Etcd(format!(
                "etcd key {} says the directory is in layout {}; this ftn reads layout {LAYOUT} only (a newer ftn wrote it: upgrade this gateway)",
                keys.head(),
                h.layout
            )));
        }
        Ok(h)
    }
}

/// `P/checkpoint`: which checkpoint is current (the state itself is in `P/checkpoints/<rev>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct CheckpointRef {
    pub(super) revision: Revision,
}

/// Where a checkpoint is, as this gateway last saw it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Checkpoint {
    pub(super) revision: Revision,
    /// Mod-revision of `P/checkpoint` (0: none yet); a new checkpoint compares it.
    pub(super) mod_rev: i64,
}

impl Checkpoint {
    pub(super) fn of(keys: &Keys, kv: &etcd_client::KeyValue) -> Result<Self, DirectoryError> {
        let r: CheckpointRef = serde_json::from_slice(kv.value()).map_err(|e| {
            DirectoryError::Etcd(format!(
                "etcd key {} is not an ftn checkpoint: {e}",
                keys.checkpoint()
            ))
        })?;
        Ok(Checkpoint {
            revision: r.revision,
            mod_rev: kv.mod_revision(),
        })
    }
}

/// What [`read_directory`] found.
pub(super) struct Read {
    pub(super) snapshot: Snapshot,
    /// Mod-revision of `P/head` (0: no commit yet); the next commit compares it.
    pub(super) head_mod_rev: i64,
    pub(super) checkpoint: Checkpoint,
}

fn get_at(key: String, at: i64) -> TxnOp {
    TxnOp::get(key, (at > 0).then(|| GetOptions::new().with_revision(at)))
}

/// Reads the whole directory at etcd revision `at` (0: the latest): the checkpoint, then every
/// log entry after it, in pages. A directory in layout 1 is migrated first ([`migrate`]).
pub(super) async fn read_directory(
    pool: &Pool,
    keys: &Keys,
    at: i64,
) -> Result<Read, DirectoryError> {
    let mut migrated = false;
    loop {
        let txn = Txn::new().and_then([
            get_at(keys.head(), at),
            get_at(keys.checkpoint(), at),
            get_at(keys.state(), at),
            get_at(keys.leader(), at),
        ]);
        let resp = pool
            .call(|c| {
                let txn = txn.clone();
                async move { kv_big(&c).txn(txn).await }
            })
            .await
            .map_err(|e| etcd_err("reading the directory", e))?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let at = if at > 0 { at } else { rev };
        let gets = gets(&resp);
        let first = |i: usize| gets.get(i).and_then(|g| g.kvs().first().cloned());
        let (head, checkpoint, state, leader) = (first(0), first(1), first(2), first(3));
        let Some(head) = head else {
            match state {
                Some(state) if !migrated => {
                    migrate(pool, keys, &state, leader.as_ref()).await?;
                    migrated = true;
                    continue;
                }
                Some(_) => {
                    return Err(DirectoryError::Etcd(format!(
                        "etcd key {} holds a migrated directory but {} is missing: the keys under {} were changed by hand; restore them from a backup",
                        keys.state(),
                        keys.head(),
                        keys.all()
                    )))
                }
                None => {
                    return Ok(Read {
                        snapshot: Snapshot::default(),
                        head_mod_rev: 0,
                        checkpoint: Checkpoint::default(),
                    })
                }
            }
        };
        let h = Head::parse(keys, head.value())?;
        let cp = match &checkpoint {
            Some(kv) => Checkpoint::of(keys, kv)?,
            None => Checkpoint::default(),
        };
        let mut snapshot = if cp.mod_rev == 0 {
            Snapshot::default()
        } else {
            read_checkpoint(pool, keys, cp.revision, at).await?
        };
        if snapshot.revision > h.revision {
            return Err(DirectoryError::Etcd(format!(
                "the checkpoint is at revision {} but {} at {}: the keys under {} were changed by hand",
                snapshot.revision,
                keys.head(),
                h.revision,
                keys.all()
            )));
        }
        replay(pool, keys, &mut snapshot, h.revision, at).await?;
        return Ok(Read {
            snapshot,
            head_mod_rev: head.mod_revision(),
            checkpoint: cp,
        });
    }
}

/// The checkpoint's state.
async fn read_checkpoint(
    pool: &Pool,
    keys: &Keys,
    revision: Revision,
    at: i64,
) -> Result<Snapshot, DirectoryError> {
    let key = keys.checkpoint_state(revision);
    let resp = pool
        .call(|c| {
            let key = key.clone();
            async move {
                kv_big(&c)
                    .get(key, (at > 0).then(|| GetOptions::new().with_revision(at)))
                    .await
            }
        })
        .await
        .map_err(|e| etcd_err("reading the checkpoint", e))?;
    let kv = resp.kvs().first().ok_or_else(|| {
        DirectoryError::Etcd(format!(
            "{} names revision {revision} but {key} is missing",
            keys.checkpoint()
        ))
    })?;
    let s: Snapshot = blob::read(pool, kv.value(), at, &key).await?;
    if s.revision != revision {
        return Err(DirectoryError::Etcd(format!(
            "{key} holds revision {}, not {revision}",
            s.revision
        )));
    }
    Ok(s)
}

/// Applies the log entries after `snapshot`'s revision up to `to`.
async fn replay(
    pool: &Pool,
    keys: &Keys,
    snapshot: &mut Snapshot,
    to: Revision,
    at: i64,
) -> Result<(), DirectoryError> {
    while snapshot.revision < to {
        let next = snapshot.revision + 1;
        let opts = GetOptions::new()
            .with_range(keys.log(to + 1))
            .with_limit(LOG_PAGE)
            .with_revision(at);
        let resp = pool
            .call(|c| {
                let (from, opts) = (keys.log(next), opts.clone());
                async move { kv_big(&c).get(from, Some(opts)).await }
            })
            .await
            .map_err(|e| etcd_err("reading the directory's log", e))?;
        if resp.kvs().is_empty() {
            return Err(missing(keys, next, to));
        }
        for kv in resp.kvs() {
            let key = kv.key_str().unwrap_or("?").to_owned();
            let entry: LogEntry = blob::read(pool, kv.value(), at, &key).await?;
            if entry.revision != snapshot.revision + 1 {
                return Err(missing(keys, snapshot.revision + 1, to));
            }
            entry.apply_to(snapshot);
        }
    }
    Ok(())
}

fn missing(keys: &Keys, rev: Revision, head: Revision) -> DirectoryError {
    DirectoryError::Etcd(format!(
        "the directory's log misses revision {rev} ({} is at {head}): the log was trimmed while it was read (try again) or the keys under {} were changed by hand",
        keys.head(),
        keys.all()
    ))
}

/// What layout 1's `P/state` holds once migrated: earlier versions refuse to read it (it is
/// not a state) instead of starting a directory of their own beside this one.
const MIGRATED: &str = r#"{"migrated_to_layout":2,"note":"this directory is in ftn's layout 2 (P/head, P/log, P/checkpoint): a gateway running an earlier ftn must be upgraded"}"#;

/// Moves a layout-1 directory (`state`, the `P/state` key) to layout 2: its state becomes the
/// first checkpoint and the head, in one transaction that only succeeds while no gateway leads
/// and nothing changed; `P/state` then holds [`MIGRATED`]. Events stay where they are (their
/// keys and plain JSON values are read as before).
async fn migrate(
    pool: &Pool,
    keys: &Keys,
    state: &etcd_client::KeyValue,
    leader: Option<&etcd_client::KeyValue>,
) -> Result<(), DirectoryError> {
    if state.value() == MIGRATED.as_bytes() {
        return Ok(()); // migrated meanwhile; the caller reads again
    }
    let old: Snapshot = serde_json::from_slice(state.value()).map_err(|e| {
        DirectoryError::Etcd(format!(
            "etcd key {} is not an ftn state: {e}",
            keys.state()
        ))
    })?;
    if let Some(l) = leader {
        return Err(DirectoryError::Etcd(format!(
            "the shared directory under {} is in layout 1 (the whole directory in {}, written by ftn before layout 2) and gateway {:?} leads it: stop every gateway that runs the earlier ftn, then start this one; it migrates the directory (docs/OPERATIONS.md, \"Upgrading the shared directory\")",
            keys.all(),
            keys.state(),
            String::from_utf8_lossy(l.value())
        )));
    }
    let rev = old.revision;
    let name = format!("checkpoint-{rev:020}-m{}", crate::directory::now_ms());
    let blob = blob::encode(&old, &keys.chunks(&name))?;
    blob::put_chunks(pool, keys, None, &blob.chunks).await?;
    let txn = Txn::new()
        .when([
            Compare::create_revision(keys.head(), CompareOp::Equal, 0),
            Compare::mod_revision(keys.state(), CompareOp::Equal, state.mod_revision()),
            Compare::create_revision(keys.leader(), CompareOp::Equal, 0),
        ])
        .and_then([
            TxnOp::put(keys.checkpoint_state(rev), blob.value.clone(), None),
            TxnOp::put(
                keys.checkpoint(),
                serde_json::to_vec(&CheckpointRef { revision: rev }).unwrap_or_default(),
                None,
            ),
            TxnOp::put(keys.head(), Head::value(rev), None),
            TxnOp::put(keys.state(), MIGRATED, None),
        ]);
    let resp = pool
        .call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| etcd_err("migrating the directory to layout 2", e))?;
    if resp.succeeded() {
        tracing::warn!(
            revision = rev,
            resources = old.resources.len(),
            "etcd: migrated the shared directory from layout 1 ({}) to layout 2 ({}, {}); gateways running an earlier ftn now refuse to start on it",
            keys.state(),
            keys.head(),
            keys.checkpoint()
        );
    } else {
        // Another gateway migrated first, or a gateway of the earlier version came back:
        // the caller reads again and sees which.
        blob::drop_chunks(pool, &blob).await;
    }
    Ok(())
}

/// The leader's checkpoint of `snapshot` (its state at some revision), in the background:
/// written under `P/checkpoints/<revision>`, then named by `P/checkpoint` in a transaction
/// that is fenced, compares the checkpoint it replaces (`previous`), and trims what the new
/// one makes unnecessary: log entries at and below its revision, earlier checkpoints, and
/// events beyond [`EVENTS_KEPT`].
pub(super) async fn write_checkpoint(
    pool: &Pool,
    keys: &Keys,
    fence: i64,
    snapshot: Snapshot,
    previous: Checkpoint,
) -> Result<Checkpoint, DirectoryError> {
    let rev = snapshot.revision;
    let next_event = snapshot.next_event;
    let base = keys.chunks(&format!("checkpoint-{rev:020}-{fence}"));
    let blob: Blob = tokio::task::spawn_blocking(move || blob::encode(&snapshot, &base))
        .await
        .map_err(|e| DirectoryError::Etcd(format!("encoding the checkpoint: {e}")))??;
    blob::put_chunks(pool, keys, Some(fence), &blob.chunks).await?;
    let range = |from: String, to: String| {
        TxnOp::delete(from, Some(etcd_client::DeleteOptions::new().with_range(to)))
    };
    let mut ops = vec![
        TxnOp::put(keys.checkpoint_state(rev), blob.value.clone(), None),
        TxnOp::put(
            keys.checkpoint(),
            serde_json::to_vec(&CheckpointRef { revision: rev }).unwrap_or_default(),
            None,
        ),
        range(keys.log_prefix(), keys.log(rev + 1)),
        range(
            keys.chunk_names("log-"),
            keys.chunk_names(&format!("log-{:020}", rev + 1)),
        ),
        range(keys.checkpoint_state(0), keys.checkpoint_state(rev)),
        range(
            keys.chunk_names("checkpoint-"),
            keys.chunk_names(&format!("checkpoint-{rev:020}")),
        ),
    ];
    if let Some(first) = events_cut(pool, keys, next_event).await? {
        ops.push(range(keys.events_prefix(), keys.events(first)));
        ops.push(range(
            keys.chunk_names("events-"),
            keys.chunk_names(&format!("events-{first:020}")),
        ));
    }
    let txn = Txn::new()
        .when([
            Compare::create_revision(keys.leader(), CompareOp::Equal, fence),
            Compare::mod_revision(keys.checkpoint(), CompareOp::Equal, previous.mod_rev),
        ])
        .and_then(ops);
    let resp = pool
        .call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| etcd_err("writing the checkpoint", e))?;
    if !resp.succeeded() {
        blob::drop_chunks(pool, &blob).await;
        return Err(DirectoryError::Etcd(
            "the checkpoint was refused: the leadership ended, or another checkpoint was written meanwhile".into(),
        ));
    }
    Ok(Checkpoint {
        revision: rev,
        mod_rev: resp.header().map_or(0, |h| h.revision()),
    })
}

/// Where the events kept begin: the first sequence number of the commit that holds the
/// [`EVENTS_KEPT`]th newest event (a commit's events stay or go together, so at least
/// [`EVENTS_KEPT`] stay). None when nothing is to go.
async fn events_cut(
    pool: &Pool,
    keys: &Keys,
    next_event: u64,
) -> Result<Option<u64>, DirectoryError> {
    let cut = next_event.saturating_sub(EVENTS_KEPT);
    if cut <= 1 {
        return Ok(None);
    }
    let opts = GetOptions::new()
        .with_range(keys.events(cut + 1))
        .with_sort(SortTarget::Key, SortOrder::Descend)
        .with_limit(1)
        .with_keys_only();
    let resp = pool
        .call(|mut c| {
            let (from, opts) = (keys.events_prefix(), opts.clone());
            async move { c.get(from, Some(opts)).await }
        })
        .await
        .map_err(|e| etcd_err("finding the events to trim", e))?;
    Ok(resp
        .kvs()
        .first()
        .and_then(|kv| {
            kv.key_str()
                .ok()?
                .strip_prefix(&keys.events_prefix())?
                .parse()
                .ok()
        })
        .filter(|first| *first > 1))
}
