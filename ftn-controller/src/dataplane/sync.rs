//! The map-sync thread: the only owner of the dataplane once `ftn run` is up. It applies the
//! engine's batches of changes in order (a failed batch sets `needs_resync`: the engine then
//! rewrites the whole state), answers counter reads, and follows the interfaces.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::{mpsc, oneshot};

use crate::model::{ResourceMatch, ReturnMatch};

use super::{AyaDataplane, Change, Dataplane, GlobalCounter, ResourceStats, ServerStats};

/// Counters read from the dataplane, by resource and server name.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub resources: Vec<(String, ResourceStats)>,
    pub servers: Vec<(String, ServerStats)>,
    pub global: Vec<(GlobalCounter, u64)>,
}

enum SyncMsg {
    /// Changes, and when the verdict (or operator request) they carry out was made, if one.
    Apply(Vec<Change>, Option<SystemTime>),
    /// Write everything and remove entries not in the sets (start, and after an error).
    Resync {
        desired: Desired,
        done: oneshot::Sender<Result<(), String>>,
    },
    Counters {
        resources: Vec<(String, u32)>,
        servers: Vec<(String, u32)>,
        reply: oneshot::Sender<Result<Counters, String>>,
    },
    /// Answered once everything queued before it is written.
    Barrier(oneshot::Sender<()>),
    /// Follow the interfaces (they changed, or a periodic look); the result goes to the stats.
    FollowInterfaces,
}

/// What the maps must hold, all of it: every entry as changes, and the keys that may stay.
#[derive(Debug, Default)]
pub struct Desired {
    pub changes: Vec<Change>,
    pub servers: BTreeSet<u32>,
    pub resources: BTreeSet<ResourceMatch>,
    pub returns: BTreeSet<ReturnMatch>,
}

/// Handle to the map-sync task.
#[derive(Clone)]
pub struct MapSync {
    tx: mpsc::UnboundedSender<SyncMsg>,
    stats: Arc<SyncStats>,
}

#[derive(Default, Debug)]
pub struct SyncStats {
    pub batches: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
    pub errors: std::sync::atomic::AtomicU64,
    /// Set when a batch failed: the engine task resynchronises the whole state.
    pub needs_resync: std::sync::atomic::AtomicBool,
    /// The configured interfaces as the dataplane last followed them.
    pub interfaces: std::sync::Mutex<Vec<crate::dataplane::InterfaceState>>,
    /// From each verdict (or operator request) to the maps holding what it decided.
    pub verdict_to_maps: VerdictToMaps,
}

/// Upper bounds (µs) of the buckets of [`VerdictToMaps`] (the last bucket is unbounded).
pub const VERDICT_TO_MAPS_BOUNDS_US: [u64; 12] = [
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000,
    5_000_000,
];

/// How long decisions took to reach the maps: from the verdict of a server's checks (its
/// `HealthChange::at`) or the API's receipt of an operator request, through the plan, the
/// durable directory commit and the map-sync queue, to the return of the last map write of
/// its batch. A histogram (cumulative when exposed) plus the last value.
#[derive(Default, Debug)]
pub struct VerdictToMaps {
    pub count: std::sync::atomic::AtomicU64,
    pub sum_us: std::sync::atomic::AtomicU64,
    pub last_us: std::sync::atomic::AtomicU64,
    /// Per bucket of [`VERDICT_TO_MAPS_BOUNDS_US`], and one past the last bound.
    pub buckets: [std::sync::atomic::AtomicU64; VERDICT_TO_MAPS_BOUNDS_US.len() + 1],
}

