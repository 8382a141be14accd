//! What lets a plan stay proportional to what changed: the resources that list each server,
//! and the resources that are not simply on their primary.
//!
//! A resource on its primary, not pinned, can change only when the primary's record changes
//! (its health, drain, or since) or the configuration does. Every other resource — on a
//! backup, pinned, or without a server — may change with time alone (a failback hold running
//! out) and is looked at by every plan. So an incremental plan looks at the resources of the
//! servers whose records changed, the displaced ones, and an operator's switchover target;
//! a full plan (a new configuration, a new or resynced snapshot) looks at every resource.
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;

use super::servers::ServerSet;
use super::Engine;
use crate::config::Config;
use crate::directory::{ResourceRecord, Snapshot, Update};

/// The configuration's resources by name and by the servers they list (indices into
/// `config.resources`).
#[derive(Default)]
pub(super) struct ConfigIndex {
    pub(super) by_name: HashMap<String, usize>,
    pub(super) by_server: HashMap<String, Vec<usize>>,
    /// Each server's index in `config.servers`.
    pub(super) server_at: HashMap<String, usize>,
}

impl ConfigIndex {
    pub(super) fn new(config: &Config) -> ConfigIndex {
        let mut ix = ConfigIndex::default();
        for (i, s) in config.servers.iter().enumerate() {
            ix.server_at.insert(s.name.clone(), i);
        }
        for (i, r) in config.resources.iter().enumerate() {
            ix.by_name.insert(r.name.clone(), i);
            for s in &r.servers {
                let list = ix.by_server.entry(s.clone()).or_default();
                // A server listed twice by one resource is refused by the config; stay safe.
                if list.last() != Some(&i) {
                    list.push(i);
                }
            }
        }
        ix
    }
}

/// True when a record is not simply on its primary: pinned, on another server, or on none.
pub(super) fn displaced(r: &ResourceRecord) -> bool {
    r.pinned.is_some() || r.current.is_none() || r.current.as_ref() != r.servers.first()
}

/// The displaced resources of a snapshot.
pub(super) fn displaced_of(s: &Snapshot) -> HashSet<String> {
    s.resources
        .values()
        .filter(|r| displaced(r))
        .map(|r| r.name.clone())
        .collect()
}

/// Keeps a displaced set in step with a committed update.
pub(super) fn track(set: &mut HashSet<String>, update: &Update) {
    for r in &update.set_resources {
        if displaced(r) {
            set.insert(r.name.clone());
        } else {
            set.remove(&r.name);
        }
    }
    for name in &update.remove_resources {
        set.remove(name);
    }
}

impl Engine {
    /// True when the next plan must look at every resource.
    pub(super) fn full_plan_due(&self) -> bool {
        self.full_due.load(Ordering::Relaxed)
            || !std::sync::Arc::ptr_eq(&self.applied, &self.config)
    }

    /// The indices (in `config.resources`, ascending) of the resources an incremental plan
    /// looks at: those listing a server whose record changes in this plan, the displaced ones,
    /// and the target of a switchover.
    pub(super) fn candidates(&self, servers: &ServerSet, pin: Option<&str>) -> Vec<usize> {
        let ix = &self.index;
        let mut out: Vec<usize> = Vec::new();
        for (name, rec) in servers.maybe_changed() {
            if self.snapshot.servers.get(name) != Some(rec) {
                out.extend(ix.by_server.get(name).into_iter().flatten());
            }
        }
        out.extend(self.displaced.iter().filter_map(|n| ix.by_name.get(n)));
        out.extend(pin.and_then(|n| ix.by_name.get(n)));
        out.sort_unstable();
        out.dedup();
        out
    }
}
