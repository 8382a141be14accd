//! Running the checks of a server: one task per check, the server-level verdict, passive
//! suspicion, and the live counters.

use super::*;

// ------------------------------------------------------------------------------------------------
// Checker
// ------------------------------------------------------------------------------------------------

/// A server-level state change, sent by a [`ServerChecker`] only when the verdict flips.
#[derive(Clone, Debug)]
pub struct HealthChange {
    pub server: String,
    pub up: bool,
    /// Why, e.g. `3 consecutive tcp:80 checks passed` or
    /// `2 consecutive tcp:80 checks failed: connection refused`.
    pub evidence: String,
    pub at: SystemTime,
}

/// Live counters of one check, shared with the API and metrics.
#[derive(Default, Debug)]
pub struct CheckStats {
    pub(super) last_latency_us: AtomicU64,
    pub(super) probes_ok: AtomicU64,
    pub(super) probes_failed: AtomicU64,
    pub(super) up: AtomicBool,
    pub(super) last_failure: Mutex<Option<String>>,
    /// Probes that could not run for a local reason (never counted as failures).
    pub(super) local_errors: AtomicU64,
    /// Consecutive probes that could not run, up to the latest (0 once one runs again).
    pub(super) local_streak: AtomicU64,
    pub(super) last_local_error: Mutex<Option<String>>,
}

impl CheckStats {
    /// Latency of the last successful probe, in microseconds (0 before the first success).
    pub fn last_latency_us(&self) -> u64 {
        self.last_latency_us.load(Ordering::Relaxed)
    }

    pub fn probes_ok(&self) -> u64 {
        self.probes_ok.load(Ordering::Relaxed)
    }

    pub fn probes_failed(&self) -> u64 {
        self.probes_failed.load(Ordering::Relaxed)
    }

    /// This check's own (hysteresis) state.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The reason of the most recent failed probe, if any probe failed yet.
    pub fn last_failure(&self) -> Option<String> {
        lock(&self.last_failure).clone()
    }

    /// Probes that could not run for a local reason, since start.
    pub fn local_errors(&self) -> u64 {
        self.local_errors.load(Ordering::Relaxed)
    }

    /// The reason why the check cannot run now: set while the latest probes could not run for a
    /// local reason, cleared by the first probe that runs again.
    pub fn unable_to_run(&self) -> Option<String> {
        if self.local_streak.load(Ordering::Relaxed) == 0 {
            return None;
        }
        lock(&self.last_local_error).clone()
    }

    pub(super) fn record(&self, outcome: &Result<Duration, ProbeFailure>) {
        if let Err(f) = outcome {
            if f.local {
                self.local_errors.fetch_add(1, Ordering::Relaxed);
                self.local_streak.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_local_error) = Some(f.reason.clone());
                return;
            }
        }
        self.local_streak.store(0, Ordering::Relaxed);
        match outcome {
            Ok(latency) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.last_latency_us.store(us, Ordering::Relaxed);
                self.probes_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(f) => {
                self.probes_failed.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_failure) = Some(f.reason.clone());
            }
        }
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A boxed probe future, as returned by a [`Prober`].
pub type ProbeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Duration, ProbeFailure>> + Send + 'a>>;

/// Runs probes for a [`ServerChecker`]. [`NetProber`] is the real one; tests inject outcomes.
pub trait Prober: Send + Sync + 'static {
    fn probe<'a>(&'a self, probe: &'a Probe, addr: IpAddr, timeout: Duration) -> ProbeFuture<'a>;
}

/// The real prober: [`probe_once`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NetProber;

impl Prober for NetProber {
    fn probe<'a>(&'a self, probe: &'a Probe, addr: IpAddr, timeout: Duration) -> ProbeFuture<'a> {
        Box::pin(probe_once(probe, addr, timeout))
    }
}

/// The smallest interval/timeout we accept (tokio's interval panics on zero).
pub(super) const MIN_PERIOD: Duration = Duration::from_millis(1);
/// While a server is suspected, a probe starts this long (or the check's timeout, if shorter)
/// after the previous one started, with up to `fall` probes in flight: a refused connection is
/// confirmed in milliseconds, a silent server in about one timeout.
pub const SUSPECT_PACE: Duration = Duration::from_millis(10);
/// A streak of probes that cannot run is logged at its first probe and then once every this
/// many (at a 1 s interval: every minute).
pub const LOCAL_ERROR_LOG_EVERY: u64 = 60;

