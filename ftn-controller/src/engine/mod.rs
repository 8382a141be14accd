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

mod diff;
mod follow;
mod index;
mod resources;
mod returns;
mod servers;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ResourceConfig};
use crate::dataplane::sync::Desired;
use crate::dataplane::{Change, FragmentTarget, ResourceAssignment, ServerEntry};
use crate::directory::{EventDraft, ResourceRecord, Snapshot, Update};
use crate::model::{Failback, Health, ResourceMatch, ReturnMatch};

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
    /// `config`'s resources by name and by server ([`index`]).
    index: index::ConfigIndex,
    /// The snapshot's resources that are not simply on their primary ([`index`]).
    displaced: HashSet<String>,
    /// Set when the snapshot may not match the configuration (a new engine, a resync): the
    /// next plan looks at every resource. Cleared by the commit of a plan, or by a full plan
    /// that finds nothing to change (a plan takes `&self`, hence the atomic).
    full_due: AtomicBool,
    /// [`Engine::next_deadline`] as last computed ([`DEADLINE_UNKNOWN`] after a change of the
    /// snapshot or the configuration, [`DEADLINE_NONE`] for none).
    deadline: AtomicU64,
    /// Servers observed since the last commit: with the drained ones, all an incremental plan
    /// looks at among the servers.
    observed: BTreeSet<String>,
}

const DEADLINE_UNKNOWN: u64 = u64::MAX;
const DEADLINE_NONE: u64 = u64::MAX - 1;

/// The dataplane entries of resource `rc`, on `server` (an id), as `rec` records it.
fn set_resource(
    rc: &ResourceConfig,
    rec: &ResourceRecord,
    server: Option<u32>,
) -> impl Iterator<Item = Change> {
    let assignment = ResourceAssignment {
        resource_id: rec.id,
        server,
        generation: rec.generation,
        on_no_server: rc.on_no_server,
    };
    rc.matchers()
        .into_iter()
        .map(move |matcher| Change::SetResource {
            matcher,
            assignment,
        })
}

/// The fragment entry of resource `rc` (when it is alone on its VIP and protocol), following
/// its first port. It does not depend on the assignment: written with the resource's entries
/// when they are first written or the configuration reshapes them, never on failover.
fn set_fragments(rc: &ResourceConfig, rec: &ResourceRecord) -> Option<Change> {
    let matcher = rc.fragment_matcher()?;
    Some(Change::SetFragments {
        matcher,
        target: FragmentTarget {
            resource_id: rec.id,
            port: *rc.ports.first()?,
        },
    })
}

/// Every resource key of `c` (ports, ICMP, fragment entries) and the resource that owns it.
fn all_matchers(c: &Config) -> BTreeMap<ResourceMatch, String> {
    c.resources
        .iter()
        .flat_map(|r| r.keys().into_iter().map(move |m| (m, r.name.clone())))
        .collect()
}

