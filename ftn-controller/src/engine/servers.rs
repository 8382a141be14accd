//! Phase 1 of a plan: every server's record (id, health, drain, what the dataplane holds).
use std::collections::{BTreeSet, HashMap};

use ftn_common::MAX_SERVERS;

use super::{Action, ActionError, Engine, Observation};
use crate::config::ServerConfig;
use crate::directory::{EventDraft, ServerRecord};
use crate::model::Health;

/// Dataplane ids in use and the next one to try (ids are reused only after wrapping around).
pub(super) struct IdAlloc {
    used: BTreeSet<u32>,
    next: u32,
    max: u32,
    what: &'static str,
}

impl IdAlloc {
    pub(super) fn new(
        used: impl Iterator<Item = u32>,
        next: u32,
        max: u32,
        what: &'static str,
    ) -> IdAlloc {
        IdAlloc {
            used: used.collect(),
            next,
            max,
            what,
        }
    }

    pub(super) fn take(&mut self) -> Result<u32, ActionError> {
        let id = (self.next..self.max)
            .chain(0..self.next.min(self.max))
            .find(|i| !self.used.contains(i))
            .ok_or(ActionError::Capacity {
                what: self.what,
                max: self.max,
            })?;
        self.used.insert(id);
        self.next = id + 1;
        Ok(id)
    }
}

/// The servers' records as they should be now, by name, and the names whose records the plan
/// may have changed (None: any of them, a full plan). The map starts as an O(1) copy of the
/// snapshot's (a persistent map): an incremental plan copies only what it touches.
pub(super) struct ServerSet(
    pub(super) imbl::OrdMap<String, ServerRecord>,
    pub(super) Option<BTreeSet<String>>,
);

impl ServerSet {
    /// The records that may differ from the snapshot's, in name order.
    pub(super) fn maybe_changed(&self) -> Vec<(&String, &ServerRecord)> {
        match &self.1 {
            None => self.0.iter().collect(),
            Some(names) => names
                .iter()
                .filter_map(|n| self.0.get_key_value(n))
                .collect(),
        }
    }

    /// Up and not drained: a resource may move to it.
    pub(super) fn eligible(&self, name: &str) -> bool {
        self.0
            .get(name)
            .is_some_and(|s| s.health == Health::Up && s.drained_at_ms.is_none())
    }

    /// Why a server is (not) eligible, for messages.
    pub(super) fn state_of(&self, name: &str) -> String {
        match self.0.get(name) {
            None => "unknown".to_string(),
            Some(s) if s.health == Health::Down => format!("down ({})", s.evidence),
            Some(s) if s.drained_at_ms.is_some() => "drained".to_string(),
            Some(_) => "up".to_string(),
        }
    }

    pub(super) fn since_ms(&self, name: &str) -> u64 {
        self.0[name].since_ms
    }
}

fn health_of(o: &Observation) -> Health {
    if o.up {
        Health::Up
    } else {
        Health::Down
    }
}

fn server_event(server: &str, kind: &str, message: String) -> EventDraft {
    EventDraft {
        kind: kind.into(),
        resource: None,
        server: Some(server.to_string()),
        message,
    }
}

impl Engine {
    /// Every configured server's record; `action`'s drain or undrain is validated and applied.
    /// An incremental plan (`full` false) looks only at the servers that can have changed: those
    /// observed since the last commit, the drained ones (a drain time runs out) and the target
    /// of `action`; it gives the same records and events as the full pass over every server.
    pub(super) fn plan_servers(
        &self,
        now_ms: u64,
        action: Option<&Action>,
        full: bool,
        events: &mut Vec<EventDraft>,
    ) -> Result<ServerSet, ActionError> {
        let drains = self.drain_request(now_ms, action)?;
        if !full {
            let mut scratch = Vec::new();
            if let Some(set) = self.plan_some_servers(now_ms, &drains, &mut scratch) {
                events.append(&mut scratch);
                return Ok(set);
            }
        }
        let old = &self.snapshot;
        let mut ids = IdAlloc::new(
            old.servers.values().map(|s| s.id),
            old.next_server_id,
            MAX_SERVERS,
            "servers",
        );
        let mut servers = imbl::OrdMap::new();
        for sc in &self.config.servers {
            let rec = match old.servers.get(&sc.name) {
                Some(p) if p.address == sc.address => p.clone(),
                prev => self.new_server_record(sc, prev, ids.take()?, now_ms, events),
            };
            let rec = self.settle_server(rec, &drains, now_ms, events);
            servers.insert(sc.name.clone(), rec);
        }
        Ok(ServerSet(servers, None))
    }

