//! The dataplane's per-packet cost and forwarding rate.
//!
//! ## Part 1: per-packet cost (`xdp_*_ns`, `xdp_ratio_*`)
//!
//! `BPF_PROG_TEST_RUN` with `repeat = N` runs a program N times on one buffer and returns the
//! kernel's mean time per run (whole nanoseconds; migration is disabled and the clock stops
//! whenever the run loop yields the CPU to another task). A NAT program rewrites its buffer, so
//! from the second run on it would see its own output. The bench programs in
//! `ftn-ebpf/src/bench.rs` fix this:
//!
//! - `ftn_bench_wrap` writes the original frame (kept in the bench map `FTN_BENCH_FRAME`) over the
//!   packet with `bpf_xdp_store_bytes`, then tail-calls the program in slot 0 of the
//!   `FTN_BENCH_JMP` program array: `ftn_xdp`, ftn's real program, loaded and provisioned
//!   exactly as the controller does it (`AyaDataplane::load`, maps written through the
//!   `Dataplane` trait).
//! - The wrapper's own cost is measured in the same round: *wrapper → `ftn_bench_nop`* (which
//!   returns `XDP_TX`) minus *`ftn_bench_nop` run directly*. That difference (copy + tail call)
//!   is subtracted from every wrapped measurement, so each figure is what a direct run of the
//!   program on a fresh frame costs, including the kernel's fixed cost of running any program
//!   once (the `nop` run alone).
//! - The **floor** is `ftn_bench_floor` (swap the MACs, `XDP_TX`) measured the same way;
//!   the note also gives it run directly (it needs no restoring) as a cross-check.
//! - Before timing, the wrapper is checked: three wrapped runs on one buffer give, byte for
//!   byte, what one direct run of `ftn_xdp` on a fresh frame gives (established, reply, IPv6,
//!   pass), and the new-flow port change leaves a TCP checksum that etherparse recomputes equal.
//!
//! Cases, each checked on every run through the program's own counters (a figure is reported
//! only when the counters prove that each of the N runs took the intended path):
//! - *established*: IPv4 TCP ACK from a client to VIP:80 whose flow is in the flow table (a SYN
//!   of that 5-tuple is run once first): resource lookup, flow lookup, DNAT with incremental
//!   checksums, `bpf_fib_lookup`, MAC rewrite, redirect to the server-side interface.
//! - *new flow*: IPv4 TCP SYN to VIP:80 from a client port that is new on every run: the wrapper
//!   adds its run counter to the source port and fixes the TCP checksum incrementally (RFC
//!   1624), so each of the N runs inserts a flow and a reverse entry (checked: the resource's
//!   `new_flows` counter grows by exactly N). The flow tables are emptied before the run and N
//!   is at most 50,000 (fewer than 65,536 ports, far below the LRU's capacity): this is the
//!   cost of inserting into a table that is not full (no LRU eviction). Passive health is on
//!   (defaults), as in production: each SYN also updates the server's unanswered-SYN record.
//! - *reply*: server → client TCP ACK of a known flow: reverse lookup, SNAT back to the VIP,
//!   flow refresh, FIB, redirect.
//! - *IPv6 established*: as *established*, over IPv6.
//! - *pass*: IPv4 TCP to an address no resource has: parsed, resource lookups (exact port, then
//!   every port) and reverse lookup all miss, `XDP_PASS`.
//!
//! The program runs inside a private network namespace with two veth interfaces and static
//! neighbours (the `bpf_fib_lookup` answers are known and the program redirects, as in the
//! packet fixtures). Each round runs every case once, in an order rotated every round; the
//! figure is the median over rounds of (wrapped time − wrapper overhead of the same round).
//! Full: 7 rounds × 1,000,000 runs (new flow: 50,000); quick: 2 rounds × 10,000. Ratios are
//! the medians divided by the floor's median. The kernel reports whole nanoseconds per run.
//! Every case but *new flow* repeats one flow, so its table entries stay in the CPU caches: a
//! best case. *New flow* touches a new entry every run (the notes list every round: the first
//! round, on a table never used before, is usually the fastest).
//!
//! ## Part 2: forwarding rate (`pps_*`, `ratio_ftn_nftables`)
//!
//! Three namespaces on two veth links: client (`198.18.1.10`) — gateway (`198.18.1.1` |
//! `198.18.2.1`) — server (`198.18.2.10`), static neighbours everywhere, forwarding on in the
//! gateway. One traffic generator and one receiver serve three gateway set-ups:
//! - **ftn**: ftn's XDP program on both gateway interfaces (`AyaDataplane::load`, native mode),
//!   resource `198.18.100.1:5353/udp` → server `198.18.2.10`;
//! - **nftables**: no ftn; an nftables `dnat` rule in a `prerouting` nat chain maps the same
//!   VIP:port to the server (conntrack: the first packet creates the entry, the rest follow
//!   it; the same single flow as ftn's established path);
//! - **routing**: plain kernel forwarding, no NAT; the client sends to the server's address.
//!
//! *Generator*: `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (batches of 64) in the
//! client namespace runs `ftn_bench_gen`, which writes the frame and returns `XDP_TX`: each run
//! sends one real frame out of the client's veth. (Frame pages come back to the generator's pool
//! after the gateway rewrote them in place, so the generator restores the frame every time.)
//! The generator sends in one long call (each call sets up and tears down a page pool, which
//! takes milliseconds: back-to-back short calls would leave gaps in the traffic); a signal
//! stops it after the warm-up plus the measuring time (the kernel ends the call with `EINTR`
//! between runs), and a frame count of 10 times what a short calibration call predicts bounds
//! it as well.
//! Frames: Ethernet + IPv4 + UDP with 64 bytes of payload (106 bytes), the client's real MACs
//! and addresses, to the VIP (ftn, nftables) or the server (routing); one flow.
//! *Receiver*: `ftn_bench_sink` (XDP, native) on the server's veth counts the frames that arrive
//! addressed to `198.18.2.10:5353/udp` (i.e. forwarded and, for ftn and nftables, DNATed) and
//! drops everything. A thread reads that counter every 10 ms. *pps* = frames counted / time,
//! between the first reading after the warm-up and the reading at the stop signal (a window
//! inside the sending). The client veth's `ethtool -S` counters give the offered rate and the
//! share of frames the gateway's full receive ring refused: well above 0 means the gateway,
//! not the generator, set the rate.
//! *CPUs*: the generator thread is pinned to CPU 0; the gateway's receive processing runs in
//! the threaded NAPI kthread of its client-side veth, pinned to CPU 1 (the server's veth is
//! processed in that same softirq context; the sampling thread runs on CPU 0), so the
//! generator does not share a CPU with the gateway.
//! veth needs an XDP program on the receiving peer to accept XDP-sent frames: in the nftables
//! and routing set-ups the gateway's client-side veth carries `ftn_pass` (`XDP_PASS`), so the
//! three set-ups receive through the same veth XDP path. (The labs' other veth quirk, checksums
//! left to "hardware" by sockets, does not apply: no socket sends here, the generator's frames
//! carry complete checksums.) IPv6 is off on the links (no neighbour discovery frames).
//! Full: ~5 s per set-up, the three set-ups alternated over 3 rounds, median; quick: ~0.5 s,
//! 1 round. `ratio_ftn_nftables` = median pps of ftn / median pps of nftables.

use std::{
    collections::BTreeMap,
    error::Error,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, PerCpuArray, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use etherparse::PacketBuilder;
use ftn_common::{
    bench::{
        BenchFrame, BenchSink, COUNT_MAP, FRAME_MAP, FRAME_MAX, JUMP_MAP, PROG_FLOOR, PROG_GEN,
        PROG_NOP, PROG_SINK, PROG_WRAP, SINK_MAP,
    },
    map_names, GlobalCounter, PROTO_UDP,
};
use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Dataplane, ResourceAssignment, ServerEntry,
};
use ftn_controller::model::{NoServerAction, Protocol, ResourceMatch, XdpAttachMode};

