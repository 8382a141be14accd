//! Sending a packet on: next hop (cache or FIB) and path MTU first, then the address rewrite,
//! TTL, MACs, and XDP_TX or a devmap redirect.
//!
//! The next hop is resolved BEFORE the packet is rewritten, so that what cannot be sent is
//! still the packet the sender sent:
//! - a server's packet to an address of the gateway itself (the FIB says "not forwarded": the
//!   gateway's own health checks) is passed untouched, never SNATed;
//! - a packet larger than the path MTU with DF set (IPv4), or any IPv6 one, is answered with
//!   "fragmentation needed" / "packet too big" quoting it as sent (the caller builds the
//!   answer, see [`TOO_BIG`]); an IPv4 one without DF is rewritten and passed for the kernel to
//!   fragment.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_FRAG_NEEDED,
        BPF_FIB_LKUP_RET_NOT_FWDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use ftn_common::{
    GlobalCounter, NexthopKey, NexthopValue, NEXTHOP_CACHE_OFF, PROTO_TCP, PROTO_UDP,
};

use crate::{
    csum,
    maps::{count, sub, Env, FTN_DEVMAP, FTN_NEXTHOP},
    nat::{rewrite_addr, Which},
    parse::{read, write, Pkt, Raw, ETH_LEN},
};

/// [`send`]'s `mode`: rewrite the destination to `addr` and route to it (client -> server).
pub const DNAT: u32 = 0;
/// Rewrite the source to `addr` and route to the packet's destination (server -> client).
pub const SNAT: u32 = 1;
/// Already rewritten (ICMP error translation): route to `addr`, from the packet's source.
pub const ROUTED_TO: u32 = 2;
/// Already rewritten: route to the packet's destination, from `addr`.
pub const ROUTED_FROM: u32 = 3;

/// [`send`]'s answer `TOO_BIG + mtu`: the packet (untouched) is larger than the path MTU and
/// may not be fragmented; the caller answers it with an ICMP error.
pub const TOO_BIG: u32 = 0x1000_0000;
/// [`send`]'s answer for an SNAT to an address of the gateway itself: passed untouched (counted).
pub const LOCAL: u32 = 0x2000_0000;

/// IPv4 "don't fragment" in the flags/fragment-offset word (host order).
const IP_DF: u16 = 0x4000;

/// Sends `pkt` on per `mode` (see the constants) with `addr` as the new or routed address.
///
/// The FIB's answer for (destination, ingress interface) is cached in `FTN_NEXTHOP` for
/// `nexthop_ttl_ns` (default 1 s): the lookup is the largest single cost of the fast path. The
/// cost of the cache: a route, neighbour or MTU change is seen up to that long late, and ECMP or
/// policy routing by source/port is resolved once per destination per cache lifetime.
///
/// - FIB success: rewrite, TTL/hop limit decremented (IPv4 checksum fixed), MACs from the FIB,
///   then `XDP_TX` when the egress is the ingress interface, else a redirect through
///   `FTN_DEVMAP`.
/// - Egress not in the devmap, neighbour unknown, or any other FIB answer: `XDP_PASS` of the
///   rewritten packet (TTL untouched: the kernel forwards it and decrements it itself).
///
/// A subprogram of its own (not inlined): its FIB parameters (64 bytes) and cache key live in
/// their own stack frame, not in the callers'.
#[inline(never)]
pub fn send(raw: Raw, pkt: &Pkt, addr: &[u32; 4], mode: u32, env: &Env) -> u32 {
    let ctx = &raw.ctx();
    sub(send_checked(ctx, pkt, addr, mode, env))
}

