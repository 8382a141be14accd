//! Translation of ICMP errors about NATed flows (destination unreachable, fragmentation
//! needed / packet too big, time exceeded, parameter problem), so that PMTU discovery and fast
//! failure keep working through the gateway.
//!
//! - Towards the server: an error sent to the VIP about a packet the VIP "sent" (a reply the
//!   gateway SNATed) gets its outer destination and its quoted source rewritten to the server.
//! - Towards the client: an error about a packet the gateway DNATed to a server gets its quoted
//!   destination rewritten to the VIP, and its outer source too when the server itself sent it
//!   (an error from a router on the way keeps the router's address).
//!
//! The quoted IP header checksum, the quoted transport checksum when it is inside the quote, and
//! the ICMP checksum are all updated incrementally. Errors quoting IPv4 options, an IPv6
//! extension header, or a protocol other than TCP/UDP are passed untouched.

use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use ftn_common::{FlowKey, GlobalCounter, PROTO_TCP, PROTO_UDP};

use crate::{
    csum,
    fwd::{is_local, ROUTED_FROM, ROUTED_TO},
    maps::{self, count, srv_stats, sub, FTN_FLOWS, FTN_PENDING},
    parse::{read, write, Pkt, Raw, ETH_LEN, IPV4_LEN, IPV6_LEN, TCP_CSUM_OFF, UDP_CSUM_OFF},
};

struct Inner {
    off: usize,
    l4_off: usize,
    proto: u8,
    src: [u32; 4],
    dst: [u32; 4],
    sport: u16,
    dport: u16,
}

#[inline(always)]
fn unmatched() -> Result<u32, ()> {
    count(GlobalCounter::PassIcmpUnmatched);
    Ok(xdp_action::XDP_PASS)
}

#[inline(always)]
fn parse_inner(ctx: &XdpContext, pkt: &Pkt) -> Option<Inner> {
    let off = pkt.l4_off + 8;
    let mut inner = Inner {
        off,
        l4_off: 0,
        proto: 0,
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
    };
    // Field by field (see `parse::read`): no copy of the quoted header on the stack.
    if pkt.v6() {
        // Two-byte reads: see `parse::parse_l4` on one-byte reads at a variable offset.
        if read::<u16>(ctx, off).ok()?.to_ne_bytes()[0] >> 4 != 6 {
            return None;
        }
        inner.proto = read::<u16>(ctx, off + 6).ok()?.to_ne_bytes()[0];
        inner.src = read::<[u32; 4]>(ctx, off + 8).ok()?;
        inner.dst = read::<[u32; 4]>(ctx, off + 24).ok()?;
        inner.l4_off = off + IPV6_LEN;
    } else {
        if read::<u16>(ctx, off).ok()?.to_ne_bytes()[0] != 0x45 {
            return None;
        }
        inner.proto = read::<u16>(ctx, off + 8).ok()?.to_ne_bytes()[1];
        inner.src = [read::<u32>(ctx, off + 12).ok()?, 0, 0, 0];
        inner.dst = [read::<u32>(ctx, off + 16).ok()?, 0, 0, 0];
        inner.l4_off = off + IPV4_LEN;
    }
    if inner.proto != PROTO_TCP && inner.proto != PROTO_UDP {
        return None;
    }
    inner.sport = read::<u16>(ctx, inner.l4_off).ok()?;
    inner.dport = read::<u16>(ctx, inner.l4_off + 2).ok()?;
    Some(inner)
}

/// A subprogram of its own: the error path's keys and quoted header stay out of the fast
/// path's stack frame.
///
/// Returns an XDP action, or [`SEND`] | a `fwd` routing mode with `route` filled: the caller
/// sends the translated error on with `fwd::send` (one call level up, so that the error path's
/// frame and the sender's do not add up on the stack).
#[inline(never)]
pub fn translate_error(raw: Raw, pkt: &Pkt, route: &mut [u32; 4]) -> u32 {
    let ctx = &raw.ctx();
    sub(translate_error_checked(ctx, pkt, route))
}

/// [`translate_error`]'s flag for "send on, routed per the mode in the low bits".
pub const SEND: u32 = 0x4000_0000;

