//! The per-packet cost (`xdp_*_ns`, `xdp_ratio_*`).
//!
//! `BPF_PROG_TEST_RUN` with `repeat = N` runs a program N times on one buffer and returns the
//! kernel's mean time per run (whole nanoseconds; migration is disabled and the clock stops
//! whenever the run loop yields the CPU to another task). A NAT program rewrites its buffer, so
//! from the second run on it would see its own output. The bench programs in
//! `ftn-ebpf/src/bench.rs` (an object of their own, `ftn-bench-ebpf`, loaded beside the
//! dataplane's) fix this:
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
//!   of that 5-tuple is run once first): the fast path (one flow lookup, next hop from the
//!   entry), DNAT with incremental checksums, MAC rewrite, redirect to the server-side
//!   interface. Checked by `fast_forward`: every run but the few that refresh the next hop
//!   (one per second of the round, `nexthop_ttl`) takes the fast path.
//! - *new flow*: IPv4 TCP SYN to VIP:80 from a client port that is new on every run: the wrapper
//!   adds its run counter to the source port and fixes the TCP checksum incrementally (RFC
//!   1624), so each of the N runs inserts a flow and a reverse entry (checked: the resource's
//!   `new_flows` counter grows by exactly N). The flow tables are emptied before the run and N
//!   is at most 50,000 (fewer than 65,536 ports, far below the LRU's capacity): this is the
//!   cost of inserting into a table that is not full (no LRU eviction). Passive health is on
//!   (defaults), as in production: each SYN also updates the server's unanswered-SYN record.
//! - *reply*: server → client TCP ACK: one `FTN_RETURN` lookup (no per-flow state), SNAT to the
//!   VIP, next hop (cached), redirect.
//! - *IPv6 established*: as *established*, over IPv6.
//! - *pass*: IPv4 TCP to an address no resource has: parsed, the resource lookup and the return
//!   lookup miss, `XDP_PASS`.
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

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::{
    maps::{Array, MapData, ProgramArray},
    programs::{ProgramFd, TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use ftn_common::{
    bench::{BenchFrame, FRAME_MAP, JUMP_MAP, PROG_FLOOR, PROG_NOP, PROG_WRAP},
    FlowKey, FlowValue, GlobalCounter,
};
use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Dataplane, ResourceAssignment, ServerEntry,
};
use ftn_controller::model::{NoServerAction, Protocol, ResourceMatch};

use super::{bench_frame, chain, list, load_bench_object, load_prog, prog_ref, take_map};
use crate::bench::{attempt, median, Figure, Size};
use crate::frames::{
    action_name, frame, tcp, ACK, CM, G0, G1, PM, SYN, XDP_PASS, XDP_REDIRECT, XDP_TX,
};
use crate::{xdp_md, Netns};

fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().expect("IPv6 literal"))
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
fn prog_fd(ebpf: &Ebpf, name: &str) -> Result<ProgramFd, String> {
    prog_ref(ebpf, name)?
        .fd()
        .and_then(|fd| fd.try_clone().map_err(Into::into))
        .map_err(|e| format!("fd of {name}: {}", chain(&e)))
}

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
/// The share of the flow and pending tables filled before *new flow, full tables*.
const FILL: f64 = 0.9;
/// Offsets of the TCP source port and checksum in an IPv4 frame without options.
const TCP4_SPORT_AT: u32 = 14 + 20;
const TCP4_CSUM_AT: u32 = 14 + 20 + 16;

/// A TCP segment without payload, TTL 64: seq 1000, ack 1 (written only with ACK), window 64240.
fn tcp_frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    ips: (IpAddr, IpAddr),
    ports: (u16, u16),
    flags: u8,
) -> Vec<u8> {
    let l4 = tcp(ports.0, ports.1, 1000, 1, flags);
    frame(smac, dmac, ips.0, ips.1, 64, l4, b"")
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
    /// New flow with the flow and pending tables filled to [`FILL`] of their capacity first.
    NewFlowFull,
    Reply,
    Ipv6,
    Pass,
}

