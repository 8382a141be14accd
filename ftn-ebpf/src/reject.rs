//! Resources without a live server: drop, or answer at once (TCP RST, ICMP unreachable) so
//! clients fail fast instead of waiting for timeouts.
//!
//! Answers are built in place and sent back with `XDP_TX` from the VIP. Only packets whose
//! headers the program builds exactly are answered: IPv4 without options, IPv6 without
//! extension headers; TCP segments carrying RST get no answer (RFC 9293); anything else is
//! dropped and counted as `DropRejectFailed`.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use ftn_common::{
    GlobalCounter, ResourceValue, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, RES_FLAG_REJECT,
};

use crate::{
    csum,
    maps::{count, res_stats, sub},
    parse::{
        read, write, Pkt, Raw, ETH_LEN, IPV4_LEN, IPV6_LEN, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
    },
};

const TTL: u8 = 64;

/// A subprogram of its own (the answers' header buffers stay out of the forward path's frame).
#[inline(never)]
pub fn no_server(raw: Raw, pkt: &Pkt, res: &ResourceValue) -> u32 {
    let ctx = &raw.ctx();
    sub(no_server_checked(ctx, pkt, res))
}

#[inline(always)]
fn no_server_checked(ctx: &XdpContext, pkt: &Pkt, res: &ResourceValue) -> Result<u32, ()> {
    let stats = res_stats(res.resource_id);
    if res.flags & RES_FLAG_REJECT == 0 {
        count(GlobalCounter::DropNoServer);
        if let Some(s) = stats {
            s.drop_no_server += 1;
        }
        return Ok(xdp_action::XDP_DROP);
    }
    let sent = match pkt.proto {
        PROTO_TCP => tcp_rst(ctx, pkt).map(|()| GlobalCounter::RejectTcpRst),
        PROTO_UDP | PROTO_ICMP | PROTO_ICMPV6 => {
            icmp_unreachable(ctx, pkt).map(|()| GlobalCounter::RejectIcmp)
        }
        _ => Err(()),
    };
    match sent {
        Ok(c) => {
            count(c);
            if let Some(s) = stats {
                s.reject_no_server += 1;
            }
            Ok(xdp_action::XDP_TX)
        }
        // The packet may be half rewritten here: it must not go anywhere.
        Err(()) => {
            count(GlobalCounter::DropRejectFailed);
            if let Some(s) = stats {
                s.drop_no_server += 1;
            }
            Ok(xdp_action::XDP_DROP)
        }
    }
}

#[inline(always)]
fn frame_len(ctx: &XdpContext) -> i32 {
    (ctx.data_end() - ctx.data()) as i32
}

/// Shrinks the frame to `len` bytes.
#[inline(always)]
fn truncate(ctx: &XdpContext, len: i32) -> Result<(), ()> {
    let delta = len - frame_len(ctx);
    if delta < 0 {
        // SAFETY: valid XDP context.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
            return Err(());
        }
    }
    if frame_len(ctx) != len {
        return Err(());
    }
    Ok(())
}

/// Sum of `N` 32-bit words from offset `off`.
#[inline(always)]
fn sum_words<const N: usize>(ctx: &XdpContext, off: usize) -> Result<u64, ()> {
    let w: [u32; N] = read(ctx, off)?;
    let mut s = 0u64;
    for x in w {
        s += u64::from(x);
    }
    Ok(s)
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext, macs: [u8; 12]) -> Result<(), ()> {
    let e = eth(macs, 0);
    write::<[u8; 12]>(
        ctx,
        0,
        [
            e[0], e[1], e[2], e[3], e[4], e[5], e[6], e[7], e[8], e[9], e[10], e[11],
        ],
    )
}

/// Writes an IPv4 header (no options) from `src` to `dst` at offset `off` with its checksum.
#[inline(always)]
fn write_ipv4(
    ctx: &XdpContext,
    off: usize,
    tot_len: u16,
    proto: u8,
    src: u32,
    dst: u32,
) -> Result<(), ()> {
    let l = tot_len.to_be_bytes();
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2] = l[0];
    h[3] = l[1];
    h[6] = 0x40; // DF
    h[8] = TTL;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.to_ne_bytes());
    h[16..20].copy_from_slice(&dst.to_ne_bytes());
    write(ctx, off, h)?;
    let c = csum::finish(sum_words::<5>(ctx, off)?);
    write(ctx, off + 10, c)
}