#[inline(always)]
fn translate_error_checked(ctx: &XdpContext, pkt: &Pkt, route: &mut [u32; 4]) -> Result<u32, ()> {
    if pkt.ttl <= 1 {
        count(GlobalCounter::PassTtl);
        return Ok(xdp_action::XDP_PASS);
    }
    let Some(inner) = parse_inner(ctx, pkt) else {
        return unmatched();
    };
    // Either way the quoted packet came from the error's destination.
    if inner.src != pkt.dst {
        return unmatched();
    }
    // Towards the server: the quoted packet went VIP -> client.
    {
        let key = FlowKey {
            client: inner.dst,
            vip: inner.src,
            client_port: inner.dport,
            vip_port: inner.sport,
            proto: inner.proto,
            family: pkt.family,
            _pad: [0; 2],
        };
        // SAFETY: the entries stay valid for the program run (RCU).
        let flow = unsafe { FTN_FLOWS.get(key).or_else(|| FTN_PENDING.get(key)) };
        if let Some(f) = flow {
            let server_id = f.server_id;
            let Some(srv) = maps::server(server_id) else {
                return unmatched();
            };
            let outer_d = csum::diff_addr(&pkt.dst, &srv.addr, pkt.v6());
            rewrite_outer(
                ctx,
                pkt,
                ETH_LEN + if pkt.v6() { 24 } else { 16 },
                &srv.addr,
                outer_d,
            )?;
            let icmp_d = rewrite_inner(ctx, pkt, &inner, false, &srv.addr)?;
            fix_icmp_csum(ctx, pkt, icmp_d + if pkt.v6() { outer_d } else { 0 })?;
            count(GlobalCounter::IcmpErrorTranslated);
            if let Some(s) = srv_stats(server_id) {
                s.icmp_errors += 1;
            }
            *route = srv.addr;
            return Ok(SEND | ROUTED_TO);
        }
    }
    // Towards the client: the quoted packet went client -> server (after DNAT), to a port of a
    // resource's server. Unless it went to the gateway itself (its own health check).
    {
        if let Some(rev) = maps::lookup_return_of(&inner.dst, inner.dport, inner.proto, pkt.family)
        {
            if is_local(Raw::of(ctx), pkt, &pkt.dst) != 0 {
                count(GlobalCounter::PassLocal);
                return Ok(xdp_action::XDP_PASS);
            }
            let mut icmp_d = rewrite_inner(ctx, pkt, &inner, true, &rev.vip)?;
            let mut outer_src = pkt.src;
            if pkt.src == inner.dst {
                let d = csum::diff_addr(&pkt.src, &rev.vip, pkt.v6());
                rewrite_outer(
                    ctx,
                    pkt,
                    ETH_LEN + if pkt.v6() { 8 } else { 12 },
                    &rev.vip,
                    d,
                )?;
                if pkt.v6() {
                    icmp_d += d;
                }
                outer_src = rev.vip;
            }
            fix_icmp_csum(ctx, pkt, icmp_d)?;
            count(GlobalCounter::IcmpErrorTranslated);
            if let Some(s) = srv_stats(rev.server_id) {
                s.icmp_errors += 1;
            }
            *route = outer_src;
            return Ok(SEND | ROUTED_FROM);
        }
    }
    unmatched()
}

/// Rewrites an outer address at `off` (IPv4 header checksum fixed; the ICMPv6 pseudo-header
/// part is left to the caller).
#[inline(always)]
fn rewrite_outer(
    ctx: &XdpContext,
    pkt: &Pkt,
    off: usize,
    new: &[u32; 4],
    d: u64,
) -> Result<(), ()> {
    if pkt.v6() {
        write(ctx, off, *new)
    } else {
        write(ctx, off, new[0])?;
        let c: u16 = read(ctx, ETH_LEN + 10)?;
        write(ctx, ETH_LEN + 10, csum::apply(c, d))
    }
}

/// Rewrites the quoted destination (`dst`) or source address, fixing the quoted IPv4 header
/// checksum and the quoted transport checksum when present. Returns the change to the ICMP
/// checksum accumulator.
#[inline(always)]
fn rewrite_inner(
    ctx: &XdpContext,
    pkt: &Pkt,
    inner: &Inner,
    dst: bool,
    new: &[u32; 4],
) -> Result<u64, ()> {
    let v6 = pkt.v6();
    let old = if dst { &inner.dst } else { &inner.src };
    let d = csum::diff_addr(old, new, v6);
    let mut icmp_d = d;
    if v6 {
        write(ctx, inner.off + if dst { 24 } else { 8 }, *new)?;
    } else {
        write(ctx, inner.off + if dst { 16 } else { 12 }, new[0])?;
        let c: u16 = read(ctx, inner.off + 10)?;
        let n = csum::apply(c, d);
        write(ctx, inner.off + 10, n)?;
        icmp_d += csum::diff16(c, n);
    }
    let coff = inner.l4_off
        + if inner.proto == PROTO_TCP {
            TCP_CSUM_OFF
        } else {
            UDP_CSUM_OFF
        };
    // The quoted transport checksum is fixed only when the quote includes it: inside the IP
    // datagram, not in an Ethernet trailer (padding) after it, which no checksum covers.
    if coff + 2 > ETH_LEN + usize::from(pkt.ip_len) {
        return Ok(icmp_d);
    }
    if let Ok(c) = read::<u16>(ctx, coff) {
        if !(inner.proto == PROTO_UDP && c == 0 && !v6) {
            let mut n = csum::apply(c, d);
            if inner.proto == PROTO_UDP && n == 0 {
                n = 0xffff;
            }
            write(ctx, coff, n)?;
            icmp_d += csum::diff16(c, n);
        }
    }
    Ok(icmp_d)
}

#[inline(always)]
fn fix_icmp_csum(ctx: &XdpContext, pkt: &Pkt, d: u64) -> Result<(), ()> {
    let off = pkt.l4_off + 2;
    let c: u16 = read(ctx, off)?;
    write(ctx, off, csum::apply(c, d))
}
