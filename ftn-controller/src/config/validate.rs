//! The rules across entries: unique names and addresses, references between servers and
//! resources, VIPs.

use std::{collections::HashMap, net::IpAddr};

use ftn_common::{MAX_RESOURCES, MAX_RESOURCE_KEYS, MAX_SERVERS};

use super::*;
use crate::model::Protocol;

// ------------------------------------------------------------------------------------------
// Checks across entries
// ------------------------------------------------------------------------------------------

pub(super) fn check_servers(ctx: &mut Ctx, servers: &[RawServer]) {
    if servers.len() > MAX_SERVERS as usize {
        let first_extra = &servers[MAX_SERVERS as usize];
        ctx.report(
            first_extra.table_span,
            &first_extra.label,
            format!(
                "too many servers: {} (the dataplane holds at most {MAX_SERVERS})",
                servers.len()
            ),
        );
    }
    let mut names: HashMap<&str, Option<Span>> = HashMap::new();
    let mut addresses: HashMap<IpAddr, (&str, Option<Span>)> = HashMap::new();
    for s in servers {
        if let Some(name) = &s.name {
            if let Some(first) = names.get(name.as_str()) {
                let at = ctx.line_of(*first);
                ctx.report(
                    s.name_span,
                    &format!("{}.name", s.label),
                    format!("duplicate server name {name:?}: already defined{at}"),
                );
            } else {
                names.insert(name, s.name_span);
            }
        }
        if let Some(address) = s.address {
            if let Some((other, at)) = addresses.get(&address) {
                let at = ctx.line_of(*at);
                let other = other.to_string();
                ctx.report(
                    s.address_span,
                    &format!("{}.address", s.label),
                    format!("address {address} is already the address of {other}{at}"),
                );
            } else {
                addresses.insert(address, (&s.label, s.address_span));
            }
        }
    }
}

pub(super) fn check_resources(ctx: &mut Ctx, resources: &[RawResource], servers: &[RawServer]) {
    check_capacity(ctx, resources);
    let index = ServerIndex::new(servers);
    let mut names: HashMap<&str, Option<Span>> = HashMap::new();
    let mut owners: Owners = HashMap::new();
    let mut returns: ReturnOwners = HashMap::new();
    for r in resources {
        if let Some(name) = &r.name {
            if let Some(first) = names.get(name.as_str()) {
                let at = ctx.line_of(*first);
                ctx.report(
                    r.name_span,
                    &format!("{}.name", r.label),
                    format!("duplicate resource name {name:?}: already defined{at}"),
                );
            } else {
                names.insert(name, r.name_span);
            }
        }
        check_vip_is_no_server(ctx, r, &index);
        check_server_list(ctx, r, &index);
        claim_entries(ctx, r, &mut owners);
        claim_return_paths(ctx, r, &index, &mut returns);
    }
}

/// Which resource (label, span) owns each (VIP, protocol, port).
type Owners<'a> = HashMap<(IpAddr, Protocol, u16), (&'a str, Option<Span>)>;

/// The servers by name and by address (first definition wins; duplicates are reported by
/// check_servers).
struct ServerIndex<'a> {
    by_name: HashMap<&'a str, &'a RawServer>,
    known: Vec<&'a str>,
    by_address: HashMap<IpAddr, &'a RawServer>,
}

impl<'a> ServerIndex<'a> {
    fn new(servers: &'a [RawServer]) -> Self {
        let mut by_name: HashMap<&str, &RawServer> = HashMap::new();
        let mut by_address: HashMap<IpAddr, &RawServer> = HashMap::new();
        for s in servers {
            if let Some(name) = &s.name {
                by_name.entry(name).or_insert(s);
            }
            if let Some(a) = s.address {
                by_address.entry(a).or_insert(s);
            }
        }
        let known = servers.iter().filter_map(|s| s.name.as_deref()).collect();
        ServerIndex {
            by_name,
            known,
            by_address,
        }
    }
}

/// The dataplane's table sizes.
fn check_capacity(ctx: &mut Ctx, resources: &[RawResource]) {
    if resources.len() > MAX_RESOURCES as usize {
        let first_extra = &resources[MAX_RESOURCES as usize];
        ctx.report(
            first_extra.table_span,
            &first_extra.label,
            format!(
                "too many resources: {} (the dataplane holds at most {MAX_RESOURCES})",
                resources.len()
            ),
        );
    }
    let ports: usize = resources.iter().map(|r| r.ports.len().max(1)).sum();
    // Plus one fragment entry per (VIP, protocol) that one tcp or udp resource has alone.
    let fragments = fragment_owners(resources.iter().filter_map(|r| r.vip.zip(r.protocol)))
        .values()
        .filter(|alone| **alone)
        .count();
    let keys = ports + fragments;
    if keys > MAX_RESOURCE_KEYS as usize {
        ctx.report(
            None,
            "resource",
            format!(
                "too many (VIP, protocol, port) entries: {keys}, of which {fragments} for fragments (one per VIP and protocol that a single tcp or udp resource has); the dataplane holds at most {MAX_RESOURCE_KEYS}"
            ),
        );
    }
}

/// For every (VIP, protocol) of `resources`: whether one tcp or udp resource has it alone (and
/// so takes the VIP's fragments on that protocol: `ResourceConfig::fragments`).
pub(super) fn fragment_owners(
    resources: impl Iterator<Item = (IpAddr, Protocol)>,
) -> HashMap<(IpAddr, Protocol), bool> {
    let mut count: HashMap<(IpAddr, Protocol), usize> = HashMap::new();
    for k in resources {
        *count.entry(k).or_default() += 1;
    }
    count
        .into_iter()
        .map(|(k, n)| (k, k.1 != Protocol::Icmp && n == 1))
        .collect()
}

