//! A SYN flood against the flow table (`flood_established_survived`, issue 13).
//!
//! Method. The controller lab (`gateway::Lab`: client, gateway running `ftn run`, primary,
//! backup) with `[gateway] flow_table = 8192` and `pending_table = 1024` (small tables, so that
//! the flood is many times their size) and `failback = "immediate"`. Twenty long-lived TCP
//! connections through the VIP: ten opened while the primary's service is stopped (they land on
//! the backup), then the primary comes back, the resource fails back, and ten more are opened
//! (on the primary); the first ten stay pinned to the backup. Each asks once, then all twenty
//! stay **quiet** (a connection in use survives any LRU: it is the quiet ones a flood evicts).
//! Then spoofed SYNs: `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` in the client's
//! namespace runs the bench generator (`ftn_bench_gen`), which sends one SYN per run out of the
//! client's veth into the gateway, from a source address no host has (`198.18.9.200`, black-holed
//! on the gateway so that the servers' SYN-ACKs die there) and a source port that changes every
//! run (65,536 distinct 5-tuples), to the VIP's port 80, as fast as it goes, for
//! [`FLOOD_FOR`] (bounded by time and by a frame count). During the flood a client probe opens
//! a new connection every 10 ms (the legitimate new connections, reported beside the figure).
//! Afterwards each of the twenty connections asks again and must be answered by its own server:
//! `flood_established_survived` counts those that are (target 20 of 20). The SYNs the gateway
//! handled are counted by its `ftn_resource_new_flows_total{resource="web"}`; the run fails
//! when they are fewer than 4 times the flow table.
//!
//! Before the pending table, SYNs went into the flow table, whose LRU evicted the quiet
//! connections: an evicted flow of the ten pinned to the backup is re-pinned to the primary on
//! its next packet (its connection is dead).

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};

use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
use ftn_common::bench::{FRAME_MAP, PROG_GEN};

use super::forwarding::{install_stop_signal, GEN_BATCH, STOP_SIGNAL};
use super::{bench_frame, chain, load_bench_object, load_prog, prog_ref, take_map};
use crate::bench::{Figure, Reps, Size};
use crate::frames::{frame, tcp, SYN};
use crate::ftn::Prober;
use crate::gateway::{Lab, Options, EVERY};
use crate::lab::{Conn, Service};
use crate::timing::Timing;
use crate::xdp_md;

pub const FLOW_TABLE: u32 = 8192;
pub const PENDING_TABLE: u32 = 1024;
/// How long the flood lasts (the generator is stopped then; a frame count bounds it too).
pub const FLOOD_FOR: Duration = Duration::from_secs(10);
/// The spoofed source (black-holed on the gateway).
const SPOOF: &str = "198.18.9.200";
const LONG_LIVED: usize = 10;

/// What one flood did.
pub struct FloodRun {
    /// Of the 20 quiet connections, how many were answered by their own server afterwards.
    pub survived: usize,
    /// SYNs the gateway handled as new flows during the flood.
    pub syns: u64,
    pub flood_secs: f64,
    /// New legitimate connections during the flood: answered, and tried.
    pub legit_ok: usize,
    pub legit_tried: usize,
    /// What each broken connection got instead.
    pub broken: Vec<String>,
}

fn mac(ns: &crate::Netns, dev: &str) -> Result<[u8; 6], String> {
    let out = ns.exec(&["cat", &format!("/sys/class/net/{dev}/address")]);
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let v: Vec<u8> = text
        .split(':')
        .filter_map(|p| u8::from_str_radix(p, 16).ok())
        .collect();
    v.try_into().map_err(|_| format!("MAC of {dev}: {text:?}"))
}

fn new_flows(lab: &Lab) -> Result<u64, String> {
    let (_, m) = lab.ftn.http("GET", "/metrics", None, None);
    m.lines()
        .find(|l| l.starts_with("ftn_resource_new_flows_total{resource=\"web\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .ok_or_else(|| "no ftn_resource_new_flows_total for web in /metrics".to_string())
}

/// Sends spoofed SYNs from the client namespace for `dur` (and at most `max` frames).
fn flood(lab: &Lab, dur: Duration, max: u32) -> Result<f64, String> {
    let t = &lab.t;
    let (c_mac, g_mac) = (mac(&t.client, "c0")?, mac(&t.gateway, "g0")?);
    let c0 = t.client.ifindex("c0")?;
    let spoof: IpAddr = SPOOF.parse::<Ipv4Addr>().unwrap().into();
    let syn = frame(
        c_mac,
        g_mac,
        spoof,
        Lab::vip(),
        64,
        tcp(1024, 80, 1, 0, SYN),
        b"",
    );
    // The run counter goes into the source port (offset 34) and the TCP checksum (offset 50).
    let bf = bench_frame(&syn, Some((34, 50)))?;
    let _in = t.client.enter();
    let mut gen = load_bench_object()?;
    load_prog(&mut gen, PROG_GEN)?;
    let mut frames: aya::maps::Array<aya::maps::MapData, ftn_common::bench::BenchFrame> =
        take_map(&mut gen, FRAME_MAP)?;
    frames
        .set(0, bf, 0)
        .map_err(|e| format!("write the generator's frame: {}", chain(&e)))?;
    let prog = prog_ref(&gen, PROG_GEN)?;
    let ctx = xdp_md(c0, syn.len());
    let _signal = install_stop_signal()?;
    // SAFETY: no preconditions.
    let me = unsafe { libc::pthread_self() };
    let done = std::sync::atomic::AtomicBool::new(false);
    let t0 = Instant::now();
    let r = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                if t0.elapsed() >= dur {
                    // SAFETY: `me` is alive until the scope ends; the handler does nothing.
                    unsafe { libc::pthread_kill(me, STOP_SIGNAL) };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&syn);
        opts.ctx_in = Some(&ctx);
        opts.repeat = max;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(GEN_BATCH);
        let r = match prog.test_run(opts) {
            Ok(_) => Ok(()),
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINTR) =>
            {
                Ok(())
            }
            Err(e) => Err(format!("generator (XDP live frames): {}", chain(&e))),
        };
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        r
    });
    r?;
    Ok(t0.elapsed().as_secs_f64())
}