/// Writes an IPv6 header from `src` to `dst` at offset `off`.
#[inline(always)]
fn write_ipv6(
    ctx: &XdpContext,
    off: usize,
    payload_len: u16,
    next: u8,
    src: &[u32; 4],
    dst: &[u32; 4],
) -> Result<(), ()> {
    let l = payload_len.to_be_bytes();
    write::<[u8; 8]>(ctx, off, [0x60, 0, 0, 0, l[0], l[1], next, TTL])?;
    write(ctx, off + 8, *src)?;
    write(ctx, off + 24, *dst)
}

/// Pseudo-header sum (memory order) for `len` bytes of protocol `proto`.
#[inline(always)]
fn pseudo_sum(v6: bool, src: &[u32; 4], dst: &[u32; 4], proto: u8, len: u16) -> u64 {
    let mut s = u64::from(src[0]) + u64::from(dst[0]);
    if v6 {
        for i in 1..4 {
            s += u64::from(src[i]) + u64::from(dst[i]);
        }
    }
    s + u64::from(u16::from(proto).to_be()) + u64::from(len.to_be())
}

/// Answers a TCP segment with a RST from the VIP (RFC 9293 3.10.7.1: the reset takes its
/// sequence number from the segment's ACK field, or acknowledges the segment).
#[inline(always)]
fn tcp_rst(ctx: &XdpContext, pkt: &Pkt) -> Result<(), ()> {
    if pkt.tcp_flags & TCP_RST != 0 {
        return Err(());
    }
    let v6 = pkt.v6();
    let ip_len = if v6 { IPV6_LEN } else { IPV4_LEN };
    if pkt.l4_off != ETH_LEN + ip_len {
        return Err(()); // IPv4 options
    }
    let l4 = pkt.l4_off;
    let h: [u8; 20] = read(ctx, l4)?;
    let seq = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
    let ack = u32::from_be_bytes([h[8], h[9], h[10], h[11]]);
    let doff = u32::from(h[12] >> 4) * 4;
    let mut seg_len = u32::from(pkt.ip_len) - ip_len as u32 - doff;
    if pkt.tcp_flags & TCP_SYN != 0 {
        seg_len += 1;
    }
    if pkt.tcp_flags & TCP_FIN != 0 {
        seg_len += 1;
    }
    let (rseq, rack, rflags) = if pkt.tcp_flags & TCP_ACK != 0 {
        (ack, 0u32, TCP_RST)
    } else {
        (0u32, seq.wrapping_add(seg_len), TCP_RST | TCP_ACK)
    };
    let macs: [u8; 12] = read(ctx, 0)?;
    truncate(ctx, (l4 + 20) as i32)?;
    swap_macs(ctx, macs)?;
    if v6 {
        write_ipv6(ctx, ETH_LEN, 20, PROTO_TCP, &pkt.dst, &pkt.src)?;
    } else {
        write_ipv4(
            ctx,
            ETH_LEN,
            (IPV4_LEN + 20) as u16,
            PROTO_TCP,
            pkt.dst[0],
            pkt.src[0],
        )?;
    }
    let mut t = [0u8; 20];
    t[0..2].copy_from_slice(&pkt.dport.to_ne_bytes());
    t[2..4].copy_from_slice(&pkt.sport.to_ne_bytes());
    t[4..8].copy_from_slice(&rseq.to_be_bytes());
    t[8..12].copy_from_slice(&rack.to_be_bytes());
    t[12] = 0x50;
    t[13] = rflags;
    write(ctx, l4, t)?;
    let sum = pseudo_sum(v6, &pkt.dst, &pkt.src, PROTO_TCP, 20) + sum_words::<5>(ctx, l4)?;
    write(ctx, l4 + 16, csum::finish(sum))
}

/// Answers a UDP datagram (port unreachable) or an echo request (host/address unreachable)
/// with an ICMP error from the VIP.
#[inline(always)]
fn icmp_unreachable(ctx: &XdpContext, pkt: &Pkt) -> Result<(), ()> {
    let udp = pkt.proto == PROTO_UDP;
    let header = if pkt.v6() {
        [1, if udp { 4 } else { 3 }, 0, 0, 0, 0, 0, 0]
    } else {
        [3, if udp { 3 } else { 1 }, 0, 0, 0, 0, 0, 0]
    };
    icmp_error(ctx, pkt, header)
}