use super::{attempt, median, Figure, Size};
use crate::{attach_pass, lab::veth, run_quiet, unique_name, xdp_md, Netns};

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

pub fn run(size: Size) -> Vec<Figure> {
    let mut out = per_packet(size);
    out.extend(forwarding(size));
    out
}

/// An error with its chain of sources, on one line.
fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The first line and the last three lines of a long error (a verifier log).
fn short(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= 4 {
        return lines.join(" / ");
    }
    format!(
        "{} / ... / {}",
        lines[0],
        lines[lines.len() - 3..].join(" / ")
    )
}

fn v6(s: &str) -> [u8; 16] {
    s.parse::<Ipv6Addr>().expect("IPv6 literal").octets()
}

/// One `BPF_PROG_TEST_RUN`: (action of the last run, mean ns per run, output frame if asked).
fn test_run(
    prog: &Xdp,
    frame: &[u8],
    ingress: u32,
    repeat: u32,
    want_out: bool,
) -> Result<(u32, f64, Vec<u8>), String> {
    let ctx = xdp_md(ingress, frame.len());
    let mut buf = vec![0u8; 512];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat;
    if want_out {
        opts.data_out = Some(&mut buf);
    }
    let r = prog
        .test_run(opts)
        .map_err(|e| format!("BPF_PROG_TEST_RUN: {}", chain(&e)))?;
    let n = if want_out {
        r.data_size_out as usize
    } else {
        0
    };
    buf.truncate(n);
    Ok((r.return_value, r.duration.as_nanos() as f64, buf))
}

fn action_name(a: u32) -> &'static str {
    match a {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "?",
    }
}

fn bench_frame(frame: &[u8], vary_port: Option<(u32, u32)>) -> Result<BenchFrame, String> {
    if frame.len() < 14 || frame.len() > FRAME_MAX {
        return Err(format!("frame of {} bytes (14..={FRAME_MAX})", frame.len()));
    }
    let mut f = BenchFrame {
        len: frame.len() as u32,
        ..BenchFrame::default()
    };
    f.data[..frame.len()].copy_from_slice(frame);
    if let Some((port_at, csum_at)) = vary_port {
        f.port_at = port_at;
        f.csum_at = csum_at;
    }
    Ok(f)
}

/// Loads the embedded object with its big maps shrunk (only bench programs are used from it).
fn load_small_object() -> Result<Ebpf, String> {
    let mut loader = EbpfLoader::new();
    for name in [
        map_names::FLOWS,
        map_names::REVERSE,
        map_names::RESOURCES,
        map_names::RESOURCE_STATS,
        map_names::SERVER_STATS,
        map_names::SERVERS,
        map_names::PASSIVE,
    ] {
        loader.map_max_entries(name, 1);
    }
    let object = ftn_controller::dataplane::ebpf_object().map_err(|e| e.to_string())?;
    loader
        .load(object)
        .map_err(|e| format!("load the eBPF object: {}", chain(&e)))
}

fn load_prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, String> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is not in the object"))?
        .try_into()
        .map_err(|e| format!("{name} is not XDP: {e}"))?;
    if let Err(e) = prog.load() {
        // The whole verifier log to stderr; its last lines (the verdict) in the note.
        eprintln!("xdp bench: loading {name} failed: {e:?}");
        return Err(format!("load {name}: {}", short(&chain(&e))));
    }
    Ok(prog)
}

fn prog_ref<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp, String> {
    ebpf.program(name)
        .ok_or_else(|| format!("program {name} is not in the object"))?
        .try_into()
        .map_err(|e| format!("{name} is not XDP: {e}"))
}

fn prog_fd(ebpf: &Ebpf, name: &str) -> Result<ProgramFd, String> {
    prog_ref(ebpf, name)?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(|e| format!("fd of {name}: {}", chain(&e)))
}

fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, String>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf
        .take_map(name)
        .ok_or_else(|| format!("map {name} is not in the object"))?;
    T::try_from(m).map_err(|e| format!("map {name}: {}", chain(&e)))
}

fn ns_mac(ns: &Netns, dev: &str) -> Result<[u8; 6], String> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut m = [0u8; 6];
    let parts: Vec<&str> = text.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("MAC of {dev}: {text:?}"));
    }
    for (i, p) in parts.iter().enumerate() {
        m[i] = u8::from_str_radix(p, 16).map_err(|e| format!("MAC of {dev}: {e}"))?;
    }
    Ok(m)
}

// =============================================================================================
// Part 1: per-packet cost.

const G0: [u8; 6] = [2, 0, 0, 0, 0, 1]; // gateway, client side
const G1: [u8; 6] = [2, 0, 0, 0, 0, 2]; // gateway, server side
const CM: [u8; 6] = [2, 0, 0, 0, 1, 0x10]; // client
const PM: [u8; 6] = [2, 0, 0, 0, 2, 0x10]; // server
const C4: [u8; 4] = [198, 18, 1, 10];
const P4: [u8; 4] = [198, 18, 2, 10];
const VIP4: [u8; 4] = [198, 18, 100, 1];
const OTHER4: [u8; 4] = [198, 18, 2, 77];
const C6: &str = "2001:2:1::10";
const P6: &str = "2001:2:2::10";
const VIP6: &str = "2001:2:100::1";
/// The established flow's client port; new flows start at NEW_PORT.
const EST_PORT: u16 = 40000;
const NEW_PORT: u16 = 1024;
const NEW_FLOW_MAX_RUNS: u32 = 50_000;
/// Offsets of the TCP source port and checksum in an IPv4 frame without options.
const TCP4_SPORT_AT: u32 = 14 + 20;
const TCP4_CSUM_AT: u32 = 14 + 20 + 16;

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn tcp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    ips: (&[u8], &[u8]),
    ports: (u16, u16),
    flags: u8,
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let ip = match (ips.0.len(), ips.1.len()) {
        (4, 4) => eth.ipv4(ips.0.try_into().unwrap(), ips.1.try_into().unwrap(), 64),
        _ => eth.ipv6(ips.0.try_into().unwrap(), ips.1.try_into().unwrap(), 64),
    };
    let mut b = ip.tcp(ports.0, ports.1, 1000, 64240);
    if flags & SYN != 0 {
        b = b.syn();
    }
    if flags & ACK != 0 {
        b = b.ack(1);
    }
    let mut out = Vec::new();
    b.write(&mut out, &[]).expect("build a TCP frame");
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    /// `ftn_bench_nop` run directly.
    Nop,
    /// Wrapper → nop: with `Nop`, the wrapper's cost.
    WrapNop,
    /// `ftn_bench_floor` run directly (cross-check only).
    FloorDirect,
    Floor,
    Established,
    NewFlow,
    Reply,
    Ipv6,
    Pass,
}

const CASES: [Case; 9] = [
    Case::Nop,
    Case::WrapNop,
    Case::FloorDirect,
    Case::Floor,
    Case::Established,
    Case::NewFlow,
    Case::Reply,
    Case::Ipv6,
    Case::Pass,
];

struct Frames {
    syn4: Vec<u8>,
    ack4: Vec<u8>,
    new4: Vec<u8>,
    reply4: Vec<u8>,
    syn6: Vec<u8>,
    ack6: Vec<u8>,
    pass4: Vec<u8>,
}

