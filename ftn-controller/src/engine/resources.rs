//! Phases 2 and 3 of a plan: the operator's switchover, then every resource's current server.
use std::sync::Arc;
use std::time::Duration;

use ftn_common::MAX_RESOURCES;

use super::servers::{IdAlloc, ServerSet};
use super::{Action, ActionError, Engine};
use crate::config::ResourceConfig;
use crate::directory::{EventDraft, ResourceRecord};
use crate::model::Failback;

/// Where a resource goes and why: (server, event kind, reason). An empty kind: it stays.
type Target = (Option<String>, &'static str, String);

/// The resources' records that changed (the others keep their committed record), and the
/// names of those whose current server moved.
pub(super) struct ResourcePlan {
    /// The new records, with their resource's index in `config.resources`, ascending.
    pub(super) changed: Vec<(usize, Arc<ResourceRecord>)>,
    pub(super) moved: Vec<String>,
}

impl ResourcePlan {
    /// The new record of the resource at `index`, if it has one.
    pub(super) fn record(&self, index: usize) -> Option<&Arc<ResourceRecord>> {
        self.changed
            .binary_search_by_key(&index, |(i, _)| *i)
            .ok()
            .map(|k| &self.changed[k].1)
    }
}

fn stay(server: &str) -> Target {
    (Some(server.to_string()), "", String::new())
}

impl Engine {
    /// `ftn switchover`, validated against the servers' new state: (resource, server).
    pub(super) fn switchover_request<'a>(
        &self,
        action: Option<&'a Action>,
        servers: &ServerSet,
    ) -> Result<Option<(&'a str, &'a str)>, ActionError> {
        let Some(Action::Switchover { resource, to }) = action else {
            return Ok(None);
        };
        let rc = self
            .config
            .resource(resource)
            .ok_or_else(|| ActionError::UnknownResource(resource.clone()))?;
        if self.config.server(to).is_none() {
            return Err(ActionError::UnknownServer(to.clone()));
        }
        if !rc.servers.iter().any(|s| s == to) {
            return Err(ActionError::NotInList {
                resource: resource.clone(),
                server: to.clone(),
                list: rc.servers.join(", "),
            });
        }
        if !servers.eligible(to) {
            return Err(ActionError::NotEligible {
                server: to.clone(),
                state: servers.state_of(to),
            });
        }
        Ok(Some((resource.as_str(), to.as_str())))
    }

    /// Every resource whose record changes, with the event that explains each move. Looks at
    /// the resources of `look_at` (indices into `config.resources`, ascending), or at every
    /// resource when it is None.
    pub(super) fn plan_resources(
        &self,
        now_ms: u64,
        pin_request: Option<(&str, &str)>,
        servers: &ServerSet,
        look_at: Option<Vec<usize>>,
        events: &mut Vec<EventDraft>,
    ) -> Result<ResourcePlan, ActionError> {
        let old = &self.snapshot;
        // Built only when a new resource needs an id: it reads every record's.
        let mut ids: Option<IdAlloc> = None;
        let mut new_id = || {
            ids.get_or_insert_with(|| {
                IdAlloc::new(
                    old.resources.values().map(|r| r.id),
                    old.next_resource_id,
                    MAX_RESOURCES,
                    "resources",
                )
            })
            .take()
        };
        let mut plan = ResourcePlan {
            changed: Vec::new(),
            moved: Vec::new(),
        };
        let all = self.config.resources.len();
        let indices: Box<dyn Iterator<Item = usize>> = match look_at {
            Some(v) => Box::new(v.into_iter()),
            None => Box::new(0..all),
        };
        for i in indices {
            let rc = &self.config.resources[i];
            let prev = old.resources.get(&rc.name);
            let pin = pin_request.filter(|(r, _)| *r == rc.name).map(|(_, to)| to);
            // Fast path, without allocating: nothing about this resource can change now.
            if let Some(p) = prev {
                if pin.is_none() && p.servers == rc.servers && stays(rc, p, servers, now_ms) {
                    continue;
                }
            }
            let mut rec = match prev {
                Some(p) => ResourceRecord::clone(p),
                None => ResourceRecord {
                    name: rc.name.clone(),
                    id: new_id()?,
                    servers: rc.servers.clone(),
                    current: None,
                    pinned: None,
                    generation: 0,
                    since_ms: now_ms,
                    reason: String::new(),
                },
            };
            if rec.servers != rc.servers {
                rec.servers = rc.servers.clone();
            }
            // A pin ends when its server is no longer eligible or no longer listed.
            if let Some(p) = rec.pinned.clone() {
                if !servers.eligible(&p) || !rc.servers.contains(&p) {
                    rec.pinned = None;
                }
            }
            let target = match pin {
                Some(to) => {
                    rec.pinned = if rc.servers.first().is_some_and(|f| f == to) {
                        None // back on the primary: the normal policy applies again
                    } else {
                        Some(to.to_string())
                    };
                    let why = "switchover by the operator".to_string();
                    (Some(to.to_string()), "switchover", why)
                }
                None => match rec.pinned.clone() {
                    Some(p) => (Some(p), "", String::new()),
                    None => target(rc, &rec, prev.is_none(), servers, now_ms),
                },
            };
            if target.0 != rec.current || prev.is_none() {
                events.push(record_move(rc, &mut rec, target, now_ms));
                if prev.is_some() {
                    plan.moved.push(rc.name.clone());
                }
            }
            plan.changed.push((i, Arc::new(rec)));
        }
        Ok(plan)
    }
}

