//! [`EtcdDirectory`]: the [`Directory`] on etcd (the leader's fenced commits, the followers'
//! reads).

use super::blob;
use super::layout::{read_directory, write_checkpoint, Checkpoint, Head, Read};
use super::*;

// ---------------------------------------------------------------------------------------------
// The directory.

pub(super) struct Known {
    pub(super) snapshot: Snapshot,
    /// etcd mod-revision of `P/head` for `snapshot` (0: no commit yet).
    pub(super) head_mod_rev: i64,
    pub(super) checkpoint: Checkpoint,
}

/// What a log entry seen in the watch meant ([`EtcdDirectory::follow_log`]).
pub enum Followed {
    /// Known already (this gateway's own commit, or older).
    Nothing,
    /// The next revision, applied to the known state.
    Entry(Box<LogEntry>),
    /// Not the next revision, or unreadable: the whole directory was read again.
    Reread(Box<Snapshot>),
}

/// [`Directory`] on etcd (see the module docs).
pub struct EtcdDirectory {
    pub(super) pool: Pool,
    pub(super) keys: Keys,
    pub(super) known: Arc<Mutex<Known>>,
    /// The leader key's create-revision while this gateway leads.
    pub(super) fence: Mutex<Option<i64>>,
    pub(super) revision_tx: watch::Sender<Revision>,
    /// Set while a checkpoint is being written.
    pub(super) checkpointing: Arc<std::sync::atomic::AtomicBool>,
}

fn lock(k: &Mutex<Known>) -> std::sync::MutexGuard<'_, Known> {
    k.lock().unwrap_or_else(|p| p.into_inner())
}

impl EtcdDirectory {
    /// Reads the directory (migrating a layout-1 directory first).
    pub async fn open(pool: Pool, keys: Keys) -> Result<Self, DirectoryError> {
        let read = read_directory(&pool, &keys, 0).await?;
        let (revision_tx, _) = watch::channel(read.snapshot.revision);
        Ok(EtcdDirectory {
            pool,
            keys,
            known: Arc::new(Mutex::new(Known {
                snapshot: read.snapshot,
                head_mod_rev: read.head_mod_rev,
                checkpoint: read.checkpoint,
            })),
            fence: Mutex::new(None),
            revision_tx,
            checkpointing: Default::default(),
        })
    }

    pub fn keys(&self) -> &Keys {
        &self.keys
    }

    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The latest state this gateway knows.
    pub fn current(&self) -> Snapshot {
        lock(&self.known).snapshot.clone()
    }

    /// The latest revision this gateway knows, and the mod-revision of `P/head` for it.
    pub fn known_revision(&self) -> (Revision, i64) {
        let k = lock(&self.known);
        (k.snapshot.revision, k.head_mod_rev)
    }

    /// A whole directory read from etcd: kept if newer than what we know.
    pub(super) fn observe_read(&self, read: Read) -> bool {
        let mut k = lock(&self.known);
        if read.checkpoint.mod_rev > k.checkpoint.mod_rev {
            k.checkpoint = read.checkpoint;
        }
        if read.head_mod_rev > k.head_mod_rev {
            self.revision_tx.send_replace(read.snapshot.revision);
            k.snapshot = read.snapshot;
            k.head_mod_rev = read.head_mod_rev;
            true
        } else {
            false
        }
    }

    /// Reads the whole directory again (at etcd revision `at`, 0: the latest).
    pub async fn reread(&self, at: i64) -> Result<Snapshot, DirectoryError> {
        let read = read_directory(&self.pool, &self.keys, at).await?;
        self.observe_read(read);
        Ok(self.current())
    }