fn frames() -> Frames {
    let (c6, vip6) = (v6(C6), v6(VIP6));
    Frames {
        syn4: tcp_frame(CM, G0, (&C4, &VIP4), (EST_PORT, 80), SYN),
        ack4: tcp_frame(CM, G0, (&C4, &VIP4), (EST_PORT, 80), ACK),
        new4: tcp_frame(CM, G0, (&C4, &VIP4), (NEW_PORT, 80), SYN),
        reply4: tcp_frame(PM, G1, (&P4, &C4), (80, EST_PORT), ACK),
        syn6: tcp_frame(CM, G0, (&c6, &vip6), (EST_PORT, 80), SYN),
        ack6: tcp_frame(CM, G0, (&c6, &vip6), (EST_PORT, 80), ACK),
        pass4: tcp_frame(CM, G0, (&C4, &OTHER4), (EST_PORT, 80), ACK),
    }
}

/// A namespace with two veths (fx0: clients, fx1: servers), addresses, forwarding and static
/// neighbours, as in the packet fixtures.
fn lab1() -> Result<(Netns, u32, u32), String> {
    let ns = Netns::new("ftbx");
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    for (dev, m) in [("fx0", G0), ("fx1", G1)] {
        ns.veth_with_mac(dev, m);
    }
    ns.ip(&["addr", "add", "198.18.1.1/24", "dev", "fx0"]);
    ns.ip(&["addr", "add", "2001:2:1::1/64", "dev", "fx0", "nodad"]);
    ns.ip(&["addr", "add", "198.18.2.1/24", "dev", "fx1"]);
    ns.ip(&["addr", "add", "2001:2:2::1/64", "dev", "fx1", "nodad"]);
    for (ip, m, dev) in [
        ("198.18.1.10", CM, "fx0"),
        (C6, CM, "fx0"),
        ("198.18.2.10", PM, "fx1"),
        (P6, PM, "fx1"),
        ("198.18.2.77", PM, "fx1"),
    ] {
        ns.neigh_permanent(ip, m, dev);
    }
    let fx0 = ns.ifindex("fx0")?;
    let fx1 = ns.ifindex("fx1")?;
    Ok((ns, fx0, fx1))
}

struct Bench1 {
    dp: AyaDataplane,
    frame_map: Array<MapData, BenchFrame>,
    jmp: ProgramArray<MapData>,
    xdp_fd: ProgramFd,
    nop_fd: ProgramFd,
    floor_fd: ProgramFd,
    fx0: u32,
    fx1: u32,
    f: Frames,
}

impl Bench1 {
    fn ebpf(&mut self) -> Result<&mut Ebpf, String> {
        self.dp
            .ebpf_mut()
            .ok_or_else(|| "the dataplane has no loaded object".to_string())
    }

    /// Runs a bench program directly.
    fn direct(&mut self, name: &str, frame: &[u8], repeat: u32) -> Result<(u32, f64), String> {
        let ingress = self.fx0;
        let ebpf = self.ebpf()?;
        let (a, ns, _) = test_run(prog_ref(ebpf, name)?, frame, ingress, repeat, false)?;
        Ok((a, ns))
    }

    /// Runs ftn_xdp directly once (priming flows, reference outputs).
    fn xdp_once(&mut self, frame: &[u8], ingress: u32) -> Result<(u32, Vec<u8>), String> {
        let prog = self
            .dp
            .program_mut()
            .ok_or_else(|| "the dataplane has no loaded program".to_string())?;
        let (a, _, out) = test_run(prog, frame, ingress, 1, true)?;
        Ok((a, out))
    }

    /// Runs the wrapper with `target` in the jump slot on `frame`.
    fn wrapped(
        &mut self,
        target: Target,
        frame: &[u8],
        vary_port: Option<(u32, u32)>,
        ingress: u32,
        repeat: u32,
        want_out: bool,
    ) -> Result<(u32, f64, Vec<u8>), String> {
        let fd = match target {
            Target::Xdp => &self.xdp_fd,
            Target::Nop => &self.nop_fd,
            Target::Floor => &self.floor_fd,
        };
        self.jmp
            .set(0, fd, 0)
            .map_err(|e| format!("set the jump slot: {}", chain(&e)))?;
        self.frame_map
            .set(0, bench_frame(frame, vary_port)?, 0)
            .map_err(|e| format!("write the bench frame: {}", chain(&e)))?;
        let ebpf = self.ebpf()?;
        test_run(prog_ref(ebpf, PROG_WRAP)?, frame, ingress, repeat, want_out)
    }

    /// Makes sure the established IPv4 and IPv6 flows exist (new-flow runs empty the tables).
    fn prime(&mut self) -> Result<(), String> {
        let (fx0, syn4, syn6) = (self.fx0, self.f.syn4.clone(), self.f.syn6.clone());
        for (what, frame) in [("IPv4 SYN", syn4), ("IPv6 SYN", syn6)] {
            let (a, _) = self.xdp_once(&frame, fx0)?;
            if a != XDP_REDIRECT {
                return Err(format!(
                    "{what} of the established flow: {} (XDP_REDIRECT expected)",
                    action_name(a)
                ));
            }
        }
        Ok(())
    }

    fn global(&self, c: GlobalCounter) -> Result<u64, String> {
        let g = self.dp.global_stats().map_err(|e| chain(&e))?;
        Ok(g[c as usize].1)
    }

    /// One timed run of a case: mean ns per run, after checking the action and counters.
    fn measure(&mut self, case: Case, repeat: u32) -> Result<f64, String> {
        let expect = |what: &str, a: u32, want: u32| -> Result<(), String> {
            if a == want {
                Ok(())
            } else {
                Err(format!(
                    "{what}: {} ({} expected)",
                    action_name(a),
                    action_name(want)
                ))
            }
        };
        let (fx0, fx1) = (self.fx0, self.fx1);
        match case {
            Case::Nop => {
                let f = self.f.ack4.clone();
                let (a, ns) = self.direct(PROG_NOP, &f, repeat)?;
                expect("nop", a, XDP_TX)?;
                Ok(ns)
            }
            Case::FloorDirect => {
                let f = self.f.ack4.clone();
                let (a, ns) = self.direct(PROG_FLOOR, &f, repeat)?;
                expect("floor", a, XDP_TX)?;
                Ok(ns)
            }
            Case::WrapNop | Case::Floor => {
                let f = self.f.ack4.clone();
                let t = if case == Case::WrapNop {
                    Target::Nop
                } else {
                    Target::Floor
                };
                let (a, ns, _) = self.wrapped(t, &f, None, fx0, repeat, false)?;
                expect("wrapper", a, XDP_TX)?;
                Ok(ns)
            }
            Case::Established | Case::Ipv6 => {
                self.prime()?;
                let (f, rid) = if case == Case::Established {
                    (self.f.ack4.clone(), 0)
                } else {
                    (self.f.ack6.clone(), 1)
                };
                let before = self.dp.resource_stats(rid).map_err(|e| chain(&e))?;
                let (a, ns, _) = self.wrapped(Target::Xdp, &f, None, fx0, repeat, false)?;
                let after = self.dp.resource_stats(rid).map_err(|e| chain(&e))?;
                expect("established", a, XDP_REDIRECT)?;
                let (pk, nf) = (
                    after.packets - before.packets,
                    after.new_flows - before.new_flows,
                );
                if pk != u64::from(repeat) || nf != 0 {
                    return Err(format!("established: {pk} packets forwarded and {nf} flows created in {repeat} runs ({repeat} and 0 expected)"));
                }
                Ok(ns)
            }
            Case::NewFlow => {
                self.dp.clear_flows().map_err(|e| chain(&e))?;
                let f = self.f.new4.clone();
                let before = self.dp.resource_stats(0).map_err(|e| chain(&e))?;
                let (a, ns, _) = self.wrapped(
                    Target::Xdp,
                    &f,
                    Some((TCP4_SPORT_AT, TCP4_CSUM_AT)),
                    fx0,
                    repeat,
                    false,
                )?;
                let after = self.dp.resource_stats(0).map_err(|e| chain(&e))?;
                expect("new flow", a, XDP_REDIRECT)?;
                let nf = after.new_flows - before.new_flows;
                if nf != u64::from(repeat) {
                    return Err(format!(
                        "new flow: {nf} flows created in {repeat} runs (one per run expected)"
                    ));
                }
                Ok(ns)
            }
            Case::Reply => {
                self.prime()?;
                let f = self.f.reply4.clone();
                let before = self.dp.resource_stats(0).map_err(|e| chain(&e))?;
                let (a, ns, _) = self.wrapped(Target::Xdp, &f, None, fx1, repeat, false)?;
                let after = self.dp.resource_stats(0).map_err(|e| chain(&e))?;
                expect("reply", a, XDP_REDIRECT)?;
                let rp = after.reply_packets - before.reply_packets;
                if rp != u64::from(repeat) {
                    return Err(format!("reply: {rp} replies SNATed in {repeat} runs"));
                }
                Ok(ns)
            }
            Case::Pass => {
                let f = self.f.pass4.clone();
                let before = self.global(GlobalCounter::PassNoMatch)?;
                let (a, ns, _) = self.wrapped(Target::Xdp, &f, None, fx0, repeat, false)?;
                let after = self.global(GlobalCounter::PassNoMatch)?;
                expect("pass", a, XDP_PASS)?;
                if after - before != u64::from(repeat) {
                    return Err(format!(
                        "pass: pass_no_match moved by {} in {repeat} runs",
                        after - before
                    ));
                }
                Ok(ns)
            }
        }
    }

