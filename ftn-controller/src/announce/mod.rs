//! Announcing the VIPs: the set of VIP routes (/32, /128) this gateway wants its routing daemon
//! to announce over BGP, kept in a kernel routing table of ftn's own (`[announce] table`) that
//! the daemon exports (BIRD 2's `kernel` protocol with `learn`, FRR's `ip import-table`). ftn
//! never speaks BGP itself.
//!
//! **When a VIP is announced** (docs/OPERATIONS.md, "Gateway high availability"): while
//! - the gateway can serve: every configured interface has the XDP program attached, the maps
//!   hold the directory (a starting gateway announces only after its first full map sync), and,
//!   with a shared directory, etcd answers or was lost less than `etcd_grace` ago;
//! - and at least one resource of the VIP has a live server, or says
//!   `withdraw_without_server = false` (then `on_no_server` answers its clients).
//!
//! What is NOT a reason to withdraw: a controller crash or restart (the routes are kernel state;
//! they stay, and so does the pinned dataplane that forwards), and a SIGTERM (the dataplane
//! stays pinned and forwarding). `ftn detach` withdraws, waits `withdraw_wait`, then detaches.
//! Until the first evaluation after start the table is left as it is, so a restart changes no
//! route (except when the dataplane was loaded afresh: then nothing forwards the old routes'
//! traffic, and they are removed at once).
//!
//! The task ([`Announcer::spawn`]) is the only writer of the table. It reconciles the table with
//! what it wants after every change of its inputs, at the end of an etcd grace time, and every
//! [`RECHECK`] (a route an operator removed by hand comes back; one added by hand, with ftn's
//! protocol, goes).

pub mod kernel;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::dataplane::sync::SyncStats;
use crate::directory::ResourceRecord;
use crate::model::Prefix;

/// The table is compared with what is wanted at least this often.
pub const RECHECK: Duration = Duration::from_secs(2);
/// After a failed table write, the next attempt.
pub const RETRY: Duration = Duration::from_millis(500);

/// The routing table ftn writes to, seen as a set of host routes.
#[async_trait::async_trait]
pub trait RouteTable: Send {
    /// The routes of ftn's protocol in the table now.
    async fn list(&mut self) -> Result<BTreeSet<Prefix>, String>;
    async fn add(&mut self, route: Prefix) -> Result<(), String>;
    async fn remove(&mut self, route: Prefix) -> Result<(), String>;
}

/// What the announcer decides from; the controller sends a new one after every change.
#[derive(Clone)]
pub struct Inputs {
    pub config: Arc<Config>,
    /// The directory's resources (an O(1) copy of the engine's persistent map).
    pub resources: imbl::OrdMap<String, Arc<ResourceRecord>>,
    /// The maps hold the directory (set after the first full sync at start).
    pub maps_ready: bool,
    /// With a shared directory: etcd answers, and since when (unix ms) it has (or has not).
    pub etcd: Option<(bool, u64)>,
}

/// One VIP: announced or not, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipState {
    pub vip: IpAddr,
    /// Wanted by its resources (the gateway's own state aside).
    pub wanted: bool,
    /// In the routing table now.
    pub announced: bool,
    pub why: String,
}

/// What `/v1/status` and `/metrics` show.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AnnounceStatus {
    pub table: u32,
    /// Why the gateway announces nothing now (`None`: it may announce).
    pub withheld: Option<String>,
    pub vips: Vec<VipState>,
    /// `[announce] return_routes`, with whether each is in the table now.
    #[serde(default)]
    pub return_routes: Vec<(Prefix, bool)>,
    /// Routes added and removed since start.
    pub routes_added: u64,
    pub routes_removed: u64,
    pub errors: u64,
    pub last_error: Option<String>,
    /// The table has not been evaluated since start (left as it was).
    pub pending: bool,
}

