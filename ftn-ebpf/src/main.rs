//! ftn's XDP dataplane.
//!
//! One program, `ftn_xdp`, on every gateway interface:
//! - packets to a resource (VIP, protocol, port) are DNATed to the flow's server (`nat::forward`);
//! - packets from a resource's server (address, port, protocol) are SNATed to its VIP
//!   (`nat::reply`): no per-flow state, so any gateway translates any reply;
//! - ICMP errors about a NATed flow are translated both ways (`icmp`);
//! - a resource with no live server drops or rejects (`reject`);
//! - everything else is `XDP_PASS`ed untouched.
//!
//! Layout by concern, katran-style: `parse` (headers), `csum` (checksums), `maps` (map
//! definitions and counter helpers), `flow` (flow table), `nat` (rewrites), `fwd` (FIB + send),
//! `icmp`, `reject`. The README documents what happens to every kind of packet.
#![no_std]
#![no_main]

mod csum;
mod fast;
mod flow;
mod fwd;
mod icmp;
mod maps;
mod nat;
mod parse;
mod passive;
mod reject;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use ftn_common::{GlobalCounter, ADDR_SERVER, ADDR_VIP};

use crate::maps::{count, count_at, unsub, Env, ABORTED};
use crate::parse::Raw;

#[xdp]
pub fn ftn_xdp(ctx: XdpContext) -> u32 {
    count(GlobalCounter::Packets);
    match try_ftn_xdp(&ctx) {
        Ok(action) => action,
        // Every `Err` is a bounds check that failed after parsing succeeded (cannot happen with a
        // consistent packet): leave the packet to the kernel.
        Err(()) => {
            count(GlobalCounter::PassMalformed);
            xdp_action::XDP_PASS
        }
    }
}

#[inline(always)]
fn try_ftn_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let mut pkt = parse::Pkt::empty();
    let reason = parse::parse(Raw::of(ctx), &mut pkt);
    if reason != 0 {
        count_at(reason);
        return Ok(xdp_action::XDP_PASS);
    }
    if pkt.frag != parse::FRAG_NONE {
        // A server's fragmented reply: translated by the server's (address, protocol) alone,
        // when the controller wrote that entry (the server serves one VIP for the protocol).
        // A fragment to a VIP: DNATed to its resource's current server, when the VIP has one
        // resource for the protocol (the controller wrote that entry); else passed.
        if maps::maybe(&pkt.dst, ADDR_VIP) {
            let r = nat::forward_fragment(Raw::of(ctx), &pkt);
            if r != nat::NO_FRAGMENT_ENTRY {
                return unsub(r);
            }
        }
        if maps::maybe(&pkt.src, ADDR_SERVER) {
            if let Some(ret) = maps::lookup_return_of(&pkt.src, 0, pkt.proto, pkt.family) {
                return unsub(nat::reply(Raw::of(ctx), &pkt, ret));
            }
        }
        count(GlobalCounter::PassFragment);
        return Ok(xdp_action::XDP_PASS);
    }
    if pkt.is_icmp_error() {
        let mut route = [0u32; 4];
        let r = icmp::translate_error(Raw::of(ctx), &pkt, &mut route);
        if r != ABORTED && r & icmp::SEND != 0 {
            let env = Env::read().ok_or(())?;
            return unsub(fwd::send(Raw::of(ctx), &pkt, &route, r & !icmp::SEND, &env));
        }
        return unsub(r);
    }
    // The address filter first (two array reads): most packets a gateway routes are neither
    // to a VIP nor from a server, and pay no hash lookup.
    if maps::maybe(&pkt.dst, ADDR_VIP) {
        let r = fast::forward(Raw::of(ctx), &pkt);
        if r != fast::NOT_FAST {
            return unsub(r);
        }
        // Read before the lookup: a flow checked on this packet is stamped with it (`fast`).
        let epoch = maps::config().ok_or(())?.epoch;
        if let Some(res) = maps::lookup_resource(&pkt) {
            return unsub(nat::forward(Raw::of(ctx), &pkt, res, epoch));
        }
    }
    if maps::maybe(&pkt.src, ADDR_SERVER) {
        if let Some(ret) = maps::lookup_return(&pkt) {
            return unsub(nat::reply(Raw::of(ctx), &pkt, ret));
        }
    }
    count(GlobalCounter::PassNoMatch);
    Ok(xdp_action::XDP_PASS)
}

/// A pass-through program for the peers of veth links in labs: a frame redirected into a veth
/// is delivered only when the peer has an XDP program attached.
#[xdp]
pub fn ftn_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