    /// Before timing: the wrapper (3 runs on one buffer) gives byte for byte what ftn_xdp run
    /// once on a fresh frame gives, for every case whose output does not depend on the run.
    fn validate(&mut self) -> Result<(), String> {
        self.prime()?;
        let (fx0, fx1) = (self.fx0, self.fx1);
        let cases = [
            ("established", self.f.ack4.clone(), fx0),
            ("reply", self.f.reply4.clone(), fx1),
            ("IPv6 established", self.f.ack6.clone(), fx0),
            ("pass", self.f.pass4.clone(), fx0),
        ];
        for (what, frame, ingress) in cases {
            let (a1, direct) = self.xdp_once(&frame, ingress)?;
            let (a3, _, wrapped) = self.wrapped(Target::Xdp, &frame, None, ingress, 3, true)?;
            if a1 != a3 || direct != wrapped {
                return Err(format!(
                    "{what}: the wrapper's output ({}, {} bytes) differs from a direct run's ({}, {} bytes)",
                    action_name(a3),
                    wrapped.len(),
                    action_name(a1),
                    direct.len()
                ));
            }
            if direct == frame {
                if what != "pass" {
                    return Err(format!("{what}: the program did not rewrite the frame"));
                }
            } else if what == "pass" {
                return Err("pass: the program changed a frame it passes".into());
            }
        }
        // New flow: the second run of one buffer uses port + 1 with a correct TCP checksum
        // (verified from scratch by etherparse on the program's output).
        let f = self.f.new4.clone();
        let vary = Some((TCP4_SPORT_AT, TCP4_CSUM_AT));
        let (a, _, out) = self.wrapped(Target::Xdp, &f, vary, fx0, 2, true)?;
        let p = etherparse::SlicedPacket::from_ethernet(&out)
            .map_err(|e| format!("new flow: output does not parse: {e}"))?;
        let (Some(etherparse::NetSlice::Ipv4(ip)), Some(etherparse::TransportSlice::Tcp(t))) =
            (&p.net, &p.transport)
        else {
            return Err("new flow: output is not IPv4 TCP".into());
        };
        let h = t.to_header();
        let want = h
            .calc_checksum_ipv4(&ip.header().to_header(), t.payload())
            .map_err(|e| format!("new flow: checksum: {e}"))?;
        if a != XDP_REDIRECT || h.source_port != NEW_PORT + 1 || h.checksum != want {
            return Err(format!(
                "new flow: second run gave {} from port {} with TCP checksum {:#06x} ({:#06x} expected)",
                action_name(a),
                h.source_port,
                h.checksum,
                want
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Target {
    Xdp,
    Nop,
    Floor,
}

fn setup1() -> Result<(Netns, Bench1), String> {
    let (ns, fx0, fx1) = lab1()?;
    let _in = ns.enter();
    let mut dp = AyaDataplane::load(&AyaOptions::default())
        .map_err(|e| format!("load ftn's XDP program: {}", chain(&e)))?;
    let dpe = |e: ftn_controller::dataplane::DataplaneError| chain(&e);
    dp.add_egress("fx0").map_err(dpe)?;
    dp.add_egress("fx1").map_err(dpe)?;
    let server = |addr: std::net::IpAddr| ServerEntry {
        addr,
        up: true,
        generation: 1,
    };
    dp.set_server(0, &server(Ipv4Addr::from(P4).into()))
        .map_err(dpe)?;
    dp.set_server(1, &server(P6.parse::<Ipv6Addr>().unwrap().into()))
        .map_err(dpe)?;
    for (vip, rid, sid) in [
        (std::net::IpAddr::from(Ipv4Addr::from(VIP4)), 0, 0),
        (VIP6.parse::<Ipv6Addr>().unwrap().into(), 1, 1),
    ] {
        dp.set_resource(
            &ResourceMatch {
                vip,
                protocol: Protocol::Tcp,
                port: 80,
            },
            &ResourceAssignment {
                resource_id: rid,
                server: Some(sid),
                generation: 1,
                on_no_server: NoServerAction::Drop,
            },
        )
        .map_err(dpe)?;
    }
    let ebpf = dp
        .ebpf_mut()
        .ok_or_else(|| "the dataplane has no loaded object".to_string())?;
    for name in [PROG_WRAP, PROG_NOP, PROG_FLOOR] {
        load_prog(ebpf, name)?;
    }
    let frame_map = take_map(ebpf, FRAME_MAP)?;
    let jmp = take_map(ebpf, JUMP_MAP)?;
    let nop_fd = prog_fd(ebpf, PROG_NOP)?;
    let floor_fd = prog_fd(ebpf, PROG_FLOOR)?;
    let xdp_fd = prog_fd(ebpf, ftn_common::PROGRAM_NAME)?;
    drop(_in);
    let b = Bench1 {
        dp,
        frame_map,
        jmp,
        xdp_fd,
        nop_fd,
        floor_fd,
        fx0,
        fx1,
        f: frames(),
    };
    Ok((ns, b))
}

const PART1_KEYS: [(&str, &str); 8] = [
    ("xdp_floor_ns", "ns"),
    ("xdp_established_ns", "ns"),
    ("xdp_new_flow_ns", "ns"),
    ("xdp_reply_ns", "ns"),
    ("xdp_ipv6_established_ns", "ns"),
    ("xdp_pass_ns", "ns"),
    ("xdp_ratio_established", "ratio"),
    ("xdp_ratio_new_flow", "ratio"),
];

fn list(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
    format!("[{}]", parts.join(", "))
}

fn per_packet(size: Size) -> Vec<Figure> {
    let (rounds, repeat) = match size {
        Size::Quick => (2usize, 10_000u32),
        Size::Full => (7, 1_000_000),
    };
    let new_repeat = repeat.min(NEW_FLOW_MAX_RUNS);
    let result = attempt(|| {
        let (ns, mut b) = setup1()?;
        // BPF_PROG_TEST_RUN resolves the ingress ifindex in the caller's namespace.
        let _in = ns.enter();
        b.validate()?;
        let mut raw: BTreeMap<Case, Vec<f64>> = BTreeMap::new();
        let mut failed: BTreeMap<Case, String> = BTreeMap::new();
        for r in 0..rounds {
            for i in 0..CASES.len() {
                let case = CASES[(i + r) % CASES.len()];
                if failed.contains_key(&case) {
                    continue;
                }
                let n = if case == Case::NewFlow {
                    new_repeat
                } else {
                    repeat
                };
                match b.measure(case, n) {
                    Ok(ns) => raw.entry(case).or_default().push(ns),
                    Err(e) => {
                        eprintln!("xdp bench: {case:?}: {e}");
                        failed.insert(case, e);
                    }
                }
            }
        }
        drop(b);
        drop(_in);
        drop(ns);
        Ok((raw, failed))
    });
    let (raw, failed) = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("xdp bench: per-packet part failed: {e}");
            return PART1_KEYS
                .iter()
                .map(|(k, u)| Figure::missing(k, u, format!("per-packet bench failed: {e}")))
                .collect();
        }
    };
    let missing_why = |c: Case| -> String {
        failed
            .get(&c)
            .cloned()
            .unwrap_or_else(|| format!("{c:?} was not measured"))
    };
    // Wrapper overhead per round.
    let overhead: Option<Vec<f64>> = match (raw.get(&Case::WrapNop), raw.get(&Case::Nop)) {
        (Some(w), Some(n)) if w.len() == rounds && n.len() == rounds => {
            Some(w.iter().zip(n).map(|(w, n)| w - n).collect())
        }
        _ => None,
    };
    let net = |c: Case| -> Result<(f64, Vec<f64>), String> {
        let Some(ov) = &overhead else {
            return Err(format!(
                "the wrapper's overhead could not be measured: {} / {}",
                missing_why(Case::WrapNop),
                missing_why(Case::Nop)
            ));
        };
        let v = raw.get(&c).ok_or_else(|| missing_why(c))?;
        if v.len() != rounds {
            return Err(missing_why(c));
        }
        let n: Vec<f64> = v.iter().zip(ov).map(|(v, o)| v - o).collect();
        Ok((median(&n), n))
    };
    let ov_text = match (&overhead, raw.get(&Case::WrapNop), raw.get(&Case::Nop)) {
        (Some(ov), Some(w), Some(n)) => format!(
            "wrapper overhead {:.0} ns subtracted (wrapper->nop {:.0} ns - nop alone {:.0} ns, medians)",
            median(ov),
            median(w),
            median(n)
        ),
        _ => String::new(),
    };
    let how = |runs: u32| {
        format!(
            "median of {rounds} round(s) x {runs} BPF_PROG_TEST_RUN runs, frame restored before every run by ftn_bench_wrap, {ov_text}"
        )
    };
    let mut out = Vec::new();
    let floor = net(Case::Floor);
    let floor_direct = raw.get(&Case::FloorDirect).map(|v| median(v));
    out.push(match &floor {
        Ok((m, v)) => Figure::new(
            "xdp_floor_ns",
            *m,
            "ns",
            format!(
                "ftn_bench_floor (MAC swap + XDP_TX); {}; per round {}; run directly (no wrapper): {} ns",
                how(repeat),
                list(v),
                floor_direct.map(|f| format!("{f:.0}")).unwrap_or_else(|| "n/a".into())
            ),
        ),
        Err(e) => Figure::missing("xdp_floor_ns", "ns", e.clone()),
    });
    let cases = [
        ("xdp_established_ns", Case::Established, repeat, "IPv4 TCP ACK, client -> VIP:80, flow in the table: DNAT + FIB + redirect (54-byte frame)"),
        ("xdp_new_flow_ns", Case::NewFlow, new_repeat, "IPv4 TCP SYN to VIP:80 from a new client port every run (the wrapper adds its run counter to the port and fixes the TCP checksum; resource new_flows counter checked = runs; flow tables emptied before each round, never full): flow + reverse insert, passive-health update, DNAT + FIB + redirect"),
        ("xdp_reply_ns", Case::Reply, repeat, "server -> client TCP ACK of a known flow: reverse lookup, SNAT to the VIP, flow refresh, FIB, redirect"),
        ("xdp_ipv6_established_ns", Case::Ipv6, repeat, "IPv6 TCP ACK, client -> VIP:80, flow in the table: DNAT + FIB + redirect (74-byte frame)"),
        ("xdp_pass_ns", Case::Pass, repeat, "IPv4 TCP to an address no resource has: parse, resource and reverse lookups, XDP_PASS"),
    ];
    let mut medians: BTreeMap<Case, f64> = BTreeMap::new();
    for (key, case, runs, what) in cases {
        out.push(match net(case) {
            Ok((m, v)) => {
                medians.insert(case, m);
                Figure::new(
                    key,
                    m,
                    "ns",
                    format!("{what}; {}; per round {}", how(runs), list(&v)),
                )
            }
            Err(e) => Figure::missing(key, "ns", e),
        });
    }
    for (key, case) in [
        ("xdp_ratio_established", Case::Established),
        ("xdp_ratio_new_flow", Case::NewFlow),
    ] {
        out.push(match (&floor, medians.get(&case)) {
            (Ok((f, _)), Some(m)) if *f > 0.0 => Figure::new(
                key,
                m / f,
                "ratio",
                format!("{m:.0} ns / floor {f:.0} ns (medians, same runs)"),
            ),
            (Ok((f, _)), Some(_)) => Figure::missing(
                key,
                "ratio",
                format!("floor measured as {f:.0} ns: no ratio"),
            ),
            (Err(e), _) => Figure::missing(key, "ratio", format!("no floor: {e}")),
            (_, None) => Figure::missing(
                key,
                "ratio",
                format!("{case:?} not measured: {}", missing_why(case)),
            ),
        });
    }
    out
}

// =============================================================================================
// Part 2: forwarding rate.

const VIP_TEXT: &str = "198.18.100.1";
const SERVER_TEXT: &str = "198.18.2.10";
const UDP_PORT: u16 = 5353;
const PAYLOAD: usize = 64;
const GEN_BATCH: u32 = 64;
/// Frames of the generator's calibration call.
const GEN_CALIBRATE: u32 = 65_536;
/// The sink's counter is read this often during a run.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);
const NFT_TABLE: &str = "ftnbench";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Setup {
    Ftn,
    Nftables,
    Routing,
}

struct Lab2 {
    // Field order: the namespaces go last (dropped in declaration order).
    cli: Netns,
    gw: Netns,
    srv: Netns,
    g0: String,
    c0_index: u32,
    c0_mac: [u8; 6],
    g0_mac: [u8; 6],
}

fn lab2() -> Result<Lab2, String> {
    let cli = Netns::new("fbc");
    let gw = Netns::new("fbg");
    let srv = Netns::new("fbs");
    let g0 = unique_name("fg");
    // IPv4 only: no IPv6 neighbour discovery or MLD frames on the links.
    for ns in [&cli, &gw, &srv] {
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1"]);
        ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1"]);
    }
    veth(&cli, "c0", &gw, &g0);
    veth(&gw, "g1", &srv, "s0");
    gw.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    gw.exec(&[
        "sh",
        "-c",
        "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done",
    ]);
    for (ns, dev, a) in [
        (&cli, "c0", "198.18.1.10/24"),
        (&gw, g0.as_str(), "198.18.1.1/24"),
        (&gw, "g1", "198.18.2.1/24"),
        (&srv, "s0", "198.18.2.10/24"),
    ] {
        ns.ip(&["addr", "add", a, "dev", dev]);
    }
    let c0_mac = ns_mac(&cli, "c0")?;
    let g0_mac = ns_mac(&gw, &g0)?;
    let s0_mac = ns_mac(&srv, "s0")?;
    let g1_mac = ns_mac(&gw, "g1")?;
    for (ns, ip, m, dev) in [
        (&gw, "198.18.1.10", c0_mac, g0.as_str()),
        (&gw, SERVER_TEXT, s0_mac, "g1"),
        (&cli, "198.18.1.1", g0_mac, "c0"),
        (&srv, "198.18.2.1", g1_mac, "s0"),
    ] {
        ns.neigh_permanent(ip, m, dev);
    }
    cli.ip(&["route", "add", "default", "via", "198.18.1.1"]);
    srv.ip(&["route", "add", "default", "via", "198.18.2.1"]);
    let c0_index = cli.ifindex("c0")?;
    Ok(Lab2 {
        cli,
        gw,
        srv,
        g0,
        c0_index,
        c0_mac,
        g0_mac,
    })
}

fn udp_frame(smac: [u8; 6], dmac: [u8; 6], dst: &str) -> Vec<u8> {
    let d: Ipv4Addr = dst.parse().expect("IPv4 literal");
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4([198, 18, 1, 10], d.octets(), 64)
        .udp(40000, UDP_PORT)
        .write(&mut out, &[0x5a; PAYLOAD])
        .expect("build a UDP frame");
    out
}

/// The calling thread pinned to one CPU; the previous affinity comes back on drop.
struct Pinned {
    previous: libc::cpu_set_t,
}

fn pin_thread(cpu: usize) -> Result<Pinned, String> {
    // SAFETY: plain C struct, zero is an empty set; calls on the calling thread (pid 0).
    unsafe {
        let mut previous: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut previous) != 0 {
            return Err(format!(
                "sched_getaffinity: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(format!(
                "pin to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Pinned { previous })
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        // SAFETY: valid set saved by `pin_thread`.
        let rc = unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.previous)
        };
        if rc != 0 {
            eprintln!("xdp bench: could not restore the thread's CPU affinity");
        }
    }
}

/// Switches the gateway's client-side veth to threaded NAPI and pins its kthread(s) to `cpu`.
/// Returns what was done, for the note.
fn napi_to_cpu(gw: &Netns, dev: &str, cpu: usize) -> Result<(), String> {
    if !run_quiet(&[
        "ip",
        "netns",
        "exec",
        &gw.name,
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{dev}/threaded"),
    ]) {
        return Err(format!("cannot switch {dev} to threaded NAPI"));
    }
    // Kernel thread names are cut to 15 characters.
    let want: String = format!("napi/{dev}-").chars().take(15).collect();
    let mut pinned = 0;
    let deadline = Instant::now() + Duration::from_secs(1);
    while pinned == 0 && Instant::now() < deadline {
        let dir = std::fs::read_dir("/proc").map_err(|e| format!("/proc: {e}"))?;
        for e in dir.flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            if comm.trim_end() != want && !comm.starts_with(&want) {
                continue;
            }
            // SAFETY: plain C struct; a pid of a kernel thread.
            let rc = unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set)
            };
            if rc != 0 {
                return Err(format!(
                    "pin {want}* (pid {pid}): {}",
                    std::io::Error::last_os_error()
                ));
            }
            pinned += 1;
        }
        if pinned == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if pinned == 0 {
        return Err(format!("no NAPI kthread {want}* found"));
    }
    Ok(())
}

/// What a set-up leaves on the gateway; removed on drop.
struct Gateway {
    _dp: Option<AyaDataplane>,
    _pass: Option<Ebpf>,
    nft_ns: Option<String>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(ns) = &self.nft_ns {
            if !run_quiet(&[
                "ip", "netns", "exec", ns, "nft", "delete", "table", "ip", NFT_TABLE,
            ]) {
                eprintln!("xdp bench: could not delete the nftables table in {ns}");
            }
        }
    }
}

