//! The return table: which VIP a server's replies are SNATed to. One entry per (server
//! address, protocol, port) of every resource's servers, primary and backups alike (a flow
//! may stay on any of them after a failback), derived from the configuration and the ids the
//! directory gave resources and servers. The configuration guarantees that one key serves one
//! VIP (`config::validate`, "ambiguous return path").

use std::collections::BTreeMap;

use super::Engine;
use crate::config::Config;
use crate::dataplane::{Change, ReturnTarget};
use crate::directory::{ResourceRecord, ServerRecord};
use crate::model::{Protocol, ReturnMatch};

/// Every return entry of `config`, with the ids of `resources` and `servers` (a resource or
/// server without a record yet has no entry).
pub(super) fn return_entries<'a>(
    config: &Config,
    resource: impl Fn(&str) -> Option<&'a ResourceRecord>,
    server: impl Fn(&str) -> Option<&'a ServerRecord>,
) -> BTreeMap<ReturnMatch, ReturnTarget> {
    let mut out = BTreeMap::new();
    for rc in &config.resources {
        let Some(rec) = resource(&rc.name) else {
            continue;
        };
        let matchers = rc.matchers();
        for name in &rc.servers {
            let Some(s) = server(name) else {
                continue;
            };
            for m in &matchers {
                out.insert(
                    ReturnMatch {
                        server: s.address,
                        protocol: m.protocol,
                        port: m.port,
                    },
                    ReturnTarget {
                        vip: m.vip,
                        resource_id: rec.id,
                        server_id: s.id,
                    },
                );
            }
        }
    }
    add_fragment_entries(&mut out);
    out
}

/// A server's fragmented replies carry no port after the first fragment: where all of a
/// server's TCP (or UDP) entries go to one VIP, an entry with port 0 translates its fragments
/// by (address, protocol) alone. A server serving two VIPs on one protocol gets none (its
/// fragments pass untranslated, README).
fn add_fragment_entries(out: &mut BTreeMap<ReturnMatch, ReturnTarget>) {
    let mut by_server: BTreeMap<(std::net::IpAddr, Protocol), Option<ReturnTarget>> =
        BTreeMap::new();
    for (m, t) in out.iter() {
        if m.protocol == Protocol::Icmp {
            continue;
        }
        by_server
            .entry((m.server, m.protocol))
            .and_modify(|one| {
                if one.is_some_and(|o| o.vip != t.vip) {
                    *one = None;
                }
            })
            .or_insert(Some(*t));
    }
    for ((server, protocol), one) in by_server {
        if let Some(target) = one {
            out.insert(
                ReturnMatch {
                    server,
                    protocol,
                    port: 0,
                },
                target,
            );
        }
    }
}

/// The changes that turn the `old` entries into the `new` ones: sets first, then removals.
pub(super) fn return_changes(
    old: &BTreeMap<ReturnMatch, ReturnTarget>,
    new: &BTreeMap<ReturnMatch, ReturnTarget>,
) -> Vec<Change> {
    let mut out: Vec<Change> = new
        .iter()
        .filter(|(m, t)| old.get(m) != Some(t))
        .map(|(m, t)| Change::SetReturn {
            matcher: *m,
            target: *t,
        })
        .collect();
    out.extend(
        old.keys()
            .filter(|m| !new.contains_key(m))
            .map(|m| Change::RemoveReturn { matcher: *m }),
    );
    out
}

impl Engine {
    /// The return entries of the committed state (what the dataplane holds).
    pub(super) fn committed_returns(&self) -> BTreeMap<ReturnMatch, ReturnTarget> {
        let snap = &self.snapshot;
        return_entries(
            &self.applied,
            |n| snap.resources.get(n).map(|r| &**r),
            |n| snap.servers.get(n),
        )
    }
}
