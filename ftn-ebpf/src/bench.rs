//! `ftn-bench-ebpf`: the bench-only XDP programs (`cargo xtask bench`, tests/src/bench/xdp/), a
//! separate object from the dataplane's (`ftn-ebpf`), so that no gateway loads them or their
//! maps. The wrapper tail-calls `ftn_xdp` of the dataplane's object: a program array accepts a
//! program of another object when it is of the same type, JIT state and `xdp.frags` setting as
//! the array's owner, which two XDP objects loaded the same way are.
//!
//! - `ftn_bench_wrap`: `BPF_PROG_TEST_RUN` with `repeat` reuses one buffer, so a NAT program
//!   would see its own output from the second run on. The wrapper writes the original frame
//!   (from `FTN_BENCH_FRAME`) over the packet, optionally adds a run counter to one port (and
//!   fixes the checksum that covers it) so that every run is a new flow, then tail-calls the
//!   program in slot 0 of `FTN_BENCH_JMP`.
//! - `ftn_bench_nop`: `XDP_TX`. Behind the wrapper it measures the wrapper's own cost; alone it
//!   is the cost of running any program at all.
//! - `ftn_bench_floor`: MAC swap + `XDP_TX`, the floor every per-packet cost is compared with.
//! - `ftn_bench_gen`: traffic generator for `BPF_F_TEST_XDP_LIVE_FRAMES`: restores the frame
//!   (pages of the live-frame pool come back after a gateway rewrote them in place) and
//!   `XDP_TX`es it out of the test run's ingress interface.
//! - `ftn_bench_sink`: on the receiving host, counts the frames addressed to `FTN_BENCH_SINK`
//!   and drops every frame.
#![no_std]
#![no_main]

// The dataplane's packet accessors and checksum helpers, compiled into this object too.
#[expect(
    dead_code,
    reason = "the bench programs use a few of the dataplane's checksum helpers"
)]
mod csum;
#[expect(
    dead_code,
    reason = "the bench programs use only the packet accessors of the parser"
)]
mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::bpf_xdp_store_bytes,
    macros::{map, xdp},
    maps::{Array, PerCpuArray, ProgramArray},
    programs::XdpContext,
};
use ftn_common::{
    bench::{BenchFrame, BenchSink, COUNT_SLOTS, FRAME_MAX},
    PROTO_UDP,
};

use crate::parse::{read, write, ETH_LEN};

#[map]
pub static FTN_BENCH_FRAME: Array<BenchFrame> = Array::with_max_entries(1, 0);

#[map]
pub static FTN_BENCH_JMP: ProgramArray = ProgramArray::with_max_entries(1, 0);

#[map]
pub static FTN_BENCH_CNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNT_SLOTS, 0);

#[map]
pub static FTN_BENCH_SINK: Array<BenchSink> = Array::with_max_entries(1, 0);

/// Writes the bench frame over the packet (which must be exactly as long), then, when
/// `port_at` is set, adds the run counter to that port and fixes the checksum at `csum_at`.
#[inline(always)]
fn restore(ctx: &XdpContext) -> Result<(), ()> {
    let f = FTN_BENCH_FRAME.get_ptr_mut(0).ok_or(())?;
    // SAFETY: pointer from a successful array lookup, valid for the whole run.
    let f = unsafe { &mut *f };
    let len = f.len;
    if len < ETH_LEN as u32 || len > FRAME_MAX as u32 {
        return Err(());
    }
    // SAFETY: `data` is FRAME_MAX bytes of the map value and `len` is at most FRAME_MAX; the
    // helper checks the packet bounds itself.
    let rc = unsafe { bpf_xdp_store_bytes(ctx.ctx, 0, f.data.as_mut_ptr().cast(), len) };
    if rc != 0 {
        return Err(());
    }
    let (port_at, csum_at) = (f.port_at as usize, f.csum_at as usize);
    if port_at == 0 {
        return Ok(());
    }
    if port_at > FRAME_MAX - 2 || csum_at > FRAME_MAX - 2 {
        return Err(());
    }
    let seq = f.seq;
    f.seq = seq.wrapping_add(1);
    let old = u16::from_ne_bytes([f.data[port_at], f.data[port_at + 1]]);
    let new = u16::from_be(old).wrapping_add(seq as u16).to_be();
    let check = u16::from_ne_bytes([f.data[csum_at], f.data[csum_at + 1]]);
    write(ctx, port_at, new)?;
    write(ctx, csum_at, csum::apply(check, csum::diff16(old, new)))
}

#[xdp]
pub fn ftn_bench_wrap(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: tail call into a program of the same type; returns only when the slot is empty.
    unsafe { FTN_BENCH_JMP.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

#[xdp]
pub fn ftn_bench_nop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

#[xdp]
pub fn ftn_bench_floor(ctx: XdpContext) -> u32 {
    match swap_macs(&ctx) {
        Ok(()) => xdp_action::XDP_TX,
        Err(()) => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn swap_macs(ctx: &XdpContext) -> Result<(), ()> {
    let m: [u8; 12] = read(ctx, 0)?;
    let swapped = [
        m[6], m[7], m[8], m[9], m[10], m[11], m[0], m[1], m[2], m[3], m[4], m[5],
    ];
    write(ctx, 0, swapped)
}

#[xdp]
pub fn ftn_bench_gen(ctx: XdpContext) -> u32 {
    if restore(&ctx).is_err() {
        return xdp_action::XDP_ABORTED;
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn ftn_bench_sink(ctx: XdpContext) -> u32 {
    let slot = if sink_matches(&ctx) { 0 } else { 1 };
    if let Some(p) = FTN_BENCH_CNT.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, XDP runs with preemption disabled.
        unsafe { *p += 1 };
    }
    xdp_action::XDP_DROP
}

#[inline(always)]
fn sink_matches(ctx: &XdpContext) -> bool {
    sink_check(ctx).unwrap_or(false)
}

/// Ethertype IPv4, version 4 with IHL 5, then protocol, destination address and port as
/// configured. Checked one field at a time (early returns keep the verifier's view simple).
#[inline(always)]
fn sink_check(ctx: &XdpContext) -> Result<bool, ()> {
    let want = FTN_BENCH_SINK.get(0).copied().ok_or(())?;
    if read::<u16>(ctx, 12)? != u16::from_ne_bytes([0x08, 0x00]) {
        return Ok(false);
    }
    if read::<u8>(ctx, ETH_LEN)? != 0x45 {
        return Ok(false);
    }
    if read::<u8>(ctx, ETH_LEN + 9)? != want.proto || want.proto != PROTO_UDP {
        return Ok(false);
    }
    if read::<u32>(ctx, ETH_LEN + 16)? != want.addr {
        return Ok(false);
    }
    Ok(read::<u16>(ctx, ETH_LEN + 20 + 2)? == want.port)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