/// True when an unpinned or pinned resource with an unchanged server list stays where it is:
/// the same decision [`target`] would make, without building anything.
fn stays(rc: &ResourceConfig, p: &ResourceRecord, servers: &ServerSet, now_ms: u64) -> bool {
    let eligible = |s: &str| servers.eligible(s);
    match (p.pinned.as_deref(), p.current.as_deref()) {
        (Some(pin), Some(c)) => pin == c && eligible(pin),
        (Some(_), None) => false,
        (None, Some(c)) if eligible(c) => match rc.servers.iter().position(|s| s == c) {
            None => false,
            Some(ci) => match rc.servers[..ci].iter().find(|s| eligible(s)) {
                None => true,
                Some(b) => match rc.failback {
                    Failback::Manual => true,
                    Failback::Immediate => false,
                    Failback::Hold(hold) => now_ms < servers.since_ms(b) + hold.as_millis() as u64,
                },
            },
        },
        (None, Some(_)) => false,
        (None, None) => !rc.servers.iter().any(|s| eligible(s)),
    }
}

/// The policy for an unpinned resource: stay, fail back, fail over, or no server.
fn target(
    rc: &ResourceConfig,
    rec: &ResourceRecord,
    added: bool,
    servers: &ServerSet,
    now_ms: u64,
) -> Target {
    let first = rc.servers.iter().find(|s| servers.eligible(s)).cloned();
    let cur = rec
        .current
        .as_deref()
        .filter(|c| rc.servers.iter().any(|s| s == c));
    match cur {
        Some(c) if servers.eligible(c) => failback(rc, c, servers, now_ms),
        Some(c) => {
            let why = format!("{c} is {}", servers.state_of(c));
            let kind = if first.is_some() {
                "failover"
            } else {
                "no-server"
            };
            (first, kind, why)
        }
        None if added => (first, "config", "resource added".to_string()),
        None => match first {
            Some(f) => {
                let why = format!("{f} is up");
                (Some(f), "failover", why)
            }
            None => (None, "", String::new()),
        },
    }
}

/// On an eligible server `c`: move to an earlier eligible one if the failback policy allows.
fn failback(rc: &ResourceConfig, c: &str, servers: &ServerSet, now_ms: u64) -> Target {
    let ci = rc.servers.iter().position(|s| s == c).unwrap_or(0);
    let better = rc.servers[..ci]
        .iter()
        .find(|s| servers.eligible(s))
        .cloned();
    match (better, rc.failback) {
        (Some(b), Failback::Immediate) => {
            let why = format!("{b} is up again (failback: immediate)");
            (Some(b), "failback", why)
        }
        (Some(b), Failback::Hold(hold)) => {
            let since = servers.since_ms(&b);
            if now_ms >= since + hold.as_millis() as u64 {
                let why = format!(
                    "{b} has been up for {} (failback: hold {})",
                    humantime::format_duration(Duration::from_millis(now_ms - since)),
                    humantime::format_duration(hold)
                );
                (Some(b), "failback", why)
            } else {
                stay(c)
            }
        }
        _ => stay(c),
    }
}

/// Moves `rec` to the target and returns the event that says so.
fn record_move(
    rc: &ResourceConfig,
    rec: &mut ResourceRecord,
    (target, kind, why): Target,
    now_ms: u64,
) -> EventDraft {
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
    EventDraft {
        kind: if rec.current.is_none() {
            "no-server".into()
        } else {
            kind.into()
        },
        resource: Some(rc.name.clone()),
        server: rec.current.clone(),
        message: format!("{} moved {from} -> {to}: {reason}", rc.name),
    }
}
