//! The shared directory on etcd, for several gateways.
//!
//! Keys under the configured prefix `P` (layout 2; values are zstd-compressed JSON, chunked
//! when large: [`blob`]):
//! - `P/head`: `{"layout":2,"revision":N}`, the directory's revision. Every commit rewrites it,
//!   in a transaction that compares its mod-revision with the one the leader decided from
//!   *and* the leader key's create-revision with the leader's own (the fence): a deposed
//!   leader's late write fails.
//! - `P/log/<revision, 20 digits>`: what that commit changed (a [`LogEntryRef`]: the records it
//!   set or removed, the count of its events), in the same transaction. A commit costs what it
//!   changed, not the size of the directory.
//! - `P/events/<first sequence number, 20 digits>`: the events of one commit, in the same
//!   transaction.
//! - `P/checkpoint`: the whole directory at some revision, written by the leader in the
//!   background every [`CHECKPOINT_EVERY`] commits; the same transaction trims the log at and
//!   below it and the events beyond the retention ([`EVENTS_KEPT`]). A gateway reads the
//!   checkpoint and the log after it; followers apply each log entry from the watch.
//! - `P/chunks/<name>/<index>`: the pieces of a value too large for one etcd request, written
//!   before the key that names them.
//! - `P/declarations`: the servers and resources (JSON). Written by the first gateway that
//!   starts; every other gateway must declare exactly the same or it refuses to start.
//! - `P/leader`: the leader's name, under the leader's lease. Created with "only if absent"
//!   (create-revision == 0); its create-revision is the fence.
//! - `P/gateways/<name>`: one record per gateway (its observations of every server, the
//!   directory revision its maps hold), under the gateway's lease: a gateway is live while its
//!   lease is.
//! - `P/state`: layout 1 (ftn before layout 2) kept the whole directory in this one key and
//!   rewrote it on every commit. A gateway that finds it migrates it (when no gateway leads)
//!   and leaves a marker there that earlier versions refuse to read ([`migrate`]).
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
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, EtcdConfig};
use crate::directory::{
    Directory, DirectoryError, Event, LogEntry, LogEntryRef, Revision, Snapshot, Update,
};

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
    /// Layout 1's whole-directory key (read only to migrate it).
    pub fn state(&self) -> String {
        format!("{}/state", self.prefix)
    }
    pub fn head(&self) -> String {
        format!("{}/head", self.prefix)
    }
    pub fn checkpoint(&self) -> String {
        format!("{}/checkpoint", self.prefix)
    }
    pub fn log_prefix(&self) -> String {
        format!("{}/log/", self.prefix)
    }
    /// The log entry of one revision.
    pub fn log(&self, revision: Revision) -> String {
        format!("{}/log/{revision:020}", self.prefix)
    }
    /// Where the chunks of a large value named `name` go (`name` ends before the index).
    pub fn chunks(&self, name: &str) -> String {
        format!("{}/chunks/{name}/", self.prefix)
    }
    /// `P/chunks/<start>`: a bound of a range of chunk names.
    pub fn chunk_names(&self, start: &str) -> String {
        format!("{}/chunks/{start}", self.prefix)
    }
    pub fn checkpoints_prefix(&self) -> String {
        format!("{}/checkpoints/", self.prefix)
    }
    /// The state of the checkpoint at `revision`.
    pub fn checkpoint_state(&self, revision: Revision) -> String {
        format!("{}/checkpoints/{revision:020}", self.prefix)
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
        let key = Keys::new(&cfg.prefix).head();
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

mod blob;
mod declarations;
mod directory;
mod layout;
mod session;

pub use declarations::*;
pub use directory::*;
pub use layout::{CHECKPOINT_EVERY, EVENTS_KEPT};
pub use session::*;
