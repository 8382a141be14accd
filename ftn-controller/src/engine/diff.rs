//! Phase 4 of a plan: the new records against the committed snapshot, as a directory update and
//! the dataplane changes (servers set, resources set, resources removed, servers removed).
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::resources::ResourcePlan;
use super::returns::{return_changes, return_entries};
use super::servers::ServerSet;
use super::{all_matchers, set_fragments, set_resource, Engine};
use crate::config::ResourceConfig;
use crate::dataplane::{Change, ServerEntry};
use crate::directory::{EventDraft, ResourceRecord, Update};

impl Engine {
    pub(super) fn diff(
        &self,
        servers: &ServerSet,
        resources: &ResourcePlan,
        full: bool,
        update: &mut Update,
        events: &mut Vec<EventDraft>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        self.diff_servers(servers, update, &mut changes);
        self.diff_resources(servers, resources, full, update, &mut changes);
        self.diff_returns(servers, resources, &mut changes);
        // Only a full plan can find something to remove: an incremental one runs on the
        // configuration the last full plan reconciled the snapshot with.
        if full {
            self.removals(servers, update, events, &mut changes);
        }
        if self.reshapes_flows(&changes) {
            changes.push(Change::RevalidateFlows);
        }
        changes
    }

    /// True when `changes` remove a resource key or a server, or the new configuration gives
    /// a key to another resource: established flows are then checked against the new maps
    /// once (the fast path takes a flow without the resource lookup). Failovers, and a
    /// configuration that only adds, never need it.
    fn reshapes_flows(&self, changes: &[Change]) -> bool {
        if Arc::ptr_eq(&self.applied, &self.config) {
            return false;
        }
        let removes = changes.iter().any(|c| {
            matches!(
                c,
                Change::RemoveResource { .. } | Change::RemoveServer { .. }
            )
        });
        removes || {
            let new = all_matchers(&self.config);
            all_matchers(&self.applied)
                .iter()
                .any(|(m, owner)| new.get(m).is_some_and(|o| o != owner))
        }
    }

    /// The return table follows the configuration and the ids of records: it changes only with
    /// a new configuration or a resource's first record (a plan without either skips it, and
    /// stays linear in what changed).
    fn diff_returns(
        &self,
        servers: &ServerSet,
        resources: &ResourcePlan,
        changes: &mut Vec<Change>,
    ) {
        let old = &self.snapshot;
        let new_records = resources.changed.iter().any(|(i, r)| {
            old.resources
                .get(&self.config.resources[*i].name)
                .is_none_or(|p| p.id != r.id)
        });
        if Arc::ptr_eq(&self.applied, &self.config) && !new_records {
            return;
        }
        let planned: HashMap<&str, &ResourceRecord> = resources
            .changed
            .iter()
            .map(|(_, r)| (r.name.as_str(), &**r))
            .collect();
        let new = return_entries(
            &self.config,
            |n| {
                planned
                    .get(n)
                    .copied()
                    .or_else(|| old.resources.get(n).map(|r| &**r))
            },
            |n| servers.0.get(n),
        );
        changes.extend(return_changes(&self.committed_returns(), &new));
    }

    fn diff_servers(&self, servers: &ServerSet, update: &mut Update, changes: &mut Vec<Change>) {
        for (name, rec) in servers.maybe_changed() {
            let prev = self.snapshot.servers.get(name);
            if prev == Some(rec) {
                continue;
            }
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

    fn diff_resources(
        &self,
        servers: &ServerSet,
        resources: &ResourcePlan,
        full: bool,
        update: &mut Update,
        changes: &mut Vec<Change>,
    ) {
        let old = &self.snapshot;
        let server_id =
            |n: &Option<String>| n.as_ref().and_then(|n| servers.0.get(n)).map(|s| s.id);
        // Without a new configuration nothing was added, removed or reshaped: skip the
        // configuration-wide comparisons (a plan must stay linear in the number of resources).
        let same_config = Arc::ptr_eq(&self.applied, &self.config);
        let applied_by_name: HashMap<&str, &ResourceConfig> = if same_config {
            HashMap::new()
        } else {
            self.applied
                .resources
                .iter()
                .map(|r| (r.name.as_str(), r))
                .collect()
        };
        // The id the dataplane holds (looked up in the committed servers: a readdressed server
        // keeps its name but gets a new id) against the id it should hold.
        let old_id = |p: &ResourceRecord| {
            p.current
                .as_ref()
                .and_then(|n| old.servers.get(n))
                .map(|s| s.id)
        };
        // An incremental plan keeps the configuration and the servers' ids: a resource it did
        // not give a new record keeps its entries.
        let all = self.config.resources.len();
        let indices: Box<dyn Iterator<Item = usize> + '_> = if full {
            Box::new(0..all)
        } else {
            Box::new(resources.changed.iter().map(|(i, _)| *i))
        };
        for i in indices {
            let rc = &self.config.resources[i];
            let prev = old.resources.get(&rc.name);
            // Resources the fast path left alone keep their committed record.
            let Some(rec) = resources.record(i).or(prev) else {
                continue;
            };
            let old_rc = if same_config {
                Some(rc)
            } else {
                applied_by_name.get(rc.name.as_str()).copied()
            };
            // Rewrite the entries when the assignment, the server's id, or how the resource
            // is matched changed; otherwise leave them (and their flows) alone.
            let id_changed = prev.is_some_and(|p| old_id(p) != server_id(&rec.current))
                || prev.is_none_or(|p| p.current != rec.current || p.id != rec.id);
            let shape_changed = old_rc.is_none_or(|o| {
                o.vip != rc.vip
                    || o.protocol != rc.protocol
                    || o.ports != rc.ports
                    || o.on_no_server != rc.on_no_server
                    || o.fragments != rc.fragments
            });
            if id_changed || shape_changed || prev.is_none() {
                changes.extend(set_resource(rc, rec, server_id(&rec.current)));
            }
            // The fragment entry follows the resource's first port, not its server: a
            // failover leaves it alone.
            if shape_changed || prev.is_none_or(|p| p.id != rec.id) {
                changes.extend(set_fragments(rc, rec));
            }
            if prev != Some(rec) {
                update.set_resources.push(rec.clone());
            }
        }
    }

    /// What the new configuration no longer has: matchers, resources, servers (and servers
    /// whose address changed: their old id goes).
    fn removals(
        &self,
        servers: &ServerSet,
        update: &mut Update,
        events: &mut Vec<EventDraft>,
        changes: &mut Vec<Change>,
    ) {
        let cfg = &self.config;
        let old = &self.snapshot;
        let cfg_resources: HashSet<&str> = cfg.resources.iter().map(|r| r.name.as_str()).collect();
        let cfg_servers: HashSet<&str> = cfg.servers.iter().map(|s| s.name.as_str()).collect();
        let mut removed: HashSet<String> = HashSet::new();
        if !Arc::ptr_eq(&self.applied, &self.config) {
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
            let readdressed = servers.0.get(name).is_some_and(|s| s.id != rec.id);
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
    }
}
