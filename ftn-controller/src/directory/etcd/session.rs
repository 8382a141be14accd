//! The session: the lease, the gateway record, the election and the watch.

use super::*;

// ---------------------------------------------------------------------------------------------
// The session: lease, gateway record, election, watch.

/// One gateway's word on one server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Observed {
    pub up: bool,
    pub evidence: String,
}

/// What a gateway publishes about itself (under its lease). Fields added by later versions
/// must have defaults, so that gateways of two versions read each other's records.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayRecord {
    pub name: String,
    pub api: String,
    pub started_ms: u64,
    /// The host it runs on (`/etc/machine-id`): two hosts must not use one gateway name.
    pub machine: String,
    /// The directory revision its maps hold, and since when (unix ms).
    pub applied_revision: Revision,
    pub applied_at_ms: u64,
    pub observations: BTreeMap<String, Observed>,
}

/// What the session tells the controller.
#[derive(Debug)]
pub enum ClusterEvent {
    /// etcd answers (again) or stopped answering.
    Etcd {
        connected: bool,
        error: Option<String>,
    },
    /// The leader changed; `fence` is set when this gateway is the leader.
    Leader {
        name: Option<String>,
        fence: Option<i64>,
    },
    /// The live gateways' records (all of them, on every change).
    Gateways(BTreeMap<String, GatewayRecord>),
    /// A newer directory state, read whole (at start, after a gap).
    State(Box<Snapshot>),
    /// The next revision: what it changed (the directory's known state holds it already).
    Entry(Box<LogEntry>),
}

/// Handle to the session task.
pub struct Session {
    pub(super) record_tx: watch::Sender<GatewayRecord>,
    pub(super) task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Session {
    /// Starts the session task. It runs until `cancel`; then it revokes its lease (the
    /// leadership and this gateway's record go at once): await [`Session::finished`].
    pub fn start(
        dir: std::sync::Arc<EtcdDirectory>,
        name: String,
        lease_ttl: Duration,
        record: GatewayRecord,
        events: mpsc::Sender<ClusterEvent>,
        cancel: CancellationToken,
    ) -> Session {
        let (record_tx, record_rx) = watch::channel(record);
        let task = SessionTask {
            dir,
            name,
            ttl: lease_ttl,
            record_rx,
            events,
            cancel,
            lease: None,
            leader_rev: 0,
            gateways: BTreeMap::new(),
            connected: true,
        };
        let handle = tokio::spawn(task.run());
        Session {
            record_tx,
            task: Mutex::new(Some(handle)),
        }
    }

    /// After the cancel: waits (at most `limit`) for the session to hand its lease back.
    pub async fn finished(&self, limit: Duration) {
        let handle = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            let _ = tokio::time::timeout(limit, h).await;
        }
    }

    /// Changes the published record (written to etcd by the session task).
    pub fn publish(&self, f: impl FnOnce(&mut GatewayRecord)) {
        self.record_tx.send_if_modified(|r| {
            let before = r.clone();
            f(r);
            *r != before
        });
    }

    pub fn record(&self) -> GatewayRecord {
        self.record_tx.borrow().clone()
    }
}

pub(super) struct SessionTask {
    pub(super) dir: std::sync::Arc<EtcdDirectory>,
    pub(super) name: String,
    pub(super) ttl: Duration,
    pub(super) record_rx: watch::Receiver<GatewayRecord>,
    pub(super) events: mpsc::Sender<ClusterEvent>,
    pub(super) cancel: CancellationToken,
    pub(super) lease: Option<i64>,
    /// etcd revision of the last leader-key change handled (older ones, replayed by a new
    /// watch, are ignored).
    pub(super) leader_rev: i64,
    pub(super) gateways: BTreeMap<String, GatewayRecord>,
    /// What the controller was last told about etcd.
    pub(super) connected: bool,
}