/// Deterministic first-probe delay in `[0, interval)`, in whole milliseconds (tokio's timer
/// resolution), for check `index` of `server` (FNV-1a of the name and the index), so checks
/// configured together do not fire together.
pub fn start_offset(server: &str, index: usize, interval: Duration) -> Duration {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in server.bytes().chain((index as u64).to_le_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let ms = interval.as_millis().max(1);
    Duration::from_millis((u128::from(hash) % ms) as u64)
}

/// State shared by the check tasks of one server.
pub(super) struct Shared {
    pub(super) server: String,
    pub(super) up: AtomicBool,
    /// Per-check states and the server-level verdict. An async mutex because it is held while a
    /// change is sent, which keeps the changes ordered.
    pub(super) verdict: tokio::sync::Mutex<Verdict>,
    pub(super) tx: mpsc::Sender<HealthChange>,
}

pub(super) struct Verdict {
    pub(super) checks_up: Vec<bool>,
    pub(super) server_up: bool,
}

impl Shared {
    /// Records that check `index` flipped to `up`; sends a [`HealthChange`] when that flips the
    /// server.
    pub(super) async fn check_flipped(
        &self,
        index: usize,
        up: bool,
        evidence: String,
        cancel: &CancellationToken,
    ) {
        let mut verdict = self.verdict.lock().await;
        verdict.checks_up[index] = up;
        let server_up = verdict.checks_up.iter().all(|&u| u);
        if server_up == verdict.server_up {
            debug!(server = %self.server, up, %evidence, "check changed state, server unchanged");
            return;
        }
        verdict.server_up = server_up;
        self.up.store(server_up, Ordering::Relaxed);
        if server_up {
            info!(server = %self.server, %evidence, "server is up");
        } else {
            warn!(server = %self.server, %evidence, "server is down");
        }
        let change = HealthChange {
            server: self.server.clone(),
            up: server_up,
            evidence,
            at: SystemTime::now(),
        };
        tokio::select! {
            _ = cancel.cancelled() => {}
            sent = self.tx.send(change) => {
                if sent.is_err() {
                    debug!(server = %self.server, "health change receiver is gone");
                }
            }
        }
    }
}

pub(super) struct CheckHandle {
    pub(super) label: String,
    pub(super) stats: Arc<CheckStats>,
    pub(super) suspect: mpsc::Sender<String>,
}

/// Runs the health checks of one server. Dropping it (or [`ServerChecker::stop`]) stops its
/// tasks.
/// What the status shows of a server's checker, kept apart from it (the API builds status
/// answers off the engine task).
#[derive(Clone)]
pub struct CheckerView {
    shared: Arc<Shared>,
    stats: Vec<(String, Arc<CheckStats>)>,
}

impl CheckerView {
    /// The server-level verdict: all checks up.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }
    /// Each check's label and live counters.
    pub fn stats(&self) -> &[(String, Arc<CheckStats>)] {
        &self.stats
    }
}

pub struct ServerChecker {
    pub(super) shared: Arc<Shared>,
    pub(super) checks: Vec<CheckHandle>,
    pub(super) cancel: CancellationToken,
}

impl std::fmt::Debug for ServerChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerChecker")
            .field("server", &self.shared.server)
            .field("up", &self.is_up())
            .field(
                "checks",
                &self.checks.iter().map(|c| &c.label).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ServerChecker {
    /// Starts one tokio task per check of this server (must be called within a tokio runtime).
    ///
    /// `initial_up` is the state the directory last recorded: the checker starts in that state
    /// so a controller restart does not re-run the rise count and move traffic. A server without
    /// checks is always up; if it was recorded down, one `up` change is sent right away.
    /// Cancelling `cancel` stops the checker, as does [`ServerChecker::stop`].
    pub fn spawn(
        server: String,
        addr: IpAddr,
        checks: Vec<CheckSpec>,
        initial_up: bool,
        tx: mpsc::Sender<HealthChange>,
        cancel: CancellationToken,
    ) -> ServerChecker {
        Self::spawn_with_prober(
            server,
            addr,
            checks,
            initial_up,
            tx,
            cancel,
            Arc::new(NetProber),
        )
    }

    /// [`ServerChecker::spawn`] with a custom [`Prober`].
    pub fn spawn_with_prober(
        server: String,
        addr: IpAddr,
        checks: Vec<CheckSpec>,
        initial_up: bool,
        tx: mpsc::Sender<HealthChange>,
        cancel: CancellationToken,
        prober: Arc<dyn Prober>,
    ) -> ServerChecker {
        let cancel = cancel.child_token();
        let server_up = checks.is_empty() || initial_up;
        let shared = Arc::new(Shared {
            server: server.clone(),
            up: AtomicBool::new(server_up),
            verdict: tokio::sync::Mutex::new(Verdict {
                checks_up: vec![initial_up; checks.len()],
                server_up,
            }),
            tx,
        });

        if server_up != initial_up {
            // No checks, recorded down: correct the record once.
            let shared = Arc::clone(&shared);
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let change = HealthChange {
                    server: shared.server.clone(),
                    up: true,
                    evidence: "no health checks configured".into(),
                    at: SystemTime::now(),
                };
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = shared.tx.send(change) => {}
                }
            });
        }

        let mut handles = Vec::with_capacity(checks.len());
        for (index, spec) in checks.into_iter().enumerate() {
            let label = spec.probe.label();
            let stats = Arc::new(CheckStats::default());
            stats.up.store(initial_up, Ordering::Relaxed);
            // Capacity 1: suspicion that arrives while one is pending adds nothing.
            let (suspect_tx, suspect_rx) = mpsc::channel(1);
            let task = CheckTask {
                shared: Arc::clone(&shared),
                index,
                label: label.clone(),
                addr,
                offset: start_offset(&server, index, spec.interval.max(MIN_PERIOD)),
                hysteresis: Hysteresis::new(initial_up, spec.rise, spec.fall),
                last_ok: initial_up,
                launched: 0,
                observed: 0,
                spec,
                stats: Arc::clone(&stats),
                prober: Arc::clone(&prober),
                suspect: suspect_rx,
                cancel: cancel.clone(),
            };
            tokio::spawn(task.run());
            handles.push(CheckHandle {
                label,
                stats,
                suspect: suspect_tx,
            });
        }
        ServerChecker {
            shared,
            checks: handles,
            cancel,
        }
    }

    /// The server's name.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// See [`CheckerView`].
    pub fn view(&self) -> CheckerView {
        CheckerView {
            shared: Arc::clone(&self.shared),
            stats: self.stats(),
        }
    }

    /// Each check's label (e.g. `tcp:80`) and live counters.
    pub fn stats(&self) -> Vec<(String, Arc<CheckStats>)> {
        self.checks
            .iter()
            .map(|c| (c.label.clone(), Arc::clone(&c.stats)))
            .collect()
    }

    /// The server-level verdict: all checks up.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Passive evidence from the dataplane (e.g. "3 client SYNs unanswered"): every check that is
    /// up probes at once and then back to back (every `timeout`) until the verdict is confirmed
    /// either way — `fall` consecutive failures (down, as usual) or one success (back to the
    /// normal pace). Never marks the server down by itself.
    pub fn suspect(&self, why: &str) {
        if !self.is_up() {
            return;
        }
        // A full channel means a suspicion is already pending for that check, which covers
        // this one too (the dataplane may report the same trouble many times a second).
        let accepted = self
            .checks
            .iter()
            .filter(|check| check.suspect.try_send(why.to_string()).is_ok())
            .count();
        if accepted > 0 {
            info!(server = %self.shared.server, why, "server suspected, probing now");
        } else {
            debug!(server = %self.shared.server, why, "server suspected again, already probing");
        }
    }

    /// Stops the checker's tasks.
    pub fn stop(self) {
        // Drop cancels.
    }
}