/// A VIP must be no server's address.
fn check_vip_is_no_server(ctx: &mut Ctx, r: &RawResource, index: &ServerIndex) {
    let by_address = &index.by_address;
    if let Some(vip) = r.vip {
        if let Some(s) = by_address.get(&vip) {
            let at = ctx.line_of(s.address_span.or(s.table_span));
            let who = s
                .name
                .as_deref()
                .map(|n| format!("server {n:?}"))
                .unwrap_or_else(|| s.label.clone());
            ctx.report(
                r.vip_span,
                &format!("{}.vip", r.label),
                format!(
                    "VIP {vip} is also the address of {who}{at}: a VIP must not be a server's address (the gateway would rewrite that server's own traffic)"
                ),
            );
        }
    }
}

/// Every listed server exists and is of the VIP's address family.
fn check_server_list(ctx: &mut Ctx, r: &RawResource, index: &ServerIndex) {
    let (by_name, known) = (&index.by_name, &index.known);
    for (i, (server, span)) in r.servers.iter().enumerate() {
        let field = format!("{}.servers[{i}]", r.label);
        match by_name.get(server.as_str()) {
            None => {
                let hint = if known.is_empty() {
                    " (no [[server]] is defined)".to_owned()
                } else if known.len() <= 10 {
                    format!(" (known: {})", known.join(", "))
                } else if let Some(s) = suggestion(server, known.iter().copied()) {
                    format!(" (did you mean {s:?}?)")
                } else {
                    format!(" ({} servers are defined)", known.len())
                };
                ctx.report(*span, &field, format!("unknown server {server:?}{hint}"));
            }
            Some(s) => {
                if let (Some(vip), Some(addr)) = (r.vip, s.address) {
                    if vip.is_ipv4() != addr.is_ipv4() {
                        let fam = |ip: IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                        ctx.report(
                            *span,
                            &field,
                            format!(
                                "server {server:?} has an {} address ({addr}) but the VIP {vip} is {}: a resource's servers must be of the VIP's address family",
                                fam(addr),
                                fam(vip)
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// One (VIP, protocol, port) belongs to one resource.
fn claim_entries<'a>(ctx: &mut Ctx, r: &'a RawResource, owners: &mut Owners<'a>) {
    let (Some(vip), Some(protocol)) = (r.vip, r.protocol) else {
        return;
    };
    let entries: Vec<(u16, Option<Span>, String)> = if protocol == Protocol::Icmp {
        vec![(0, r.vip_span, format!("{}.vip", r.label))]
    } else {
        r.ports
            .iter()
            .enumerate()
            .map(|(i, (p, span))| (*p, *span, format!("{}.ports[{i}]", r.label)))
            .collect()
    };
    for (port, span, field) in entries {
        match owners.get(&(vip, protocol, port)) {
            Some((other, other_span)) => {
                let at = ctx.line_of(*other_span);
                let what = if protocol == Protocol::Icmp {
                    format!("icmp on VIP {vip}")
                } else {
                    format!("{protocol} port {port} of VIP {vip}")
                };
                let other = other.to_string();
                ctx.report(
                    span,
                    &field,
                    format!(
                        "duplicate VIP: {what} already belongs to {other}{at}; a VIP, protocol and port may belong to one resource only"
                    ),
                );
            }
            None => {
                owners.insert((vip, protocol, port), (&r.label, r.table_span));
            }
        }
    }
}

/// Who a (server address, protocol, port) answers for: the first resource that listed it
/// (VIP, label, span).
type ReturnOwners<'a> = HashMap<(IpAddr, Protocol, u16), (IpAddr, &'a str, Option<Span>)>;

/// The stateless return path (ftn-ebpf `FTN_RETURN`) SNATs a server's replies by (server
/// address, protocol, source port) alone: one such key may serve one VIP only. Two VIPs on one
/// key would make the gateway answer one VIP's clients from the other (and the server's stack
/// would see two conversations with one 5-tuple): refused, with the way out.
fn claim_return_paths<'a>(
    ctx: &mut Ctx,
    r: &'a RawResource,
    index: &ServerIndex<'a>,
    owners: &mut ReturnOwners<'a>,
) {
    let (Some(vip), Some(protocol)) = (r.vip, r.protocol) else {
        return;
    };
    let ports: Vec<u16> = if protocol == Protocol::Icmp {
        vec![0]
    } else {
        r.ports.iter().map(|(p, _)| *p).collect()
    };
    for (i, (server, span)) in r.servers.iter().enumerate() {
        let Some(addr) = index.by_name.get(server.as_str()).and_then(|s| s.address) else {
            continue;
        };
        for &port in &ports {
            match owners.get(&(addr, protocol, port)) {
                Some(&(other_vip, other, other_span)) if other_vip != vip => {
                    let at = ctx.line_of(other_span);
                    let what = if protocol == Protocol::Icmp {
                        "icmp".to_owned()
                    } else {
                        format!("{protocol} port {port}")
                    };
                    let other = other.to_string();
                    ctx.report(
                        *span,
                        &format!("{}.servers[{i}]", r.label),
                        format!(
                            "ambiguous return path: server {server:?} ({addr}) {what} already serves VIP {other_vip} of {other}{at}; the gateway translates a server's replies back to the VIP by (server address, protocol, port) alone, so one of them may serve one VIP only (give the server a second address for this VIP, or use another port)"
                        ),
                    );
                    return;
                }
                Some(_) => {}
                None => {
                    owners.insert((addr, protocol, port), (vip, &r.label, r.table_span));
                }
            }
        }
    }
}
