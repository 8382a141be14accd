//! The stateless return path: which server ports' replies the dataplane translates without
//! per-flow state, and to which VIP.
//!
//! For every resource, every server in its list (not only the current one: flows stay on the
//! server they started on) and every (protocol, port) of the resource, the server's (address,
//! protocol, port) maps to the resource's VIP. That mapping is written to the dataplane's
//! return map when it is unambiguous:
//! - all entries of a server address and protocol name one VIP: every one of them is written;
//! - else, without an every-port (port 0: ICMP) entry among them, each port that names one VIP
//!   is written, and a port that names two or more is left to per-flow reverse entries;
//! - else (ICMP of two VIPs on one server) none of that address and protocol is.
//!
//! A port left out is translated per flow, as before: its flows need their reverse entries (a
//! reply through another gateway, or after the entry was evicted, leaves untranslated), and two
//! clients using one address and port towards two VIPs on it collide. At most
//! [`MAX_RETURN_KEYS`] entries are written, in key order; the rest are per flow too.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ftn_common::MAX_RETURN_KEYS;

use crate::config::Config;
use crate::directory::ServerRecord;
use crate::model::{Protocol, ReturnMatch, ReturnTarget};

/// The unambiguous return entries of `cfg`, with the servers' ids and addresses from `servers`
/// and the resources' ids from `resource_id` (resources without an id yet are skipped).
pub(crate) fn return_entries(
    cfg: &Config,
    servers: &BTreeMap<String, ServerRecord>,
    resource_id: impl Fn(&str) -> Option<u32>,
) -> BTreeMap<ReturnMatch, ReturnTarget> {
    let mut groups: BTreeMap<(IpAddr, Protocol), Vec<(u16, ReturnTarget)>> = BTreeMap::new();
    for rc in &cfg.resources {
        let Some(rid) = resource_id(&rc.name) else {
            continue;
        };
        for name in &rc.servers {
            let Some(s) = servers.get(name) else {
                continue;
            };
            for m in rc.matchers() {
                let port = if m.protocol == Protocol::Icmp {
                    0
                } else {
                    m.port
                };
                groups.entry((s.address, m.protocol)).or_default().push((
                    port,
                    ReturnTarget {
                        vip: m.vip,
                        resource_id: rid,
                        server_id: s.id,
                    },
                ));
            }
        }
    }
    let mut out = BTreeMap::new();
    for ((server, protocol), list) in groups {
        let vips: BTreeSet<IpAddr> = list.iter().map(|(_, t)| t.vip).collect();
        let every_port = list.iter().any(|(p, _)| *p == 0);
        if vips.len() > 1 && every_port {
            continue;
        }
        let mut by_port: BTreeMap<u16, Vec<ReturnTarget>> = BTreeMap::new();
        for (port, t) in list {
            by_port.entry(port).or_default().push(t);
        }
        for (port, targets) in by_port {
            let first = targets[0];
            if targets.iter().all(|t| t.vip == first.vip) {
                out.insert(
                    ReturnMatch {
                        server,
                        protocol,
                        port,
                    },
                    first,
                );
            }
        }
    }
    while out.len() > MAX_RETURN_KEYS as usize {
        out.pop_last();
    }
    out
}
