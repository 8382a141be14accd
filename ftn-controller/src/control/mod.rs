//! The controller: the decision engine's loop and what it owns (`crate::app` wires it to the
//! directory, the dataplane and the API server; this module names none of them but their
//! handles and `crate::wire`).
//!
//! Tasks and who owns what:
//! - the **engine task** (this module's [`Controller::run`] loop) owns the [`Engine`] and the
//!   directory handle; it is the only writer of the directory. It reacts to checker verdicts,
//!   operator requests (API), reloads (SIGHUP / API), and its own deadlines (hold and drain
//!   times);
//! - the **map-sync task** ([`MapSync`]) owns the dataplane; it applies batches of changes in
//!   order and answers counter reads. Nothing else touches the maps;
//! - one **checker** per server ([`ServerChecker`]), reporting health transitions;
//! - the **API** server (`crate::api::server`), which sends [`Request`]s to the engine task.
//!
//! Order of a decision: plan -> directory commit (durable) -> map write. If the controller dies
//! between the commit and the map write, the next start writes the directory's state into the
//! (pinned, still forwarding) maps, so the two agree again.

mod cluster;
mod reload;
mod status;

pub use cluster::{majority, ClusterView};
pub use reload::{config_changes, CONFIG_READ_TIMEOUT};
pub use status::{dataplane_fault, forwarding_warning, StatusInputs, DATAPLANE_FAULT_WINDOW_MS};

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::checks::{CheckSpec, HealthChange, NetProber, Prober, ServerChecker};
use crate::config::{self, Config};
use crate::dataplane::sync::MapSync;
use crate::dataplane::Change;
use crate::directory::etcd::{ClusterEvent, EtcdDirectory, GatewayRecord, Observed, Session};
use crate::directory::{Directory, DirectoryError, Event, EventDraft, Snapshot, Update};
use crate::engine::{Action, ActionError, Engine, Observation, Plan};
use crate::model::Health;
use crate::wire::{
    CheckStatus, ClusterStatus, GatewayStatus, ResourceStatus, ServerStatus, Status,
};
use ftn_common::{PassiveEvent, PASSIVE_RST};

/// Events of one commit written to the log one by one; the rest are counted in one line (a
/// 10,000-resource failover would otherwise write 10,000 lines; the directory keeps them all).
const LOGGED_EVENTS: usize = 50;

/// The controller's clock in unix milliseconds, advancing with `tokio::time` (so tests that
/// pause time drive hold and drain timers too).
#[derive(Clone, Copy)]
pub struct Clock {
    wall_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    pub fn new() -> Self {
        Clock {
            wall_ms: crate::directory::now_ms(),
            start: tokio::time::Instant::now(),
        }
    }
    pub fn now_ms(&self) -> u64 {
        self.wall_ms + self.start.elapsed().as_millis() as u64
    }
    pub fn instant_at(&self, ms: u64) -> tokio::time::Instant {
        self.start + Duration::from_millis(ms.saturating_sub(self.wall_ms))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Requests from the API.

/// An API request to the engine task.
pub enum Request {
    /// What a status answer is built from (cheap to take; built by the caller, off this task).
    Status(oneshot::Sender<StatusInputs>),
    Events {
        after: u64,
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Event>, String>>,
    },
    /// An operator action, received by the API at the given time.
    Action(
        Action,
        std::time::SystemTime,
        oneshot::Sender<Result<String, RequestError>>,
    ),
    Reload(oneshot::Sender<Result<String, RequestError>>),
    /// The running configuration (the token is never included).
    Config(oneshot::Sender<serde_json::Value>),
}

/// Why a request failed: the caller's fault (4xx) or ours (5xx).
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("{0}")]
    Refused(#[from] ActionError),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Internal(String),
    /// Sent to a gateway that does not lead the shared directory.
    #[error("{0}")]
    NotLeader(String),
}

// ---------------------------------------------------------------------------------------------
// The controller.

pub struct Controller {
    engine: Engine,
    directory: Arc<dyn Directory>,
    sync: MapSync,
    clock: Clock,
    checkers: HashMap<String, (ServerChecker, config::ServerConfig)>,
    /// What the status shows of `checkers`, rebuilt when they change ([`StatusInputs`]).
    checker_views: Arc<HashMap<String, crate::checks::CheckerView>>,
    health_tx: mpsc::Sender<HealthChange>,
    health_rx: mpsc::Receiver<HealthChange>,
    cancel: CancellationToken,
    config_path: PathBuf,
    interfaces: Vec<String>,
    adopted: bool,
    /// Persistent maps (like the snapshot's): the status takes an O(1) copy.
    failovers: imbl::HashMap<String, u64>,
    commit_errors: u64,
    reloads_ok: u64,
    reloads_failed: u64,
    passive_signals: imbl::HashMap<String, u64>,
    /// When each server last had new connections go unanswered (passive report, ms).
    unanswered_at: imbl::HashMap<String, u64>,
    /// The dataplane-fault warning in force (see [`dataplane_fault`]), if any.
    dataplane_fault: Option<String>,
    /// The last directory commit failed: retried every second.
    commit_failed: bool,
    /// When the verdict (or operator request) the next step carries out was made: the map-sync
    /// task times it to the maps ([`crate::dataplane::sync::VerdictToMaps`]).
    verdict_at: Option<std::time::SystemTime>,
    prober: Arc<dyn Prober>,
    /// Token the API checks (updated on reload).
    pub token: Arc<std::sync::RwLock<Option<String>>>,
    /// Set with a shared (etcd) directory.
    cluster: Option<ClusterView>,
    /// Set with `[announce]` ([`Controller::set_announcer`]).
    announcer: Option<crate::announce::Announcer>,
    /// The maps hold the directory (its first full write at start succeeded).
    maps_ready: bool,
}

fn spec(c: &config::CheckConfig) -> CheckSpec {
    CheckSpec {
        probe: c.kind.clone(),
        interval: c.interval,
        timeout: c.timeout,
        rise: c.rise,
        fall: c.fall,
    }
}

impl Controller {
    /// Builds a controller from a valid config, a directory and a dataplane; commits the first
    /// plan and writes the directory's whole state into the dataplane.
    pub async fn start(
        config: Arc<Config>,
        directory: Arc<dyn Directory>,
        sync: MapSync,
        interfaces: Vec<String>,
        adopted: bool,
    ) -> anyhow::Result<Controller> {
        Self::start_with_prober(
            config,
            directory,
            sync,
            interfaces,
            adopted,
            Arc::new(NetProber),
            None,
        )
        .await
    }