impl VerdictToMaps {
    pub fn record(&self, us: u64) {
        let i = VERDICT_TO_MAPS_BOUNDS_US
            .iter()
            .position(|b| us <= *b)
            .unwrap_or(VERDICT_TO_MAPS_BOUNDS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
        self.last_us.store(us, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }
}

/// Reads the dataplane's counters apart from the map-sync thread (`/metrics`), so that a scrape
/// never waits for, or delays, a batch of map writes.
pub trait ReadCounters: Send {
    /// The counters of the given (name, id) resources and servers, and the global ones.
    fn read(
        &mut self,
        resources: &[(String, u32)],
        servers: &[(String, u32)],
    ) -> Result<Counters, String>;
}

/// Lists a dataplane's keys so that a resync can remove strays.
pub trait ListKeys {
    fn server_ids(&self) -> Result<Vec<u32>, String>;
    fn resource_matches(&self) -> Result<Vec<ResourceMatch>, String>;
    fn return_matches(&self) -> Result<Vec<ReturnMatch>, String>;
}

impl MapSync {
    /// Starts the task; it owns `dp` from now on.
    pub fn spawn<D: Dataplane + ListKeys + 'static>(mut dp: D) -> MapSync {
        let (tx, mut rx) = mpsc::unbounded_channel::<SyncMsg>();
        let stats = Arc::new(SyncStats::default());
        let st = stats.clone();
        // A thread of its own (not the runtime's blocking pool): it lives as long as the
        // controller and does blocking map syscalls.
        let spawned = std::thread::Builder::new()
            .name("ftn-map-sync".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    // Batch: everything queued behind the first message goes in the same pass.
                    let mut batch = vec![first];
                    while let Ok(m) = rx.try_recv() {
                        batch.push(m);
                    }
                    let mut pending = Pending::default();
                    for m in batch {
                        match m {
                            SyncMsg::Apply(c, at) => {
                                pending.changes.extend(c);
                                pending.verdicts.extend(at);
                            }
                            other => {
                                flush(&mut dp, &mut pending, &st);
                                handle_other(&mut dp, other, &st);
                            }
                        }
                    }
                    flush(&mut dp, &mut pending, &st);
                }
            });
        if let Err(e) = spawned {
            // Without the thread every request answers "the map-sync task is gone".
            tracing::error!("cannot start the map-sync thread: {e}");
        }
        MapSync { tx, stats }
    }

    /// Asks the map-sync thread to follow the interfaces (see [`Dataplane::follow_interfaces`]).
    pub fn follow_interfaces(&self) {
        let _ = self.tx.send(SyncMsg::FollowInterfaces);
    }

    pub fn apply(&self, changes: Vec<Change>) {
        self.apply_verdict(changes, None);
    }

    /// [`apply`](Self::apply) of what a verdict made at `at` decided: the time from `at` to
    /// the maps holding it goes to [`SyncStats::verdict_to_maps`].
    pub fn apply_verdict(&self, changes: Vec<Change>, at: Option<SystemTime>) {
        if !changes.is_empty() {
            let _ = self.tx.send(SyncMsg::Apply(changes, at));
        }
    }

    /// Makes the maps hold exactly `desired` (the engine's [`Desired`] state): writes every
    /// entry and removes what is not in it.
    pub async fn resync(&self, desired: Desired) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(SyncMsg::Resync { desired, done })
            .map_err(|_| "the map-sync task is gone".to_string())?;
        rx.await
            .map_err(|_| "the map-sync task is gone".to_string())?
    }

    pub async fn counters(
        &self,
        resources: Vec<(String, u32)>,
        servers: Vec<(String, u32)>,
    ) -> Result<Counters, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(SyncMsg::Counters {
                resources,
                servers,
                reply,
            })
            .map_err(|_| "the map-sync task is gone".to_string())?;
        rx.await
            .map_err(|_| "the map-sync task is gone".to_string())?
    }

    /// Waits until every change sent before is in the maps.
    pub async fn barrier(&self) -> Result<(), String> {
        let (done, rx) = oneshot::channel();
        self.tx
            .send(SyncMsg::Barrier(done))
            .map_err(|_| "the map-sync task is gone".to_string())?;
        rx.await
            .map_err(|_| "the map-sync task is gone".to_string())
    }

    pub fn stats(&self) -> &SyncStats {
        &self.stats
    }

    /// The same counters, as a handle of its own (the announcer reads the interfaces).
    pub fn shared_stats(&self) -> Arc<SyncStats> {
        self.stats.clone()
    }
}

impl ListKeys for AyaDataplane {
    fn server_ids(&self) -> Result<Vec<u32>, String> {
        self.configured_server_ids().map_err(|e| e.to_string())
    }
    fn resource_matches(&self) -> Result<Vec<ResourceMatch>, String> {
        self.resource_matches().map_err(|e| e.to_string())
    }
    fn return_matches(&self) -> Result<Vec<ReturnMatch>, String> {
        self.return_matches().map_err(|e| e.to_string())
    }
}

impl ListKeys for crate::dataplane::MemoryDataplane {
    fn server_ids(&self) -> Result<Vec<u32>, String> {
        Ok(self.servers.keys().copied().collect())
    }
    fn resource_matches(&self) -> Result<Vec<ResourceMatch>, String> {
        Ok(self
            .resources
            .keys()
            .filter_map(ResourceMatch::from_key)
            .collect())
    }
    fn return_matches(&self) -> Result<Vec<ReturnMatch>, String> {
        Ok(self
            .returns
            .keys()
            .filter_map(ReturnMatch::from_key)
            .collect())
    }
}