/// A packet larger than the path MTU that may not be fragmented: answered with ICMP
/// "fragmentation needed" (type 3 code 4, RFC 1191) / ICMPv6 "packet too big" (type 2, RFC
/// 8201) carrying `mtu`, from the packet's destination back to its sender, quoting the packet
/// as it arrived (so the sender matches it to its connection). A subprogram of its own.
#[inline(never)]
pub fn too_big(raw: Raw, pkt: &Pkt, mtu: u32) -> u32 {
    let ctx = &raw.ctx();
    let header = if pkt.v6() {
        let m = mtu.to_be_bytes();
        [2, 0, 0, 0, m[0], m[1], m[2], m[3]]
    } else {
        let m = (mtu.min(u32::from(u16::MAX)) as u16).to_be_bytes();
        [3, 4, 0, 0, 0, 0, m[0], m[1]]
    };
    match icmp_error(ctx, pkt, header) {
        Ok(()) => {
            count(GlobalCounter::IcmpTooBig);
            xdp_action::XDP_TX
        }
        // Half rewritten at worst: it must not go anywhere.
        Err(()) => {
            count(GlobalCounter::DropRejectFailed);
            xdp_action::XDP_DROP
        }
    }
}

/// Turns the packet into an ICMP(v6) error with the 8-byte ICMP `header` (type, code, zero
/// checksum, rest), from its destination back to its source, quoting its IP header and the
/// first 8 bytes after it. Only for packets without IPv4 options or IPv6 extension headers.
#[inline(always)]
fn icmp_error(ctx: &XdpContext, pkt: &Pkt, header: [u8; 8]) -> Result<(), ()> {
    if pkt.v6() {
        if pkt.l4_off != ETH_LEN + IPV6_LEN {
            return Err(());
        }
        // Quote: IPv6 header + 8 bytes; new headers: IPv6 + ICMPv6 (48 bytes).
        const QUOTE: usize = IPV6_LEN + 8;
        const MSG: usize = 8 + QUOTE;
        let macs: [u8; 12] = read(ctx, 0)?;
        truncate(ctx, (ETH_LEN + QUOTE) as i32)?;
        // SAFETY: valid XDP context; test-run and drivers give at least 256 bytes of headroom.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(QUOTE as i32)) } != 0 {
            return Err(());
        }
        write::<[u8; 14]>(ctx, 0, eth(macs, 0x86DD))?;
        write_ipv6(ctx, ETH_LEN, MSG as u16, PROTO_ICMPV6, &pkt.dst, &pkt.src)?;
        let off = ETH_LEN + IPV6_LEN;
        write::<[u8; 8]>(ctx, off, header)?;
        let sum = pseudo_sum(true, &pkt.dst, &pkt.src, PROTO_ICMPV6, MSG as u16)
            + sum_words::<{ MSG / 4 }>(ctx, off)?;
        write(ctx, off + 2, csum::finish(sum))
    } else {
        if pkt.l4_off != ETH_LEN + IPV4_LEN {
            return Err(());
        }
        const QUOTE: usize = IPV4_LEN + 8;
        const MSG: usize = 8 + QUOTE;
        let macs: [u8; 12] = read(ctx, 0)?;
        truncate(ctx, (ETH_LEN + QUOTE) as i32)?;
        // SAFETY: as above.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(QUOTE as i32)) } != 0 {
            return Err(());
        }
        write::<[u8; 14]>(ctx, 0, eth(macs, 0x0800))?;
        write_ipv4(
            ctx,
            ETH_LEN,
            (IPV4_LEN + MSG) as u16,
            PROTO_ICMP,
            pkt.dst[0],
            pkt.src[0],
        )?;
        let off = ETH_LEN + IPV4_LEN;
        write::<[u8; 8]>(ctx, off, header)?;
        let sum = sum_words::<{ MSG / 4 }>(ctx, off)?;
        write(ctx, off + 2, csum::finish(sum))
    }
}

/// Ethernet header back to the sender of a frame whose (dst, src) MACs were `macs`.
#[inline(always)]
fn eth(macs: [u8; 12], ether_type: u16) -> [u8; 14] {
    let mut e = [0u8; 14];
    e[..6].copy_from_slice(&macs[6..]);
    e[6..12].copy_from_slice(&macs[..6]);
    e[12..].copy_from_slice(&ether_type.to_be_bytes());
    e
}