#[inline(always)]
fn send_checked(
    ctx: &XdpContext,
    pkt: &Pkt,
    addr: &[u32; 4],
    mode: u32,
    env: &Env,
) -> Result<u32, ()> {
    let (src, dst) = if mode == DNAT || mode == ROUTED_TO {
        (&pkt.src, addr)
    } else {
        (addr, &pkt.dst)
    };
    let ingress = ctx.ingress_ifindex() as u32;
    let now = env.now;
    let ttl = env.cfg.nexthop_ttl_ns;
    let key = NexthopKey {
        dst: *dst,
        ingress,
        family: pkt.family,
        _pad: [0; 3],
    };
    if ttl != NEXTHOP_CACHE_OFF {
        if let Some(hop) = FTN_NEXTHOP.get_ptr(key) {
            // SAFETY: pointer from a successful lookup (RCU-protected during the run).
            let hop = unsafe { &*hop };
            if now.saturating_sub(hop.learned_ns) < ttl {
                if u32::from(pkt.ip_len) > hop.mtu {
                    return too_big(ctx, pkt, addr, mode, hop.mtu);
                }
                rewrite(ctx, pkt, addr, mode)?;
                return out(ctx, pkt, ingress, hop.egress, &hop.dmac, &hop.smac);
            }
        }
    }
    let mut hop = NexthopValue::default();
    let rc = i64::from(lookup(Raw::of(ctx), pkt, src, dst, &mut hop) as i32);
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        return too_big(ctx, pkt, addr, mode, hop.mtu);
    }
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        if rc == BPF_FIB_LKUP_RET_NOT_FWDED as i64 && mode == SNAT {
            // Local destination: a reply to the gateway's own connection, not to a client.
            count(GlobalCounter::PassLocal);
            return Ok(LOCAL);
        }
        count(if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            GlobalCounter::PassNoNeigh
        } else {
            GlobalCounter::PassFibOther
        });
        rewrite(ctx, pkt, addr, mode)?;
        return Ok(xdp_action::XDP_PASS);
    }
    if ttl != NEXTHOP_CACHE_OFF {
        hop.learned_ns = now;
        hop.mtu = path_mtu(Raw::of(ctx), pkt, src, dst);
        // A failed insert only costs the next packet another FIB lookup.
        let _ = FTN_NEXTHOP.insert(key, hop, 0);
    }
    rewrite(ctx, pkt, addr, mode)?;
    out(ctx, pkt, ingress, hop.egress, &hop.dmac, &hop.smac)
}

/// Asks the FIB for `src` -> `dst` (this packet's length, arriving on its interface): fills
/// `hop`'s egress and MACs on success, its `mtu` on "fragmentation needed", and returns the
/// FIB's answer (`BPF_FIB_LKUP_RET_*`). A subprogram of its own (the 64-byte parameters in
/// its own frame).
#[inline(never)]
fn lookup(raw: Raw, pkt: &Pkt, src: &[u32; 4], dst: &[u32; 4], hop: &mut NexthopValue) -> u32 {
    let ctx = &raw.ctx();
    // SAFETY: plain C struct, all-zero is a valid value.
    let mut p: FibParams = unsafe { zeroed() };
    let rc = fib(ctx, pkt, src, dst, pkt.ip_len, &mut p);
    if rc == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // SAFETY: the kernel wrote the MTU into the union on this answer.
        hop.mtu = u32::from(unsafe { p.__bindgen_anon_1.mtu_result });
    } else if rc == BPF_FIB_LKUP_RET_SUCCESS as i64 {
        hop.egress = p.ifindex;
        hop.dmac = p.dmac;
        hop.smac = p.smac;
    }
    rc as u32
}

/// The path MTU to `dst` for the next-hop cache: the lookup with the largest length answers
/// "fragmentation needed" with it (route metrics and learned PMTU included), or succeeds
/// (65535). A subprogram of its own; runs once per cache fill.
#[inline(never)]
fn path_mtu(raw: Raw, pkt: &Pkt, src: &[u32; 4], dst: &[u32; 4]) -> u32 {
    let ctx = &raw.ctx();
    // SAFETY: plain C struct, all-zero is a valid value.
    let mut p: FibParams = unsafe { zeroed() };
    if fib(ctx, pkt, src, dst, u16::MAX, &mut p) == BPF_FIB_LKUP_RET_FRAG_NEEDED as i64 {
        // SAFETY: as in `lookup`.
        u32::from(unsafe { p.__bindgen_anon_1.mtu_result })
    } else {
        u32::from(u16::MAX)
    }
}

/// `bpf_fib_lookup` for `src` -> `dst` of `tot_len` bytes, arriving on the packet's interface.
#[inline(always)]
fn fib(
    ctx: &XdpContext,
    pkt: &Pkt,
    src: &[u32; 4],
    dst: &[u32; 4],
    tot_len: u16,
    p: &mut FibParams,
) -> i64 {
    p.family = pkt.family;
    p.l4_protocol = pkt.proto;
    if pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP {
        p.sport = pkt.sport;
        p.dport = pkt.dport;
    }
    p.__bindgen_anon_1.tot_len = tot_len;
    p.ifindex = ctx.ingress_ifindex() as u32;
    if pkt.v6() {
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    } else {
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    }
    // SAFETY: valid context and parameter struct of the declared size.
    unsafe { bpf_fib_lookup(ctx.ctx.cast(), p, size_of::<FibParams>() as i32, 0) }
}