fn configure(lab: &Lab2, setup: Setup) -> Result<Gateway, String> {
    let _in = lab.gw.enter();
    let dpe = |e: ftn_controller::dataplane::DataplaneError| chain(&e);
    match setup {
        Setup::Ftn => {
            let mut dp = AyaDataplane::load(&AyaOptions {
                interfaces: vec![lab.g0.clone(), "g1".into()],
                mode: XdpAttachMode::Native,
                ..AyaOptions::default()
            })
            .map_err(|e| format!("load and attach ftn on the gateway: {}", chain(&e)))?;
            dp.set_server(
                0,
                &ServerEntry {
                    addr: SERVER_TEXT.parse().unwrap(),
                    up: true,
                    generation: 1,
                },
            )
            .map_err(dpe)?;
            dp.set_resource(
                &ResourceMatch {
                    vip: VIP_TEXT.parse().unwrap(),
                    protocol: Protocol::Udp,
                    port: UDP_PORT,
                },
                &ResourceAssignment {
                    resource_id: 0,
                    server: Some(0),
                    generation: 1,
                    on_no_server: NoServerAction::Drop,
                },
            )
            .map_err(dpe)?;
            Ok(Gateway {
                _dp: Some(dp),
                _pass: None,
                nft_ns: None,
            })
        }
        Setup::Nftables | Setup::Routing => {
            let pass = attach_pass(&lab.g0);
            let mut gw = Gateway {
                _dp: None,
                _pass: Some(pass),
                nft_ns: None,
            };
            if setup == Setup::Nftables {
                let rules = format!(
                    "add table ip {NFT_TABLE}; \
                     add chain ip {NFT_TABLE} pre {{ type nat hook prerouting priority dstnat; policy accept; }}; \
                     add rule ip {NFT_TABLE} pre ip daddr {VIP_TEXT} udp dport {UDP_PORT} dnat to {SERVER_TEXT}"
                );
                let out = Command::new("ip")
                    .args(["netns", "exec", &lab.gw.name, "nft", &rules])
                    .output()
                    .map_err(|e| format!("run nft: {e}"))?;
                if !out.status.success() {
                    return Err(format!(
                        "nft rules failed: {}",
                        String::from_utf8_lossy(&out.stderr).trim()
                    ));
                }
                gw.nft_ns = Some(lab.gw.name.clone());
            }
            Ok(gw)
        }
    }
}