    /// A `P/checkpoint` put seen in the watch.
    pub(super) fn observe_checkpoint(&self, kv: &etcd_client::KeyValue) {
        match Checkpoint::of(&self.keys, kv) {
            Ok(cp) => {
                let mut k = lock(&self.known);
                if cp.mod_rev > k.checkpoint.mod_rev {
                    k.checkpoint = cp;
                }
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }

    /// A `P/log/<revision>` put seen in the watch: the next revision is applied to the known
    /// state (only what it changed); a gap or an entry that cannot be read makes a full read.
    pub async fn follow_log(&self, kv: &etcd_client::KeyValue) -> Result<Followed, DirectoryError> {
        let key = kv.key_str().unwrap_or_default();
        let rev: Option<Revision> = key
            .strip_prefix(&self.keys.log_prefix())
            .and_then(|r| r.parse().ok());
        let (have, _) = self.known_revision();
        match rev {
            Some(r) if r <= have => return Ok(Followed::Nothing),
            Some(r) if r == have + 1 => {
                match blob::read::<LogEntry>(&self.pool, kv.value(), kv.mod_revision(), key).await
                {
                    Ok(entry) if entry.revision == r => {
                        let mut k = lock(&self.known);
                        if k.snapshot.revision + 1 == r {
                            entry.apply_to(&mut k.snapshot);
                            k.head_mod_rev = k.head_mod_rev.max(kv.mod_revision());
                            self.revision_tx.send_replace(r);
                            return Ok(Followed::Entry(Box::new(entry)));
                        }
                    }
                    Ok(entry) => tracing::warn!(
                        key,
                        revision = entry.revision,
                        "etcd: a log entry under another revision's key; reading the directory again"
                    ),
                    Err(e) => tracing::warn!("etcd: {e}; reading the directory again"),
                }
            }
            _ => {}
        }
        let s = self.reread(kv.mod_revision()).await?;
        Ok(Followed::Reread(Box::new(s)))
    }

    pub fn set_fence(&self, fence: Option<i64>) {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner()) = fence;
    }

    /// Clears the fence only if it is still `fence` (a newer leadership is kept).
    pub fn clear_fence(&self, fence: i64) {
        let mut f = self.fence.lock().unwrap_or_else(|p| p.into_inner());
        if *f == Some(fence) {
            *f = None;
        }
    }

    pub fn fence(&self) -> Option<i64> {
        *self.fence.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `update` on top of the state at `expected`, fenced by `fence` (the leader key's
    /// create-revision the caller believes it holds): the head, the log entry of the new
    /// revision and its events, in one transaction (their chunks, if any, first).
    pub async fn commit_fenced(
        &self,
        fence: i64,
        expected: Revision,
        update: &Update,
    ) -> Result<Revision, DirectoryError> {
        let (head_mod_rev, next_event) = {
            let k = lock(&self.known);
            if k.snapshot.revision != expected {
                return Err(DirectoryError::Conflict {
                    expected,
                    actual: k.snapshot.revision,
                });
            }
            (k.head_mod_rev, k.snapshot.next_event)
        };
        let rev = expected + 1;
        let numbering = Snapshot {
            next_event,
            ..Default::default()
        };
        let events = numbering.number_events(&update.events, rev, crate::directory::now_ms());
        let keys = &self.keys;
        let log = blob::encode(
            &LogEntryRef::new(rev, update),
            &keys.chunks(&format!("log-{rev:020}-{fence}")),
        )?;
        let mut ops = vec![
            TxnOp::put(keys.head(), Head::value(rev), None),
            TxnOp::put(keys.log(rev), log.value.clone(), None),
        ];
        let mut blobs = vec![log];
        if let Some(first) = events.first().map(|e| e.seq) {
            let ev = blob::encode(
                &events,
                &keys.chunks(&format!("events-{first:020}-{fence}")),
            )?;
            ops.push(TxnOp::put(keys.events(first), ev.value.clone(), None));
            blobs.push(ev);
        }
        for b in &blobs {
            blob::put_chunks(&self.pool, keys, Some(fence), &b.chunks).await?;
        }
        let txn = Txn::new()
            .when([
                Compare::mod_revision(keys.head(), CompareOp::Equal, head_mod_rev),
                Compare::create_revision(keys.leader(), CompareOp::Equal, fence),
            ])
            .and_then(ops)
            .or_else([
                TxnOp::get(keys.leader(), None),
                TxnOp::get(keys.head(), None),
            ]);
        let resp = self
            .pool
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| etcd_err("committing", e))?;
        if resp.succeeded() {
            let at = resp.header().map_or(0, |h| h.revision());
            self.committed(fence, update, rev, at);
            return Ok(rev);
        }
        // Refused: say why.
        let gets = gets(&resp);
        let leader = gets.first().and_then(|g| g.kvs().first().cloned());
        let head = gets.get(1).and_then(|g| g.kvs().first().cloned());
        let ours = leader.as_ref().map(|kv| kv.create_revision()) == Some(fence);
        let actual = head.as_ref().and_then(|kv| {
            Head::parse(keys, kv.value())
                .ok()
                .map(|h| (h.revision, kv.mod_revision()))
        });
        if let (true, Some((r, mod_rev))) = (ours, actual) {
            // A first attempt that was applied but whose answer was lost, then retried on
            // another member: only this leader writes under its fence, and it was writing
            // exactly this revision.
            if r == rev {
                self.committed(fence, update, rev, mod_rev);
                return Ok(rev);
            }
        }
        for b in &blobs {
            blob::drop_chunks(&self.pool, b).await;
        }
        if !ours {
            self.clear_fence(fence);
            return Err(DirectoryError::Fenced {
                fence,
                leader: leader
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_else(|| "none".into()),
            });
        }
        Err(DirectoryError::Conflict {
            expected,
            actual: actual.map_or(0, |(r, _)| r),
        })
    }

    /// A commit of this leader landed at etcd revision `at`: the known state moves on, and a
    /// checkpoint is written in the background when one is due.
    fn committed(&self, fence: i64, update: &Update, rev: Revision, at: i64) {
        let due = {
            let mut k = lock(&self.known);
            if k.snapshot.revision + 1 != rev {
                return;
            }
            k.snapshot.advance(update);
            k.head_mod_rev = k.head_mod_rev.max(at);
            self.revision_tx.send_replace(rev);
            let due = rev >= k.checkpoint.revision + CHECKPOINT_EVERY
                && !self.checkpointing.swap(true, Ordering::AcqRel);
            due.then(|| (k.snapshot.clone(), k.checkpoint))
        };
        let Some((snapshot, previous)) = due else {
            return;
        };
        let (pool, keys, known, flag) = (
            self.pool.clone(),
            self.keys.clone(),
            self.known.clone(),
            self.checkpointing.clone(),
        );
        tokio::spawn(async move {
            let t = Instant::now();
            let rev = snapshot.revision;
            match write_checkpoint(&pool, &keys, fence, snapshot, previous).await {
                Ok(cp) => {
                    let mut k = lock(&known);
                    if cp.mod_rev > k.checkpoint.mod_rev {
                        k.checkpoint = cp;
                    }
                    tracing::info!(
                        revision = rev,
                        took_ms = t.elapsed().as_millis() as u64,
                        "etcd: checkpoint written, the log trimmed below it"
                    );
                }
                Err(e) => tracing::warn!(revision = rev, "etcd: {e}"),
            }
            flag.store(false, Ordering::Release);
        });
    }
}

#[async_trait::async_trait]
impl Directory for EtcdDirectory {
    async fn snapshot(&self) -> Result<Snapshot, DirectoryError> {
        self.reread(0).await
    }

    async fn commit(
        &self,
        expected: Revision,
        update: &Update,
    ) -> Result<Revision, DirectoryError> {
        let fence = self.fence().ok_or(DirectoryError::NotLeader)?;
        self.commit_fenced(fence, expected, update).await
    }

    async fn events(&self, after: u64, limit: usize) -> Result<Vec<Event>, DirectoryError> {
        // Keys are the first sequence number of each commit: the commit holding `after + 1`
        // is the last key at or below it, then the following ones; at most `limit` keys
        // (each holds at least one event).
        let from = self.keys.events(after.saturating_add(1));
        let end = {
            let mut e = self.keys.events_prefix().into_bytes();
            if let Some(last) = e.last_mut() {
                *last += 1; // '/' + 1: the end of the prefix
            }
            e
        };
        let before = GetOptions::new()
            .with_range(from.clone())
            .with_sort(SortTarget::Key, SortOrder::Descend)
            .with_limit(1);
        let after_opts = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, SortOrder::Ascend)
            .with_limit(limit.max(1) as i64);
        let txn = Txn::new().and_then([
            TxnOp::get(self.keys.events_prefix(), Some(before)),
            TxnOp::get(from, Some(after_opts)),
        ]);
        let resp = self
            .pool
            .call(|c| {
                let txn = txn.clone();
                async move { kv_big(&c).txn(txn).await }
            })
            .await
            .map_err(|e| etcd_err("reading the events", e))?;
        let at = resp.header().map_or(0, |h| h.revision());
        let mut out = Vec::new();
        for g in gets(&resp) {
            for kv in g.kvs() {
                let key = kv.key_str().unwrap_or("?");
                match blob::read::<Vec<Event>>(&self.pool, kv.value(), at, key).await {
                    Ok(events) => out.extend(events.into_iter().filter(|e| e.seq > after)),
                    Err(e) => {
                        tracing::warn!(key, "etcd: an event record that is not ftn's, skipped: {e}")
                    }
                }
            }
        }
        out.sort_by_key(|e| e.seq);
        out.dedup_by_key(|e| e.seq);
        out.truncate(limit);
        Ok(out)
    }

    fn watch(&self) -> watch::Receiver<Revision> {
        self.revision_tx.subscribe()
    }

    fn backend(&self) -> &'static str {
        "etcd"
    }
}