/// The leader key as read from etcd.
pub(super) struct LeaderKey {
    pub(super) name: String,
    pub(super) create_rev: i64,
    pub(super) lease: i64,
}

impl LeaderKey {
    pub(super) fn of(kv: &etcd_client::KeyValue) -> LeaderKey {
        LeaderKey {
            name: String::from_utf8_lossy(kv.value()).into_owned(),
            create_rev: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

impl SessionTask {
    pub(super) async fn run(mut self) {
        loop {
            let end = self.session().await;
            // Whatever happened, this gateway does not lead any more until it wins again.
            if self.dir.fence().is_some() {
                tracing::warn!("stepping down as the leader");
            }
            self.dir.set_fence(None);
            let _ = self
                .events
                .send(ClusterEvent::Leader {
                    name: None,
                    fence: None,
                })
                .await;
            match end {
                Ok(()) => break,
                Err(why) => self.report(false, Some(why)).await,
            }
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        // Leaving: hand the leadership and our record back at once.
        if let Some(lease) = self.lease.take() {
            let pool = self.dir.pool().clone();
            let revoke = pool.call(|mut c| async move { c.lease_revoke(lease).await });
            match tokio::time::timeout(Duration::from_millis(800), revoke).await {
                Ok(Ok(_)) => tracing::info!("etcd: lease revoked (leadership and record handed back)"),
                Ok(Err(e)) => tracing::warn!("etcd: revoking the lease at exit: {e}; the other gateways wait for it to expire"),
                Err(_) => tracing::warn!("etcd: revoking the lease at exit timed out; the other gateways wait for it to expire"),
            }
        }
    }

    /// Tells the controller whether etcd works (on changes only, and every error when down).
    pub(super) async fn report(&mut self, connected: bool, error: Option<String>) {
        if connected == self.connected && connected {
            return;
        }
        if !connected && self.connected {
            tracing::error!(
                "etcd: {}; the dataplane keeps the last directory it had, this gateway decides nothing until etcd answers again",
                error.as_deref().unwrap_or("unreachable")
            );
        }
        if connected && !self.connected {
            tracing::info!("etcd: the directory is followed again");
        }
        self.connected = connected;
        let _ = self
            .events
            .send(ClusterEvent::Etcd { connected, error })
            .await;
    }

    /// One lease: from its grant until it is lost (Err) or the controller stops (Ok).
    pub(super) async fn session(&mut self) -> Result<(), String> {
        let pool = self.dir.pool().clone();
        let keys = self.dir.keys().clone();
        // A lease from an earlier session may still hold our keys (and the leadership):
        // revoke it so that they go at once. Until that revoke succeeds (or etcd says the
        // lease is gone) no new lease is taken: a leader key left under the old lease would
        // block the election for a whole ttl.
        if let Some(old) = self.lease {
            match pool
                .call(|mut c| async move { c.lease_revoke(old).await })
                .await
            {
                Ok(_) => self.lease = None,
                Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {
                    self.lease = None // already expired
                }
                Err(e) => return Err(format!("revoking the previous lease: {e}")),
            }
        }
        let ttl_s = self.ttl.as_secs().max(2) as i64;
        let granted = pool
            .call(|mut c| async move { c.lease_grant(ttl_s, None).await })
            .await
            .map_err(|e| format!("granting a lease: {e}"))?;
        let lease = granted.id();
        self.lease = Some(lease);
        // etcd may grant more than asked (its minimum TTL): the keeper works with what it got.
        let ttl = Duration::from_secs(granted.ttl().max(ttl_s) as u64);
        if ttl != self.ttl {
            tracing::warn!(
                asked = ttl_s,
                granted = granted.ttl(),
                "etcd granted a longer lease than directory.lease_ttl"
            );
        }
        let (lost_tx, mut lost_rx) = watch::channel(None::<String>);
        let stop_keepalive = self.cancel.child_token();
        tokio::spawn(keep_lease(
            pool.clone(),
            lease,
            ttl,
            lost_tx,
            stop_keepalive.clone(),
        ));
        let _guard = stop_keepalive.drop_guard();
        self.put_record(&pool, &keys, lease).await?;
        tracing::info!(lease = format!("{lease:x}"), "etcd session started");
        let mut failures = 0u32;
        loop {
            if let Some(why) = lost_rx.borrow().clone() {
                return Err(why);
            }
            // Read the directory, then watch from the next revision; a failure of either is
            // tried again (on the next member) while the lease lives.
            let (i, client) = pool.current();
            match self.follow(&pool, client, &keys, lease, &mut lost_rx).await {
                Ok(()) => return Ok(()),
                Err(Follow::Lost(why)) => return Err(why),
                Err(Follow::Broken(why)) => {
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        tracing::warn!("etcd watch: {why}; trying again");
                    }
                    if failures == 3 {
                        // The lease lives but the directory is not followed: say so.
                        self.report(false, Some(why)).await;
                    }
                    pool.rotate(i);
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }

    /// Reads the directory (the state, the leader, the gateways' records: not the event log),
    /// then follows its changes until something breaks.
    pub(super) async fn follow(
        &mut self,
        pool: &Pool,
        client: Client,
        keys: &Keys,
        lease: i64,
        lost_rx: &mut watch::Receiver<Option<String>>,
    ) -> Result<(), Follow> {
        let broken = |what: &str, e: etcd_client::Error| Follow::Broken(format!("{what}: {e}"));
        let read = Txn::new().and_then([
            TxnOp::get(keys.head(), None),
            TxnOp::get(keys.leader(), None),
            TxnOp::get(
                keys.gateways_prefix(),
                Some(GetOptions::new().with_prefix()),
            ),
        ]);
        let resp = kv_big(&client)
            .txn(read)
            .await
            .map_err(|e| broken("reading the directory", e))?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let gets = gets(&resp);
        let [head, leader, gateways] = gets.as_slice() else {
            return Err(Follow::Broken(
                "etcd answered the read with other parts".into(),
            ));
        };
        // A newer head than the state we know: read the directory at that same revision.
        let head_mod_rev = head.kvs().first().map_or(0, |kv| kv.mod_revision());
        if head_mod_rev > self.dir.known_revision().1 {
            let s = self
                .dir
                .reread(rev)
                .await
                .map_err(|e| Follow::Broken(format!("reading the directory: {e}")))?;
            let _ = self.events.send(ClusterEvent::State(Box::new(s))).await;
        }
        self.gateways.clear();
        for kv in gateways.kvs() {
            let key = kv.key_str().unwrap_or_default();
            if let Some(name) = key.strip_prefix(&keys.gateways_prefix()) {
                self.insert_record(name, kv.value());
            }
        }
        let _ = self
            .events
            .send(ClusterEvent::Gateways(self.gateways.clone()))
            .await;
        self.leader_rev = self.leader_rev.max(rev);
        match leader.kvs().first() {
            None => self.campaign(pool, keys, lease).await?,
            Some(kv) => self.on_leader(Some(LeaderKey::of(kv)), lease).await,
        }
        let (_watcher, mut stream) = client
            .watch_client()
            .max_decoding_message_size(MAX_RESPONSE_BYTES)
            .watch(
                keys.all(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(rev + 1),
                ),
            )
            .await
            .map_err(|e| broken("watching the directory", e))?
            .split();
        self.report(true, None).await;
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(()),
                changed = lost_rx.changed() => {
                    let why = lost_rx.borrow().clone();
                    if changed.is_err() || why.is_some() {
                        return Err(Follow::Lost(why.unwrap_or_else(|| "the lease keeper stopped".into())));
                    }
                }
                changed = self.record_rx.changed() => {
                    if changed.is_err() { return Ok(()); }
                    self.put_record(pool, keys, lease).await.map_err(Follow::Broken)?;
                }
                m = stream.message() => {
                    let resp = match m {
                        Ok(Some(r)) => r,
                        Ok(None) => return Err(Follow::Broken("the watch ended".into())),
                        Err(e) => return Err(broken("the watch broke", e)),
                    };
                    if resp.canceled() {
                        return Err(Follow::Broken(format!("the watch was cancelled: {}", resp.cancel_reason())));
                    }
                    self.on_watch(&resp, pool, keys, lease).await?;
                }
            }
        }
    }

    /// One watch answer: gateway records first, then the state and the leader key.
    async fn on_watch(
        &mut self,
        resp: &etcd_client::WatchResponse,
        pool: &Pool,
        keys: &Keys,
        lease: i64,
    ) -> Result<(), Follow> {
        // Gateway records first: when a lease expires, its gateway record and
        // (for a leader) the leader key go in the same revision, and a new leader
        // must not count the dead gateway.
        let mut gateways_changed = false;
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = kv.key_str().unwrap_or_default();
            let Some(name) = key.strip_prefix(&keys.gateways_prefix()) else {
                continue;
            };
            gateways_changed = true;
            if ev.event_type() == EventType::Put {
                self.insert_record(name, kv.value());
            } else {
                self.gateways.remove(name);
            }
        }
        if gateways_changed {
            let _ = self
                .events
                .send(ClusterEvent::Gateways(self.gateways.clone()))
                .await;
        }
        for ev in resp.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = kv.key_str().unwrap_or_default();
            let put = ev.event_type() == EventType::Put;
            if key.starts_with(&keys.log_prefix()) && put {
                let followed = self
                    .dir
                    .follow_log(kv)
                    .await
                    .map_err(|e| Follow::Broken(format!("following the directory: {e}")))?;
                let ev = match followed {
                    Followed::Nothing => None,
                    Followed::Entry(e) => Some(ClusterEvent::Entry(e)),
                    Followed::Reread(s) => Some(ClusterEvent::State(s)),
                };
                if let Some(ev) = ev {
                    let _ = self.events.send(ev).await;
                }
            } else if key == keys.checkpoint() && put {
                self.dir.observe_checkpoint(kv);
            } else if key == keys.leader() {
                // A change older than one already handled (a campaign between the
                // read and the watch's start) is history.
                if kv.mod_revision() <= self.leader_rev {
                    continue;
                }
                self.leader_rev = kv.mod_revision();
                if put {
                    self.on_leader(Some(LeaderKey::of(kv)), lease).await;
                } else {
                    self.on_leader(None, lease).await;
                    self.campaign(pool, keys, lease).await?;
                }
            }
        }
        Ok(())
    }

    pub(super) fn insert_record(&mut self, name: &str, value: &[u8]) {
        match serde_json::from_slice::<GatewayRecord>(value) {
            Ok(r) => {
                self.gateways.insert(name.to_owned(), r);
            }
            Err(e) => tracing::warn!(
                gateway = name,
                "etcd: a gateway record this version cannot read, not counted: {e}"
            ),
        }
    }

    pub(super) async fn put_record(
        &mut self,
        pool: &Pool,
        keys: &Keys,
        lease: i64,
    ) -> Result<(), String> {
        let record = self.record_rx.borrow_and_update().clone();
        let v = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
        let key = keys.gateway(&self.name);
        pool.call(|mut c| {
            let (key, v) = (key.clone(), v.clone());
            async move {
                c.put(key, v, Some(PutOptions::new().with_lease(lease)))
                    .await
            }
        })
        .await
        .map_err(|e| format!("publishing this gateway's record: {e}"))?;
        Ok(())
    }

    /// The leader key as it is now. A key under this session's own lease is ours whatever
    /// happened to the answer of the campaign that created it: its create-revision is the
    /// fence.
    pub(super) async fn on_leader(&mut self, key: Option<LeaderKey>, lease: i64) {
        let ours = key
            .as_ref()
            .is_some_and(|k| k.name == self.name && k.lease == lease && lease != 0);
        let fence = if ours {
            let f = key.as_ref().map(|k| k.create_rev);
            if self.dir.fence() != f {
                tracing::info!(fence = f.unwrap_or(0), "this gateway is the leader");
                self.dir.set_fence(f);
            }
            f
        } else {
            if self.dir.fence().is_some() {
                tracing::warn!(
                    leader = key.as_ref().map_or("none", |k| k.name.as_str()),
                    "another leader: stepping down"
                );
                self.dir.set_fence(None);
            }
            None
        };
        let _ = self
            .events
            .send(ClusterEvent::Leader {
                name: key.map(|k| k.name),
                fence,
            })
            .await;
    }

    /// Becomes the leader if there is none: creates the leader key under our lease only if it
    /// does not exist.
    pub(super) async fn campaign(
        &mut self,
        pool: &Pool,
        keys: &Keys,
        lease: i64,
    ) -> Result<(), Follow> {
        let txn = Txn::new()
            .when([Compare::create_revision(keys.leader(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                keys.leader(),
                self.name.clone(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(keys.leader(), None)]);
        let resp = pool
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| Follow::Broken(format!("campaigning for leader: {e}")))?;
        if resp.succeeded() {
            let rev = resp.header().map_or(0, |h| h.revision());
            self.leader_rev = self.leader_rev.max(rev);
            let key = LeaderKey {
                name: self.name.clone(),
                create_rev: rev,
                lease,
            };
            self.on_leader(Some(key), lease).await;
        } else if let Some(kv) = first_kv(&resp) {
            self.leader_rev = self.leader_rev.max(kv.mod_revision());
            self.on_leader(Some(LeaderKey::of(&kv)), lease).await;
        }
        Ok(())
    }
}

pub(super) enum Follow {
    /// The lease is gone: the session ends.
    Lost(String),
    /// The read or the watch failed: try again on the same lease.
    Broken(String),
}

/// Renews `lease` every ttl/4 on whichever member answers; reports on `lost` once it was not
/// renewed for a whole ttl, or etcd says it expired.
pub(super) async fn keep_lease(
    pool: Pool,
    lease: i64,
    ttl: Duration,
    lost: watch::Sender<Option<String>>,
    stop: CancellationToken,
) {
    let mut last_ok = Instant::now();
    let mut stream: Option<(usize, LeaseKeeper, LeaseKeepAliveStream)> = None;
    let mut tick = tokio::time::interval(ttl / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let next = async {
            match &mut stream {
                Some((_, _, s)) => s.message().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if last_ok.elapsed() > ttl {
                    let _ = lost.send(Some(format!(
                        "the lease was not renewed for {} (etcd unreachable or without quorum)",
                        humantime::format_duration(ttl)
                    )));
                    return;
                }
                if stream.is_none() {
                    let (i, c) = pool.current();
                    let mut leases = c.lease_client();
                    let open = tokio::time::timeout(ttl / 4, leases.keep_alive(lease));
                    match open.await {
                        Ok(Ok((k, s))) => {
                            // Opening the stream renews the lease once.
                            last_ok = Instant::now();
                            stream = Some((i, k, s));
                        }
                        _ => pool.rotate(i),
                    }
                } else if let Some((i, k, _)) = &mut stream {
                    if k.keep_alive().await.is_err() {
                        pool.rotate(*i);
                        stream = None;
                    }
                }
            }
            m = next => match m {
                Ok(Some(r)) if r.ttl() > 0 => last_ok = Instant::now(),
                Ok(Some(_)) => {
                    let _ = lost.send(Some("the lease expired".into()));
                    return;
                }
                Ok(None) | Err(_) => {
                    if let Some((i, _, _)) = stream.take() {
                        pool.rotate(i);
                    }
                }
            },
        }
    }
}
