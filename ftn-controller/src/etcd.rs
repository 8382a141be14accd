//! The shared directory on etcd, for several gateways.
//!
//! Keys under the configured prefix `P`:
//! - `P/state`: the whole directory record ([`Snapshot`], JSON). Written only by the leader,
//!   in a transaction that compares the key's mod-revision with the one the leader decided
//!   from *and* the leader key's create-revision with the leader's own (the fence): a deposed
//!   leader's late write fails.
//! - `P/events/<revision, 20 digits>`: the events of one commit (JSON list), in the same
//!   transaction.
//! - `P/declarations`: the servers and resources (JSON). Written by the first gateway that
//!   starts; every other gateway must declare exactly the same or it refuses to start.
//! - `P/leader`: the leader's name, under the leader's lease. Created with "only if absent"
//!   (create-revision == 0); its create-revision is the fence.
//! - `P/gateways/<name>`: one record per gateway (its observations of every server, the
//!   directory revision its maps hold), under the gateway's lease: a gateway is live while its
//!   lease is.
//!
//! [`EtcdDirectory`] implements [`Directory`]; [`Session`] keeps the lease, the election, the
//! gateway record and the watch, and reports to the controller through [`ClusterEvent`]s.
//! Everything here tolerates etcd going away: requests fail after the request timeout, the
//! session retries, and the controller keeps the dataplane as it is meanwhile.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp,
    WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EtcdConfig};
use crate::directory::{Directory, DirectoryError, Event, Revision, Snapshot, Update};

/// Keys under the prefix.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.trim_end_matches('/').to_owned(),
        }
    }
    pub fn all(&self) -> String {
        format!("{}/", self.prefix)
    }
    pub fn state(&self) -> String {
        format!("{}/state", self.prefix)
    }
    pub fn leader(&self) -> String {
        format!("{}/leader", self.prefix)
    }
    pub fn declarations(&self) -> String {
        format!("{}/declarations", self.prefix)
    }
    pub fn events_prefix(&self) -> String {
        format!("{}/events/", self.prefix)
    }
    /// The events of one commit, under the sequence number of its first event.
    pub fn events(&self, first_seq: u64) -> String {
        format!("{}/events/{first_seq:020}", self.prefix)
    }
    pub fn gateways_prefix(&self) -> String {
        format!("{}/gateways/", self.prefix)
    }
    pub fn gateway(&self, name: &str) -> String {
        format!("{}/gateways/{name}", self.prefix)
    }
}

/// Responses larger than this are refused by the client (tonic's default is 4 MiB).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// A KV client that accepts responses up to [`MAX_RESPONSE_BYTES`] (the state and event reads).
fn kv_big(c: &Client) -> etcd_client::KvClient {
    c.kv_client().max_decoding_message_size(MAX_RESPONSE_BYTES)
}

/// The answers of a transaction's get operations, in order.
fn gets(resp: &etcd_client::TxnResponse) -> Vec<etcd_client::GetResponse> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            etcd_client::TxnOpResponse::Get(g) => Some(g),
            _ => None,
        })
        .collect()
}

/// The first key-value of a transaction's first get, if any.
fn first_kv(resp: &etcd_client::TxnResponse) -> Option<etcd_client::KeyValue> {
    gets(resp).first().and_then(|g| g.kvs().first().cloned())
}

fn etcd_err(what: &str, e: etcd_client::Error) -> DirectoryError {
    DirectoryError::Etcd(format!("{what}: {e}"))
}

/// One etcd client per endpoint, used one at a time: a request that cannot reach its member
/// (connection refused, timeout, a member without a leader) is tried on the next member. (One
/// client over all endpoints balances requests blindly and returns the error of a dead member.)
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

struct PoolInner {
    clients: Vec<(String, Client)>,
    current: AtomicUsize,
}

/// Errors worth trying on another member: the request got no answer from a member that has a
/// leader.
fn retryable(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(s) => matches!(
            s.code(),
            // Cancelled: tonic's own request timeout.
            tonic::Code::Unavailable
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Cancelled
                | tonic::Code::Unknown
        ),
        _ => false,
    }
}