struct Traffic {
    gen: Ebpf,
    frame_map: Array<MapData, BenchFrame>,
    _sink: Ebpf,
    counts: PerCpuArray<MapData, u64>,
}

fn traffic(lab: &Lab2) -> Result<Traffic, String> {
    let (mut sink, counts) = {
        let _in = lab.srv.enter();
        let mut sink = load_small_object()?;
        load_prog(&mut sink, PROG_SINK)?
            .attach("s0", XdpMode::Driver)
            .map_err(|e| format!("attach {PROG_SINK} to s0: {}", chain(&e)))?;
        let counts = take_map(&mut sink, COUNT_MAP)?;
        (sink, counts)
    };
    let mut cfg: Array<MapData, BenchSink> = take_map(&mut sink, SINK_MAP)?;
    let addr: Ipv4Addr = SERVER_TEXT.parse().unwrap();
    cfg.set(
        0,
        BenchSink {
            addr: u32::from_ne_bytes(addr.octets()),
            port: UDP_PORT.to_be(),
            proto: PROTO_UDP,
            _pad: 0,
        },
        0,
    )
    .map_err(|e| format!("configure the sink: {}", chain(&e)))?;
    let mut gen = load_small_object()?;
    load_prog(&mut gen, PROG_GEN)?;
    let frame_map = take_map(&mut gen, FRAME_MAP)?;
    Ok(Traffic {
        gen,
        frame_map,
        _sink: sink,
        counts,
    })
}

