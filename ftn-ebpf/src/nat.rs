//! Address rewriting: DNAT of client packets to their server, SNAT of replies to the VIP.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use ftn_common::{GlobalCounter, ResourceValue, ReverseValue, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};

use crate::{
    csum, flow,
    fwd::send,
    maps::{config, count, res_stats, srv_stats},
    parse::{read, write, Pkt, ETH_LEN, TCP_ACK, TCP_RST, TCP_SYN},
    passive, reject,
};

/// Which address of the packet to rewrite.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Which {
    Src,
    Dst,
}

/// Client -> VIP: DNAT to the flow's server and send.
#[inline(always)]
pub fn forward(ctx: &XdpContext, pkt: &Pkt, res: &ResourceValue) -> Result<u32, ()> {
    if pkt.ttl <= 1 {
        // The kernel answers with "time exceeded" from the gateway itself.
        count(GlobalCounter::PassTtl);
        return Ok(xdp_action::XDP_PASS);
    }
    let now = flow::now();
    let cfg = config().ok_or(())?;
    let seq = if pkt.proto == PROTO_TCP {
        u32::from_be(read::<u32>(ctx, pkt.l4_off + 4)?)
    } else {
        0
    };
    let Some(ch) = flow::select(pkt, seq, res, now, cfg) else {
        return reject::no_server(ctx, pkt, res);
    };
    rewrite_addr(ctx, pkt, Which::Dst, &ch.server.addr)?;
    if let Some(s) = res_stats(res.resource_id) {
        s.packets += 1;
        s.bytes += u64::from(pkt.frame_len);
        if ch.new_flow {
            s.new_flows += 1;
        }
        if ch.moved_from.is_some() {
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
    if let Some(old) = ch.moved_from {
        if let Some(s) = srv_stats(old) {
            s.flows_moved_away += 1;
        }
    }
    if ch.new_flow && pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        passive::on_syn(ch.server_id, now, cfg);
    }
    send(ctx, pkt, &pkt.src, &ch.server.addr, cfg, now)
}

/// Server -> client of a known flow: SNAT back to the VIP and send.
#[inline(always)]
pub fn reply(ctx: &XdpContext, pkt: &Pkt, rev: &ReverseValue) -> Result<u32, ()> {
    if pkt.ttl <= 1 {
        count(GlobalCounter::PassTtl);
        return Ok(xdp_action::XDP_PASS);
    }
    rewrite_addr(ctx, pkt, Which::Src, &rev.vip)?;
    if let Some(s) = res_stats(rev.resource_id) {
        s.reply_packets += 1;
        s.reply_bytes += u64::from(pkt.frame_len);
    }
    if let Some(s) = srv_stats(rev.server_id) {
        s.reply_packets += 1;
        s.reply_bytes += u64::from(pkt.frame_len);
    }
    let now = flow::now();
    let cfg = config().ok_or(())?;
    if pkt.proto == PROTO_TCP {
        passive::on_reply(rev.server_id, pkt.tcp_flags & TCP_RST != 0, now, cfg);
    }
    flow::on_reply(pkt, rev, now);
    send(ctx, pkt, &rev.vip, &pkt.dst, cfg, now)
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
