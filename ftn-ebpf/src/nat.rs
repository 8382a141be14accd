//! Address rewriting: DNAT of client packets to their server, SNAT of replies to the VIP.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use ftn_common::{
    GlobalCounter, ResourceValue, ReturnValue, NO_SERVER, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

use crate::{
    csum, flow, fwd,
    maps::{self, count, res_stats, srv_stats, sub, unsub, Env},
    parse::{
        read, write, Pkt, Raw, ETH_LEN, FRAG_FIRST, FRAG_LATER, FRAG_NONE, TCP_ACK, TCP_RST,
        TCP_SYN,
    },
    passive, reject,
};

/// Which address of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Src,
    Dst,
}

/// Client -> VIP: DNAT to the flow's server and send. A subprogram of its own (its flow key
/// and value in its own stack frame).
/// `epoch`: `DataplaneConfig::epoch` read before the resource lookup that found `res`.
#[inline(never)]
pub fn forward(raw: Raw, pkt: &Pkt, res: &ResourceValue, epoch: u32) -> u32 {
    let ctx = &raw.ctx();
    sub(forward_checked(ctx, pkt, res, epoch))
}

/// [`fwd::send`]'s answer as the program's: an oversized packet is answered (ICMP error from
/// the gateway, quoting it), a local one passed.
#[inline(always)]
fn finish(ctx: &XdpContext, pkt: &Pkt, action: u32) -> Result<u32, ()> {
    if action == fwd::LOCAL {
        return Ok(xdp_action::XDP_PASS);
    }
    if (fwd::TOO_BIG..fwd::LOCAL).contains(&action) {
        return unsub(reject::too_big(Raw::of(ctx), pkt, action - fwd::TOO_BIG));
    }
    unsub(action)
}

/// True when `action` (from [`fwd::send`]) forwarded the packet rewritten (counted as such).
#[inline(always)]
fn forwarded(action: u32) -> bool {
    action < fwd::TOO_BIG
}

#[inline(always)]
fn forward_checked(
    ctx: &XdpContext,
    pkt: &Pkt,
    res: &ResourceValue,
    epoch: u32,
) -> Result<u32, ()> {
    if pkt.ttl <= 1 {
        // The kernel answers with "time exceeded" from the gateway itself.
        count(GlobalCounter::PassTtl);
        return Ok(xdp_action::XDP_PASS);
    }
    let mut env = Env::read().ok_or(())?;
    env.epoch = epoch;
    let seq = if pkt.proto == PROTO_TCP {
        u32::from_be(read::<u32>(ctx, pkt.l4_off + 4)?)
    } else {
        0
    };
    let mut ch = flow::Chosen::empty();
    if flow::select(pkt, seq, res, &env, &mut ch) == 0 {
        return unsub(reject::no_server(Raw::of(ctx), pkt, res));
    }
    let action = fwd::send(Raw::of(ctx), pkt, &ch.addr, fwd::DNAT, &env);
    if !forwarded(action) {
        return finish(ctx, pkt, action);
    }
    if let Some(s) = res_stats(res.resource_id) {
        s.packets += 1;
        s.bytes += u64::from(pkt.frame_len);
        if ch.new_flow {
            s.new_flows += 1;
        }
        if ch.moved_from != NO_SERVER {
            s.flows_moved += 1;
        }
    }
    if let Some(s) = srv_stats(ch.server_id) {
        s.packets += 1;
        s.bytes += u64::from(pkt.frame_len);
        if ch.new_flow {
            s.new_flows += 1;
        }
    }
    if ch.moved_from != NO_SERVER {
        if let Some(s) = srv_stats(ch.moved_from) {
            s.flows_moved_away += 1;
        }
    }
    if ch.new_flow && pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        passive::on_syn(ch.server_id, env.now, env.cfg);
    }
    unsub(action)
}

/// A fragment to a VIP whose protocol has one resource there (the controller's port-0 key,
/// [`maps::lookup_fragment_resource`]): DNATed to the resource's current server, statelessly.
/// Later fragments carry no ports, so no flow can be found for them; every fragment of a
/// datagram goes to the same server as long as the resource does not move. A resource with no
/// live server drops them (even with the reject policy: a later fragment has no transport
/// header to answer). A subprogram of its own, lookups included (they would otherwise grow
/// `ftn_xdp`, which every packet runs): [`NO_FRAGMENT_ENTRY`] when the VIP has no fragment
/// entry for the protocol.
#[inline(never)]
pub fn forward_fragment(raw: Raw, pkt: &Pkt) -> u32 {
    let ctx = &raw.ctx();
    match maps::lookup_fragment_resource(pkt) {
        Some(res) => sub(forward_fragment_checked(ctx, pkt, res)),
        None => NO_FRAGMENT_ENTRY,
    }
}

/// [`forward_fragment`]'s answer when no fragment entry matched (the caller goes on).
pub const NO_FRAGMENT_ENTRY: u32 = u32::MAX - 1;