fn sink_counts(t: &Traffic) -> Result<(u64, u64), String> {
    let get = |slot: u32| -> Result<u64, String> {
        let v = t
            .counts
            .get(&slot, 0)
            .map_err(|e| format!("read the sink's counters: {}", chain(&e)))?;
        Ok(v.iter().sum())
    };
    Ok((get(0)?, get(1)?))
}

struct Rate {
    delivered_pps: f64,
    /// Length of the counting window.
    window_s: f64,
    /// Frames per second the client's veth tried to hand to the gateway during the generator's
    /// call, and the share of them refused because the gateway's receive ring was full (None:
    /// `ethtool -S` did not answer).
    offered: Option<(f64, f64)>,
    other: u64,
}

extern "C" fn on_stop_signal(_: libc::c_int) {}

/// A no-op handler for [`STOP_SIGNAL`] (so that the signal only interrupts the generator's
/// system call); the previous handler comes back on drop.
struct StopSignal {
    previous: libc::sigaction,
}

const STOP_SIGNAL: libc::c_int = libc::SIGUSR2;

fn install_stop_signal() -> Result<StopSignal, String> {
    // SAFETY: plain C structs; the handler does nothing (async-signal-safe).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        let mut previous: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(STOP_SIGNAL, &sa, &mut previous) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
        Ok(StopSignal { previous })
    }
}

impl Drop for StopSignal {
    fn drop(&mut self) {
        // SAFETY: restores the action saved by `install_stop_signal`.
        unsafe { libc::sigaction(STOP_SIGNAL, &self.previous, std::ptr::null_mut()) };
    }
}

/// Sends `frame` from the client and counts what the server receives.
///
/// One long generator call (a call sets up and tears down a page pool, which takes
/// milliseconds: back-to-back short calls would leave gaps in the traffic). A sampler thread
/// reads the sink's counter every [`SAMPLE_EVERY`] and, `warm + dur` after the start, stops the
/// call with a signal (`BPF_PROG_TEST_RUN` returns `EINTR` between runs); the call's frame
/// count, 10 times what a calibration predicts for that time, bounds it too. The rate is taken
/// between the first reading after `warm` and the reading at the stop (or, if frames stopped
/// arriving before, the reading before the count last rose): a window inside the sending.
fn blast(
    lab: &Lab2,
    t: &mut Traffic,
    frame: &[u8],
    warm: Duration,
    dur: Duration,
) -> Result<Rate, String> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    t.frame_map
        .set(0, bench_frame(frame, None)?, 0)
        .map_err(|e| format!("write the generator's frame: {}", chain(&e)))?;
    let ctx = xdp_md(lab.c0_index, frame.len());
    let t: &Traffic = t;
    let gen = prog_ref(&t.gen, PROG_GEN)?;
    // Ok(true): all frames sent; Ok(false): stopped by the signal.
    let send = |n: u32| -> Result<bool, String> {
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = n;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(GEN_BATCH);
        match gen.test_run(opts) {
            Ok(_) => Ok(true),
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINTR) =>
            {
                Ok(false)
            }
            Err(e) => Err(format!("generator (XDP live frames): {}", chain(&e))),
        }
    };
    let _in = lab.cli.enter();
    let _signal = install_stop_signal()?;
    // Calibration (for the bound only).
    let c = Instant::now();
    send(GEN_CALIBRATE)?;
    let rate = f64::from(GEN_CALIBRATE) / c.elapsed().as_secs_f64().max(1e-6);
    let cap = ((warm + dur).as_secs_f64() * rate * 10.0)
        .clamp(f64::from(GEN_CALIBRATE), f64::from(u32::MAX)) as u32;
    let max_samples =
        ((warm + dur).as_millis() as usize / SAMPLE_EVERY.as_millis() as usize + 10) * 20;
    // SAFETY: no preconditions.
    let me = unsafe { libc::pthread_self() };
    let stop = AtomicBool::new(false);
    let x0 = xdp_xmit_counters(&lab.cli, "c0");
    let ts = Instant::now();
    let (finished, samples, stop_at) = std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            // On the generator's CPU (it yields between batches), away from the gateway's.
            let _pin = if cpus >= 2 { pin_thread(0).ok() } else { None };
            let mut v: Vec<(Instant, u64, u64)> = Vec::new();
            let mut stop_at: Option<usize> = None;
            while !stop.load(Ordering::Relaxed) && v.len() < max_samples {
                if let Ok((hit, other)) = sink_counts(t) {
                    v.push((Instant::now(), hit, other));
                }
                if ts.elapsed() >= warm + dur {
                    stop_at.get_or_insert(v.len().saturating_sub(1));
                    // SAFETY: `me` is the generator thread, alive until this scope ends; the
                    // signal has a no-op handler. Sent again every period until the call ends.
                    unsafe { libc::pthread_kill(me, STOP_SIGNAL) };
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            (v, stop_at)
        });
        let r = send(cap);
        stop.store(true, Ordering::Relaxed);
        let (v, stop_at) = sampler.join().unwrap_or_default();
        (r, v, stop_at)
    });
    let finished = finished?;
    let sent_s = ts.elapsed().as_secs_f64();
    let offered = match (x0, xdp_xmit_counters(&lab.cli, "c0")) {
        (Ok((s0, r0)), Ok((s1, r1))) if s1 + r1 > s0 + r0 => {
            let tried = (s1 + r1 - s0 - r0) as f64;
            Some((tried / sent_s, (r1 - r0) as f64 / tried))
        }
        _ => None,
    };
    let first = samples.iter().position(|s| s.0 >= ts + warm);
    let last_rise = samples.windows(2).rposition(|w| w[1].1 > w[0].1);
    // windows(2) index l: the count rose between samples l and l + 1, so sample l lies inside
    // the sending. When stopped by the signal, the sample taken at the stop does too.
    let end = match (finished, stop_at, last_rise) {
        (false, Some(s), Some(l)) => Some(s.min(l)),
        (_, _, l) => l,
    };
    let other =
        samples.last().map(|s| s.2).unwrap_or(0) - samples.first().map(|s| s.2).unwrap_or(0);
    let (Some(a), Some(b)) = (first, end) else {
        return Ok(Rate {
            delivered_pps: 0.0,
            window_s: 0.0,
            offered,
            other,
        });
    };
    if b <= a {
        return Err(format!(
            "measurement window too short: the generator stopped {:.0} ms after the start",
            sent_s * 1000.0
        ));
    }
    let (sa, sb) = (samples[a], samples[b]);
    let secs = (sb.0 - sa.0).as_secs_f64();
    Ok(Rate {
        delivered_pps: (sb.1 - sa.1) as f64 / secs,
        window_s: secs,
        offered,
        other: sb.2 - sa.2,
    })
}

/// Frames the client's veth handed to the gateway's receive ring, and frames refused because
/// that ring was full (`ethtool -S`: `tx_queue_*_xdp_xmit`, `tx_queue_*_xdp_xmit_errors`).
fn xdp_xmit_counters(ns: &Netns, dev: &str) -> Result<(u64, u64), String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "ethtool", "-S", dev])
        .output()
        .map_err(|e| format!("ethtool -S {dev}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "ethtool -S {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let (mut sent, mut refused) = (0u64, 0u64);
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Some((name, value)) = line.trim().split_once(':') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<u64>() else {
            continue;
        };
        if name.starts_with("tx_queue_") && name.ends_with("_xdp_xmit") {
            sent += v;
        } else if name.starts_with("tx_queue_") && name.ends_with("_xdp_xmit_errors") {
            refused += v;
        }
    }
    Ok((sent, refused))
}

/// One timed run of one gateway set-up.
#[allow(clippy::too_many_arguments)]
fn one_run(
    lab: &Lab2,
    t: &mut Traffic,
    setup: Setup,
    frame: &[u8],
    cpus: usize,
    placement: &mut Option<String>,
    warm: Duration,
    dur: Duration,
) -> Result<Rate, String> {
    let gw = configure(lab, setup)?;
    let _pin = if cpus >= 2 {
        if let Err(e) = napi_to_cpu(&lab.gw, &lab.g0, 1) {
            placement.get_or_insert(format!("gateway NAPI not pinned ({e})"));
        }
        Some(pin_thread(0)?)
    } else {
        placement.get_or_insert("one CPU: generator and gateway share it".into());
        None
    };
    let rate = blast(lab, t, frame, warm, dur)?;
    drop(gw);
    Ok(rate)
}

fn nft_available() -> Result<(), String> {
    match Command::new("nft").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`nft --version` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!(
            "nft is not installed ({e}); `cargo xtask setup` installs nftables"
        )),
    }
}