    /// [`Controller::start`] with the probes run by `prober` (tests inject outcomes).
    pub async fn start_with_prober(
        config: Arc<Config>,
        directory: Arc<dyn Directory>,
        sync: MapSync,
        interfaces: Vec<String>,
        adopted: bool,
        prober: Arc<dyn Prober>,
        cluster: Option<ClusterView>,
    ) -> anyhow::Result<Controller> {
        let snapshot: Snapshot = directory
            .snapshot()
            .await
            .context("reading the directory")?;
        let clock = Clock::new();
        let engine = Engine::new(config.clone(), snapshot);
        let (health_tx, health_rx) = mpsc::channel(1024);
        let mut c = Controller {
            engine,
            directory,
            sync,
            clock,
            checkers: HashMap::new(),
            checker_views: Arc::default(),
            health_tx,
            health_rx,
            cancel: CancellationToken::new(),
            config_path: config.source.clone(),
            interfaces,
            adopted,
            failovers: imbl::HashMap::new(),
            commit_errors: 0,
            reloads_ok: 0,
            reloads_failed: 0,
            passive_signals: imbl::HashMap::new(),
            unanswered_at: imbl::HashMap::new(),
            dataplane_fault: None,
            commit_failed: false,
            verdict_at: None,
            prober,
            token: Arc::new(std::sync::RwLock::new(config.api.token.clone())),
            cluster,
            announcer: None,
            maps_ready: false,
        };
        // With a shared directory only the leader writes (once elected): this gateway's maps
        // just get the directory's state. Alone, the first plan and the start are recorded.
        if c.cluster.is_none() {
            c.step(None).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let start = Update {
                events: vec![EventDraft {
                    kind: "start".into(),
                    resource: None,
                    server: None,
                    message: format!(
                        "controller started with {} ({})",
                        c.config_path.display(),
                        if adopted {
                            "adopted the pinned dataplane: it kept forwarding, no flow remapped"
                        } else {
                            "loaded the XDP dataplane"
                        }
                    ),
                }],
                ..Default::default()
            };
            let rev = c
                .directory
                .commit(c.engine.snapshot().revision, &start)
                .await
                .context("recording the start in the directory")?;
            c.engine.committed(&start, rev);
        }
        c.sync.resync(c.engine.desired()).await.map_err(|e| {
            anyhow::anyhow!("writing the directory's state into the dataplane: {e}")
        })?;
        c.maps_ready = true;
        c.sync_checkers();
        c.publish_applied().await;
        Ok(c)
    }

    /// From now on the announcer learns of every change that decides what to announce.
    pub fn set_announcer(&mut self, a: crate::announce::Announcer) {
        self.announcer = Some(a);
        self.announce();
    }

    /// Hands the announcer the newest inputs (O(1): the resources are a persistent map).
    fn announce(&self) {
        let Some(a) = &self.announcer else { return };
        a.update(crate::announce::Inputs {
            config: self.engine.config().clone(),
            resources: self.engine.snapshot().resources.clone(),
            maps_ready: self.maps_ready,
            etcd: self
                .cluster
                .as_ref()
                .map(|cv| (cv.etcd_ok, cv.etcd_since_ms)),
        });
    }

