//! ftn's XDP dataplane.
//!
//! One program, `ftn_xdp`, on every gateway interface:
//! - packets to a resource (VIP, protocol, port) are DNATed to the flow's server (`nat::forward`);
//! - replies from a server to a client of a known flow are SNATed back to the VIP (`nat::reply`);
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
mod flow;
mod fwd;
mod icmp;
mod maps;
mod nat;
mod parse;
mod passive;
mod reject;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use ftn_common::GlobalCounter;

use crate::maps::count;

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
    let pkt = match parse::parse(ctx) {
        Ok(p) => p,
        Err(reason) => {
            count(reason);
            return Ok(xdp_action::XDP_PASS);
        }
    };
    if pkt.is_icmp_error() {
        return icmp::translate_error(ctx, &pkt);
    }
    if let Some(res) = maps::lookup_resource(&pkt) {
        return nat::forward(ctx, &pkt, &res);
    }
    if let Some(rev) = maps::lookup_reverse(&pkt) {
        return nat::reply(ctx, &pkt, &rev);
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