/// Why this gateway must not announce anything now, if it must not. `now_ms` is unix ms.
pub fn withheld(inputs: &Inputs, stats: &SyncStats, now_ms: u64) -> Option<String> {
    if !inputs.maps_ready {
        return Some("starting: the maps do not hold the directory yet".into());
    }
    let interfaces = stats.interfaces.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = interfaces.iter().find(|i| !i.attached) {
        return Some(format!(
            "interface {} has no XDP program attached{}",
            i.name,
            i.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ));
    }
    drop(interfaces);
    let grace = inputs.config.announce.as_ref().and_then(|a| a.etcd_grace);
    match (inputs.etcd, grace) {
        (Some((false, since)), Some(grace)) => {
            let lost = Duration::from_millis(now_ms.saturating_sub(since));
            (lost >= grace).then(|| {
                format!(
                    "etcd lost {:.1} s ago (etcd_grace {}): this gateway's decisions may be stale",
                    lost.as_secs_f64(),
                    humantime::format_duration(grace)
                )
            })
        }
        _ => None,
    }
}

/// When an etcd grace time ends (unix ms), if one is running.
fn grace_ends(inputs: &Inputs) -> Option<u64> {
    let grace = inputs.config.announce.as_ref()?.etcd_grace?;
    match inputs.etcd {
        Some((false, since)) => Some(since.saturating_add(grace.as_millis() as u64)),
        _ => None,
    }
}

/// Every VIP of the configuration: wanted by its resources or not, and why.
pub fn wanted(
    config: &Config,
    resources: &imbl::OrdMap<String, Arc<ResourceRecord>>,
) -> Vec<VipState> {
    let mut by_vip: BTreeMap<IpAddr, (bool, Vec<String>)> = BTreeMap::new();
    for rc in &config.resources {
        let current = resources.get(&rc.name).and_then(|r| r.current.clone());
        let (want, why) = match (&current, rc.withdraw_without_server) {
            (Some(s), _) => (true, format!("{} on {s}", rc.name)),
            (None, true) => (false, format!("{} has no live server", rc.name)),
            (None, false) => (
                true,
                format!(
                    "{} has no live server (announced: withdraw_without_server = false)",
                    rc.name
                ),
            ),
        };
        let e = by_vip.entry(rc.vip).or_default();
        e.0 |= want;
        e.1.push(why);
    }
    by_vip
        .into_iter()
        .map(|(vip, (wanted, why))| VipState {
            vip,
            wanted,
            announced: false,
            why: why.join("; "),
        })
        .collect()
}

/// Removes every route of ftn's protocol from `table` (`ftn detach`); returns how many.
pub async fn withdraw_all(table: u32) -> Result<usize, String> {
    let mut t = kernel::KernelTable::open(table).map_err(|e| format!("netlink socket: {e}"))?;
    let have = t.list().await?;
    for route in &have {
        t.remove(*route).await?;
    }
    Ok(have.len())
}

/// The announcer's handle: its status, and the channel its inputs come through.
#[derive(Clone)]
pub struct Announcer {
    inputs: watch::Sender<Option<Inputs>>,
    status: Arc<Mutex<AnnounceStatus>>,
}

impl Announcer {
    /// Starts the task. `adopted`: the dataplane was adopted from its pins (it forwarded
    /// before this start), so the table is left as it is until the first evaluation.
    pub fn spawn(
        table: Box<dyn RouteTable>,
        table_id: u32,
        stats: Arc<SyncStats>,
        adopted: bool,
        shutdown: CancellationToken,
    ) -> Announcer {
        let (tx, rx) = watch::channel(None);
        let status = Arc::new(Mutex::new(AnnounceStatus {
            table: table_id,
            pending: true,
            ..Default::default()
        }));
        let task = Task {
            table,
            stats,
            status: status.clone(),
            adopted,
        };
        tokio::spawn(task.run(rx, shutdown));
        Announcer { inputs: tx, status }
    }

    /// New inputs (the task evaluates the latest one; older ones are skipped).
    pub fn update(&self, inputs: Inputs) {
        self.inputs.send_replace(Some(inputs));
    }