    /// (Re)starts checkers so that exactly the configured servers are checked with their
    /// configured checks; a checker whose server and checks did not change keeps running.
    fn sync_checkers(&mut self) {
        let cfg = self.engine.config().clone();
        let wanted: HashMap<&str, &config::ServerConfig> =
            cfg.servers.iter().map(|s| (s.name.as_str(), s)).collect();
        let stale: Vec<String> = self
            .checkers
            .iter()
            .filter(|(name, (_, running))| wanted.get(name.as_str()).copied() != Some(running))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some((ch, _)) = self.checkers.remove(&name) {
                ch.stop();
            }
            if let Some(cv) = &mut self.cluster {
                cv.local.remove(&name);
            }
        }
        for s in &cfg.servers {
            if self.checkers.contains_key(&s.name) {
                continue;
            }
            // Start from what the directory says, so a restart does not replay the rise count.
            let initial_up = self.engine.latest_health(&s.name) != Some(Health::Down);
            if let Some(cv) = &mut self.cluster {
                cv.local.insert(
                    s.name.clone(),
                    Observed {
                        up: initial_up,
                        evidence: "not checked yet: as the directory says".into(),
                    },
                );
            }
            let checker = ServerChecker::spawn_with_prober(
                s.name.clone(),
                s.address,
                s.checks.iter().map(spec).collect(),
                initial_up,
                self.health_tx.clone(),
                self.cancel.child_token(),
                self.prober.clone(),
            );
            self.checkers.insert(s.name.clone(), (checker, s.clone()));
        }
        self.checker_views = Arc::new(
            self.checkers
                .iter()
                .map(|(name, (c, _))| (name.clone(), c.view()))
                .collect(),
        );
        if let Some(cv) = &self.cluster {
            let local = cv.local.clone();
            cv.session.publish(|r| r.observations = local);
        }
    }

    /// A verdict of this gateway's checks: to the engine (embedded directory), or published
    /// to the other gateways (shared directory; the leader decides from the majority).
    fn observe_local(&mut self, h: HealthChange, now: u64) {
        match &mut self.cluster {
            None => self.engine.observe(
                &h.server,
                Observation {
                    up: h.up,
                    evidence: h.evidence,
                    at_ms: now,
                },
            ),
            Some(cv) => {
                cv.local.insert(
                    h.server,
                    Observed {
                        up: h.up,
                        evidence: h.evidence,
                    },
                );
                let local = cv.local.clone();
                cv.session.publish(|r| r.observations = local);
            }
        }
    }

    /// One reconcile step: plan, commit, apply. Returns a summary of what moved.
    async fn step(&mut self, action: Option<&Action>) -> Result<String, RequestError> {
        // A verdict that decides nothing now is not timed later with another step's changes.
        let verdict_at = self.verdict_at.take();
        if let Some(cv) = &self.cluster {
            if !cv.leads() {
                self.commit_failed = false;
                return match action {
                    None => Ok("this gateway does not lead: nothing decided".into()),
                    Some(_) => Err(RequestError::NotLeader(format!(
                        "gateway {} does not lead the shared directory; send this to the leader ({}) — only the leader decides",
                        cv.me,
                        cv.leader.as_deref().unwrap_or("none elected now: etcd unreachable or an election in progress")
                    ))),
                };
            }
            self.feed_majority();
        }
        let now = self.clock.now_ms();
        let plan: Plan = self.engine.plan(now, action)?;
        if plan.is_empty() {
            self.commit_failed = false;
            return Ok("nothing to change".into());
        }
        let expected = self.engine.snapshot().revision;
        match self.directory.commit(expected, &plan.update).await {
            Ok(rev) => {
                if self.commit_failed {
                    tracing::info!(revision = rev, "directory commits work again");
                }
                self.commit_failed = false;
                self.engine.committed(&plan.update, rev);
                // The maps first: logging and counting wait until the change is on its way.
                self.sync.apply_verdict(plan.changes, verdict_at);
                for e in plan.update.events.iter().take(LOGGED_EVENTS) {
                    tracing::info!(kind = %e.kind, resource = e.resource.as_deref().unwrap_or(""), server = e.server.as_deref().unwrap_or(""), revision = rev, "{}", e.message);
                }
                if let Some(more) = plan
                    .update
                    .events
                    .len()
                    .checked_sub(LOGGED_EVENTS)
                    .filter(|n| *n > 0)
                {
                    tracing::info!(
                        revision = rev,
                        "and {more} more events of this revision (ftn events lists them all)"
                    );
                }
                for r in &plan.moved {
                    *self.failovers.entry(r.clone()).or_default() += 1;
                }
                self.publish_applied().await;
                self.announce();
                Ok(if plan.update.events.is_empty() {
                    format!("directory at revision {rev}")
                } else {
                    plan.update
                        .events
                        .iter()
                        .map(|e| e.message.clone())
                        .collect::<Vec<_>>()
                        .join("; ")
                })
            }
            Err(e) => {
                self.commit_errors += 1;
                if let Some(cv) = &mut self.cluster {
                    if matches!(e, DirectoryError::Fenced { .. } | DirectoryError::NotLeader) {
                        tracing::warn!(error = %e, "directory commit refused: this gateway no longer leads; nothing applied");
                        // Only the leadership this commit was made under ends (the session may
                        // already have won a newer one).
                        if let DirectoryError::Fenced { fence, .. } = &e {
                            if cv.fence == Some(*fence) {
                                cv.fence = None;
                            }
                        } else {
                            cv.fence = cv.dir.fence();
                        }
                        self.commit_failed = false;
                        return Err(RequestError::NotLeader(format!(
                            "directory commit refused: {e}"
                        )));
                    }
                }
                self.commit_failed = true;
                tracing::error!(error = %e, "directory commit failed; nothing applied, retrying every second from the directory's state");
                match &self.cluster {
                    // The shared directory may have moved on (another leader): follow it, maps
                    // included. The etcd directory already learnt its state from the refusal.
                    Some(cv) => {
                        let current = cv.dir.current();
                        self.apply_snapshot(current).await;
                    }
                    None => {
                        if let Ok(s) = self.directory.snapshot().await {
                            self.engine.resync(s);
                        }
                    }
                }
                Err(RequestError::Internal(format!(
                    "directory commit failed: {e}"
                )))
            }
        }
    }