/// One flood against twenty quiet connections (see the module docs).
pub fn flood_once() -> Result<FloodRun, String> {
    let timing = Timing::DEFAULT;
    let gateway = format!("flow_table = {FLOW_TABLE}\npending_table = {PENDING_TABLE}\n");
    let mut lab = Lab::start_with(
        timing,
        "failback = \"immediate\"",
        Options {
            gateway: Box::leak(gateway.into_boxed_str()),
            ..Options::default()
        },
    );
    lab.ftn
        .wait_current("web", Some("p1"), timing.first_serve());
    lab.t
        .gateway
        .ip(&["route", "add", "blackhole", &format!("{SPOOF}/32")]);
    // Ten on the backup, pinned there by the failback; ten on the primary.
    lab.primary = None;
    lab.ftn.wait_current("web", Some("b1"), timing.down());
    let mut conns: Vec<(Conn, &str)> = Vec::new();
    for _ in 0..LONG_LIVED {
        conns.push((lab.open(), "backup"));
    }
    lab.primary = Some(Service::start(&lab.t.primary, "primary"));
    lab.ftn
        .wait_current("web", Some("p1"), timing.failback_after(Duration::ZERO));
    for _ in 0..LONG_LIVED {
        conns.push((lab.open(), "primary"));
    }
    let mut asked = Vec::new();
    for (c, want) in conns {
        let (c, r) = lab.ask(c);
        if r.as_deref() != Ok(want) {
            return Err(format!(
                "before the flood a connection got {r:?}, {want} expected"
            ));
        }
        asked.push((c, want));
    }
    // Quiet from here on. The legitimate client keeps opening new connections.
    let before = new_flows(&lab)?;
    let probe = Prober::start(&lab.t.client, Lab::vip(), EVERY, FLOOD_FOR * 2);
    let secs = flood(&lab, FLOOD_FOR, u32::MAX)?;
    let samples = probe.finish();
    let syns = new_flows(&lab)?.saturating_sub(before);
    let legit_tried = samples.len();
    let legit_ok = samples.iter().filter(|s| s.answer.is_some()).count();
    let mut survived = 0;
    let mut broken = Vec::new();
    for (c, want) in asked {
        let (_, r) = lab.ask(c);
        if r.as_deref() == Ok(want) {
            survived += 1;
        } else {
            broken.push(format!("{want} expected, got {r:?}"));
        }
    }
    if syns < 4 * u64::from(FLOW_TABLE) {
        return Err(format!(
            "the flood brought only {syns} SYNs to the gateway in {secs:.1} s (at least {} needed: 4 x the flow table)",
            4 * FLOW_TABLE
        ));
    }
    Ok(FloodRun {
        survived,
        syns,
        flood_secs: secs,
        legit_ok,
        legit_tried,
        broken,
    })
}

pub fn run(size: Size) -> Vec<Figure> {
    let reps = match size {
        Size::Quick => 1,
        Size::Full => 3,
    };
    let mut runs = Reps::new(reps);
    for rep in 0..reps {
        eprintln!("   flood: repetition {} of {reps}", rep + 1);
        runs.run(rep, flood_once);
    }
    let key = "flood_established_survived";
    match runs.all() {
        Ok(all) => {
            let worst = all.iter().map(|r| r.survived).min().unwrap_or(0);
            let each: Vec<String> = all
                .iter()
                .map(|r| {
                    format!(
                        "{} of 20 survived {} SYNs in {:.1} s ({:.0}/s); new legitimate connections during the flood {} of {} answered{}",
                        r.survived,
                        r.syns,
                        r.flood_secs,
                        r.syns as f64 / r.flood_secs.max(1e-9),
                        r.legit_ok,
                        r.legit_tried,
                        if r.broken.is_empty() { String::new() } else { format!("; broken: {}", r.broken.join(", ")) }
                    )
                })
                .collect();
            vec![Figure::new(
                key,
                worst as f64,
                "connections",
                format!(
                    "the worst of {reps} runs; 20 quiet connections (10 pinned to the backup by a failback), flow_table {FLOW_TABLE}, pending_table {PENDING_TABLE}, spoofed SYNs for {:?} from one generator core (XDP live frames); {}",
                    FLOOD_FOR,
                    each.join(" | ")
                ),
            )]
        }
        Err(e) => vec![Figure::missing(key, "connections", e)],
    }
}