    pub fn status(&self) -> AnnounceStatus {
        self.status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

struct Task {
    table: Box<dyn RouteTable>,
    stats: Arc<SyncStats>,
    status: Arc<Mutex<AnnounceStatus>>,
    adopted: bool,
}

impl Task {
    async fn run(mut self, mut rx: watch::Receiver<Option<Inputs>>, shutdown: CancellationToken) {
        if !self.adopted {
            // A dataplane loaded afresh forwards nothing yet: routes left by an earlier run
            // would draw traffic into a black hole.
            self.reconcile(&BTreeSet::new()).await;
        }
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            let inputs = rx.borrow_and_update().clone();
            let now_ms = crate::directory::now_ms();
            let mut next = tokio::time::Instant::now() + RECHECK;
            if let Some(inputs) = &inputs {
                let ok = self.evaluate(inputs, now_ms).await;
                if !ok {
                    retry_at = Some(tokio::time::Instant::now() + RETRY);
                }
                if let Some(end) = grace_ends(inputs).filter(|e| *e > now_ms) {
                    next =
                        next.min(tokio::time::Instant::now() + Duration::from_millis(end - now_ms));
                }
            }
            if let Some(r) = retry_at.take() {
                next = next.min(r);
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(next) => {}
            }
        }
    }

    /// Brings the table to what `inputs` want; false when a write failed.
    async fn evaluate(&mut self, inputs: &Inputs, now_ms: u64) -> bool {
        let withheld = withheld(inputs, &self.stats, now_ms);
        if !inputs.maps_ready
            && self
                .status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pending
        {
            // Starting: the routes of the run before stay until the maps hold the directory.
            self.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .withheld = withheld;
            return true;
        }
        let mut vips = wanted(&inputs.config, &inputs.resources);
        let returns = inputs
            .config
            .announce
            .as_ref()
            .map(|a| a.return_routes.clone())
            .unwrap_or_default();
        let want: BTreeSet<Prefix> = if withheld.is_some() {
            BTreeSet::new()
        } else {
            vips.iter()
                .filter(|v| v.wanted)
                .map(|v| Prefix::host(v.vip))
                .chain(returns.iter().copied())
                .collect()
        };
        let (ok, have) = self.reconcile(&want).await;
        for v in &mut vips {
            v.announced = have.contains(&Prefix::host(v.vip));
        }
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.withheld != withheld {
            match &withheld {
                Some(why) => tracing::warn!("announcing nothing: {why}"),
                None if !st.pending => tracing::info!("announcing again"),
                None => {}
            }
        }
        st.withheld = withheld;
        st.vips = vips;
        st.return_routes = returns.iter().map(|r| (*r, have.contains(r))).collect();
        st.pending = false;
        if let Some(a) = &inputs.config.announce {
            st.table = a.table;
        }
        ok
    }

    /// Adds the wanted routes the table lacks and removes the ones it should not have; returns
    /// whether every write worked, and the table's routes afterwards (as far as known).
    async fn reconcile(&mut self, want: &BTreeSet<Prefix>) -> (bool, BTreeSet<Prefix>) {
        let mut have = match self.table.list().await {
            Ok(h) => h,
            Err(e) => {
                self.error(format!("reading the routing table: {e}"));
                return (false, BTreeSet::new());
            }
        };
        let mut ok = true;
        // Withdrawals first: a gateway that must stop serving stops before anything else.
        for route in have.difference(want).copied().collect::<Vec<_>>() {
            match self.table.remove(route).await {
                Ok(()) => {
                    have.remove(&route);
                    tracing::info!(%route, "route withdrawn");
                    self.count(false);
                }
                Err(e) => {
                    ok = false;
                    self.error(format!("withdrawing {route}: {e}"));
                }
            }
        }
        for route in want.difference(&have).copied().collect::<Vec<_>>() {
            match self.table.add(route).await {
                Ok(()) => {
                    have.insert(route);
                    tracing::info!(%route, "route announced");
                    self.count(true);
                }
                Err(e) => {
                    ok = false;
                    self.error(format!("announcing {route}: {e}"));
                }
            }
        }
        if ok {
            self.status
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .last_error = None;
        }
        (ok, have)
    }

    fn count(&self, added: bool) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if added {
            st.routes_added += 1;
        } else {
            st.routes_removed += 1;
        }
    }

    /// Counts a failed table operation; logs it when it is not the one logged last (a retry
    /// every [`RETRY`] that fails the same way logs once).
    fn error(&self, e: String) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if st.last_error.as_deref() != Some(e.as_str()) {
            tracing::error!("announcer: {e}");
        }
        st.errors += 1;
        st.last_error = Some(e);
    }
}

#[cfg(test)]
mod tests;