    /// [`Engine::plan_servers`] for the servers that can have changed; None when one of them
    /// needs a new record (a new address: only a full plan gives ids).
    fn plan_some_servers(
        &self,
        now_ms: u64,
        drains: &HashMap<String, Option<u64>>,
        events: &mut Vec<EventDraft>,
    ) -> Option<ServerSet> {
        let old = &self.snapshot;
        let mut names: BTreeSet<String> = self.observed.clone();
        names.extend(drains.keys().cloned());
        names.extend(
            old.servers
                .values()
                .filter(|s| s.drained_at_ms.is_some())
                .map(|s| s.name.clone()),
        );
        // In configuration order, as the full pass emits its events.
        let mut order: Vec<(usize, &String)> = names
            .iter()
            .filter_map(|n| self.index.server_at.get(n).map(|&i| (i, n)))
            .collect();
        order.sort_unstable();
        let mut servers = old.servers.clone();
        for (i, name) in order {
            let sc = &self.config.servers[i];
            let rec = old.servers.get(name).filter(|p| p.address == sc.address)?;
            let rec = self.settle_server(rec.clone(), drains, now_ms, events);
            servers.insert(name.clone(), rec);
        }
        Some(ServerSet(servers, Some(names)))
    }

    /// A server's record after its latest verdict, the operator's drain or undrain, and the
    /// drain time.
    fn settle_server(
        &self,
        mut rec: ServerRecord,
        drains: &HashMap<String, Option<u64>>,
        now_ms: u64,
        events: &mut Vec<EventDraft>,
    ) -> ServerRecord {
        let name = rec.name.clone();
        {
            if let Some(o) = self.health.get(&name) {
                let h = health_of(o);
                if h != rec.health {
                    rec.health = h;
                    rec.since_ms = o.at_ms;
                    rec.evidence = o.evidence.clone();
                    let state = if o.up { "up" } else { "down" };
                    events.push(server_event(
                        &name,
                        &format!("server-{state}"),
                        format!("server {name} is {state}: {}", o.evidence),
                    ));
                }
            }
        }
        if let Some(d) = drains.get(&name) {
            self.apply_drain(&mut rec, *d, now_ms, events);
        }
        self.update_dataplane_up(&mut rec, now_ms, events);
        rec
    }

    /// The drain (`Some(now)`) or undrain (`None`) the operator asked for, by server.
    fn drain_request(
        &self,
        now_ms: u64,
        action: Option<&Action>,
    ) -> Result<HashMap<String, Option<u64>>, ActionError> {
        let (server, drain) = match action {
            Some(Action::Drain { server }) => (server, true),
            Some(Action::Undrain { server }) => (server, false),
            _ => return Ok(HashMap::new()),
        };
        let rec = self
            .snapshot
            .servers
            .get(server)
            .filter(|_| self.config.server(server).is_some())
            .ok_or_else(|| ActionError::UnknownServer(server.clone()))?;
        match (drain, rec.drained_at_ms.is_some()) {
            (true, true) => Err(ActionError::AlreadyDrained(server.clone())),
            (false, false) => Err(ActionError::NotDrained(server.clone())),
            _ => Ok(HashMap::from([(server.clone(), drain.then_some(now_ms))])),
        }
    }

    /// A new server, or a new address: a new id, so flows that named the old address never
    /// follow the id to the new one.
    fn new_server_record(
        &self,
        sc: &ServerConfig,
        prev: Option<&ServerRecord>,
        id: u32,
        now_ms: u64,
        events: &mut Vec<EventDraft>,
    ) -> ServerRecord {
        let (health, evidence) = match self.health.get(&sc.name) {
            Some(o) => (health_of(o), o.evidence.clone()),
            None => (
                Health::Up,
                "new server: up until its checks say otherwise".to_string(),
            ),
        };
        let message = match prev {
            Some(p) => format!(
                "server {} moved from {} to {} (new id {id})",
                sc.name, p.address, sc.address
            ),
            None => format!("server {} added at {} (id {id})", sc.name, sc.address),
        };
        events.push(server_event(&sc.name, "config", message));
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

    fn apply_drain(
        &self,
        rec: &mut ServerRecord,
        drain: Option<u64>,
        now_ms: u64,
        events: &mut Vec<EventDraft>,
    ) {
        rec.drained_at_ms = drain;
        rec.since_ms = now_ms;
        let name = &rec.name;
        let (kind, message) = match drain {
            Some(_) => (
                "drain",
                format!(
                    "server {name} drained by the operator: new flows move now, established flows within {}",
                    humantime::format_duration(self.drain_time(name))
                ),
            ),
            None => ("undrain", format!("server {name} undrained by the operator")),
        };
        events.push(server_event(name, kind, message));
    }

    /// The dataplane holds a server up while it is healthy and its drain time (if drained) has
    /// not run out.
    fn update_dataplane_up(
        &self,
        rec: &mut ServerRecord,
        now_ms: u64,
        events: &mut Vec<EventDraft>,
    ) {
        let drain_over = rec
            .drained_at_ms
            .is_some_and(|at| now_ms >= at + self.drain_time(&rec.name).as_millis() as u64);
        let dp_up = rec.health == Health::Up && !drain_over;
        if dp_up != rec.dataplane_up {
            rec.dataplane_up = dp_up;
            if drain_over && rec.health == Health::Up {
                events.push(server_event(
                    &rec.name,
                    "drain",
                    format!(
                        "server {}: drain time over, its remaining flows move to their resources' current servers",
                        rec.name
                    ),
                ));
            }
        }
    }
}