/// The address rewrite of `mode` (none for the already-rewritten modes).
#[inline(always)]
fn rewrite(ctx: &XdpContext, pkt: &Pkt, addr: &[u32; 4], mode: u32) -> Result<(), ()> {
    match mode {
        DNAT => rewrite_addr(ctx, pkt, Which::Dst, addr),
        SNAT => rewrite_addr(ctx, pkt, Which::Src, addr),
        _ => Ok(()),
    }
}

/// A packet larger than the path's `mtu`: [`TOO_BIG`] + `mtu` when it may not be fragmented
/// (IPv6, or IPv4 with DF) and is a client's or server's own packet; otherwise rewritten and
/// passed for the kernel to fragment (or, for a translated ICMP error, to judge).
#[inline(always)]
fn too_big(ctx: &XdpContext, pkt: &Pkt, addr: &[u32; 4], mode: u32, mtu: u32) -> Result<u32, ()> {
    let df = pkt.v6() || u16::from_be(read::<u16>(ctx, ETH_LEN + 6)?) & IP_DF != 0;
    if df && (mode == DNAT || mode == SNAT) {
        return Ok(TOO_BIG + mtu);
    }
    count(GlobalCounter::PassFragmentable);
    rewrite(ctx, pkt, addr, mode)?;
    Ok(xdp_action::XDP_PASS)
}

/// The packet leaves through `egress` to `dmac` from `smac`.
#[inline(always)]
pub fn out(
    ctx: &XdpContext,
    pkt: &Pkt,
    ingress: u32,
    egress: u32,
    dmac: &[u8; 6],
    smac: &[u8; 6],
) -> Result<u32, ()> {
    if egress == ingress {
        rewrite_l2(ctx, pkt, dmac, smac)?;
        count(GlobalCounter::Tx);
        return Ok(xdp_action::XDP_TX);
    }
    // `bpf_redirect_map` only records the target (the redirect happens after the program
    // returns), so it doubles as the devmap membership check, before the L2 rewrite.
    match FTN_DEVMAP.redirect(egress, 0) {
        Ok(action) => {
            rewrite_l2(ctx, pkt, dmac, smac)?;
            count(GlobalCounter::Redirect);
            Ok(action)
        }
        Err(_) => {
            // Misconfiguration (an egress interface ftn was not told about): the kernel forwards.
            count(GlobalCounter::PassNotInDevmap);
            Ok(xdp_action::XDP_PASS)
        }
    }
}

/// Fast-path hop: TTL / hop limit and MACs from the FIB answer.
#[inline(always)]
fn rewrite_l2(ctx: &XdpContext, pkt: &Pkt, dmac: &[u8; 6], smac: &[u8; 6]) -> Result<(), ()> {
    decrement_ttl(ctx, pkt)?;
    // MACs as one 4-byte and one 2-byte store each (see `parse::read`).
    write::<u32>(
        ctx,
        0,
        u32::from_ne_bytes([dmac[0], dmac[1], dmac[2], dmac[3]]),
    )?;
    write::<u16>(ctx, 4, u16::from_ne_bytes([dmac[4], dmac[5]]))?;
    write::<u16>(ctx, 6, u16::from_ne_bytes([smac[0], smac[1]]))?;
    write::<u32>(
        ctx,
        8,
        u32::from_ne_bytes([smac[2], smac[3], smac[4], smac[5]]),
    )
}

#[inline(always)]
fn decrement_ttl(ctx: &XdpContext, pkt: &Pkt) -> Result<(), ()> {
    if pkt.v6() {
        // hop limit: byte 7 of the IPv6 header, no header checksum.
        return write::<u8>(ctx, ETH_LEN + 7, pkt.ttl - 1);
    }
    // TTL and protocol share one 16-bit word of the IPv4 header checksum.
    let old: u16 = read(ctx, ETH_LEN + 8)?;
    let b = old.to_ne_bytes();
    let new = u16::from_ne_bytes([b[0].wrapping_sub(1), b[1]]);
    write(ctx, ETH_LEN + 8, new)?;
    let check: u16 = read(ctx, ETH_LEN + 10)?;
    write(
        ctx,
        ETH_LEN + 10,
        csum::apply(check, csum::diff16(old, new)),
    )
}

/// True when `dst` is an address of the gateway itself (the FIB does not forward to it).
/// A subprogram of its own: only ICMP error translation asks, before it rewrites.
#[inline(never)]
pub fn is_local(raw: Raw, pkt: &Pkt, dst: &[u32; 4]) -> u32 {
    let ctx = &raw.ctx();
    // SAFETY: plain C struct, all-zero is a valid value.
    let mut p: FibParams = unsafe { zeroed() };
    u32::from(fib(ctx, pkt, &pkt.src, dst, pkt.ip_len, &mut p) == BPF_FIB_LKUP_RET_NOT_FWDED as i64)
}
