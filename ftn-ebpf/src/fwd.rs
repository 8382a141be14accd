//! Sending a rewritten packet: FIB lookup, TTL, MACs, then XDP_TX or a devmap redirect.

use core::mem::{size_of, zeroed};

use aya_ebpf::{
    bindings::{
        bpf_fib_lookup as FibParams, xdp_action, BPF_FIB_LKUP_RET_NO_NEIGH,
        BPF_FIB_LKUP_RET_SUCCESS,
    },
    helpers::bpf_fib_lookup,
    programs::XdpContext,
};
use ftn_common::{
    DataplaneConfig, GlobalCounter, NexthopKey, NexthopValue, NEXTHOP_CACHE_OFF, PROTO_TCP,
    PROTO_UDP,
};

use crate::{
    csum,
    maps::{count, FTN_DEVMAP, FTN_NEXTHOP},
    parse::{read, write, Pkt, ETH_LEN},
};

/// Sends a packet whose addresses are now `src` -> `dst`.
///
/// The FIB's answer for (`dst`, ingress interface) is cached in `FTN_NEXTHOP` for
/// `nexthop_ttl_ns` (default 1 s): the lookup is the largest single cost of the fast path. The
/// cost of the cache: a route or neighbour change is seen up to that long late, and ECMP or
/// policy routing by source/port is resolved once per destination per cache lifetime.
///
/// - FIB success: TTL/hop limit decremented (IPv4 checksum fixed), MACs from the FIB, then
///   `XDP_TX` when the egress is the ingress interface, else a redirect through `FTN_DEVMAP`.
/// - Egress not in the devmap, neighbour unknown, or any other FIB answer: `XDP_PASS` of the
///   rewritten packet (TTL untouched: the kernel forwards it and decrements it itself).
#[inline(always)]
///
/// `cfg` and `now` are the caller's, read once per packet.
pub fn send(
    ctx: &XdpContext,
    pkt: &Pkt,
    src: &[u32; 4],
    dst: &[u32; 4],
    cfg: &DataplaneConfig,
    now: u64,
) -> Result<u32, ()> {
    let ingress = ctx.ingress_ifindex() as u32;
    let ttl = cfg.nexthop_ttl_ns;
    let key = NexthopKey {
        dst: *dst,
        ingress,
        family: pkt.family,
        _pad: [0; 3],
    };
    if ttl != NEXTHOP_CACHE_OFF {
        if let Some(hop) = FTN_NEXTHOP.get_ptr(key) {
            // SAFETY: pointer from a successful lookup (RCU-protected during the run).
            let hop = unsafe { *hop };
            if now.saturating_sub(hop.learned_ns) < ttl {
                return out(ctx, pkt, ingress, hop.egress, &hop.dmac, &hop.smac);
            }
        }
    }
    // SAFETY: plain C struct, all-zero is a valid value.
    let mut p: FibParams = unsafe { zeroed() };
    p.family = pkt.family;
    p.l4_protocol = pkt.proto;
    if pkt.proto == PROTO_TCP || pkt.proto == PROTO_UDP {
        p.sport = pkt.sport;
        p.dport = pkt.dport;
    }
    p.__bindgen_anon_1.tot_len = pkt.ip_len;
    p.ifindex = ingress;
    if pkt.v6() {
        p.__bindgen_anon_3.ipv6_src = *src;
        p.__bindgen_anon_4.ipv6_dst = *dst;
    } else {
        p.__bindgen_anon_3.ipv4_src = src[0];
        p.__bindgen_anon_4.ipv4_dst = dst[0];
    }
    // SAFETY: valid context and parameter struct of the declared size.
    let rc = unsafe { bpf_fib_lookup(ctx.ctx.cast(), &mut p, size_of::<FibParams>() as i32, 0) };
    if rc != BPF_FIB_LKUP_RET_SUCCESS as i64 {
        count(if rc == BPF_FIB_LKUP_RET_NO_NEIGH as i64 {
            GlobalCounter::PassNoNeigh
        } else {
            GlobalCounter::PassFibOther
        });
        return Ok(xdp_action::XDP_PASS);
    }
    if ttl != NEXTHOP_CACHE_OFF {
        let hop = NexthopValue {
            learned_ns: now,
            egress: p.ifindex,
            dmac: p.dmac,
            smac: p.smac,
        };
        // A failed insert only costs the next packet another FIB lookup.
        let _ = FTN_NEXTHOP.insert(key, hop, 0);
    }
    out(ctx, pkt, ingress, p.ifindex, &p.dmac, &p.smac)
}

/// The packet leaves through `egress` to `dmac` from `smac`.
#[inline(always)]
fn out(
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
    // returns), so it doubles as the devmap membership check, before anything is rewritten.
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
    write(ctx, 0, *dmac)?;
    write(ctx, 6, *smac)
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
