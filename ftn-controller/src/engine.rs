//! The failover engine: from the configuration, the servers' observed health and the
//! operator's actions, decides where every resource's new flows go, and says what the
//! directory and the dataplane must change.
//!
//! The engine is a pure function of its inputs (no I/O, no clock of its own: the caller passes
//! the time in unix milliseconds), so the daemon and the unit tests drive it the same way. It
//! works as a reconcile loop: [`Engine::plan`] derives the records every resource and server
//! should have now, diffs them against the last committed [`Snapshot`], and returns a
//! [`Plan`]: the directory [`Update`] (records + events that explain them) and the dataplane
//! [`Change`]s. The daemon commits the update (compare-and-swap on the revision) and, only if
//! that succeeded, hands the changes to the map-sync task and tells the engine with
//! [`Engine::committed`]. A failed commit changes nothing; the next plan recomputes it.
//!
//! Rules, per resource, over its ordered server list:
//! - a server is *eligible* when its health is up and it is not drained;
//! - on a pinned server (`ftn switchover`) while it is eligible; a pin ends when the server
//!   stops being eligible;
//! - otherwise stay on the current server while it is eligible, unless a server earlier in
//!   the list is eligible and the failback policy allows the move: immediate; hold (the earlier
//!   server has been eligible for the hold time, measured from its last health/drain change);
//!   manual (never: the operator runs `ftn switchover`);
//! - when the current server is not eligible: the first eligible server, at once (failover);
//! - none eligible: no server (the dataplane drops or rejects, per `on_no_server`).
//!
//! A server's dataplane entry stays "up" (its established flows stay on it) while it is healthy,
//! including while drained, until the drain time has passed; a down server's flows move to
//! their resource's current server on their next packet.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ftn_common::{MAX_RESOURCES, MAX_SERVERS};

use crate::config::Config;
use crate::dataplane::sync::Desired;
use crate::dataplane::{Change, ResourceAssignment, ServerEntry};
use crate::directory::{EventDraft, ResourceRecord, ServerRecord, Snapshot, Update};
use crate::model::{Failback, Health, ResourceMatch};

/// A server's health as the checkers last reported it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    pub up: bool,
    pub evidence: String,
    pub at_ms: u64,
}

/// An operator action, validated against the running state by [`Engine::plan`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Switchover { resource: String, to: String },
    Drain { server: String },
    Undrain { server: String },
}

/// Why an operator action was refused (the API turns these into 4xx answers).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionError {
    #[error("no resource named {0:?}")]
    UnknownResource(String),
    #[error("no server named {0:?}")]
    UnknownServer(String),
    #[error("server {server:?} is not in resource {resource:?}'s list ({list})")]
    NotInList {
        resource: String,
        server: String,
        list: String,
    },
    #[error("server {server:?} is {state}: a resource cannot be switched to it")]
    NotEligible { server: String, state: String },
    #[error("server {0:?} is already drained")]
    AlreadyDrained(String),
    #[error("server {0:?} is not drained")]
    NotDrained(String),
    #[error("too many {what} for the dataplane (at most {max})")]
    Capacity { what: &'static str, max: u32 },
}

/// What one reconcile step changes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub update: Update,
    /// In order: servers set, resources set, resources removed, servers removed.
    pub changes: Vec<Change>,
    /// Resources whose current server changed (for metrics).
    pub moved: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.update.is_empty() && self.changes.is_empty()
    }
}

pub struct Engine {
    config: Arc<Config>,
    /// The config whose matchers are in the dataplane (differs from `config` between a reload's
    /// plan and its commit).
    applied: Arc<Config>,
    snapshot: Snapshot,
    health: HashMap<String, Observation>,
}

fn all_matchers(c: &Config) -> BTreeMap<ResourceMatch, String> {
    c.resources
        .iter()
        .flat_map(|r| r.matchers().into_iter().map(move |m| (m, r.name.clone())))
        .collect()
}

fn alloc(next: u32, max: u32, used: &BTreeSet<u32>) -> Option<u32> {
    (next..max)
        .chain(0..next.min(max))
        .find(|i| !used.contains(i))
}