fn forwarding(size: Size) -> Vec<Figure> {
    let (rounds, warm, dur) = match size {
        Size::Quick => (
            1usize,
            Duration::from_millis(100),
            Duration::from_millis(500),
        ),
        Size::Full => (3, Duration::from_millis(300), Duration::from_secs(5)),
    };
    let nft = nft_available();
    let setups: Vec<Setup> = if nft.is_ok() {
        vec![Setup::Ftn, Setup::Nftables, Setup::Routing]
    } else {
        vec![Setup::Ftn, Setup::Routing]
    };
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let result = attempt(|| {
        let lab = lab2()?;
        let mut t = traffic(&lab)?;
        let vip_frame = udp_frame(lab.c0_mac, lab.g0_mac, VIP_TEXT);
        let direct_frame = udp_frame(lab.c0_mac, lab.g0_mac, SERVER_TEXT);
        let mut rates: BTreeMap<Setup, Vec<Rate>> = BTreeMap::new();
        let mut failed: BTreeMap<Setup, String> = BTreeMap::new();
        let mut placement: Option<String> = None;
        for r in 0..rounds {
            for i in 0..setups.len() {
                let setup = setups[(i + r) % setups.len()];
                if failed.contains_key(&setup) {
                    continue;
                }
                let frame = if setup == Setup::Routing {
                    &direct_frame
                } else {
                    &vip_frame
                };
                let run = one_run(&lab, &mut t, setup, frame, cpus, &mut placement, warm, dur);
                match run {
                    Ok(rate) if rate.delivered_pps > 0.0 => {
                        rates.entry(setup).or_default().push(rate)
                    }
                    Ok(rate) => {
                        let e = format!(
                            "no frame reached the server ({} other frames did; offered: {})",
                            rate.other,
                            offered_text(&[rate.offered])
                        );
                        eprintln!("xdp bench: {setup:?}: {e}");
                        failed.insert(setup, e);
                    }
                    Err(e) => {
                        eprintln!("xdp bench: {setup:?}: {e}");
                        failed.insert(setup, e);
                    }
                }
            }
        }
        drop(t);
        drop(lab);
        Ok((rates, failed, placement))
    });
    let keys = [
        ("pps_ftn", Setup::Ftn),
        ("pps_nftables", Setup::Nftables),
        ("pps_routing", Setup::Routing),
    ];
    let (rates, failed, placement) = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("xdp bench: forwarding part failed: {e}");
            let mut out: Vec<Figure> = keys
                .iter()
                .map(|(k, _)| Figure::missing(k, "pps", format!("forwarding bench failed: {e}")))
                .collect();
            out.push(Figure::missing(
                "ratio_ftn_nftables",
                "ratio",
                format!("forwarding bench failed: {e}"),
            ));
            return out;
        }
    };
    let placement = placement.unwrap_or_else(|| {
        "generator on CPU 0, gateway receive (threaded NAPI of its client-side veth) pinned to CPU 1".into()
    });
    let what = |s: Setup| {
        match s {
        Setup::Ftn => "ftn's XDP program on the gateway (native, both veths), resource 198.18.100.1:5353/udp -> 198.18.2.10",
        Setup::Nftables => "no ftn: nftables prerouting dnat 198.18.100.1:5353/udp -> 198.18.2.10 (conntrack), ftn_pass (XDP_PASS) on the gateway's client-side veth",
        Setup::Routing => "no ftn, no NAT: kernel forwarding to 198.18.2.10, ftn_pass (XDP_PASS) on the gateway's client-side veth",
    }
    };
    let mut medians: BTreeMap<Setup, f64> = BTreeMap::new();
    let mut out = Vec::new();
    for (key, setup) in keys {
        if setup == Setup::Nftables {
            if let Err(e) = &nft {
                out.push(Figure::missing(key, "pps", e.clone()));
                continue;
            }
        }
        out.push(match rates.get(&setup) {
            Some(v) if v.len() == rounds => {
                let d: Vec<f64> = v.iter().map(|r| r.delivered_pps).collect();
                let o: Vec<Option<(f64, f64)>> = v.iter().map(|r| r.offered).collect();
                let w: Vec<f64> = v.iter().map(|r| r.window_s).collect();
                let other: u64 = v.iter().map(|r| r.other).sum();
                let m = median(&d);
                medians.insert(setup, m);
                Figure::new(
                    key,
                    m,
                    "pps",
                    format!(
                        "{}; UDP frames of {} bytes ({PAYLOAD}-byte payload), one flow, sent by XDP live frames (ftn_bench_gen, batch {GEN_BATCH}) out of the client's veth, counted by ftn_bench_sink on the server's veth (frames to 198.18.2.10:5353); median of {rounds} run(s) (set-ups alternated), per run {} counted over {} s after a {:.1} s warm-up; offered by the generator: {}{}; {placement}",
                        what(setup),
                        vip_frame_len(),
                        list(&d),
                        list_secs(&w),
                        warm.as_secs_f64(),
                        offered_text(&o),
                        if other > 0 { format!("; {other} other frame(s) reached the server") } else { String::new() }
                    ),
                )
            }
            _ => Figure::missing(
                key,
                "pps",
                failed
                    .get(&setup)
                    .cloned()
                    .unwrap_or_else(|| "not measured".into()),
            ),
        });
    }
    out.push(match (medians.get(&Setup::Ftn), medians.get(&Setup::Nftables)) {
        (Some(f), Some(n)) if *n > 0.0 => Figure::new(
            "ratio_ftn_nftables",
            f / n,
            "ratio",
            format!("pps_ftn {f:.0} / pps_nftables {n:.0} (medians, same generator, frame and duration)"),
        ),
        _ => Figure::missing(
            "ratio_ftn_nftables",
            "ratio",
            match &nft {
                Err(e) => e.clone(),
                Ok(()) => "pps_ftn or pps_nftables not measured".into(),
            },
        ),
    });
    out
}

/// "X pps, Y% refused by the gateway's full receive ring" (medians over runs).
fn offered_text(v: &[Option<(f64, f64)>]) -> String {
    let known: Vec<(f64, f64)> = v.iter().flatten().copied().collect();
    if known.is_empty() {
        return "unknown (ethtool -S did not answer)".into();
    }
    let pps: Vec<f64> = known.iter().map(|x| x.0).collect();
    let refused: Vec<f64> = known.iter().map(|x| x.1 * 100.0).collect();
    format!(
        "{:.0} pps, {:.0}% of it refused by the gateway's full receive ring (medians; the gateway, not the generator, set the rate when this is well above 0)",
        median(&pps),
        median(&refused)
    )
}

fn list_secs(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
    format!("[{}]", parts.join(", "))
}

fn vip_frame_len() -> usize {
    14 + 20 + 8 + PAYLOAD
}
