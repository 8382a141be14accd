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
    unanswered_at: &HashMap<String, u64>,
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

impl Controller {
    pub(super) fn status(&self) -> Status {
        let snap = self.engine.snapshot();
        let cfg = self.engine.config();
        let resources = self.resource_statuses();
        let servers = self.server_statuses();
        let cluster = self.cluster.as_ref().map(cluster_status);
        let mut warnings = Self::warnings(&servers);
        let dataplane_fault = self.dataplane_fault_now();
        warnings.extend(dataplane_fault.clone());
        let interface_states = self
            .sync
            .stats()
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
        let v = &self.sync.stats().verdict_to_maps;
        let verdicts_applied = v.count.load(Relaxed);
        Status {
            gateway: cfg.gateway.name.clone(),
            config: self.config_path.display().to_string(),
            directory: self.directory.backend().into(),
            revision: snap.revision,
            interfaces: self.interfaces.clone(),
            adopted: self.adopted,
            resources,
            servers,
            failovers: self.failovers.clone(),
            commit_errors: self.commit_errors,
            dataplane_errors: self
                .sync
                .stats()
                .errors
                .load(std::sync::atomic::Ordering::Relaxed),
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            passive_signals: self.passive_signals.clone(),
            cluster,
            warnings,
            interface_states,
            dataplane_fault_suspected: dataplane_fault.is_some(),
            verdicts_applied,
            last_verdict_to_maps_us: (verdicts_applied > 0).then(|| v.last_us.load(Relaxed)),
        }
    }

    fn resource_statuses(&self) -> Vec<ResourceStatus> {
        let snap = self.engine.snapshot();
        let cfg = self.engine.config();
        cfg.resources
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
        let snap = self.engine.snapshot();
        let cfg = self.engine.config();
        cfg.servers
            .iter()
            .map(|sc| {
                let rec = snap.servers.get(&sc.name);
                let checks = self
                    .checkers
                    .get(&sc.name)
                    .map(|(c, _)| {
                        c.stats()
                            .into_iter()
                            .map(|(label, st)| CheckStatus {
                                check: label,
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
        // Cheap first: it takes two recent reports, and this runs on every passive report and
        // status request (the set of servers in use costs a pass over every resource).
        let now = self.clock.now_ms();
        let recent = self
            .unanswered_at
            .values()
            .filter(|&&at| now.saturating_sub(at) <= DATAPLANE_FAULT_WINDOW_MS)
            .count();
        if recent < 2 {
            return None;
        }
        let in_use: BTreeSet<String> = self
            .engine
            .snapshot()
            .resources
            .values()
            .filter_map(|r| r.current.clone())
            .collect();
        dataplane_fault(
            &in_use,
            &self.unanswered_at,
            |s| self.checkers.get(s).is_some_and(|(c, _)| c.is_up()),
            now,
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