impl Pool {
    /// Builds the clients (connections are made on first use) and checks that etcd answers.
    pub async fn connect(cfg: &EtcdConfig) -> anyhow::Result<Pool> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(cfg.dial_timeout)
            .with_timeout(cfg.request_timeout)
            .with_keep_alive(Duration::from_millis(500), cfg.request_timeout)
            .with_keep_alive_while_idle(true)
            .with_require_leader(true)
            // etcd's simple tokens expire and do not survive an etcd restart.
            .with_auto_token_refresh(true);
        if cfg.ca_file.is_some() || cfg.cert_file.is_some() {
            let mut tls = TlsOptions::new();
            if let Some(ca) = &cfg.ca_file {
                let pem = crate::files::read_regular(ca, crate::files::MAX_SECRET_BYTES).map_err(
                    |e| anyhow::anyhow!("reading the etcd CA file {}: {e}", ca.display()),
                )?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
                let c = crate::files::read_regular(cert, crate::files::MAX_SECRET_BYTES).map_err(
                    |e| {
                        anyhow::anyhow!(
                            "reading the etcd client certificate {}: {e}",
                            cert.display()
                        )
                    },
                )?;
                let k = crate::files::read_regular(key, crate::files::MAX_SECRET_BYTES).map_err(
                    |e| anyhow::anyhow!("reading the etcd client key {}: {e}", key.display()),
                )?;
                tls = tls.identity(Identity::from_pem(c, k));
            }
            opts = opts.with_tls(tls);
        }
        if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
            opts = opts.with_user(user.clone(), password.clone());
        }
        let limit = cfg.dial_timeout.max(cfg.request_timeout);
        let mut clients = Vec::new();
        let mut problems = Vec::new();
        for e in &cfg.endpoints {
            // Without authentication this makes no connection; with it, it asks for a token.
            let connect = Client::connect([e.as_str()], Some(opts.clone()));
            match tokio::time::timeout(limit, connect).await {
                Ok(Ok(c)) => clients.push((e.clone(), c)),
                Ok(Err(err)) => problems.push(format!("{e}: {err}")),
                Err(_) => problems.push(format!(
                    "{e}: no answer within {}",
                    humantime::format_duration(limit)
                )),
            }
        }
        if clients.is_empty() {
            anyhow::bail!(
                "cannot reach etcd: {} (directory.endpoints; is etcd running and reachable from this gateway?)",
                problems.join("; ")
            );
        }
        for p in &problems {
            tracing::warn!("etcd endpoint left out: {p}");
        }
        let n = clients.len() as u32;
        let pool = Pool {
            inner: Arc::new(PoolInner {
                clients,
                current: AtomicUsize::new(0),
            }),
        };
        let key = Keys::new(&cfg.prefix).state();
        let probe = pool.call(|mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        });
        match tokio::time::timeout(limit * n, probe).await {
            Ok(Ok(_)) => Ok(pool),
            Ok(Err(e)) => anyhow::bail!(
                "cannot reach etcd at {}: {e} (directory.endpoints; is etcd running, with a quorum, and reachable from this gateway?)",
                cfg.endpoints.join(", ")
            ),
            Err(_) => anyhow::bail!(
                "cannot reach etcd at {}: no answer within {} per endpoint (directory.dial_timeout; is etcd running and reachable from this gateway?)",
                cfg.endpoints.join(", "),
                humantime::format_duration(limit)
            ),
        }
    }

    /// The client in use now, and its index.
    pub fn current(&self) -> (usize, Client) {
        let i = self.inner.current.load(Ordering::Relaxed) % self.inner.clients.len();
        (i, self.inner.clients[i].1.clone())
    }

    /// The member at `from` failed: use the next one (unless another caller already moved on).
    pub fn rotate(&self, from: usize) {
        let n = self.inner.clients.len();
        if n > 1
            && self
                .inner
                .current
                .compare_exchange(from, (from + 1) % n, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::info!(
                failed = %self.inner.clients[from].0,
                next = %self.inner.clients[(from + 1) % n].0,
                "etcd: using the next endpoint"
            );
        }
    }

    /// Runs `f` on the current member, then on the others while the error says the member
    /// could not answer.
    pub async fn call<T, F, Fut>(&self, f: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.inner.clients.len();
        let mut attempt = 0;
        loop {
            let (i, c) = self.current();
            match f(c).await {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) => {
                    tracing::debug!(endpoint = %self.inner.clients[i].0, "etcd request failed: {e}");
                    self.rotate(i);
                    attempt += 1;
                    if attempt >= n {
                        return Err(e);
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Declarations.

#[derive(Serialize, Deserialize)]
struct Declarations {
    gateway: String,
    at_ms: u64,
    servers: serde_json::Value,
    resources: serde_json::Value,
}

/// Publishes this gateway's servers and resources if the directory has none yet, or checks
/// that they are exactly the directory's. A gateway that declares anything else refuses to
/// start: two gateways must never forward one VIP by different rules.
pub async fn check_declarations(pool: &Pool, keys: &Keys, config: &Config) -> anyhow::Result<()> {
    let servers = serde_json::to_value(&config.servers)?;
    let resources = serde_json::to_value(&config.resources)?;
    let ours = Declarations {
        gateway: config.gateway.name.clone(),
        at_ms: crate::directory::now_ms(),
        servers,
        resources,
    };
    let value = serde_json::to_vec(&ours)?;
    let txn = Txn::new()
        .when([Compare::create_revision(
            keys.declarations(),
            CompareOp::Equal,
            0,
        )])
        .and_then([TxnOp::put(keys.declarations(), value, None)])
        .or_else([TxnOp::get(keys.declarations(), None)]);
    let resp = pool
        .call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        })
        .await
        .map_err(|e| anyhow::anyhow!("etcd: publishing the declarations: {e}"))?;
    if resp.succeeded() {
        tracing::info!(key = %keys.declarations(), "published this gateway's servers and resources as the shared declarations");
        return Ok(());
    }
    let theirs: Declarations = first_kv(&resp)
        .map(|kv| kv.value().to_vec())
        .ok_or_else(|| anyhow::anyhow!("etcd: the declarations key vanished while reading it"))
        .and_then(|v| {
            serde_json::from_slice(&v).map_err(|e| {
                anyhow::anyhow!(
                    "etcd key {} is not ftn declarations: {e}",
                    keys.declarations()
                )
            })
        })?;
    let mut diffs = Vec::new();
    diff_named(&theirs.servers, &ours.servers, "server", &mut diffs);
    diff_named(&theirs.resources, &ours.resources, "resource", &mut diffs);
    if diffs.is_empty() {
        return Ok(());
    }
    anyhow::bail!(
        "{}: this gateway's servers and resources differ from the shared declarations in etcd (key {}, written by gateway {:?}): {}. Every gateway must declare the same servers and resources; fix this file, or, to change them for all gateways, stop every gateway, delete that key (etcdctl del {}) and start them with the new file",
        config.source.display(),
        keys.declarations(),
        theirs.gateway,
        diffs.join("; "),
        keys.declarations(),
    )
}

fn diff_named(
    theirs: &serde_json::Value,
    ours: &serde_json::Value,
    what: &str,
    out: &mut Vec<String>,
) {
    let by_name = |v: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|x| (x["name"].as_str().unwrap_or("?").to_owned(), x.clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    let (t, o) = (by_name(theirs), by_name(ours));
    for (name, v) in &o {
        match t.get(name) {
            None => out.push(format!("{what} {name:?} is not in the shared declarations")),
            Some(tv) if tv != v => out.push(format!("{what} {name:?} is declared differently")),
            _ => {}
        }
    }
    for name in t.keys().filter(|n| !o.contains_key(*n)) {
        out.push(format!(
            "{what} {name:?} of the shared declarations is missing here"
        ));
    }
    if out.is_empty() && theirs != ours {
        out.push(format!("the {what}s are declared in another order"));
    }
}

/// This host's identity: `/etc/machine-id`, else the host name.
pub fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(crate::config::default_gateway_name)
}

/// Refuses to start when a live gateway of another host uses this gateway's name (a copied
/// configuration): the two would overwrite each other's record. The same host (a restart) is
/// fine.
pub async fn check_name_free(
    pool: &Pool,
    keys: &Keys,
    name: &str,
    machine: &str,
) -> anyhow::Result<()> {
    let key = keys.gateway(name);
    let resp = pool
        .call(|mut c| {
            let key = key.clone();
            async move { c.get(key, None).await }
        })
        .await
        .map_err(|e| anyhow::anyhow!("etcd: reading {key}: {e}"))?;
    let Some(kv) = resp.kvs().first() else {
        return Ok(());
    };
    let Ok(other) = serde_json::from_slice::<GatewayRecord>(kv.value()) else {
        return Ok(()); // a record this version cannot read: its writer is another version
    };
    if !other.machine.is_empty() && other.machine != machine {
        let since = if other.started_ms == 0 {
            String::new()
        } else {
            format!(
                ", started {}",
                humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + Duration::from_millis(other.started_ms)
                )
            )
        };
        anyhow::bail!(
            "gateway.name {name:?} is already used by a live gateway on another host (machine id {}, API {}{since}): give each gateway its own [gateway] name",
            other.machine,
            other.api,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The directory.

struct Known {
    snapshot: Snapshot,
    /// etcd mod-revision of `P/state` for `snapshot` (0: the key does not exist).
    mod_rev: i64,
}

/// [`Directory`] on etcd (see the module docs).
pub struct EtcdDirectory {
    pool: Pool,
    keys: Keys,
    known: Mutex<Known>,
    /// The leader key's create-revision while this gateway leads.
    fence: Mutex<Option<i64>>,
    revision_tx: watch::Sender<Revision>,
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
        update: Update,
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
        let events = next.apply(&update);
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

async fn read_state(pool: &Pool, keys: &Keys) -> Result<(Snapshot, i64), DirectoryError> {
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

    async fn commit(&self, expected: Revision, update: Update) -> Result<Revision, DirectoryError> {
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
    /// A newer directory state.
    State(Box<Snapshot>),
}

/// Handle to the session task.
pub struct Session {
    record_tx: watch::Sender<GatewayRecord>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
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
            state_mod_rev: 0,
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

struct SessionTask {
    dir: std::sync::Arc<EtcdDirectory>,
    name: String,
    ttl: Duration,
    record_rx: watch::Receiver<GatewayRecord>,
    events: mpsc::Sender<ClusterEvent>,
    cancel: CancellationToken,
    lease: Option<i64>,
    state_mod_rev: i64,
    /// etcd revision of the last leader-key change handled (older ones, replayed by a new
    /// watch, are ignored).
    leader_rev: i64,
    gateways: BTreeMap<String, GatewayRecord>,
    /// What the controller was last told about etcd.
    connected: bool,
}

/// The leader key as read from etcd.
struct LeaderKey {
    name: String,
    create_rev: i64,
    lease: i64,
}

impl LeaderKey {
    fn of(kv: &etcd_client::KeyValue) -> LeaderKey {
        LeaderKey {
            name: String::from_utf8_lossy(kv.value()).into_owned(),
            create_rev: kv.create_revision(),
            lease: kv.lease(),
        }
    }
}

impl SessionTask {
    async fn run(mut self) {
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
    async fn report(&mut self, connected: bool, error: Option<String>) {
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
    async fn session(&mut self) -> Result<(), String> {
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
    async fn follow(
        &mut self,
        pool: &Pool,
        client: Client,
        keys: &Keys,
        lease: i64,
        lost_rx: &mut watch::Receiver<Option<String>>,
    ) -> Result<(), Follow> {
        let broken = |what: &str, e: etcd_client::Error| Follow::Broken(format!("{what}: {e}"));
        let read = Txn::new().and_then([
            TxnOp::get(keys.state(), None),
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
        let [state, leader, gateways] = gets.as_slice() else {
            return Err(Follow::Broken(
                "etcd answered the read with other parts".into(),
            ));
        };
        if let Some(kv) = state.kvs().first() {
            self.on_state(kv.value(), kv.mod_revision()).await;
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
                    // Gateway records first: when a lease expires, its gateway record and
                    // (for a leader) the leader key go in the same revision, and a new leader
                    // must not count the dead gateway.
                    let mut gateways_changed = false;
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = kv.key_str().unwrap_or_default();
                        let Some(name) = key.strip_prefix(&keys.gateways_prefix()) else { continue };
                        gateways_changed = true;
                        if ev.event_type() == EventType::Put {
                            self.insert_record(name, kv.value());
                        } else {
                            self.gateways.remove(name);
                        }
                    }
                    if gateways_changed {
                        let _ = self.events.send(ClusterEvent::Gateways(self.gateways.clone())).await;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let key = kv.key_str().unwrap_or_default();
                        let put = ev.event_type() == EventType::Put;
                        if key == keys.state() && put {
                            self.on_state(kv.value(), kv.mod_revision()).await;
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
                }
            }
        }
    }

    fn insert_record(&mut self, name: &str, value: &[u8]) {
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

    async fn put_record(&mut self, pool: &Pool, keys: &Keys, lease: i64) -> Result<(), String> {
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

    async fn on_state(&mut self, value: &[u8], mod_rev: i64) {
        if mod_rev <= self.state_mod_rev {
            return;
        }
        match serde_json::from_slice::<Snapshot>(value) {
            Ok(s) => {
                self.state_mod_rev = mod_rev;
                self.dir.observe_state(&s, mod_rev);
                let _ = self.events.send(ClusterEvent::State(Box::new(s))).await;
            }
            Err(e) => tracing::error!(
                "etcd key {} is not an ftn state, ignored: {e}",
                self.dir.keys().state()
            ),
        }
    }

    /// The leader key as it is now. A key under this session's own lease is ours whatever
    /// happened to the answer of the campaign that created it: its create-revision is the
    /// fence.
    async fn on_leader(&mut self, key: Option<LeaderKey>, lease: i64) {
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
    async fn campaign(&mut self, pool: &Pool, keys: &Keys, lease: i64) -> Result<(), Follow> {
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

enum Follow {
    /// The lease is gone: the session ends.
    Lost(String),
    /// The read or the watch failed: try again on the same lease.
    Broken(String),
}

/// Renews `lease` every ttl/4 on whichever member answers; reports on `lost` once it was not
/// renewed for a whole ttl, or etcd says it expired.
async fn keep_lease(
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
