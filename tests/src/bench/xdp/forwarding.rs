//! The forwarding rate (`pps_*`, `ratio_ftn_nftables`).
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
    net::{IpAddr, Ipv4Addr},
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::{TestRun, TestRunAttrs, TestRunOptions, XdpMode},
    Ebpf,
};
use ftn_common::{
    bench::{BenchFrame, BenchSink, COUNT_MAP, FRAME_MAP, PROG_GEN, PROG_SINK, SINK_MAP},
    PROTO_UDP,
};
use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Dataplane, ResourceAssignment, ServerEntry,
};
use ftn_controller::model::{NoServerAction, Protocol, ResourceMatch, XdpAttachMode};

use super::{bench_frame, chain, list, load_bench_object, load_prog, prog_ref, take_map};
use crate::bench::{attempt, median, Figure, Size};
use crate::frames::{frame, udp};
use crate::{attach_pass, lab::veth, run_quiet, unique_name, xdp_md, Netns};

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

const VIP_TEXT: &str = "198.18.100.1";
const SERVER_TEXT: &str = "198.18.2.10";
const UDP_PORT: u16 = 5353;
const PAYLOAD: usize = 64;
pub(super) const GEN_BATCH: u32 = 64;
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

/// The generator's frame: UDP 198.18.1.10:40000 -> `dst`:5353, TTL 64, [`PAYLOAD`] bytes of 0x5a.
fn udp_frame(smac: [u8; 6], dmac: [u8; 6], dst: &str) -> Vec<u8> {
    let d: Ipv4Addr = dst.parse().expect("IPv4 literal");
    let src = IpAddr::from([198, 18, 1, 10]);
    frame(
        smac,
        dmac,
        src,
        d.into(),
        64,
        udp(40000, UDP_PORT),
        &[0x5a; PAYLOAD],
    )
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
        let mut sink = load_bench_object()?;
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
    let mut gen = load_bench_object()?;
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
pub(super) struct StopSignal {
    previous: libc::sigaction,
}

pub(super) const STOP_SIGNAL: libc::c_int = libc::SIGUSR2;

pub(super) fn install_stop_signal() -> Result<StopSignal, String> {
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
#[expect(
    clippy::too_many_arguments,
    reason = "the lab, its traffic, the set-up, its frame, the CPU count, the placement note it \
              fills and the warm-up and measuring times are all this one call's inputs; a struct \
              for them would be built for this single call"
)]
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

/// The figures' keys, by set-up.
const KEYS: [(&str, Setup); 3] = [
    ("pps_ftn", Setup::Ftn),
    ("pps_nftables", Setup::Nftables),
    ("pps_routing", Setup::Routing),
];

/// Per set-up, its runs; the set-ups that failed, with why; where the generator and the
/// gateway ran when that was not as planned.
type Measured = (
    BTreeMap<Setup, Vec<Rate>>,
    BTreeMap<Setup, String>,
    Option<String>,
);

pub fn run(size: Size) -> Vec<Figure> {
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
    let result = attempt(|| measure(&setups, rounds, cpus, warm, dur));
    let measured = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("xdp bench: forwarding part failed: {e}");
            let mut out: Vec<Figure> = KEYS
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
    figures(measured, &nft, rounds, warm)
}

/// Sets the lab up and runs every set-up once a round, in an order rotated every round.
fn measure(
    setups: &[Setup],
    rounds: usize,
    cpus: usize,
    warm: Duration,
    dur: Duration,
) -> Result<Measured, String> {
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
                Ok(rate) if rate.delivered_pps > 0.0 => rates.entry(setup).or_default().push(rate),
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
}

/// The figures from the runs: each set-up's median rate, and ftn's over nftables'.
fn figures(
    measured: Measured,
    nft: &Result<(), String>,
    rounds: usize,
    warm: Duration,
) -> Vec<Figure> {
    let (rates, failed, placement) = measured;
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
    for (key, setup) in KEYS {
        if setup == Setup::Nftables {
            if let Err(e) = nft {
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
            match nft {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The generator's frames, byte for byte, as the bench built them before it used
    /// `frames::frame`.
    #[test]
    fn udp_frames_are_unchanged() {
        let (client, gateway) = ([2, 0xaa, 1, 2, 3, 4], [2, 0xbb, 5, 6, 7, 8]);
        let hex = |v: Vec<u8>| v.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let got = [VIP_TEXT, SERVER_TEXT].map(|dst| hex(udp_frame(client, gateway, dst)));
        let want = [
            "02bb0506070802aa0102030408004500005c0000400040114961c612010ac61264019c4014e9004811b95a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
            "02bb0506070802aa0102030408004500005c000040004011ab58c612010ac612020a9c4014e9004873b05a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a",
        ];
        assert_eq!(got, want);
        assert_eq!(got[0].len() / 2, vip_frame_len());
    }
}