impl Engine {
    /// An engine for `config`, starting from the directory's `snapshot`. Servers the directory
    /// does not know yet start up (checks confirm or refute within `fall` probes).
    pub fn new(config: Arc<Config>, snapshot: Snapshot) -> Self {
        Engine {
            applied: config.clone(),
            config,
            snapshot,
            health: HashMap::new(),
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The health the directory records for a server (what its checker should start from).
    pub fn recorded_health(&self, server: &str) -> Option<Health> {
        self.snapshot.servers.get(server).map(|s| s.health)
    }

    /// The newest word on a server's health: the last checker verdict, else the record.
    pub fn latest_health(&self, server: &str) -> Option<Health> {
        match self.health.get(server) {
            Some(o) if o.up => Some(Health::Up),
            Some(_) => Some(Health::Down),
            None => self.recorded_health(server),
        }
    }

    /// Forgets every verdict (a gateway that becomes the leader of a shared directory again
    /// must not decide from what it was told during an earlier leadership).
    pub fn clear_observations(&mut self) {
        self.health.clear();
    }

    /// Records a checker's verdict; the next [`Engine::plan`] acts on it.
    pub fn observe(&mut self, server: &str, obs: Observation) {
        self.health.insert(server.to_string(), obs);
    }

    /// Switches to a new configuration; the next plan applies the difference.
    pub fn set_config(&mut self, config: Arc<Config>) {
        self.config = config;
        self.health
            .retain(|name, _| self.config.servers.iter().any(|s| &s.name == name));
    }

    /// The directory accepted `update` (the update of the last plan) at `revision`.
    pub fn committed(&mut self, update: &Update, revision: crate::directory::Revision) {
        self.snapshot.apply(update);
        debug_assert_eq!(self.snapshot.revision, revision);
        self.snapshot.revision = revision;
        self.applied = self.config.clone();
    }

    /// Starts over from the directory's record (after a failed or conflicting commit).
    pub fn resync(&mut self, snapshot: Snapshot) {
        self.snapshot = snapshot;
    }

    /// The longest a drained server keeps established flows: the largest drain time of the
    /// resources that list it.
    fn drain_time(&self, server: &str) -> Duration {
        self.config
            .resources
            .iter()
            .filter(|r| r.servers.iter().any(|s| s == server))
            .map(|r| r.drain)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The earliest time (unix ms) at which a plan could change something with no new input:
    /// a hold time or a drain time running out.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut best: Option<u64> = None;
        let mut consider = |t: u64| best = Some(best.map_or(t, |b| b.min(t)));
        for s in self.snapshot.servers.values() {
            if let Some(at) = s.drained_at_ms {
                if s.dataplane_up {
                    consider(at + self.drain_time(&s.name).as_millis() as u64);
                }
            }
        }
        for r in &self.config.resources {
            let Failback::Hold(hold) = r.failback else {
                continue;
            };
            let Some(rec) = self.snapshot.resources.get(&r.name) else {
                continue;
            };
            // A pinned resource stays where the operator put it: no failback to wait for.
            if rec.pinned.is_some() {
                continue;
            }
            let Some(cur) = rec.current.as_deref() else {
                continue;
            };
            let cur_idx = r
                .servers
                .iter()
                .position(|s| s == cur)
                .unwrap_or(usize::MAX);
            // Exactly what `plan` waits for: the first eligible server before the current one.
            let first = r.servers.iter().take(cur_idx).find_map(|s| {
                self.snapshot
                    .servers
                    .get(s)
                    .filter(|sr| sr.health == Health::Up && sr.drained_at_ms.is_none())
            });
            if let Some(sr) = first {
                consider(sr.since_ms + hold.as_millis() as u64);
            }
        }
        best
    }

    /// Derives what should be, compares it with the last committed snapshot, and returns the
    /// difference. `action`, if any, is validated first; an invalid one changes nothing.
    pub fn plan(&self, now_ms: u64, action: Option<&Action>) -> Result<Plan, ActionError> {
        let cfg = &self.config;
        let old = &self.snapshot;
        let mut update = Update::default();
        let mut events: Vec<EventDraft> = Vec::new();

        // ---- servers: records, ids, health, drain.
        let mut used_ids: BTreeSet<u32> = old.servers.values().map(|s| s.id).collect();
        let mut next_id = old.next_server_id;
        let mut servers: BTreeMap<String, ServerRecord> = BTreeMap::new();
        let mut drains: HashMap<String, Option<u64>> = HashMap::new();
        match action {
            Some(Action::Drain { server }) => {
                let rec = old
                    .servers
                    .get(server)
                    .filter(|_| cfg.server(server).is_some())
                    .ok_or_else(|| ActionError::UnknownServer(server.clone()))?;
                if rec.drained_at_ms.is_some() {
                    return Err(ActionError::AlreadyDrained(server.clone()));
                }
                drains.insert(server.clone(), Some(now_ms));
            }
            Some(Action::Undrain { server }) => {
                let rec = old
                    .servers
                    .get(server)
                    .filter(|_| cfg.server(server).is_some())
                    .ok_or_else(|| ActionError::UnknownServer(server.clone()))?;
                if rec.drained_at_ms.is_none() {
                    return Err(ActionError::NotDrained(server.clone()));
                }
                drains.insert(server.clone(), None);
            }
            _ => {}
        }
        for sc in &cfg.servers {
            let prev = old.servers.get(&sc.name);
            let mut rec = match prev {
                Some(p) if p.address == sc.address => p.clone(),
                _ => {
                    // New server, or a new address: a new id, so flows that named the old
                    // address never follow the id to the new one.
                    let id =
                        alloc(next_id, MAX_SERVERS, &used_ids).ok_or(ActionError::Capacity {
                            what: "servers",
                            max: MAX_SERVERS,
                        })?;
                    used_ids.insert(id);
                    next_id = id + 1;
                    let (health, evidence) = match self.health.get(&sc.name) {
                        Some(o) => (
                            if o.up { Health::Up } else { Health::Down },
                            o.evidence.clone(),
                        ),
                        None => (
                            Health::Up,
                            "new server: up until its checks say otherwise".to_string(),
                        ),
                    };
                    events.push(EventDraft {
                        kind: "config".into(),
                        resource: None,
                        server: Some(sc.name.clone()),
                        message: match prev {
                            Some(p) => format!(
                                "server {} moved from {} to {} (new id {id})",
                                sc.name, p.address, sc.address
                            ),
                            None => format!("server {} added at {} (id {id})", sc.name, sc.address),
                        },
                    });
                    ServerRecord {
                        name: sc.name.clone(),
                        id,
                        address: sc.address,
                        health,
                        drained_at_ms: prev.and_then(|p| p.drained_at_ms),
                        dataplane_up: health == Health::Up,
                        generation: prev.map_or(1, |p| p.generation.wrapping_add(1)),
                        since_ms: now_ms,
                        evidence,
                    }
                }
            };
            if let Some(o) = self.health.get(&sc.name) {
                let h = if o.up { Health::Up } else { Health::Down };
                if h != rec.health {
                    rec.health = h;
                    rec.since_ms = o.at_ms;
                    rec.evidence = o.evidence.clone();
                    events.push(EventDraft {
                        kind: if o.up { "server-up" } else { "server-down" }.into(),
                        resource: None,
                        server: Some(sc.name.clone()),
                        message: format!(
                            "server {} is {}: {}",
                            sc.name,
                            if o.up { "up" } else { "down" },
                            o.evidence
                        ),
                    });
                }
            }
            if let Some(d) = drains.get(&sc.name) {
                rec.drained_at_ms = *d;
                rec.since_ms = now_ms;
                events.push(EventDraft {
                    kind: if d.is_some() { "drain" } else { "undrain" }.into(),
                    resource: None,
                    server: Some(sc.name.clone()),
                    message: match d {
                        Some(_) => format!(
                            "server {} drained by the operator: new flows move now, established flows within {}",
                            sc.name,
                            humantime::format_duration(self.drain_time(&sc.name))
                        ),
                        None => format!("server {} undrained by the operator", sc.name),
                    },
                });
            }
            let drain_over = rec
                .drained_at_ms
                .is_some_and(|at| now_ms >= at + self.drain_time(&sc.name).as_millis() as u64);
            let dp_up = rec.health == Health::Up && !drain_over;
            if dp_up != rec.dataplane_up {
                rec.dataplane_up = dp_up;
                if drain_over && rec.health == Health::Up {
                    events.push(EventDraft {
                        kind: "drain".into(),
                        resource: None,
                        server: Some(sc.name.clone()),
                        message: format!(
                            "server {}: drain time over, its remaining flows move to their resources' current servers",
                            sc.name
                        ),
                    });
                }
            }
            servers.insert(sc.name.clone(), rec);
        }
        let eligible = |name: &str| {
            servers
                .get(name)
                .is_some_and(|s| s.health == Health::Up && s.drained_at_ms.is_none())
        };
        let state_of = |name: &str| match servers.get(name) {
            None => "unknown".to_string(),
            Some(s) if s.health == Health::Down => format!("down ({})", s.evidence),
            Some(s) if s.drained_at_ms.is_some() => "drained".to_string(),
            Some(_) => "up".to_string(),
        };

        // ---- the operator's switchover, validated against the new state.
        let mut pin_request: Option<(&str, &str)> = None;
        if let Some(Action::Switchover { resource, to }) = action {
            let rc = cfg
                .resource(resource)
                .ok_or_else(|| ActionError::UnknownResource(resource.clone()))?;
            if cfg.server(to).is_none() {
                return Err(ActionError::UnknownServer(to.clone()));
            }
            if !rc.servers.iter().any(|s| s == to) {
                return Err(ActionError::NotInList {
                    resource: resource.clone(),
                    server: to.clone(),
                    list: rc.servers.join(", "),
                });
            }
            if !eligible(to) {
                return Err(ActionError::NotEligible {
                    server: to.clone(),
                    state: state_of(to),
                });
            }
            pin_request = Some((resource.as_str(), to.as_str()));
        }

        // ---- resources.
        let mut used_rids: BTreeSet<u32> = old.resources.values().map(|r| r.id).collect();
        let mut next_rid = old.next_resource_id;
        let mut resources: BTreeMap<String, ResourceRecord> = BTreeMap::new();
        let mut moved = Vec::new();
        for rc in &cfg.resources {
            let prev = old.resources.get(&rc.name);
            // Fast path, without allocating: nothing about this resource can change now.
            if let Some(p) = prev {
                if pin_request.is_none_or(|(r, _)| r != rc.name) && p.servers == rc.servers {
                    let stays = match (p.pinned.as_deref(), p.current.as_deref()) {
                        (Some(pin), Some(c)) => pin == c && eligible(pin),
                        (Some(_), None) => false,
                        (None, Some(c)) if eligible(c) => {
                            match rc.servers.iter().position(|s| s == c) {
                                None => false,
                                Some(ci) => match rc.servers[..ci].iter().find(|s| eligible(s)) {
                                    None => true,
                                    Some(b) => match rc.failback {
                                        Failback::Manual => true,
                                        Failback::Immediate => false,
                                        Failback::Hold(hold) => {
                                            now_ms < servers[b].since_ms + hold.as_millis() as u64
                                        }
                                    },
                                },
                            }
                        }
                        (None, Some(_)) => false,
                        (None, None) => !rc.servers.iter().any(|s| eligible(s)),
                    };
                    if stays {
                        continue;
                    }
                }
            }
            let mut rec = match prev {
                Some(p) => p.clone(),
                None => {
                    let id = alloc(next_rid, MAX_RESOURCES, &used_rids).ok_or(
                        ActionError::Capacity {
                            what: "resources",
                            max: MAX_RESOURCES,
                        },
                    )?;
                    used_rids.insert(id);
                    next_rid = id + 1;
                    ResourceRecord {
                        name: rc.name.clone(),
                        id,
                        servers: rc.servers.clone(),
                        current: None,
                        pinned: None,
                        generation: 0,
                        since_ms: now_ms,
                        reason: String::new(),
                    }
                }
            };
            rec.servers = rc.servers.clone();
            let first = rc.servers.iter().find(|s| eligible(s)).cloned();
            let cur = rec.current.clone().filter(|c| rc.servers.contains(c));
            // A pin ends when its server is no longer eligible or no longer listed.
            if let Some(p) = rec.pinned.clone() {
                if !eligible(&p) || !rc.servers.contains(&p) {
                    rec.pinned = None;
                }
            }
            let (target, kind, why): (Option<String>, &str, String) =
                if let Some((_, to)) = pin_request.filter(|(r, _)| *r == rc.name) {
                    rec.pinned = if rc.servers.first().is_some_and(|f| f == to) {
                        None // back on the primary: the normal policy applies again
                    } else {
                        Some(to.to_string())
                    };
                    (
                        Some(to.to_string()),
                        "switchover",
                        "switchover by the operator".to_string(),
                    )
                } else if let Some(p) = rec.pinned.clone() {
                    (Some(p), "", String::new())
                } else {
                    match cur.as_deref() {
                        Some(c) if eligible(c) => {
                            let ci = rc.servers.iter().position(|s| s == c).unwrap_or(0);
                            let better = rc.servers[..ci].iter().find(|s| eligible(s)).cloned();
                            match (better, rc.failback) {
                                (Some(b), Failback::Immediate) => {
                                    let why = format!("{b} is up again (failback: immediate)");
                                    (Some(b), "failback", why)
                                }
                                (Some(b), Failback::Hold(hold)) => {
                                    let since = servers[&b].since_ms;
                                    if now_ms >= since + hold.as_millis() as u64 {
                                        let why = format!(
                                            "{b} has been up for {} (failback: hold {})",
                                            humantime::format_duration(Duration::from_millis(
                                                now_ms - since
                                            )),
                                            humantime::format_duration(hold)
                                        );
                                        (Some(b), "failback", why)
                                    } else {
                                        (Some(c.to_string()), "", String::new())
                                    }
                                }
                                _ => (Some(c.to_string()), "", String::new()),
                            }
                        }
                        Some(c) => {
                            let why = format!("{c} is {}", state_of(c));
                            (
                                first.clone(),
                                if first.is_some() {
                                    "failover"
                                } else {
                                    "no-server"
                                },
                                why,
                            )
                        }
                        None if prev.is_none() => {
                            (first.clone(), "config", "resource added".to_string())
                        }
                        None => match &first {
                            Some(f) => (Some(f.clone()), "failover", format!("{f} is up")),
                            None => (None, "", String::new()),
                        },
                    }
                };
            if target != rec.current || prev.is_none() {
                let from = rec.current.clone().unwrap_or_else(|| "no server".into());
                let to = target.clone().unwrap_or_else(|| "no server".into());
                let reason = if kind == "no-server" || (target.is_none() && !why.is_empty()) {
                    format!(
                        "{why}; no server of {} is up ({})",
                        rc.name,
                        rc.servers.join(", ")
                    )
                } else {
                    why
                };
                rec.current = target;
                rec.generation = rec.generation.wrapping_add(1);
                rec.since_ms = now_ms;
                rec.reason = reason.clone();
                if prev.is_some() {
                    moved.push(rc.name.clone());
                }
                events.push(EventDraft {
                    kind: if rec.current.is_none() {
                        "no-server".into()
                    } else {
                        kind.into()
                    },
                    resource: Some(rc.name.clone()),
                    server: rec.current.clone(),
                    message: format!("{} moved {from} -> {to}: {reason}", rc.name),
                });
            }
            resources.insert(rc.name.clone(), rec);
        }

        // ---- diff against the committed snapshot.
        let mut changes = Vec::new();
        for (name, rec) in &servers {
            let prev = old.servers.get(name);
            if prev != Some(rec) {
                let dp_changed = prev.is_none_or(|p| {
                    p.id != rec.id || p.address != rec.address || p.dataplane_up != rec.dataplane_up
                });
                let mut rec = rec.clone();
                if dp_changed && prev.is_some_and(|p| p.id == rec.id) {
                    rec.generation = rec.generation.wrapping_add(1);
                }
                if dp_changed {
                    changes.push(Change::SetServer {
                        id: rec.id,
                        server: ServerEntry {
                            addr: rec.address,
                            up: rec.dataplane_up,
                            generation: rec.generation,
                        },
                    });
                }
                update.set_servers.push(rec);
            }
        }
        let server_id = |n: &Option<String>| n.as_ref().and_then(|n| servers.get(n)).map(|s| s.id);
        // Without a new configuration nothing was added, removed or reshaped: skip the
        // configuration-wide comparisons (a plan must stay linear in the number of resources).
        let same_config = Arc::ptr_eq(&self.applied, &self.config);
        let applied_by_name: HashMap<&str, &crate::config::ResourceConfig> = if same_config {
            HashMap::new()
        } else {
            self.applied
                .resources
                .iter()
                .map(|r| (r.name.as_str(), r))
                .collect()
        };
        let cfg_resources: HashSet<&str> = cfg.resources.iter().map(|r| r.name.as_str()).collect();
        let cfg_servers: HashSet<&str> = cfg.servers.iter().map(|s| s.name.as_str()).collect();
        for rc in &cfg.resources {
            let prev = old.resources.get(&rc.name);
            // Resources the fast path left alone keep their committed record.
            let Some(rec) = resources.get(&rc.name).or(prev) else {
                continue;
            };
            let old_rc = if same_config {
                Some(rc)
            } else {
                applied_by_name.get(rc.name.as_str()).copied()
            };
            // Rewrite the entries when the assignment, the server's id, or how the resource
            // is matched changed; otherwise leave them (and their flows) alone.
            // The id the dataplane holds (looked up in the committed servers: a readdressed
            // server keeps its name but gets a new id) against the id it should hold.
            let old_id = |p: &ResourceRecord| {
                p.current
                    .as_ref()
                    .and_then(|n| old.servers.get(n))
                    .map(|s| s.id)
            };
            let id_changed = prev.is_some_and(|p| old_id(p) != server_id(&rec.current))
                || prev.is_none_or(|p| p.current != rec.current || p.id != rec.id);
            let shape_changed = old_rc.is_none_or(|o| {
                o.vip != rc.vip
                    || o.protocol != rc.protocol
                    || o.ports != rc.ports
                    || o.on_no_server != rc.on_no_server
            });
            if id_changed || shape_changed || prev.is_none() {
                let assignment = ResourceAssignment {
                    resource_id: rec.id,
                    server: server_id(&rec.current),
                    generation: rec.generation,
                    on_no_server: rc.on_no_server,
                };
                for m in rc.matchers() {
                    changes.push(Change::SetResource {
                        matcher: m,
                        assignment,
                    });
                }
            }
            if prev != Some(rec) {
                update.set_resources.push(rec.clone());
            }
        }
        let mut removed: HashSet<String> = HashSet::new();
        if !same_config {
            let new_matchers = all_matchers(cfg);
            for (m, owner) in &all_matchers(&self.applied) {
                if !new_matchers.contains_key(m) {
                    changes.push(Change::RemoveResource { matcher: *m });
                    if !cfg_resources.contains(owner.as_str()) && removed.insert(owner.clone()) {
                        update.remove_resources.push(owner.clone());
                        events.push(EventDraft {
                            kind: "config".into(),
                            resource: Some(owner.clone()),
                            server: None,
                            message: format!("resource {owner} removed"),
                        });
                    }
                }
            }
        }
        for name in old.resources.keys() {
            if !cfg_resources.contains(name.as_str()) && removed.insert(name.clone()) {
                update.remove_resources.push(name.clone());
            }
        }
        for (name, rec) in &old.servers {
            let gone = !cfg_servers.contains(name.as_str());
            let readdressed = servers.get(name).is_some_and(|s| s.id != rec.id);
            if gone || readdressed {
                changes.push(Change::RemoveServer { id: rec.id });
            }
            if gone {
                update.remove_servers.push(name.clone());
                events.push(EventDraft {
                    kind: "config".into(),
                    resource: None,
                    server: Some(name.clone()),
                    message: format!("server {name} removed"),
                });
            }
        }
        update.events = events;
        Ok(Plan {
            update,
            changes,
            moved,
        })
    }

    /// Every entry the dataplane should hold (for a fresh or adopted dataplane at start):
    /// servers first, then resources.
    pub fn full_state(&self) -> Vec<Change> {
        let mut out = Vec::new();
        for s in self.snapshot.servers.values() {
            out.push(Change::SetServer {
                id: s.id,
                server: ServerEntry {
                    addr: s.address,
                    up: s.dataplane_up,
                    generation: s.generation,
                },
            });
        }
        for rc in &self.config.resources {
            if let Some(rec) = self.snapshot.resources.get(&rc.name) {
                let assignment = ResourceAssignment {
                    resource_id: rec.id,
                    server: rec
                        .current
                        .as_ref()
                        .and_then(|c| self.snapshot.servers.get(c))
                        .map(|s| s.id),
                    generation: rec.generation,
                    on_no_server: rc.on_no_server,
                };
                for m in rc.matchers() {
                    out.push(Change::SetResource {
                        matcher: m,
                        assignment,
                    });
                }
            }
        }
        out
    }

    /// The server ids and resource matches the dataplane should hold (to remove strays).
    /// What the maps must hold for this state (for [`MapSync::resync`]).
    ///
    /// [`MapSync::resync`]: crate::dataplane::sync::MapSync::resync
    pub fn desired(&self) -> Desired {
        let (servers, resources) = self.expected_keys();
        Desired {
            changes: self.full_state(),
            servers,
            resources,
        }
    }

    fn expected_keys(&self) -> (BTreeSet<u32>, BTreeSet<ResourceMatch>) {
        (
            self.snapshot.servers.values().map(|s| s.id).collect(),
            all_matchers(&self.config).into_keys().collect(),
        )
    }

    /// Server address by name (for the API).
    pub fn server_address(&self, name: &str) -> Option<IpAddr> {
        self.config.server(name).map(|s| s.address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::{Dataplane, MemoryDataplane};
    use crate::model::Protocol;
    use std::path::Path;

    const T0: u64 = 1_000_000;

    fn config(failback: &str, extra: &str) -> Arc<Config> {
        let text = format!(
            r#"
[gateway]
interfaces = ["gw0"]

[[server]]
name = "p1"
address = "198.18.2.10"
checks = [{{ type = "tcp", port = 80 }}]

[[server]]
name = "b1"
address = "198.18.3.10"
checks = [{{ type = "tcp", port = 80 }}]

[[resource]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80, 443]
servers = ["p1", "b1"]
{failback}
drain = "5s"
{extra}
"#
        );
        Arc::new(crate::config::parse(&text, Path::new("test.toml")).expect("test config"))
    }

    /// Engine + the dataplane it drives, committing plans like the daemon does.
    struct Rig {
        engine: Engine,
        dp: MemoryDataplane,
        events: Vec<EventDraft>,
    }

    impl Rig {
        fn new(cfg: Arc<Config>) -> Rig {
            let mut r = Rig {
                engine: Engine::new(cfg, Snapshot::default()),
                dp: MemoryDataplane::new(),
                events: Vec::new(),
            };
            r.step(T0, None).unwrap();
            r
        }

        fn step(&mut self, now: u64, action: Option<&Action>) -> Result<Plan, ActionError> {
            let plan = self.engine.plan(now, action)?;
            let rev = self.engine.snapshot().revision + 1;
            self.engine.committed(&plan.update, rev);
            self.dp.apply(&plan.changes).map_err(|(_, e)| e).unwrap();
            self.events.extend(plan.update.events.clone());
            Ok(plan)
        }

        fn observe(&mut self, now: u64, server: &str, up: bool) -> Plan {
            self.engine.observe(
                server,
                Observation {
                    up,
                    evidence: format!("test says {}", if up { "up" } else { "down" }),
                    at_ms: now,
                },
            );
            self.step(now, None).unwrap()
        }

        fn current(&self) -> Option<String> {
            self.engine.snapshot().resources["web"].current.clone()
        }

        /// The server id the dataplane sends new flows of web:80 to.
        fn dp_server(&self) -> u32 {
            let m = ResourceMatch {
                vip: "198.18.100.1".parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 80,
            };
            self.dp.resource(&m).unwrap().server_id
        }

        fn id(&self, server: &str) -> u32 {
            self.engine.snapshot().servers[server].id
        }

        fn dp_up(&self, server: &str) -> bool {
            self.dp.servers[&self.id(server)].state == ftn_common::SERVER_UP
        }
    }

    #[test]
    fn starts_on_the_primary_with_both_ports() {
        let r = Rig::new(config("", ""));
        assert_eq!(r.current().as_deref(), Some("p1"));
        assert_eq!(r.dp.resources.len(), 2);
        assert_eq!(r.dp_server(), r.id("p1"));
        assert!(r.dp_up("p1") && r.dp_up("b1"));
        assert_eq!(r.events.iter().filter(|e| e.kind == "config").count(), 3);
    }

    #[test]
    fn primary_down_fails_over_at_once_and_marks_the_server_down() {
        let mut r = Rig::new(config("", ""));
        let plan = r.observe(T0 + 10, "p1", false);
        assert_eq!(r.current().as_deref(), Some("b1"));
        assert_eq!(r.dp_server(), r.id("b1"));
        assert!(!r.dp_up("p1"), "established flows must leave a down server");
        assert_eq!(plan.moved, vec!["web".to_string()]);
        let ev = r.events.iter().find(|e| e.kind == "failover").unwrap();
        assert!(
            ev.message.contains("p1 -> b1") && ev.message.contains("test says down"),
            "{}",
            ev.message
        );
        // 1 server + 2 resource entries, nothing else rewritten.
        assert_eq!(plan.changes.len(), 3, "{:?}", plan.changes);
    }

    #[test]
    fn failback_waits_for_the_hold_time() {
        let mut r = Rig::new(config("failback = \"hold\"\nhold = \"10s\"", ""));
        r.observe(T0 + 10, "p1", false);
        r.observe(T0 + 1_000, "p1", true);
        assert_eq!(
            r.current().as_deref(),
            Some("b1"),
            "no failback before the hold time"
        );
        assert!(r.dp_up("p1"));
        assert_eq!(r.engine.next_deadline(), Some(T0 + 11_000));
        assert!(r.step(T0 + 10_999, None).unwrap().moved.is_empty());
        let plan = r.step(T0 + 11_000, None).unwrap();
        assert_eq!(plan.moved, vec!["web".to_string()]);
        assert_eq!(r.current().as_deref(), Some("p1"));
        // b1 stays up in the dataplane: connections opened on it during the failover survive.
        assert!(r.dp_up("b1"));
        assert!(plan
            .changes
            .iter()
            .all(|c| !matches!(c, Change::SetServer { .. })));
        assert!(r
            .events
            .iter()
            .any(|e| e.kind == "failback" && e.message.contains("hold 10s")));
        assert_eq!(r.engine.next_deadline(), None);
    }

    #[test]
    fn default_policy_is_hold() {
        let mut r = Rig::new(config("", ""));
        r.observe(T0 + 10, "p1", false);
        r.observe(T0 + 20, "p1", true);
        assert_eq!(r.current().as_deref(), Some("b1"));
        assert!(r.engine.next_deadline().is_some());
    }

    #[test]
    fn immediate_failback() {
        let mut r = Rig::new(config("failback = \"immediate\"", ""));
        r.observe(T0 + 10, "p1", false);
        r.observe(T0 + 20, "p1", true);
        assert_eq!(r.current().as_deref(), Some("p1"));
    }

    #[test]
    fn manual_failback_waits_for_a_switchover() {
        let mut r = Rig::new(config("failback = \"manual\"", ""));
        r.observe(T0 + 10, "p1", false);
        r.observe(T0 + 20, "p1", true);
        assert!(r.step(T0 + 3_600_000, None).unwrap().moved.is_empty());
        assert_eq!(r.current().as_deref(), Some("b1"));
        assert_eq!(r.engine.next_deadline(), None);
        let sw = Action::Switchover {
            resource: "web".into(),
            to: "p1".into(),
        };
        r.step(T0 + 3_600_001, Some(&sw)).unwrap();
        assert_eq!(r.current().as_deref(), Some("p1"));
        assert_eq!(r.engine.snapshot().resources["web"].pinned, None);
        assert!(r.events.iter().any(|e| e.kind == "switchover"));
    }

    #[test]
    fn switchover_pins_until_the_server_fails() {
        let mut r = Rig::new(config("failback = \"immediate\"", ""));
        let sw = Action::Switchover {
            resource: "web".into(),
            to: "b1".into(),
        };
        r.step(T0 + 5, Some(&sw)).unwrap();
        assert_eq!(r.current().as_deref(), Some("b1"));
        // Immediate failback does not undo the operator's choice.
        assert!(r.step(T0 + 100_000, None).unwrap().moved.is_empty());
        r.observe(T0 + 100_010, "b1", false);
        assert_eq!(r.current().as_deref(), Some("p1"));
        assert_eq!(r.engine.snapshot().resources["web"].pinned, None);
    }

    #[test]
    fn invalid_actions_change_nothing() {
        let mut r = Rig::new(config("", ""));
        let before = r.engine.snapshot().clone();
        let bad = [
            (
                Action::Switchover {
                    resource: "nope".into(),
                    to: "b1".into(),
                },
                "no resource named \"nope\"",
            ),
            (
                Action::Switchover {
                    resource: "web".into(),
                    to: "zz".into(),
                },
                "no server named \"zz\"",
            ),
            (
                Action::Drain {
                    server: "zz".into(),
                },
                "no server named \"zz\"",
            ),
            (
                Action::Undrain {
                    server: "p1".into(),
                },
                "not drained",
            ),
        ];
        for (a, msg) in bad {
            let e = r.engine.plan(T0 + 1, Some(&a)).unwrap_err().to_string();
            assert!(e.contains(msg), "{a:?}: {e}");
        }
        r.observe(T0 + 2, "b1", false);
        let e = r
            .engine
            .plan(
                T0 + 3,
                Some(&Action::Switchover {
                    resource: "web".into(),
                    to: "b1".into(),
                }),
            )
            .unwrap_err()
            .to_string();
        assert!(e.contains("b1") && e.contains("down"), "{e}");
        assert_eq!(r.engine.snapshot().resources, before.resources);
    }

    #[test]
    fn drain_moves_new_flows_now_and_cuts_established_ones_after_the_drain_time() {
        let mut r = Rig::new(config("failback = \"immediate\"", ""));
        r.step(
            T0 + 10,
            Some(&Action::Drain {
                server: "p1".into(),
            }),
        )
        .unwrap();
        assert_eq!(r.current().as_deref(), Some("b1"));
        assert!(r.dp_up("p1"), "established flows keep p1 during the drain");
        assert_eq!(r.engine.next_deadline(), Some(T0 + 5_010));
        r.step(T0 + 5_010, None).unwrap();
        assert!(!r.dp_up("p1"), "drain time over: remaining flows move");
        assert_eq!(r.engine.next_deadline(), None);
        let e = r
            .engine
            .plan(
                T0 + 5_011,
                Some(&Action::Drain {
                    server: "p1".into(),
                }),
            )
            .unwrap_err();
        assert_eq!(e, ActionError::AlreadyDrained("p1".into()));
        r.step(
            T0 + 6_000,
            Some(&Action::Undrain {
                server: "p1".into(),
            }),
        )
        .unwrap();
        assert!(r.dp_up("p1"));
        assert_eq!(
            r.current().as_deref(),
            Some("p1"),
            "immediate failback after undrain"
        );
    }

    #[test]
    fn no_live_server_then_recovery() {
        let mut r = Rig::new(config("", "on_no_server = \"reject\""));
        r.observe(T0 + 10, "p1", false);
        r.observe(T0 + 20, "b1", false);
        assert_eq!(r.current(), None);
        assert_eq!(r.dp_server(), ftn_common::NO_SERVER);
        let m = ResourceMatch {
            vip: "198.18.100.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port: 80,
        };
        assert_eq!(
            r.dp.resource(&m).unwrap().flags,
            ftn_common::RES_FLAG_REJECT
        );
        assert!(r.events.iter().any(|e| e.kind == "no-server"));
        // The backup comes back first: served at once (failover, no hold for a resource with nothing).
        r.observe(T0 + 30, "b1", true);
        assert_eq!(r.current().as_deref(), Some("b1"));
        r.observe(T0 + 40, "p1", true);
        assert_eq!(r.current().as_deref(), Some("b1"));
        r.step(T0 + 40 + 10_000, None).unwrap();
        assert_eq!(r.current().as_deref(), Some("p1"));
    }

    #[test]
    fn a_flapping_primary_moves_traffic_once() {
        let mut r = Rig::new(config("", ""));
        let mut moves = 0;
        let mut t = T0;
        for i in 0..100 {
            t += 300; // up/down every 300 ms, well inside the 10 s hold
            moves += r.observe(t, "p1", i % 2 == 1).moved.len();
        }
        assert_eq!(moves, 1, "one failover, no failback while it flaps");
        assert_eq!(r.current().as_deref(), Some("b1"));
    }

    #[test]
    fn reload_applies_only_the_difference() {
        let mut r = Rig::new(config("", ""));
        r.dp.writes = 0;
        let extra = r#"
[[resource]]
name = "dns"
vip = "198.18.100.2"
protocol = "udp"
ports = [53]
servers = ["b1", "p1"]
"#;
        r.engine.set_config(config("", extra));
        let plan = r.step(T0 + 10, None).unwrap();
        assert_eq!(
            plan.changes.len(),
            1,
            "only dns:53 is written: {:?}",
            plan.changes
        );
        assert_eq!(
            r.engine.snapshot().resources["dns"].current.as_deref(),
            Some("b1")
        );
        // Change web's ports: 443 removed, 80 rewritten; dns untouched.
        let text_cfg = config("", extra);
        let mut c = (*text_cfg).clone();
        c.resources[0].ports = vec![80];
        r.engine.set_config(Arc::new(c));
        let plan = r.step(T0 + 20, None).unwrap();
        assert!(plan
            .changes
            .iter()
            .any(|c| matches!(c, Change::RemoveResource { matcher } if matcher.port == 443)));
        assert!(plan
            .changes
            .iter()
            .all(|c| !matches!(c, Change::SetResource { matcher, .. } if matcher.port == 53)));
        assert_eq!(r.dp.resources.len(), 2);
        // Remove dns entirely.
        r.engine.set_config(config("", ""));
        let plan = r.step(T0 + 30, None).unwrap();
        assert_eq!(plan.update.remove_resources, vec!["dns".to_string()]);
        assert!(!r.engine.snapshot().resources.contains_key("dns"));
    }

    #[test]
    fn a_pinned_resource_has_no_failback_deadline() {
        let mut r = Rig::new(config("failback = \"hold\"\nhold = \"10s\"", ""));
        let sw = Action::Switchover {
            resource: "web".into(),
            to: "b1".into(),
        };
        r.step(T0 + 60_000, Some(&sw)).unwrap();
        assert_eq!(r.current().as_deref(), Some("b1"));
        // p1 has been up far longer than the hold: without the pin this would be a deadline in
        // the past, and the daemon's loop would spin on it.
        assert_eq!(r.engine.next_deadline(), None);
    }

    #[test]
    fn readdressing_the_current_server_rewrites_its_resources() {
        let mut r = Rig::new(config("", ""));
        let old = r.id("p1");
        let mut c = (*config("", "")).clone();
        c.servers[0].address = "198.18.2.11".parse().unwrap();
        r.engine.set_config(Arc::new(c));
        r.step(T0 + 10, None).unwrap();
        assert_ne!(r.id("p1"), old);
        assert_eq!(r.current().as_deref(), Some("p1"));
        assert_eq!(r.dp_server(), r.id("p1"), "web must point to p1's new id");
        assert!(!r.dp.servers.contains_key(&old));
    }

    #[test]
    fn a_new_address_gets_a_new_id() {
        let mut r = Rig::new(config("", ""));
        let old = r.id("b1");
        let mut c = (*config("", "")).clone();
        c.servers[1].address = "198.18.3.11".parse().unwrap();
        r.engine.set_config(Arc::new(c));
        let plan = r.step(T0 + 10, None).unwrap();
        let new = r.id("b1");
        assert_ne!(old, new);
        assert!(plan.changes.contains(&Change::RemoveServer { id: old }));
        assert!(!r.dp.servers.contains_key(&old));
    }

    #[test]
    fn restart_from_the_directory_changes_nothing() {
        let mut r = Rig::new(config("", ""));
        r.observe(T0 + 10, "p1", false);
        let snap = r.engine.snapshot().clone();
        let again = Engine::new(config("", ""), snap);
        let plan = again.plan(T0 + 20, None).unwrap();
        assert!(plan.is_empty(), "{plan:?}");
        assert_eq!(again.recorded_health("p1"), Some(Health::Down));
        // The state a restart writes is what the dataplane already holds.
        let mut dp = r.dp.clone();
        let before = (dp.resources.clone(), dp.servers.clone());
        dp.apply(&again.full_state()).unwrap();
        assert_eq!((dp.resources, dp.servers), before);
    }
}