const CASES: [Case; 10] = [
    Case::Nop,
    Case::WrapNop,
    Case::FloorDirect,
    Case::Floor,
    Case::Established,
    Case::NewFlow,
    Case::NewFlowFull,
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
    let (c4, p4, vip4, other4) = (C4.into(), P4.into(), VIP4.into(), OTHER4.into());
    let (c6, vip6) = (v6(C6), v6(VIP6));
    Frames {
        syn4: tcp_frame(CM, G0, (c4, vip4), (EST_PORT, 80), SYN),
        ack4: tcp_frame(CM, G0, (c4, vip4), (EST_PORT, 80), ACK),
        new4: tcp_frame(CM, G0, (c4, vip4), (NEW_PORT, 80), SYN),
        reply4: tcp_frame(PM, G1, (p4, c4), (80, EST_PORT), ACK),
        syn6: tcp_frame(CM, G0, (c6, vip6), (EST_PORT, 80), SYN),
        ack6: tcp_frame(CM, G0, (c6, vip6), (EST_PORT, 80), ACK),
        pass4: tcp_frame(CM, G0, (c4, other4), (EST_PORT, 80), ACK),
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
    /// The bench programs' object: the wrapper tail-calls `ftn_xdp` of `dp`'s object.
    bench: Ebpf,
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
    /// Runs a bench program directly.
    fn direct(&mut self, name: &str, frame: &[u8], repeat: u32) -> Result<(u32, f64), String> {
        let ingress = self.fx0;
        let (a, ns, _) = test_run(prog_ref(&self.bench, name)?, frame, ingress, repeat, false)?;
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
        test_run(
            prog_ref(&self.bench, PROG_WRAP)?,
            frame,
            ingress,
            repeat,
            want_out,
        )
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

    /// Fills `share` of the flow table and of the pending table with entries of clients no
    /// packet comes from (10.0.0.0/8 to the VIP).
    fn fill(&mut self, share: f64) -> Result<(), String> {
        let e = |e: ftn_controller::dataplane::DataplaneError| chain(&e);
        let flows = (f64::from(self.dp.flow_table_entries().map_err(e)?) * share) as u32;
        let pending = (f64::from(self.dp.pending_table_entries().map_err(e)?) * share) as u32;
        let value = FlowValue {
            last_seen_ns: 1,
            server_id: 0,
            resource_id: 0,
            flags: 0,
            client_seq: 0,
            ..FlowValue::default()
        };
        for i in 0..flows + pending {
            let key = FlowKey {
                client: [
                    u32::from_be_bytes([10, 0, 0, 0]).wrapping_add(i).to_be(),
                    0,
                    0,
                    0,
                ],
                vip: [u32::from_ne_bytes(VIP4), 0, 0, 0],
                client_port: 1000u16.to_be(),
                vip_port: 80u16.to_be(),
                proto: ftn_common::PROTO_TCP,
                family: ftn_common::FAMILY_V4,
                _pad: [0; 2],
            };
            if i < flows {
                self.dp.insert_flow(&key, &value).map_err(e)?;
            } else {
                self.dp.insert_pending(&key, &value).map_err(e)?;
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
                let fast_before = self.global(GlobalCounter::FastForward)?;
                let (a, ns, _) = self.wrapped(Target::Xdp, &f, None, fx0, repeat, false)?;
                let after = self.dp.resource_stats(rid).map_err(|e| chain(&e))?;
                let fast = self.global(GlobalCounter::FastForward)? - fast_before;
                expect("established", a, XDP_REDIRECT)?;
                // Every run on the fast path, but for the slow-path runs that refresh the next
                // hop when the cache entry ages out (nexthop_ttl 1 s: at most one per started
                // second of the round) and the first run of the round.
                let allowed = 1 + (ns * f64::from(repeat) / 1e9).ceil() as u64;
                if u64::from(repeat) - fast.min(u64::from(repeat)) > allowed {
                    return Err(format!(
                        "established: {fast} of {repeat} runs took the fast path (at most {allowed} slow ones expected)"
                    ));
                }
                let (pk, nf) = (
                    after.packets - before.packets,
                    after.new_flows - before.new_flows,
                );
                if pk != u64::from(repeat) || nf != 0 {
                    return Err(format!("established: {pk} packets forwarded and {nf} flows created in {repeat} runs ({repeat} and 0 expected)"));
                }
                Ok(ns)
            }
            Case::NewFlow | Case::NewFlowFull => {
                self.dp.clear_flows().map_err(|e| chain(&e))?;
                if case == Case::NewFlowFull {
                    self.fill(FILL)?;
                }
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
                if case == Case::NewFlowFull {
                    // The other cases run on empty tables.
                    self.dp.clear_flows().map_err(|e| chain(&e))?;
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
    for (vip, rid, sid, saddr) in [
        (
            std::net::IpAddr::from(Ipv4Addr::from(VIP4)),
            0,
            0,
            std::net::IpAddr::from(Ipv4Addr::from(P4)),
        ),
        (
            VIP6.parse::<Ipv6Addr>().unwrap().into(),
            1,
            1,
            P6.parse::<Ipv6Addr>().unwrap().into(),
        ),
    ] {
        // The return entry the controller derives for the resource's server.
        dp.set_return(
            &ftn_controller::model::ReturnMatch {
                server: saddr,
                protocol: Protocol::Tcp,
                port: 80,
            },
            &ftn_controller::dataplane::ReturnTarget {
                vip,
                resource_id: rid,
                server_id: sid,
            },
        )
        .map_err(dpe)?;
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
    let xdp_fd = prog_fd(ebpf, ftn_common::PROGRAM_NAME)?;
    let mut bench = load_bench_object()?;
    for name in [PROG_WRAP, PROG_NOP, PROG_FLOOR] {
        load_prog(&mut bench, name)?;
    }
    let frame_map = take_map(&mut bench, FRAME_MAP)?;
    let jmp = take_map(&mut bench, JUMP_MAP)?;
    let nop_fd = prog_fd(&bench, PROG_NOP)?;
    let floor_fd = prog_fd(&bench, PROG_FLOOR)?;
    drop(_in);
    let b = Bench1 {
        dp,
        bench,
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

const PART1_KEYS: [(&str, &str); 13] = [
    ("xdp_floor_ns", "ns"),
    ("xdp_established_ns", "ns"),
    ("xdp_new_flow_ns", "ns"),
    ("xdp_new_flow_empty_ns", "ns"),
    ("xdp_reply_ns", "ns"),
    ("xdp_ipv6_established_ns", "ns"),
    ("xdp_pass_ns", "ns"),
    ("xdp_ratio_established", "ratio"),
    ("xdp_ratio_new_flow", "ratio"),
    ("xdp_ratio_new_flow_empty", "ratio"),
    ("xdp_ratio_reply", "ratio"),
    ("xdp_ratio_pass", "ratio"),
    ("xdp_ratio_ipv6", "ratio"),
];

/// Per case, its time in each round (mean ns per run); the cases that failed, with why.
type Measured = (BTreeMap<Case, Vec<f64>>, BTreeMap<Case, String>);

/// How many rounds, and runs per measurement.
struct Counts {
    rounds: usize,
    repeat: u32,
    /// Runs of *new flow* (at most [`NEW_FLOW_MAX_RUNS`]).
    new_repeat: u32,
}

pub fn run(size: Size) -> Vec<Figure> {
    let (rounds, repeat) = match size {
        Size::Quick => (2usize, 10_000u32),
        Size::Full => (7, 1_000_000),
    };
    let new_repeat = repeat.min(NEW_FLOW_MAX_RUNS);
    let counts = Counts {
        rounds,
        repeat,
        new_repeat,
    };
    let result = attempt(|| measure(&counts));
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
    figures(&counts, &raw, &failed)
}

/// Sets the lab up, validates the wrapper and runs every case once a round, in an order rotated
/// every round.
fn measure(counts: &Counts) -> Result<Measured, String> {
    let Counts {
        rounds,
        repeat,
        new_repeat,
    } = *counts;
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
            let n = if matches!(case, Case::NewFlow | Case::NewFlowFull) {
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
}

/// The figures from the rounds' times: each case's median net of the wrapper's overhead, and
/// the ratios to the floor.
fn figures(
    counts: &Counts,
    raw: &BTreeMap<Case, Vec<f64>>,
    failed: &BTreeMap<Case, String>,
) -> Vec<Figure> {
    let Counts {
        rounds,
        repeat,
        new_repeat,
    } = *counts;
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
        ("xdp_established_ns", Case::Established, repeat, "IPv4 TCP ACK, client -> VIP:80, flow in the table: fast path (one flow lookup, next hop from the entry; fast_forward counter checked), DNAT + redirect (54-byte frame)"),
        ("xdp_new_flow_ns", Case::NewFlowFull, new_repeat, "IPv4 TCP SYN to VIP:80 from a new client port every run (the wrapper adds its run counter to the port and fixes the TCP checksum; resource new_flows counter checked = runs), the flow and pending tables FILLED to 90 % of their capacity first (262,144 and 65,536 entries: the pending table is full after 10 % of the runs, then every insert evicts): pending-table insert, passive-health update, DNAT + FIB + redirect"),
        ("xdp_new_flow_empty_ns", Case::NewFlow, new_repeat, "as xdp_new_flow_ns with the tables EMPTIED before each round (never full: no eviction)"),
        ("xdp_reply_ns", Case::Reply, repeat, "server -> client TCP ACK: one FTN_RETURN lookup (stateless), SNAT to the VIP, FIB, redirect"),
        ("xdp_ipv6_established_ns", Case::Ipv6, repeat, "IPv6 TCP ACK, client -> VIP:80, flow in the table: DNAT + redirect (74-byte frame; path not checked by counter)"),
        ("xdp_pass_ns", Case::Pass, repeat, "IPv4 TCP to an address no resource has: parse, address filter (two array reads, no hash lookup), XDP_PASS"),
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
        ("xdp_ratio_new_flow", Case::NewFlowFull),
        ("xdp_ratio_new_flow_empty", Case::NewFlow),
        ("xdp_ratio_reply", Case::Reply),
        ("xdp_ratio_pass", Case::Pass),
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
    // IPv6 against IPv4, both established (the issue: within 15 %).
    let key = "xdp_ratio_ipv6";
    out.push(
        match (medians.get(&Case::Ipv6), medians.get(&Case::Established)) {
            (Some(v6), Some(v4)) if *v4 > 0.0 => Figure::new(
                key,
                v6 / v4,
                "ratio",
                format!("IPv6 {v6:.0} ns / IPv4 {v4:.0} ns, established (medians, same runs)"),
            ),
            (Some(_), Some(v4)) => Figure::missing(
                key,
                "ratio",
                format!("IPv4 measured as {v4:.0} ns: no ratio"),
            ),
            (None, _) => Figure::missing(
                key,
                "ratio",
                format!("Ipv6 not measured: {}", missing_why(Case::Ipv6)),
            ),
            (_, None) => Figure::missing(
                key,
                "ratio",
                format!(
                    "Established not measured: {}",
                    missing_why(Case::Established)
                ),
            ),
        },
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The frames, byte for byte, as the bench built them before it used `frames::frame`.
    #[test]
    fn frames_are_unchanged() {
        let f = frames();
        let hex = |v: &Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let got = [
            &f.syn4, &f.ack4, &f.new4, &f.reply4, &f.syn6, &f.ack6, &f.pass4,
        ]
        .map(hex);
        let want = [
            "02000000000102000000011008004500002800004000400649a0c612010ac61264019c400050000003e8000000005002faf023490000",
            "02000000000102000000011008004500002800004000400649a0c612010ac61264019c400050000003e8000000015010faf0233a0000",
            "02000000000102000000011008004500002800004000400649a0c612010ac612640104000050000003e8000000005002faf0bb890000",
            "020000000002020000000210080045000028000040004006ab97c612020ac612010a00509c40000003e8000000015010faf085310000",
            "02000000000102000000011086dd600000000014064020010002000100000000000000000010200100020100000000000000000000019c400050000003e8000000005002faf0d3610000",
            "02000000000102000000011086dd600000000014064020010002000100000000000000000010200100020100000000000000000000019c400050000003e8000000015010faf0d3520000",
            "020000000001020000000110080045000028000040004006ab54c612010ac612024d9c400050000003e8000000015010faf084ee0000",
        ];
        assert_eq!(got, want);
    }
}