#[inline(always)]
fn forward_fragment_checked(ctx: &XdpContext, pkt: &Pkt, res: &ResourceValue) -> Result<u32, ()> {
    if pkt.ttl <= 1 {
        count(GlobalCounter::PassTtl);
        return Ok(xdp_action::XDP_PASS);
    }
    let server = match maps::server(res.server_id) {
        Some(s) if res.server_id != NO_SERVER && s.family == pkt.family => s,
        _ => {
            count(GlobalCounter::DropNoServer);
            if let Some(s) = res_stats(res.resource_id) {
                s.drop_no_server += 1;
            }
            return Ok(xdp_action::XDP_DROP);
        }
    };
    let env = Env::read().ok_or(())?;
    let action = fwd::send(Raw::of(ctx), pkt, &server.addr, fwd::DNAT, &env);
    if !forwarded(action) {
        return finish(ctx, pkt, action);
    }
    count(GlobalCounter::FragmentForward);
    if let Some(s) = res_stats(res.resource_id) {
        s.packets += 1;
        s.bytes += u64::from(pkt.frame_len);
    }
    if let Some(s) = srv_stats(res.server_id) {
        s.packets += 1;
        s.bytes += u64::from(pkt.frame_len);
    }
    unsub(action)
}

/// Server -> client: SNAT to the VIP of the server's (address, port, protocol) and send. No
/// per-flow state: any gateway translates any reply. A subprogram of its own.
#[inline(never)]
pub fn reply(raw: Raw, pkt: &Pkt, ret: &ReturnValue) -> u32 {
    let ctx = &raw.ctx();
    sub(reply_checked(ctx, pkt, ret))
}

#[inline(always)]
fn reply_checked(ctx: &XdpContext, pkt: &Pkt, ret: &ReturnValue) -> Result<u32, ()> {
    if pkt.ttl <= 1 {
        count(GlobalCounter::PassTtl);
        return Ok(xdp_action::XDP_PASS);
    }
    let env = Env::read().ok_or(())?;
    let action = fwd::send(Raw::of(ctx), pkt, &ret.vip, fwd::SNAT, &env);
    if !forwarded(action) {
        return finish(ctx, pkt, action);
    }
    if let Some(s) = res_stats(ret.resource_id) {
        s.reply_packets += 1;
        s.reply_bytes += u64::from(pkt.frame_len);
    }
    if let Some(s) = srv_stats(ret.server_id) {
        s.reply_packets += 1;
        s.reply_bytes += u64::from(pkt.frame_len);
    }
    if pkt.proto == PROTO_TCP && pkt.frag == FRAG_NONE {
        passive::on_reply(
            ret.server_id,
            pkt.tcp_flags & TCP_RST != 0,
            env.now,
            env.cfg,
        );
    }
    unsub(action)
}

/// Rewrites the source or destination address of the outer IP header, fixing the IPv4 header
/// checksum and the transport checksum (TCP, UDP unless an IPv4 zero checksum, ICMPv6) with
/// incremental updates.
#[inline(always)]
pub fn rewrite_addr(ctx: &XdpContext, pkt: &Pkt, which: Which, new: &[u32; 4]) -> Result<(), ()> {
    let old = if which == Which::Dst {
        &pkt.dst
    } else {
        &pkt.src
    };
    let v6 = pkt.v6();
    let d = csum::diff_addr(old, new, v6);
    if v6 {
        let off = ETH_LEN + if which == Which::Dst { 24 } else { 8 };
        write::<[u32; 4]>(ctx, off, *new)?;
    } else {
        let off = ETH_LEN + if which == Which::Dst { 16 } else { 12 };
        write::<u32>(ctx, off, new[0])?;
        let check: u16 = read(ctx, ETH_LEN + 10)?;
        write(ctx, ETH_LEN + 10, csum::apply(check, d))?;
    }
    update_l4_csum(ctx, pkt, d)
}

/// Applies a pseudo-header change to the transport checksum.
#[inline(always)]
pub fn update_l4_csum(ctx: &XdpContext, pkt: &Pkt, d: u64) -> Result<(), ()> {
    let off = pkt.l4_csum_off();
    // A fragment: only the first carries the transport header (its checksum covers the
    // whole datagram, so it changes there once), and only when the field is inside it.
    if pkt.frag == FRAG_LATER
        || (pkt.frag == FRAG_FIRST && off + 2 > ETH_LEN + usize::from(pkt.ip_len))
    {
        return Ok(());
    }
    match pkt.proto {
        PROTO_TCP | PROTO_ICMPV6 => {
            let c: u16 = read(ctx, off)?;
            write(ctx, off, csum::apply(c, d))
        }
        PROTO_UDP => {
            let c: u16 = read(ctx, off)?;
            if c == 0 && !pkt.v6() {
                // IPv4 UDP without checksum stays without.
                return Ok(());
            }
            let n = csum::apply(c, d);
            write(ctx, off, if n == 0 { 0xffff } else { n })
        }
        // ICMPv4's checksum does not cover the IP addresses.
        _ => Ok(()),
    }
}