impl Engine {
    /// An engine for `config`, starting from the directory's `snapshot`. Servers the directory
    /// does not know yet start up (checks confirm or refute within `fall` probes).
    pub fn new(config: Arc<Config>, snapshot: Snapshot) -> Self {
        Engine {
            applied: config.clone(),
            index: index::ConfigIndex::new(&config),
            displaced: index::displaced_of(&snapshot),
            config,
            snapshot,
            health: HashMap::new(),
            full_due: AtomicBool::new(true),
            deadline: AtomicU64::new(DEADLINE_UNKNOWN),
            observed: BTreeSet::new(),
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
        self.observed.clear();
        // What the engine was told before may differ from the records: look at everything.
        self.full_due.store(true, Ordering::Relaxed);
    }

    /// Records a checker's verdict; the next [`Engine::plan`] acts on it.
    pub fn observe(&mut self, server: &str, obs: Observation) {
        self.observed.insert(server.to_string());
        self.health.insert(server.to_string(), obs);
    }

    /// Switches to a new configuration; the next plan applies the difference.
    pub fn set_config(&mut self, config: Arc<Config>) {
        self.forget_deadline();
        self.index = index::ConfigIndex::new(&config);
        self.config = config;
        self.health
            .retain(|name, _| self.config.servers.iter().any(|s| &s.name == name));
    }

    /// The directory accepted `update` (the update of the last plan) at `revision`.
    pub fn committed(&mut self, update: &Update, revision: crate::directory::Revision) {
        self.forget_deadline();
        self.observed.clear();
        self.snapshot.advance(update);
        debug_assert_eq!(self.snapshot.revision, revision);
        self.snapshot.revision = revision;
        self.applied = self.config.clone();
        index::track(&mut self.displaced, update);
        self.full_due.store(false, Ordering::Relaxed);
    }

    /// Starts over from the directory's record (after a failed or conflicting commit).
    pub fn resync(&mut self, snapshot: Snapshot) {
        self.forget_deadline();
        self.observed.clear();
        self.displaced = index::displaced_of(&snapshot);
        self.snapshot = snapshot;
        self.full_due.store(true, Ordering::Relaxed);
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
    ///
    /// Computed once per change of the snapshot or the configuration (it walks every displaced
    /// resource, and the engine loop asks on every pass).
    pub fn next_deadline(&self) -> Option<u64> {
        match self.deadline.load(Ordering::Relaxed) {
            DEADLINE_UNKNOWN => {
                let d = self.compute_deadline();
                let stored = d.unwrap_or(DEADLINE_NONE).min(DEADLINE_NONE);
                self.deadline.store(stored, Ordering::Relaxed);
                d
            }
            DEADLINE_NONE => None,
            t => Some(t),
        }
    }

    /// The snapshot or the configuration changed: [`Engine::next_deadline`] is computed again.
    pub(super) fn forget_deadline(&self) {
        self.deadline.store(DEADLINE_UNKNOWN, Ordering::Relaxed);
    }

    fn compute_deadline(&self) -> Option<u64> {
        let mut best: Option<u64> = None;
        let mut consider = |t: u64| best = Some(best.map_or(t, |b| b.min(t)));
        for s in self.snapshot.servers.values() {
            if let Some(at) = s.drained_at_ms {
                if s.dataplane_up {
                    consider(at + self.drain_time(&s.name).as_millis() as u64);
                }
            }
        }
        // Only a displaced resource can be waiting for a failback.
        for name in &self.displaced {
            let Some(r) = self
                .index
                .by_name
                .get(name)
                .map(|&i| &self.config.resources[i])
            else {
                continue;
            };
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
    ///
    /// Four phases: the servers' records ([`servers`]), the operator's switchover and every
    /// resource's current server ([`resources`]), then the difference with the committed
    /// snapshot as a directory update and dataplane changes ([`diff`]).
    pub fn plan(&self, now_ms: u64, action: Option<&Action>) -> Result<Plan, ActionError> {
        self.plan_with(now_ms, action, self.full_plan_due())
    }

    /// [`Engine::plan`], looking at every resource (`full`) or only at the candidates of
    /// [`index`]. Both give the same plan; the incremental one costs what changed.
    fn plan_with(
        &self,
        now_ms: u64,
        action: Option<&Action>,
        full: bool,
    ) -> Result<Plan, ActionError> {
        let mut events: Vec<EventDraft> = Vec::new();
        let servers = self.plan_servers(now_ms, action, full, &mut events)?;
        let pin_request = self.switchover_request(action, &servers)?;
        let look_at = if full {
            None
        } else {
            Some(self.candidates(&servers, pin_request.map(|(r, _)| r)))
        };
        let resources = self.plan_resources(now_ms, pin_request, &servers, look_at, &mut events)?;
        let mut update = Update::default();
        let changes = self.diff(&servers, &resources, full, &mut update, &mut events);
        update.events = events;
        let plan = Plan {
            update,
            changes,
            moved: resources.moved,
        };
        if full && plan.is_empty() {
            // The snapshot matches the configuration: incremental plans from here on.
            self.full_due.store(false, Ordering::Relaxed);
        }
        Ok(plan)
    }

    /// Every entry the dataplane should hold (for a fresh or adopted dataplane at start):
    /// servers first, then resources, then the return table.
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
                let server = rec
                    .current
                    .as_ref()
                    .and_then(|c| self.snapshot.servers.get(c))
                    .map(|s| s.id);
                out.extend(set_resource(rc, rec, server));
                out.extend(set_fragments(rc, rec));
            }
        }
        out.extend(
            self.state_returns()
                .into_iter()
                .map(|(matcher, target)| Change::SetReturn { matcher, target }),
        );
        out
    }

    /// The return entries of the current configuration and records.
    fn state_returns(&self) -> BTreeMap<ReturnMatch, crate::dataplane::ReturnTarget> {
        let snap = &self.snapshot;
        returns::return_entries(
            &self.config,
            |n| snap.resources.get(n).map(|r| &**r),
            |n| snap.servers.get(n),
        )
    }

    /// What the maps must hold for this state (for [`MapSync::resync`]).
    ///
    /// [`MapSync::resync`]: crate::dataplane::sync::MapSync::resync
    pub fn desired(&self) -> Desired {
        let (servers, resources) = self.expected_keys();
        Desired {
            changes: self.full_state(),
            servers,
            resources,
            returns: self.state_returns().into_keys().collect(),
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
mod tests;
