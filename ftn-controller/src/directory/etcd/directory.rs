//! [`EtcdDirectory`]: the [`Directory`] on etcd (the leader's fenced commits, the followers'
//! reads).

use super::*;

// ---------------------------------------------------------------------------------------------
// The directory.

pub(super) struct Known {
    pub(super) snapshot: Snapshot,
    /// etcd mod-revision of `P/state` for `snapshot` (0: the key does not exist).
    pub(super) mod_rev: i64,
}

/// [`Directory`] on etcd (see the module docs).
pub struct EtcdDirectory {
    pub(super) pool: Pool,
    pub(super) keys: Keys,
    pub(super) known: Mutex<Known>,
    /// The leader key's create-revision while this gateway leads.
    pub(super) fence: Mutex<Option<i64>>,
    pub(super) revision_tx: watch::Sender<Revision>,
}

impl EtcdDirectory {
    /// Reads the directory's state.
    pub async fn open(pool: Pool, keys: Keys) -> Result<Self, DirectoryError> {
        let (snapshot, mod_rev) = read_state(&pool, &keys).await?;
        let (revision_tx, _) = watch::channel(snapshot.revision);
        Ok(EtcdDirectory {
            pool,
            keys,
            known: Mutex::new(Known { snapshot, mod_rev }),
            fence: Mutex::new(None),
            revision_tx,
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
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .snapshot
            .clone()
    }

    /// A state read from etcd (watch or get): kept if newer than what we know.
    pub fn observe_state(&self, snapshot: &Snapshot, mod_rev: i64) -> bool {
        let mut k = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if mod_rev > k.mod_rev {
            k.snapshot = snapshot.clone();
            k.mod_rev = mod_rev;
            self.revision_tx.send_replace(snapshot.revision);
            true
        } else {
            false
        }
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
    /// create-revision the caller believes it holds).
    pub async fn commit_fenced(
        &self,
        fence: i64,
        expected: Revision,
        update: &Update,
    ) -> Result<Revision, DirectoryError> {
        let (mut next, mod_rev) = {
            let k = self.known.lock().unwrap_or_else(|p| p.into_inner());
            if k.snapshot.revision != expected {
                return Err(DirectoryError::Conflict {
                    expected,
                    actual: k.snapshot.revision,
                });
            }
            (k.snapshot.clone(), k.mod_rev)
        };
        let events = next.apply(update);
        let state = serde_json::to_vec(&next)
            .map_err(|e| DirectoryError::Etcd(format!("encoding the state: {e}")))?;
        let mut ops = vec![TxnOp::put(self.keys.state(), state, None)];
        if !events.is_empty() {
            let ev = serde_json::to_vec(&events)
                .map_err(|e| DirectoryError::Etcd(format!("encoding the events: {e}")))?;
            ops.push(TxnOp::put(self.keys.events(events[0].seq), ev, None));
        }
        let txn = Txn::new()
            .when([
                Compare::mod_revision(self.keys.state(), CompareOp::Equal, mod_rev),
                Compare::create_revision(self.keys.leader(), CompareOp::Equal, fence),
            ])
            .and_then(ops)
            .or_else([
                TxnOp::get(self.keys.leader(), None),
                TxnOp::get(self.keys.state(), None),
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
            let rev = resp.header().map_or(0, |h| h.revision());
            self.observe_state(&next, rev);
            return Ok(next.revision);
        }
        // Refused: say why, and learn the current state.
        let gets = gets(&resp);
        let leader = gets.first().and_then(|g| g.kvs().first().cloned());
        if let Some(kv) = gets.get(1).and_then(|g| g.kvs().first()) {
            if let Ok(s) = serde_json::from_slice::<Snapshot>(kv.value()) {
                // A first attempt that was applied but whose answer was lost, then retried on
                // another member: the state is exactly ours.
                if s == next && leader.as_ref().map(|kv| kv.create_revision()) == Some(fence) {
                    self.observe_state(&s, kv.mod_revision());
                    return Ok(next.revision);
                }
                self.observe_state(&s, kv.mod_revision());
            }
        }
        if leader.as_ref().map(|kv| kv.create_revision()) != Some(fence) {
            self.clear_fence(fence);
            return Err(DirectoryError::Fenced {
                fence,
                leader: leader
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
                    .unwrap_or_else(|| "none".into()),
            });
        }
        let actual = self.current().revision;
        Err(DirectoryError::Conflict { expected, actual })
    }
}

pub(super) async fn read_state(
    pool: &Pool,
    keys: &Keys,
) -> Result<(Snapshot, i64), DirectoryError> {
    let key = keys.state();
    let resp = pool
        .call(|c| {
            let key = key.clone();
            async move { kv_big(&c).get(key, None).await }
        })
        .await
        .map_err(|e| etcd_err("reading the state", e))?;
    match resp.kvs().first() {
        None => Ok((Snapshot::default(), 0)),
        Some(kv) => {
            let s: Snapshot = serde_json::from_slice(kv.value()).map_err(|e| {
                DirectoryError::Etcd(format!(
                    "etcd key {} is not an ftn state: {e}",
                    keys.state()
                ))
            })?;
            Ok((s, kv.mod_revision()))
        }
    }
}

#[async_trait::async_trait]
impl Directory for EtcdDirectory {
    async fn snapshot(&self) -> Result<Snapshot, DirectoryError> {
        let (s, rev) = read_state(&self.pool, &self.keys).await?;
        self.observe_state(&s, rev);
        Ok(self.current())
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
        let mut out = Vec::new();
        for g in gets(&resp) {
            for kv in g.kvs() {
                match serde_json::from_slice::<Vec<Event>>(kv.value()) {
                    Ok(events) => out.extend(events.into_iter().filter(|e| e.seq > after)),
                    Err(e) => tracing::warn!(
                        key = kv.key_str().unwrap_or("?"),
                        "etcd: an event record that is not ftn's, skipped: {e}"
                    ),
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