    async fn handle(&mut self, req: Request) {
        match req {
            Request::Status(reply) => {
                let _ = reply.send(self.status_inputs());
            }
            Request::Events {
                after,
                limit,
                reply,
            } => {
                // Off the engine task: reading the log may wait on etcd.
                let directory = self.directory.clone();
                tokio::spawn(async move {
                    let r = directory
                        .events(after, limit)
                        .await
                        .map_err(|e| e.to_string());
                    let _ = reply.send(r);
                });
            }
            Request::Action(action, received, reply) => {
                self.verdict_at = Some(received);
                let r = self.step(Some(&action)).await;
                match &r {
                    Ok(m) => tracing::info!(?action, "operator action applied: {m}"),
                    Err(e) => tracing::warn!(?action, "operator action refused: {e}"),
                }
                let _ = reply.send(r);
            }
            Request::Reload(reply) => {
                let r = self.reload().await;
                let _ = reply.send(r);
            }
            Request::Config(reply) => {
                let v = serde_json::to_value(&**self.engine.config())
                    .unwrap_or_else(|e| serde_json::json!({ "error": e.to_string() }));
                let _ = reply.send(v);
            }
        }
    }

    /// The engine loop. Returns when `shutdown` is cancelled (SIGTERM/SIGINT); the dataplane
    /// stays pinned and forwarding.
    /// A passive health report from the dataplane: the server's checks run at once.
    fn on_passive(&mut self, ev: PassiveEvent) {
        let Some(name) = self
            .engine
            .snapshot()
            .servers
            .values()
            .find(|s| s.id == ev.server_id)
            .map(|s| s.name.clone())
        else {
            return;
        };
        let why = match ev.kind {
            PASSIVE_RST => format!("{} new connections refused (RST) in a row", ev.count),
            _ => format!(
                "{} new connections unanswered for {:.1} ms",
                ev.count,
                f64::from(ev.age_us) / 1000.0
            ),
        };
        *self.passive_signals.entry(name.clone()).or_default() += 1;
        tracing::info!(server = %name, "passive health: {why}; checking it now");
        if let Some((checker, _)) = self.checkers.get(&name) {
            checker.suspect(&why);
        }
        if ev.kind != PASSIVE_RST {
            self.unanswered_at.insert(name, self.clock.now_ms());
        }
        self.check_dataplane_fault();
    }

    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<Request>,
        mut reload_signal: mpsc::Receiver<()>,
        mut passive: mpsc::Receiver<PassiveEvent>,
        mut cluster_rx: mpsc::Receiver<ClusterEvent>,
        shutdown: CancellationToken,
    ) {
        // Every second: retry a failed directory commit (the plan is recomputed from the
        // directory's state and the latest observations) and rewrite the maps after a failed
        // map write.
        let mut repair = tokio::time::interval(Duration::from_secs(1));
        repair.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A deadline that already woke a step which changed nothing is not armed again (a
        // deadline in the past would otherwise spin this loop).
        let mut spent_deadline: Option<u64> = None;
        loop {
            // While commits fail, retries come from the `repair` tick only.
            let deadline_ms = self
                .engine
                .next_deadline()
                .filter(|ms| !self.commit_failed && Some(*ms) != spent_deadline);
            let deadline = deadline_ms.map(|ms| self.clock.instant_at(ms));
            let sleep = async {
                match deadline {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(h) = self.health_rx.recv() => {
                    let now = self.clock.now_ms();
                    let mut first = h.at;
                    self.observe_local(h, now);
                    // Verdicts that arrive together are decided together.
                    while let Ok(h) = self.health_rx.try_recv() {
                        first = first.min(h.at);
                        self.observe_local(h, now);
                    }
                    self.verdict_at = Some(first);
                    let _ = self.step(None).await;
                }
                Some(ev) = cluster_rx.recv() => self.on_cluster(ev).await,
                Some(req) = requests.recv() => self.handle(req).await,
                Some(ev) = passive.recv() => self.on_passive(ev),
                Some(()) = reload_signal.recv() => { let _ = self.reload().await; }
                _ = sleep => {
                    let revision = self.engine.snapshot().revision;
                    let _ = self.step(None).await;
                    if self.engine.snapshot().revision == revision {
                        spent_deadline = deadline_ms;
                    }
                }
                _ = repair.tick() => {
                    if self.commit_failed {
                        let _ = self.step(None).await;
                    }
                    if self.sync.stats().needs_resync.load(std::sync::atomic::Ordering::Relaxed) {
                        if let Err(e) = self.sync.resync(self.engine.desired()).await {
                            tracing::error!("dataplane resync failed: {e}");
                        }
                    }
                }
            }
        }
        self.cancel.cancel();
        for (_, (c, _)) in self.checkers.drain() {
            c.stop();
        }
        if let Some(cv) = &self.cluster {
            // The session hands the lease back: another gateway leads at once.
            cv.session.finished(Duration::from_secs(1)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    //! The whole controller (checkers, engine, embedded directory, map-sync task) on an
    //! in-memory dataplane, with injected probe outcomes and paused time.
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    use super::cluster::state_diff;
    use super::*;
    use crate::checks::{ProbeFailure, ProbeFuture};
    use crate::config::DirectoryConfig;
    use crate::dataplane::sync::ListKeys;
    use crate::dataplane::{
        Dataplane, DataplaneError, GlobalCounter, MemoryDataplane, ResourceAssignment,
        ResourceStats, ServerEntry, ServerStats,
    };
    use crate::directory::EmbeddedDirectory;
    use crate::model::{Protocol, ResourceMatch};

    /// Every server in use unanswered while its checks pass: the gateway's fault; one server,
    /// a stale report, a server whose checks fail, or one server in use: not.
    #[test]
    fn dataplane_fault_needs_every_server_in_use_unanswered_with_passing_checks() {
        let in_use: BTreeSet<String> = ["p1".to_string(), "p6".to_string()].into();
        let now = 100_000;
        let recent: imbl::HashMap<String, u64> = [
            ("p1".to_string(), now - 100),
            ("p6".to_string(), now - 4_000),
        ]
        .into_iter()
        .collect();
        let fault = dataplane_fault(&in_use, &recent, |_| true, now).expect("suspected");
        assert!(
            fault.contains("(p1, p6)") && fault.contains("xdp_mode = \"generic\""),
            "{fault}"
        );
        // One of them failing its checks: a server problem, not the gateway's.
        assert!(dataplane_fault(&in_use, &recent, |s| s != "p6", now).is_none());
        // One report too old.
        assert!(dataplane_fault(&in_use, &recent, |_| true, now + 1_001).is_none());
        // Only one of the servers in use unanswered.
        let one: imbl::HashMap<String, u64> = [("p1".to_string(), now)].into_iter().collect();
        assert!(dataplane_fault(&in_use, &one, |_| true, now).is_none());
        // A single server in use: cannot tell.
        let single: BTreeSet<String> = ["p1".to_string()].into();
        assert!(dataplane_fault(&single, &recent, |_| true, now).is_none());
    }

    /// A reload that changes only checks (or the token) says what it changed, instead of
    /// "nothing to change".
    #[test]
    fn config_changes_name_checks_servers_and_token() {
        let base = "[gateway]\nname = \"gw\"\ninterfaces = [\"eth0\"]\n[[server]]\nname = \"p1\"\naddress = \"198.18.2.10\"\nchecks = [{ type = \"tcp\", port = 80 }]\n";
        let old = config::parse(base, Path::new("/etc/ftn/ftn.toml")).unwrap();
        let text = base.replace(
            "{ type = \"tcp\", port = 80 }",
            "{ type = \"tcp\", port = 80, interval = \"500ms\" }",
        ) + "[[server]]\nname = \"b1\"\naddress = \"198.18.3.10\"\n[api]\ntoken = \"0123456789abcdef0123\"\n";
        let new = config::parse(&text, Path::new("/etc/ftn/ftn.toml")).unwrap();
        assert_eq!(
            config_changes(&old, &new),
            [
                "server p1: checks tcp:80 every 1s, timeout 50ms, rise 3, fall 2 -> tcp:80 every 500ms, timeout 50ms, rise 3, fall 2 (its checks restart from its recorded state)",
                "server b1 added (198.18.3.10)",
                "API token set: changes through the API are enabled",
            ]
        );
        assert!(config_changes(&new, &new).is_empty());
    }

    /// The dataplane the map-sync task owns, shared so the test can look at it.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<MemoryDataplane>>);

    impl Dataplane for Shared {
        fn set_server(&mut self, id: u32, s: &ServerEntry) -> Result<(), DataplaneError> {
            self.0.lock().unwrap().set_server(id, s)
        }
        fn remove_server(&mut self, id: u32) -> Result<(), DataplaneError> {
            self.0.lock().unwrap().remove_server(id)
        }
        fn set_resource(
            &mut self,
            m: &ResourceMatch,
            a: &ResourceAssignment,
        ) -> Result<(), DataplaneError> {
            self.0.lock().unwrap().set_resource(m, a)
        }
        fn remove_resource(&mut self, m: &ResourceMatch) -> Result<(), DataplaneError> {
            self.0.lock().unwrap().remove_resource(m)
        }
        fn set_fragments(
            &mut self,
            m: &ResourceMatch,
            t: &crate::dataplane::FragmentTarget,
        ) -> Result<(), DataplaneError> {
            self.0.lock().unwrap().set_fragments(m, t)
        }
        fn set_return(
            &mut self,
            m: &crate::model::ReturnMatch,
            t: &crate::dataplane::ReturnTarget,
        ) -> Result<(), DataplaneError> {
            self.0.lock().unwrap().set_return(m, t)
        }
        fn remove_return(&mut self, m: &crate::model::ReturnMatch) -> Result<(), DataplaneError> {
            self.0.lock().unwrap().remove_return(m)
        }
        fn set_config(
            &mut self,
            c: &crate::dataplane::DataplaneConfig,
        ) -> Result<(), DataplaneError> {
            self.0.lock().unwrap().set_config(c)
        }
        fn revalidate_flows(&mut self) -> Result<(), DataplaneError> {
            self.0.lock().unwrap().revalidate_flows()
        }
        fn resource_stats(&self, id: u32) -> Result<ResourceStats, DataplaneError> {
            self.0.lock().unwrap().resource_stats(id)
        }
        fn server_stats(&self, id: u32) -> Result<ServerStats, DataplaneError> {
            self.0.lock().unwrap().server_stats(id)
        }
        fn global_stats(&self) -> Result<Vec<(GlobalCounter, u64)>, DataplaneError> {
            self.0.lock().unwrap().global_stats()
        }
    }

    impl ListKeys for Shared {
        fn server_ids(&self) -> Result<Vec<u32>, String> {
            self.0.lock().unwrap().server_ids()
        }
        fn resource_matches(&self) -> Result<Vec<ResourceMatch>, String> {
            ListKeys::resource_matches(&*self.0.lock().unwrap())
        }
        fn return_matches(&self) -> Result<Vec<crate::model::ReturnMatch>, String> {
            ListKeys::return_matches(&*self.0.lock().unwrap())
        }
    }

    /// p1's probes fail while `p1_down` is set; everything else answers in 1 ms.
    #[derive(Default)]
    struct Script {
        p1_down: AtomicBool,
    }

    impl Prober for Script {
        fn probe<'a>(
            &'a self,
            _: &'a crate::checks::Probe,
            addr: std::net::IpAddr,
            _: Duration,
        ) -> ProbeFuture<'a> {
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                if addr.to_string() == "198.18.2.10" && self.p1_down.load(Ordering::Relaxed) {
                    Err(ProbeFailure::new("connection refused"))
                } else {
                    Ok(Duration::from_millis(1))
                }
            })
        }
    }

    const CONFIG: &str = r#"
[gateway]
interfaces = ["gw0"]

[[server]]
name = "p1"
address = "198.18.2.10"
checks = [{ type = "tcp", port = 80 }]

[[server]]
name = "b1"
address = "198.18.3.10"
checks = [{ type = "tcp", port = 80 }]

[[resource]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80]
servers = ["p1", "b1"]
"#;

    fn web_server(dp: &Shared) -> Option<u32> {
        let m = ResourceMatch {
            vip: "198.18.100.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        dp.0.lock().unwrap().resource(&m).map(|v| v.server_id)
    }

    /// Waits in real time (bounded) for the map-sync thread.
    fn wait_real(ok: impl Fn() -> bool, what: &str) {
        for _ in 0..2000 {
            if ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("{what}: not within 2 s");
    }

    async fn status(tx: &mpsc::Sender<Request>) -> Status {
        let (reply, rx) = oneshot::channel();
        tx.send(Request::Status(reply)).await.unwrap();
        rx.await.unwrap().build()
    }

    #[test]
    fn majority_needs_more_than_half_of_the_reporting_gateways() {
        let rec = |obs: &[(&str, bool)]| GatewayRecord {
            observations: obs
                .iter()
                .map(|(s, up)| {
                    (
                        s.to_string(),
                        Observed {
                            up: *up,
                            evidence: if *up { "ok".into() } else { "refused".into() },
                        },
                    )
                })
                .collect(),
            ..Default::default()
        };
        fn of(r: &BTreeMap<String, GatewayRecord>) -> BTreeMap<String, (bool, String)> {
            majority(r.iter().map(|(g, rec)| (g.as_str(), &rec.observations)))
        }
        let mut r = BTreeMap::new();
        r.insert("gw1".to_string(), rec(&[("p", false), ("b", true)]));
        r.insert("gw2".to_string(), rec(&[("p", true), ("b", true)]));
        r.insert("gw3".to_string(), rec(&[("p", true), ("b", true)]));
        let m = of(&r);
        // One gateway that cannot reach p does not fail it for everyone.
        assert!(m["p"].0, "{:?}", m["p"]);
        assert_eq!(m["p"].1, "2 of 3 gateways see it up (gw2, gw3)");
        r.insert("gw2".to_string(), rec(&[("p", false), ("b", true)]));
        let m = of(&r);
        assert!(!m["p"].0);
        assert_eq!(
            m["p"].1,
            "2 of 3 gateways see it down (gw1: refused; gw2: refused)"
        );
        // Two live gateways that disagree: no verdict (the directory keeps what it has).
        r.remove("gw3");
        r.insert("gw2".to_string(), rec(&[("p", true), ("b", true)]));
        let m = of(&r);
        assert!(!m.contains_key("p"), "{m:?}");
        assert!(m["b"].0);
        // A gateway that reports nothing on a server does not count for it.
        r.insert("gw3".to_string(), rec(&[("b", false)]));
        assert!(!of(&r).contains_key("p"));
        assert!(of(&r)["b"].0);
    }

    #[test]
    fn state_diff_writes_only_what_changed_and_removes_what_went() {
        use crate::dataplane::ServerEntry;
        let srv = |id: u32, up: bool| Change::SetServer {
            id,
            server: ServerEntry {
                addr: "198.18.50.1".parse().unwrap(),
                up,
                generation: 1,
            },
        };
        let old = vec![srv(1, true), srv(2, true), srv(3, true)];
        let new = vec![srv(1, true), srv(2, false), srv(4, true)];
        let d = state_diff(old, new);
        assert_eq!(
            d,
            vec![
                srv(2, false),
                srv(4, true),
                Change::RemoveServer { id: 3 },
                // A removal: established flows are checked against the maps again.
                Change::RevalidateFlows,
            ]
        );
        assert!(state_diff(vec![srv(1, true)], vec![srv(1, true)]).is_empty());
    }

    /// The whole controller on `CONFIG`, an embedded directory in a temporary directory and the
    /// shared in-memory dataplane, its loop running.
    struct Running {
        tmp: tempfile::TempDir,
        dp: Shared,
        script: Arc<Script>,
        req_tx: mpsc::Sender<Request>,
        shutdown: CancellationToken,
        task: tokio::task::JoinHandle<()>,
        /// Kept open for the loop.
        _channels: (
            mpsc::Sender<()>,
            mpsc::Sender<PassiveEvent>,
            mpsc::Sender<ClusterEvent>,
        ),
    }

    impl Running {
        async fn start() -> Running {
            let tmp = tempfile::tempdir().unwrap();
            let mut cfg = crate::config::parse(CONFIG, Path::new("t.toml")).unwrap();
            cfg.directory = DirectoryConfig::Embedded {
                path: tmp.path().into(),
            };
            let dir: Arc<dyn Directory> = Arc::new(EmbeddedDirectory::open(tmp.path()).unwrap());
            let dp = Shared::default();
            let script = Arc::new(Script::default());
            let c = Controller::start_with_prober(
                Arc::new(cfg),
                dir,
                MapSync::spawn(dp.clone()),
                vec![],
                false,
                script.clone(),
                None,
            )
            .await
            .unwrap();
            let (req_tx, req_rx) = mpsc::channel(8);
            let (reload_tx, reload_rx) = mpsc::channel(1);
            let (passive_tx, passive_rx) = mpsc::channel(1);
            let shutdown = CancellationToken::new();
            let (cluster_tx, cluster_rx) = mpsc::channel(1);
            let task =
                tokio::spawn(c.run(req_rx, reload_rx, passive_rx, cluster_rx, shutdown.clone()));
            Running {
                tmp,
                dp,
                script,
                req_tx,
                shutdown,
                task,
                _channels: (reload_tx, passive_tx, cluster_tx),
            }
        }
    }

    /// A status is built off the engine task from inputs taken in O(1): inputs taken before
    /// a failover and still held (a scrape being built) neither block the failover nor see it
    /// (the engine's persistent maps copy only what the commit changed), fresh inputs show it,
    /// and the decision is timed from its verdict to the maps.
    #[tokio::test(start_paused = true)]
    async fn held_status_inputs_do_not_hold_up_or_see_a_failover() {
        let Running {
            tmp: _tmp,
            dp,
            script,
            req_tx,
            shutdown,
            task,
            ..
        } = Running::start().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let held = {
            let (reply, rx) = oneshot::channel();
            req_tx.send(Request::Status(reply)).await.unwrap();
            rx.await.unwrap()
        };
        assert_eq!(held.build().resources[0].current.as_deref(), Some("p1"));
        assert_eq!(held.build().verdicts_applied, 0);
        script.p1_down.store(true, Ordering::Relaxed);
        let t = tokio::time::Instant::now();
        loop {
            let st = status(&req_tx).await;
            if st.resources[0].current.as_deref() == Some("b1") {
                break;
            }
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "no failover while inputs are held"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let id_b1 = held
            .build()
            .servers
            .iter()
            .find(|s| s.name == "b1")
            .unwrap()
            .id;
        wait_real(|| web_server(&dp) == Some(id_b1), "the map points to b1");
        // The held inputs still show the state they were taken in.
        let old = held.build();
        assert_eq!(old.resources[0].current.as_deref(), Some("p1"));
        assert_eq!(old.resources[0].state, "on-primary");
        let p1 = old.servers.iter().find(|s| s.name == "p1").unwrap();
        assert_eq!(p1.health, Health::Up);
        // Fresh inputs show the failover, timed from its verdict to the maps.
        // Recorded by the map-sync thread (real time) once the write returned.
        let real = std::time::Instant::now();
        let st = loop {
            let st = status(&req_tx).await;
            if st.verdicts_applied >= 1 || real.elapsed() > Duration::from_secs(2) {
                break st;
            }
            std::thread::sleep(Duration::from_millis(1));
        };
        assert_eq!(st.resources[0].state, "failed-over");
        assert!(st.verdicts_applied >= 1, "{}", st.verdicts_applied);
        assert!(st.last_verdict_to_maps_us.is_some());
        assert_eq!(st.failovers.get("web"), Some(&1));
        assert!(old.failovers.is_empty());
        shutdown.cancel();
        task.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn failover_and_hold_failback_through_the_whole_controller() {
        let Running {
            tmp,
            dp,
            script,
            req_tx,
            shutdown,
            task,
            ..
        } = Running::start().await;
        let ids = status(&req_tx).await;
        let id = |n: &str| ids.servers.iter().find(|s| s.name == n).unwrap().id;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(web_server(&dp), Some(id("p1")));

        // p1 fails: 2 failed checks at the default 1 s interval, then the map points to b1.
        // The engine's decision is timed in the runtime's (paused) clock; the map write then
        // happens on the map-sync thread, in real time.
        script.p1_down.store(true, Ordering::Relaxed);
        let t = tokio::time::Instant::now();
        let current = |st: &Status| st.resources[0].current.clone();
        while current(&status(&req_tx).await).as_deref() != Some("b1") {
            assert!(t.elapsed() < Duration::from_secs(5), "no failover");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let failover = t.elapsed();
        // Two failed checks: the first at the next tick (within the 1 s default interval), the
        // second one interval later.
        assert!(
            failover > Duration::from_secs(1) && failover <= Duration::from_millis(2010),
            "failover took {failover:?}"
        );
        wait_real(|| web_server(&dp) == Some(id("b1")), "the map points to b1");

        // p1 returns: up after 3 checks (2 to 3 s), back only after the 10 s default hold.
        script.p1_down.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(
            web_server(&dp),
            Some(id("b1")),
            "failback before the hold time"
        );
        let st = status(&req_tx).await;
        assert_eq!(
            st.servers.iter().find(|s| s.name == "p1").unwrap().health,
            Health::Up
        );
        let up_since = st.servers.iter().find(|s| s.name == "p1").unwrap().since_ms;
        let down_since = st.resources[0].since_ms;
        assert!(up_since > down_since, "p1 came up after the failover");
        tokio::time::sleep(Duration::from_millis(9500)).await;
        assert_eq!(
            current(&status(&req_tx).await).as_deref(),
            Some("p1"),
            "no failback after the hold time"
        );
        wait_real(|| web_server(&dp) == Some(id("p1")), "the map points to p1");
        shutdown.cancel();
        task.await.unwrap();

        // The directory on disk says the same, with the events that explain it.
        let reopened = EmbeddedDirectory::open(tmp.path()).unwrap();
        assert_eq!(
            reopened.current().resources["web"].current.as_deref(),
            Some("p1")
        );
        let kinds: Vec<String> = reopened
            .events(0, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.kind)
            .collect();
        for k in ["server-down", "failover", "server-up", "failback"] {
            assert!(kinds.iter().any(|x| x == k), "{k} missing from {kinds:?}");
        }
    }
}