impl Drop for ServerChecker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One check's task.
pub(super) struct CheckTask {
    pub(super) shared: Arc<Shared>,
    pub(super) index: usize,
    pub(super) label: String,
    pub(super) addr: IpAddr,
    pub(super) spec: CheckSpec,
    pub(super) offset: Duration,
    pub(super) stats: Arc<CheckStats>,
    pub(super) prober: Arc<dyn Prober>,
    pub(super) suspect: mpsc::Receiver<String>,
    pub(super) cancel: CancellationToken,
    pub(super) hysteresis: Hysteresis,
    /// The last probe succeeded.
    pub(super) last_ok: bool,
    /// Probes launched, and the launch number of the newest result observed.
    pub(super) launched: u64,
    pub(super) observed: u64,
}

impl CheckTask {
    /// Starts one probe in `inflight`; its result comes back with its launch number.
    pub(super) fn launch(
        &mut self,
        inflight: &mut tokio::task::JoinSet<(u64, Result<Duration, ProbeFailure>)>,
        timeout: Duration,
    ) {
        self.launched += 1;
        let seq = self.launched;
        let (prober, probe, addr) = (self.prober.clone(), self.spec.probe.clone(), self.addr);
        inflight.spawn(async move {
            // The prober bounds itself; this only guards against one that does not.
            let r =
                tokio::time::timeout(timeout + timeout / 2, prober.probe(&probe, addr, timeout))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ProbeFailure::new(format!(
                            "timed out after {}",
                            fmt_duration(timeout)
                        )))
                    });
            (seq, r)
        });
    }

    pub(super) async fn run(mut self) {
        let interval = self.spec.interval.max(MIN_PERIOD);
        let timeout = self.spec.timeout.max(MIN_PERIOD);
        let fall = self.hysteresis.fall().max(1) as usize;
        let mut ticker = tokio::time::interval_at(Instant::now() + self.offset, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Some(why) while probing at the suspect pace because of passive evidence.
        let mut suspicion: Option<String> = None;
        // While suspected: when the next probe may start. Probes overlap (up to `fall` in
        // flight), so a silent server is confirmed down in about `timeout + (fall - 1) *
        // SUSPECT_PACE` rather than `fall * timeout`.
        let mut next_start = Instant::now();
        let mut inflight: tokio::task::JoinSet<(u64, Result<Duration, ProbeFailure>)> =
            tokio::task::JoinSet::new();

        loop {
            if suspicion.is_some() && inflight.len() < fall && Instant::now() >= next_start {
                self.launch(&mut inflight, timeout);
                next_start = Instant::now() + SUSPECT_PACE.min(timeout);
            }
            let can_start_more = suspicion.is_some() && inflight.len() < fall;
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    inflight.abort_all();
                    return;
                }
                done = inflight.join_next(), if !inflight.is_empty() => {
                    let (seq, outcome) = match done {
                        Some(Ok(done)) => done,
                        // A probe task cannot panic short of a bug; count it as a failure.
                        Some(Err(e)) => (self.launched, Err(ProbeFailure::new(format!("probe task failed: {e}")))),
                        None => continue,
                    };
                    if seq < self.observed {
                        // Overtaken by a probe launched later: the verdict follows launch
                        // order, so a late failure cannot count after a newer success.
                        self.stats.record(&outcome);
                        continue;
                    }
                    self.observed = seq;
                    let local = matches!(&outcome, Err(f) if f.local);
                    self.observe(outcome).await;
                    if suspicion.is_some() && (local || self.last_ok || !self.hysteresis.is_up()) {
                        // Confirmed either way: back to the normal pace, counted from now. (A
                        // probe that cannot run confirms nothing, but probing back to back would
                        // only repeat the local error: the suspicion ends too.)
                        suspicion = None;
                        ticker.reset();
                    }
                }
                _ = tokio::time::sleep_until(next_start), if can_start_more => {}
                _ = ticker.tick(), if suspicion.is_none() && inflight.is_empty() => {
                    self.launch(&mut inflight, timeout);
                }
                why = self.suspect.recv(), if suspicion.is_none() => {
                    let Some(why) = why else { return };
                    if !self.hysteresis.is_up() {
                        // Already down: nothing to confirm; rise at the normal pace.
                        continue;
                    }
                    debug!(server = %self.shared.server, check = %self.label, %why, "suspected: probing at the suspect pace");
                    suspicion = Some(why);
                    next_start = Instant::now();
                }
            }
        }
    }

    /// Counts one probe's outcome and, when the check flips, tells the server's aggregate.
    ///
    /// A probe that could not run for a local reason is not an observation: the hysteresis, and
    /// so the verdict, stay where they are. The first one of a streak, and then one in every
    /// [`LOCAL_ERROR_LOG_EVERY`], is logged as a warning; the streak's end is logged too.
    pub(super) async fn observe(&mut self, outcome: Result<Duration, ProbeFailure>) {
        let was_unable = self.stats.local_streak.load(Ordering::Relaxed);
        self.stats.record(&outcome);
        match &outcome {
            Err(f) if f.local => {
                if was_unable % LOCAL_ERROR_LOG_EVERY == 0 {
                    warn!(
                        server = %self.shared.server, check = %self.label, reason = %f.reason,
                        unable = was_unable + 1,
                        "check failed to run (a local error on this gateway, not counted against the server; its verdict is kept)"
                    );
                }
                return;
            }
            _ if was_unable > 0 => {
                info!(server = %self.shared.server, check = %self.label, unable = was_unable, "check runs again after local errors");
            }
            _ => {}
        }
        self.last_ok = outcome.is_ok();
        if let Err(f) = &outcome {
            debug!(server = %self.shared.server, check = %self.label, reason = %f.reason, "probe failed");
        }
        if let Some(up) = self.hysteresis.observe(self.last_ok) {
            self.stats.up.store(up, Ordering::Relaxed);
            let evidence = self.evidence(up, &outcome);
            self.shared
                .check_flipped(self.index, up, evidence, &self.cancel)
                .await;
        }
    }

    pub(super) fn evidence(&self, up: bool, outcome: &Result<Duration, ProbeFailure>) -> String {
        let n = if up {
            self.hysteresis.rise()
        } else {
            self.hysteresis.fall()
        };
        let counted = if n == 1 {
            format!("{} check", self.label)
        } else {
            format!("{n} consecutive {} checks", self.label)
        };
        match outcome {
            Ok(_) => format!("{counted} passed"),
            Err(f) => format!("{counted} failed: {}", f.reason),
        }
    }
}