/// Times each verdict of a batch whose writes all returned.
fn record_verdicts(verdicts: &[SystemTime], st: &SyncStats) {
    let now = SystemTime::now();
    for at in verdicts {
        // A clock stepped back between the two reads counts as 0.
        let us = now.duration_since(*at).unwrap_or_default().as_micros();
        st.verdict_to_maps
            .record(u64::try_from(us).unwrap_or(u64::MAX));
    }
}

/// Changes gathered for one write, and the times of the verdicts they carry out.
#[derive(Default)]
struct Pending {
    changes: Vec<Change>,
    verdicts: Vec<SystemTime>,
}

fn flush<D: Dataplane>(dp: &mut D, pending: &mut Pending, st: &SyncStats) {
    if pending.changes.is_empty() {
        return;
    }
    st.batches.fetch_add(1, Relaxed);
    match dp.apply(&pending.changes) {
        Ok(()) => {
            st.writes.fetch_add(pending.changes.len() as u64, Relaxed);
            if !pending.verdicts.is_empty() {
                record_verdicts(&pending.verdicts, st);
            }
        }
        Err((i, e)) => {
            st.writes.fetch_add(i as u64, Relaxed);
            st.errors.fetch_add(1, Relaxed);
            st.needs_resync.store(true, Relaxed);
            tracing::error!(error = %e, change = ?pending.changes[i], "dataplane write failed; the whole state will be rewritten");
        }
    }
    pending.changes.clear();
    pending.verdicts.clear();
}
fn handle_other<D: Dataplane + ListKeys>(dp: &mut D, m: SyncMsg, st: &SyncStats) {
    match m {
        SyncMsg::Apply(..) => {}
        SyncMsg::Barrier(done) => {
            let _ = done.send(());
        }
        SyncMsg::FollowInterfaces => follow(dp, st),
        SyncMsg::Resync { desired, done } => {
            let r = resync(dp, &desired, st);
            if r.is_err() {
                st.errors.fetch_add(1, Relaxed);
            } else {
                st.needs_resync.store(false, Relaxed);
            }
            let _ = done.send(r);
        }
        SyncMsg::Counters {
            resources,
            servers,
            reply,
        } => {
            let r = read_counters(dp, resources, servers);
            let _ = reply.send(r);
        }
    }
}

/// Records the interfaces as the dataplane now follows them; warns once per change.
fn follow<D: Dataplane>(dp: &mut D, st: &SyncStats) {
    let now = dp.follow_interfaces();
    let mut last = st.interfaces.lock().unwrap_or_else(|p| p.into_inner());
    for i in &now {
        let before = last.iter().find(|b| b.name == i.name);
        let changed = before.map(|b| (b.ifindex, b.attached)) != Some((i.ifindex, i.attached));
        if changed && !i.attached {
            tracing::warn!(interface = %i.name, ifindex = ?i.ifindex, "{}", i.note.as_deref().unwrap_or("not attached"));
        }
    }
    *last = now;
}

/// Writes every entry, then removes what the maps hold beyond `servers` and `resources`.
fn resync<D: Dataplane + ListKeys>(
    dp: &mut D,
    desired: &Desired,
    st: &SyncStats,
) -> Result<(), String> {
    let changes = &desired.changes;
    dp.apply(changes)
        .map_err(|(i, e)| format!("{e} (writing {:?})", changes[i]))?;
    st.writes.fetch_add(changes.len() as u64, Relaxed);
    for m in dp.resource_matches()? {
        if !desired.resources.contains(&m) {
            dp.remove_resource(&m).map_err(|e| e.to_string())?;
            tracing::info!(
                ?m,
                "removed a resource entry that is not in the configuration"
            );
        }
    }
    for m in dp.return_matches()? {
        if !desired.returns.contains(&m) {
            dp.remove_return(&m).map_err(|e| e.to_string())?;
        }
    }
    for id in dp.server_ids()? {
        if !desired.servers.contains(&id) {
            dp.remove_server(id).map_err(|e| e.to_string())?;
        }
    }
    // The maps may have held another configuration's keys (a restart after a change): every
    // established flow is checked against them once.
    dp.revalidate_flows().map_err(|e| e.to_string())
}

fn read_counters<D: Dataplane>(
    dp: &mut D,
    resources: Vec<(String, u32)>,
    servers: Vec<(String, u32)>,
) -> Result<Counters, String> {
    let mut c = Counters::default();
    for (name, id) in resources {
        c.resources
            .push((name, dp.resource_stats(id).map_err(|e| e.to_string())?));
    }
    for (name, id) in servers {
        c.servers
            .push((name, dp.server_stats(id).map_err(|e| e.to_string())?));
    }
    c.global = dp.global_stats().map_err(|e| e.to_string())?;
    Ok(c)
}
