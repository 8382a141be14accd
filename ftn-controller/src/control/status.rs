//! What `/v1/status` shows, and the gateway's own faults it warns about.

use super::*;
use crate::model::Health;
use std::sync::atomic::Ordering::Relaxed;

/// How recent a passive "unanswered" report must be to count towards [`dataplane_fault`]. The
/// dataplane repeats a report every `passive_rearm` (250 ms by default) while it lasts.
pub const DATAPLANE_FAULT_WINDOW_MS: u64 = 5_000;

/// The gateway's own dataplane is the likely fault when new connections to EVERY server in use
/// (two or more: with one, the server itself may be the cause) went unanswered within
/// [`DATAPLANE_FAULT_WINDOW_MS`] while the active checks of all of them still pass: servers do
/// not all stop accepting at once, but a gateway that loses what it forwards fails them all.
/// The usual cause is native XDP on an interface whose driver (or veth peer without an XDP
/// program) drops redirected frames. Returns the warning, or None.
pub fn dataplane_fault(
    in_use: &BTreeSet<String>,
    unanswered_at: &imbl::HashMap<String, u64>,
    checks_pass: impl Fn(&str) -> bool,
    now_ms: u64,
) -> Option<String> {
    if in_use.len() < 2 {
        return None;
    }
    let all = in_use.iter().all(|s| {
        unanswered_at
            .get(s)
            .is_some_and(|&at| now_ms.saturating_sub(at) <= DATAPLANE_FAULT_WINDOW_MS)
            && checks_pass(s)
    });
    all.then(|| {
        format!(
            "new connections to every server in use ({}) go unanswered while their health checks pass: this gateway is probably losing the packets it forwards. Likely cause: native XDP on an interface whose driver drops redirected frames (e.g. a veth whose peer has no XDP program); try gateway.xdp_mode = \"generic\" (docs/OPERATIONS.md, Hardening)",
            in_use.iter().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

/// What a status answer is built from, taken on the engine task in O(1) (persistent maps and
/// shared handles, no per-resource work), so that `/v1/status` and `/metrics` are built on the
/// API's worker thread and never hold up a decision. Live values (check counters, the map-sync
/// task's counters and interfaces) are read when [`StatusInputs::build`] runs.
#[derive(Clone)]
pub struct StatusInputs {
    config: Arc<Config>,
    config_path: String,
    directory: String,
    snapshot: Snapshot,
    checks: Arc<HashMap<String, crate::checks::CheckerView>>,
    interfaces: Vec<String>,
    adopted: bool,
    failovers: imbl::HashMap<String, u64>,
    commit_errors: u64,
    reloads_ok: u64,
    reloads_failed: u64,
    passive_signals: imbl::HashMap<String, u64>,
    unanswered_at: imbl::HashMap<String, u64>,
    now_ms: u64,
    cluster: Option<ClusterStatus>,
    sync: MapSync,
    announcer: Option<crate::announce::Announcer>,
}

impl Controller {
    /// See [`StatusInputs`].
    pub(super) fn status_inputs(&self) -> StatusInputs {
        StatusInputs {
            config: self.engine.config().clone(),
            config_path: self.config_path.display().to_string(),
            directory: self.directory.backend().into(),
            snapshot: self.engine.snapshot().clone(),
            checks: self.checker_views.clone(),
            interfaces: self.interfaces.clone(),
            adopted: self.adopted,
            failovers: self.failovers.clone(),
            commit_errors: self.commit_errors,
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            passive_signals: self.passive_signals.clone(),
            unanswered_at: self.unanswered_at.clone(),
            now_ms: self.clock.now_ms(),
            cluster: self.cluster.as_ref().map(cluster_status),
            sync: self.sync.clone(),
            announcer: self.announcer.clone(),
        }
    }
}

impl StatusInputs {
    /// The whole status: O(resources + servers).
    pub fn build(&self) -> Status {
        let snap = &self.snapshot;
        let cfg = &self.config;
        let resources = self.resource_statuses();
        let servers = self.server_statuses();
        let mut warnings = Controller::warnings(&servers);
        let dataplane_fault = self.dataplane_fault();
        warnings.extend(dataplane_fault.clone());
        let stats = self.sync.stats();
        let interface_states = stats
            .interfaces
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for i in interface_states.iter().filter(|i| !i.attached) {
            warnings.push(format!(
                "interface {}: {}",
                i.name,
                i.note.as_deref().unwrap_or("not attached")
            ));
        }
        let v6 = cfg.resources.iter().any(|r| r.vip.is_ipv6());
        for i in &interface_states {
            warnings.extend(forwarding_warning(&i.name, v6));
        }
        let announce = self.announcer.as_ref().map(|a| a.status());
        if let Some(a) = &announce {
            if let (Some(why), false) = (&a.withheld, a.pending) {
                warnings.push(format!("announcing no VIP: {why}"));
            }
            if let Some(e) = &a.last_error {
                warnings.push(format!("the announce table cannot be written: {e}"));
            }
        }
        let v = &stats.verdict_to_maps;
        let verdicts_applied = v.count.load(Relaxed);
        let plain = |m: &imbl::HashMap<String, u64>| -> HashMap<String, u64> {
            m.iter().map(|(k, v)| (k.clone(), *v)).collect()
        };
        Status {
            gateway: cfg.gateway.name.clone(),
            config: self.config_path.clone(),
            directory: self.directory.clone(),
            revision: snap.revision,
            interfaces: self.interfaces.clone(),
            adopted: self.adopted,
            resources,
            servers,
            failovers: plain(&self.failovers),
            commit_errors: self.commit_errors,
            dataplane_errors: stats.errors.load(Relaxed),
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            passive_signals: plain(&self.passive_signals),
            cluster: self.cluster.clone(),
            warnings,
            interface_states,
            dataplane_fault_suspected: dataplane_fault.is_some(),
            verdicts_applied,
            last_verdict_to_maps_us: (verdicts_applied > 0).then(|| v.last_us.load(Relaxed)),
            announce,
        }
    }

    /// [`dataplane_fault`] at the time the inputs were taken.
    fn dataplane_fault(&self) -> Option<String> {
        fault_from(
            &self.snapshot,
            &self.unanswered_at,
            |s| self.checks.get(s).is_some_and(|c| c.is_up()),
            self.now_ms,
        )
    }

    fn resource_statuses(&self) -> Vec<ResourceStatus> {
        let snap = &self.snapshot;
        self.config
            .resources
            .iter()
            .map(|rc| {
                let rec = snap.resources.get(&rc.name);
                let current = rec.and_then(|r| r.current.clone());
                let pinned = rec.and_then(|r| r.pinned.clone());
                let state = match (&current, &pinned) {
                    (None, _) => "no-server",
                    (Some(_), Some(_)) => "pinned",
                    (Some(c), None) if rc.servers.first() == Some(c) => "on-primary",
                    _ => "failed-over",
                };
                ResourceStatus {
                    name: rc.name.clone(),
                    id: rec.map_or(u32::MAX, |r| r.id),
                    vip: rc.vip.to_string(),
                    protocol: rc.protocol.to_string(),
                    ports: rc.ports.clone(),
                    servers: rc.servers.clone(),
                    current,
                    pinned,
                    state: state.into(),
                    since_ms: rec.map_or(0, |r| r.since_ms),
                    reason: rec.map(|r| r.reason.clone()).unwrap_or_default(),
                    generation: rec.map_or(0, |r| r.generation),
                    failback: rc.failback.to_string(),
                }
            })
            .collect()
    }

    fn server_statuses(&self) -> Vec<ServerStatus> {
        let snap = &self.snapshot;
        self.config
            .servers
            .iter()
            .map(|sc| {
                let rec = snap.servers.get(&sc.name);
                let checks = self
                    .checks
                    .get(&sc.name)
                    .map(|c| {
                        c.stats()
                            .iter()
                            .map(|(label, st)| CheckStatus {
                                check: label.clone(),
                                up: st.is_up(),
                                last_latency_us: st.last_latency_us(),
                                probes_ok: st.probes_ok(),
                                probes_failed: st.probes_failed(),
                                last_failure: st.last_failure(),
                                local_errors: st.local_errors(),
                                unable_to_run: st.unable_to_run(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                ServerStatus {
                    name: sc.name.clone(),
                    id: rec.map_or(u32::MAX, |r| r.id),
                    address: sc.address.to_string(),
                    health: rec.map_or(Health::Up, |r| r.health),
                    drained: rec.is_some_and(|r| r.drained_at_ms.is_some()),
                    since_ms: rec.map_or(0, |r| r.since_ms),
                    evidence: rec.map(|r| r.evidence.clone()).unwrap_or_default(),
                    checks,
                }
            })
            .collect()
    }
}

/// [`dataplane_fault`] from a snapshot's servers in use.
fn fault_from(
    snap: &Snapshot,
    unanswered_at: &imbl::HashMap<String, u64>,
    checks_pass: impl Fn(&str) -> bool,
    now: u64,
) -> Option<String> {
    // Cheap first: it takes two recent reports (the set of servers in use costs a pass over
    // every resource).
    let recent = unanswered_at
        .values()
        .filter(|&&at| now.saturating_sub(at) <= DATAPLANE_FAULT_WINDOW_MS)
        .count();
    if recent < 2 {
        return None;
    }
    let in_use: BTreeSet<String> = snap
        .resources
        .values()
        .filter_map(|r| r.current.clone())
        .collect();
    dataplane_fault(&in_use, unanswered_at, checks_pass, now)
}

impl Controller {
    /// The gateway's own faults, from the status just built.
    pub(super) fn warnings(servers: &[ServerStatus]) -> Vec<String> {
        let mut warnings = Vec::new();
        let unable: Vec<String> = servers
            .iter()
            .flat_map(|s| {
                s.checks.iter().filter_map(move |c| {
                    c.unable_to_run
                        .as_ref()
                        .map(|why| format!("{} {} ({why})", s.name, c.check))
                })
            })
            .collect();
        if !unable.is_empty() {
            let shown: Vec<&str> = unable.iter().take(3).map(String::as_str).collect();
            warnings.push(format!(
                "{} health check(s) cannot run for a local reason on this gateway; their servers' verdicts are frozen until they run again: {}{}",
                unable.len(),
                shown.join("; "),
                if unable.len() > shown.len() { "; ..." } else { "" }
            ));
        }
        warnings
    }

    /// [`dataplane_fault`] now.
    pub(super) fn dataplane_fault_now(&self) -> Option<String> {
        fault_from(
            self.engine.snapshot(),
            &self.unanswered_at,
            |s| self.checkers.get(s).is_some_and(|(c, _)| c.is_up()),
            self.clock.now_ms(),
        )
    }

    /// Re-evaluates [`dataplane_fault`]; logs when it starts and ends.
    pub(super) fn check_dataplane_fault(&mut self) {
        let fault = self.dataplane_fault_now();
        match (&self.dataplane_fault, &fault) {
            (None, Some(why)) => tracing::error!("dataplane fault suspected: {why}"),
            (Some(_), None) => tracing::info!(
                "dataplane fault no longer suspected: new connections are answered again"
            ),
            _ => {}
        }
        self.dataplane_fault = fault;
    }
}

/// A warning when forwarding is off on `interface` (its sysctl reads 0; IPv6 only when a VIP
/// is IPv6): the XDP program's route lookups then answer "forwarding disabled", so it forwards
/// nothing through the interface, and the replies to this gateway's own checks of a server's
/// service port are taken for replies to clients (the checks time out). None when on, or when
/// the sysctl cannot be read (not a real interface).
pub fn forwarding_warning(interface: &str, v6: bool) -> Option<String> {
    let off = |family: &str| {
        std::fs::read_to_string(format!(
            "/proc/sys/net/{family}/conf/{interface}/forwarding"
        ))
        .is_ok_and(|v| v.trim() == "0")
    };
    let mut families = Vec::new();
    if off("ipv4") {
        families.push("net.ipv4.ip_forward = 1");
    }
    if v6 && off("ipv6") {
        families.push("net.ipv6.conf.all.forwarding = 1");
    }
    (!families.is_empty()).then(|| {
        format!(
            "interface {interface}: forwarding is off, so the XDP program forwards nothing through it and checks of a server's service port through it fail; set {} (docs/OPERATIONS.md, Requirements)",
            families.join(" and ")
        )
    })
}

/// The shared directory as this gateway sees it: its role, etcd, every gateway's record.
fn cluster_status(cv: &ClusterView) -> ClusterStatus {
    let mut names: BTreeSet<String> = cv.gateways.keys().cloned().collect();
    names.insert(cv.me.clone());
    let record = cv.session.record();
    ClusterStatus {
        gateway: cv.me.clone(),
        role: if cv.leads() { "leader" } else { "follower" }.into(),
        leader: cv.leader.clone(),
        etcd: if cv.etcd_ok {
            "connected"
        } else {
            "unreachable"
        }
        .into(),
        etcd_error: cv.etcd_error.clone(),
        etcd_since_ms: cv.etcd_since_ms,
        applied_revision: record.applied_revision,
        leaderships: cv.leaderships,
        gateways: names
            .into_iter()
            .map(|name| {
                // This gateway from its own record; the others as etcd has them.
                let (live, r) = if name == cv.me {
                    (cv.etcd_ok && cv.gateways.contains_key(&name), Some(&record))
                } else {
                    (cv.gateways.contains_key(&name), cv.gateways.get(&name))
                };
                GatewayStatus {
                    name: name.clone(),
                    live,
                    applied_revision: r.map_or(0, |r| r.applied_revision),
                    applied_at_ms: r.map_or(0, |r| r.applied_at_ms),
                    observations: r
                        .map(|r| {
                            r.observations
                                .iter()
                                .map(|(s, o)| {
                                    (s.clone(), if o.up { "up" } else { "down" }.to_string())
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect(),
    }
}
