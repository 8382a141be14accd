//! The controller at scale: remapping many resources, checking many servers, memory with a
//! large configuration.
//!
//! - **`remap_10k_ms`**: in-process, on the controller's own code and the real dataplane (the
//!   eBPF object loaded through aya without interfaces, `AyaDataplane::load`), an embedded
//!   directory in a temporary directory on the machine's disk, and a configuration generated as
//!   TOML text and read by `config::parse`: servers `p` and `b`, 10,000 tcp resources on
//!   distinct VIPs (198.18.128.1 + i, port 1024 + i: one server port serves one VIP, the
//!   configuration's rule for the stateless return path), each `servers = ["p", "b"]` with
//!   `failback = "immediate"` (so that the recovery moves them back; the failover path does not
//!   depend on the policy). After the initial plan is committed and written, one run is the
//!   daemon's exact path for a failure verdict: `engine.observe("p", down)` → `engine.plan` →
//!   `directory.commit` (WAL line and events appended and fdatasync'ed) → `engine.committed` →
//!   `dataplane.apply(changes)` (1 server entry + 10,000 resource entries), timed from the
//!   verdict to the return of `apply`, i.e. the last map entry written. Every entry is read back
//!   afterwards (outside the timing) to check it points to `b`. Runs alternate failure and
//!   recovery; the figure is the median of the failure runs. Floor, in the same run and
//!   interleaved: the same 10,000 resource entries written by a bare loop of `set_resource` (no
//!   engine, no directory).
//! - **`heartbeat_cpu_1000`**: the real `ftn run` (the binary from `FTN_BIN`, use a release
//!   build) in a gateway namespace joined by a veth to a "servers" namespace in which the whole
//!   198.18.64.0/18 block is local (`ip route add local 198.18.64.0/18 dev lo`, so every address
//!   answers without 1,000 neighbour entries) and one thread accepts and closes connections on
//!   0.0.0.0:80. The configuration has 1,000 servers (198.18.64.1 …, each one `tcp:80` check
//!   at the default timing: `config::DEFAULT_CHECK_INTERVAL` and `DEFAULT_CHECK_TIMEOUT`) and 10 resources. After a settling
//!   time, the controller's CPU time (utime + stime of the process, all threads, from
//!   `/proc/<pid>/stat`) over a window (Full: 10 s, Quick: 2 s) divided by the window is the
//!   cores used. The checks' socket work in the kernel (connect, the RST that closes a check, and
//!   the softirq processing that runs in the process's context) counts as the process's system
//!   time. Baseline in the same run: the same process with 0 servers and 0 resources, same
//!   window. The checks actually run in the window are counted from the status API.
//! - **`rss_mb_100k`**: `VmRSS` of the daemon (`/proc/<pid>/status`) with 100,000 resources
//!   (25,000 VIPs from 198.18.128.1, ports 80 + i % 4 + 4 × (i / servers): each server port
//!   serves one VIP) on 10,000 servers (198.18.64.1 …, all answering
//!   in the servers namespace), after startup plus one full check interval. The checks are slowed
//!   to `interval = "10s", timeout = "1s"` (`[check_defaults]`) so that 1,000 probes/s, not
//!   200,000, run. Startup (spawn to API answering) is bounded (Full 180 s). Baseline in the same
//!   run: an empty configuration (no servers, no resources). BPF maps live in kernel memory, not
//!   in RSS; their locked memory is given in the note. Quick mode: 1,000 resources on 100 servers.

use std::{
    future::Future,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    pin::pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ftn_common::{MAX_RESOURCES, MAX_SERVERS};
use ftn_controller::{
    config,
    dataplane::{AyaDataplane, AyaOptions, Change, Dataplane, ResourceAssignment},
    directory::{now_ms, Directory, EmbeddedDirectory},
    engine::{Engine, Observation},
    model::{NoServerAction, ResourceMatch},
};

use super::{attempt, median, Figure, Size};
use crate::{ftn::Ftn, lab::veth, unique_name, Netns};

/// Polls a future that completes without waiting (the embedded directory's calls run
/// synchronously: its commit is `block_in_place`, which outside a runtime just runs).
fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    let t = Instant::now();
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "a directory call did not complete"
        );
        std::thread::yield_now();
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(super) fn nth_v4(base: [u8; 4], i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::from(base)) + i)
}

/// A directory under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(prefix: &str) -> Result<TempDir, String> {
        let p = std::env::temp_dir().join(format!("{prefix}-{}", unique_name("d")));
        std::fs::create_dir_all(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// remap_10k_ms

const REMAP_N: u32 = 10_000;

fn remap_config(n: u32, state: &Path) -> String {
    let mut s = format!(
        "[gateway]\ninterfaces = [\"lo\"]\n\n[directory]\nbackend = \"embedded\"\npath = \"{}\"\n\n",
        state.display()
    );
    for (name, addr) in [("p", "198.18.2.10"), ("b", "198.18.3.10")] {
        s.push_str(&format!(
            "[[server]]\nname = \"{name}\"\naddress = \"{addr}\"\nchecks = [{{ type = \"tcp\", port = 80 }}]\n\n"
        ));
    }
    for i in 0..n {
        s.push_str(&format!(
            "[[resource]]\nname = \"r{i}\"\nvip = \"{}\"\nprotocol = \"tcp\"\nports = [{}]\nservers = [\"p\", \"b\"]\nfailback = \"immediate\"\n\n",
            nth_v4([198, 18, 128, 1], i),
            1024 + i
        ));
    }
    s
}

struct Step {
    plan: Duration,
    commit: Duration,
    apply: Duration,
    total: Duration,
    changes: usize,
    events: usize,
}

/// One verdict through the daemon's path: observe → plan → commit → committed → apply.
fn step(
    engine: &mut Engine,
    dir: &EmbeddedDirectory,
    dp: &mut AyaDataplane,
    up: bool,
) -> Result<Step, String> {
    let t0 = Instant::now();
    engine.observe(
        "p",
        Observation {
            up,
            evidence: if up {
                "bench: p is back"
            } else {
                "bench: p failed"
            }
            .into(),
            at_ms: now_ms(),
        },
    );
    let plan = engine.plan(now_ms(), None).map_err(|e| e.to_string())?;
    let t1 = Instant::now();
    let rev = block_on(dir.commit(engine.snapshot().revision, &plan.update))
        .map_err(|e| e.to_string())?;
    engine.committed(&plan.update, rev);
    let t2 = Instant::now();
    dp.apply(&plan.changes)
        .map_err(|(i, e)| format!("apply change {i}: {e}"))?;
    let t3 = Instant::now();
    Ok(Step {
        plan: t1 - t0,
        commit: t2 - t1,
        apply: t3 - t2,
        total: t3 - t0,
        changes: plan.changes.len(),
        events: plan.update.events.len(),
    })
}

fn verify(dp: &AyaDataplane, matchers: &[(ResourceMatch, u32)], server: u32) -> Result<(), String> {
    for (m, _) in matchers {
        match dp.resource(m).map_err(|e| e.to_string())? {
            Some(v) if v.server_id == server => {}
            other => {
                return Err(format!(
                    "entry {m:?} holds {other:?}, expected server id {server}"
                ))
            }
        }
    }
    Ok(())
}

fn remap(size: Size) -> Result<Figure, String> {
    let runs = match size {
        Size::Quick => 1,
        Size::Full => 9,
    };
    let tmp = TempDir::new("ftn-bench-remap")?;
    let state = tmp.0.join("state");
    let text = remap_config(REMAP_N, &state);
    let cfg_path = tmp.0.join("ftn.toml");
    std::fs::write(&cfg_path, &text).map_err(|e| e.to_string())?;
    let cfg = Arc::new(config::parse(&text, &cfg_path).map_err(|e| e.to_string())?);
    let dir = EmbeddedDirectory::open(&state).map_err(|e| e.to_string())?;
    let mut dp = AyaDataplane::load(&AyaOptions::default()).map_err(|e| {
        format!(
            "loading the dataplane: {e} ({:?})",
            std::error::Error::source(&e)
        )
    })?;
    let mut engine = Engine::new(
        cfg.clone(),
        block_on(dir.snapshot()).map_err(|e| e.to_string())?,
    );
    // The initial plan: every server and resource, as at the daemon's first start.
    let t = Instant::now();
    let plan = engine.plan(now_ms(), None).map_err(|e| e.to_string())?;
    let rev = block_on(dir.commit(engine.snapshot().revision, &plan.update))
        .map_err(|e| e.to_string())?;
    engine.committed(&plan.update, rev);
    dp.apply(&plan.changes)
        .map_err(|(i, e)| format!("initial apply, change {i}: {e}"))?;
    let initial = t.elapsed();
    let snap = engine.snapshot();
    let p_id = snap.servers["p"].id;
    let b_id = snap.servers["b"].id;
    let matchers: Vec<(ResourceMatch, u32)> = cfg
        .resources
        .iter()
        .flat_map(|r| {
            let id = snap.resources[&r.name].id;
            r.matchers().into_iter().map(move |m| (m, id))
        })
        .collect();
    if matchers.len() != REMAP_N as usize {
        return Err(format!(
            "{} resource entries, expected {REMAP_N}",
            matchers.len()
        ));
    }
    verify(&dp, &matchers, p_id)?;

    let mut fail: Vec<Step> = Vec::new();
    let mut recover: Vec<Step> = Vec::new();
    let mut floor: Vec<f64> = Vec::new();
    let mut floor_single: Vec<f64> = Vec::new();
    for i in 0..runs {
        let s = step(&mut engine, &dir, &mut dp, false)?;
        verify(&dp, &matchers, b_id)?;
        if s.changes < REMAP_N as usize {
            return Err(format!("the failure wrote only {} changes", s.changes));
        }
        fail.push(s);
        // Floor: the same entries pointing to b, as one batch (what `apply` does with a run of
        // resource entries); beside it, one syscall per entry.
        let batch: Vec<Change> = matchers
            .iter()
            .map(|(m, rid)| Change::SetResource {
                matcher: *m,
                assignment: ResourceAssignment {
                    resource_id: *rid,
                    server: Some(b_id),
                    generation: 1_000_000 + i,
                    on_no_server: NoServerAction::Drop,
                },
            })
            .collect();
        let t = Instant::now();
        dp.apply(&batch)
            .map_err(|(k, e)| format!("floor batch, entry {k}: {e}"))?;
        floor.push(ms(t.elapsed()));
        let t = Instant::now();
        for c in &batch {
            if let Change::SetResource {
                matcher,
                assignment,
            } = c
            {
                dp.set_resource(matcher, assignment)
                    .map_err(|e| e.to_string())?;
            }
        }
        floor_single.push(ms(t.elapsed()));
        let s = step(&mut engine, &dir, &mut dp, true)?;
        verify(&dp, &matchers, p_id)?;
        recover.push(s);
    }
    let med = |v: &[Step], f: fn(&Step) -> Duration| {
        median(&v.iter().map(|s| ms(f(s))).collect::<Vec<_>>())
    };
    let totals: Vec<f64> = fail.iter().map(|s| ms(s.total)).collect();
    let value = median(&totals);
    let fs_type = fs_type_of(&tmp.0);
    Ok(Figure::new(
        "remap_10k_ms",
        value,
        "ms",
        format!(
            "failure verdict for a server that is primary for 10,000 tcp resources → plan → directory commit → map writes, in-process on the real dataplane and embedded directory ({fs_type} disk); median of {} failure runs {} (alternating with recoveries, median {:.1} ms); split (medians): plan {:.1} ms, commit {:.1} ms ({} events, fdatasync), apply {:.1} ms ({} changes; runs of resource entries in one BPF_MAP_UPDATE_BATCH each); floor: {:.1} ms (the 10,000 entries as one bare batch, median of {}; one syscall per entry: {:.1} ms); initial plan+commit+apply of the whole config {:.0} ms",
            fail.len(),
            list1(&totals),
            med(&recover, |s| s.total),
            med(&fail, |s| s.plan),
            med(&fail, |s| s.commit),
            fail[0].events,
            med(&fail, |s| s.apply),
            fail[0].changes,
            median(&floor),
            floor.len(),
            median(&floor_single),
            ms(initial)
        ),
    ))
}

fn list1(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
    format!("[{}]", parts.join(", "))
}

fn fs_type_of(p: &Path) -> String {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return "unknown".into();
    };
    // SAFETY: statfs writes into the zeroed struct; the path is a valid C string.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return "unknown".into();
    }
    match st.f_type as i64 {
        0xef53 => "ext4".into(),
        0x0102_1994 => "tmpfs".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683e => "btrfs".into(),
        0x794c_7630 => "overlayfs".into(),
        t => format!("fs type {t:#x}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The servers' namespace: a whole block of addresses answering on port 80.

/// Server addresses: 198.18.64.1 + i, all local in the servers namespace.
const SERVER_BLOCK: &str = "198.18.64.0/18";
pub(super) const SERVER_BASE: [u8; 4] = [198, 18, 64, 1];

/// One thread accepting and closing connections on 0.0.0.0:80 in a namespace.
struct Responder {
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

impl Responder {
    fn start(ns: &Netns) -> Result<Responder, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicU64::new(0));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = {
            let (stop, accepted, name) = (stop.clone(), accepted.clone(), ns.name.clone());
            std::thread::spawn(move || {
                let ns = Netns { name };
                let _in = ns.enter();
                std::mem::forget(ns); // the namespace belongs to the caller
                let l = match TcpListener::bind("0.0.0.0:80")
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = tx.send(Err(format!("responder: bind 0.0.0.0:80: {e}")));
                        return;
                    }
                };
                let _ = tx.send(Ok(()));
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            drop(s);
                            accepted.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(1)),
                    }
                }
            })
        };
        let r = Responder {
            stop,
            accepted,
            thread: Some(thread),
        };
        rx.recv_timeout(Duration::from_secs(5))
            .map_err(|_| "responder did not start".to_string())??;
        Ok(r)
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Gateway and servers namespaces; drops the responder before the namespaces.
pub(super) struct ServerLab {
    responder: Responder,
    pub(super) gw: Netns,
    pub(super) srv: Netns,
}

pub(super) fn server_lab() -> Result<ServerLab, String> {
    let gw = Netns::new("ftg");
    let srv = Netns::new("fts");
    veth(&gw, "h0", &srv, "s0");
    gw.ip(&["addr", "add", "198.18.4.1/24", "dev", "h0"]);
    srv.ip(&["addr", "add", "198.18.4.2/24", "dev", "s0"]);
    // AnyIP: every address of the block is local to the servers namespace.
    srv.ip(&["route", "add", "local", SERVER_BLOCK, "dev", "lo"]);
    gw.ip(&["route", "add", SERVER_BLOCK, "via", "198.18.4.2"]);
    // A gateway forwards: with forwarding off, the XDP program's route lookups answer
    // "forwarding disabled" and the replies to the gateway's own checks of a server's service
    // port were rewritten as replies to clients (every such check timed out).
    gw.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    srv.exec(&["ethtool", "-K", "s0", "tx", "off"]);
    let responder = Responder::start(&srv)?;
    Ok(ServerLab { responder, gw, srv })
}

/// A gateway config on interface h0: `servers` servers, `resources` tcp resources, and the
/// given `[check_defaults]` lines.
pub(super) fn gateway_config(
    ftn: &Ftn,
    servers: u32,
    resources: u32,
    check_defaults: &str,
) -> String {
    let mut s = String::with_capacity(200 * (servers + resources) as usize + 1024);
    s.push_str(&format!(
        "[gateway]\ninterfaces = [\"h0\"]\npin_dir = \"{}\"\n\n[api]\nlisten = \"127.0.0.1:7480\"\ntoken_file = \"{}\"\n\n[directory]\nbackend = \"embedded\"\npath = \"{}\"\n\n",
        ftn.pin_dir.display(),
        ftn.token_file().display(),
        ftn.state_dir.display()
    ));
    if !check_defaults.is_empty() {
        s.push_str(&format!("[check_defaults]\n{check_defaults}\n\n"));
    }
    for i in 0..servers {
        s.push_str(&format!(
            "[[server]]\nname = \"s{i}\"\naddress = \"{}\"\nchecks = [{{ type = \"tcp\", port = 80 }}]\n\n",
            nth_v4(SERVER_BASE, i)
        ));
    }
    let n = servers.max(1);
    for i in 0..resources {
        let (a, b) = (i % n, (i + 1) % n);
        // Port 80 + i % 4 + 4 * (i / n): one VIP's four resources get four ports, and a
        // server's (address, port) serves one VIP only, as the stateless return path requires
        // (the two resources that list a server in one block of n have different i % 4 when n
        // is a multiple of 4, which every caller's is).
        s.push_str(&format!(
            "[[resource]]\nname = \"r{i}\"\nvip = \"{}\"\nprotocol = \"tcp\"\nports = [{}]\nservers = [\"s{a}\", \"s{b}\"]\n\n",
            nth_v4([198, 18, 128, 1], i / 4),
            80 + i % 4 + 4 * (i / n)
        ));
    }
    s
}

/// (utime, stime) of a process, in seconds.
fn cpu_seconds(pid: u32) -> Result<(f64, f64), String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    let after = stat
        .rsplit_once(')')
        .map(|(_, a)| a)
        .ok_or("unparsable stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the command: state is field 3, utime field 14, stime field 15.
    let utime: u64 = f.get(11).and_then(|v| v.parse().ok()).ok_or("no utime")?;
    let stime: u64 = f.get(12).and_then(|v| v.parse().ok()).ok_or("no stime")?;
    // SAFETY: no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((utime as f64 / hz, stime as f64 / hz))
}

/// (busy, total) jiffies of the whole machine, from the first line of /proc/stat.
fn machine_jiffies() -> Option<(u64, u64)> {
    let st = std::fs::read_to_string("/proc/stat").ok()?;
    let v: Vec<u64> = st
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

/// Whether the kernel accounts interrupt time apart from the interrupted task.
fn irq_time_accounting() -> &'static str {
    let Ok(out) = std::process::Command::new("sh")
        .args([
            "-c",
            "zcat /proc/config.gz 2>/dev/null | grep -E '^CONFIG_IRQ_TIME_ACCOUNTING=y'",
        ])
        .output()
    else {
        return "unknown";
    };
    if out.status.success() {
        "on"
    } else {
        "off or unknown"
    }
}

/// A `Vm*` line of /proc/<pid>/status, in kB.
fn vm_kb(pid: u32, field: &str) -> Result<u64, String> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    st.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

/// Locked memory of the BPF maps the process holds (fdinfo `memlock`, one per map id), in MB.
fn map_memlock_mb(pid: u32) -> Option<f64> {
    let mut seen = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
    {
        let Ok(text) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let get = |k: &str| {
            text.lines()
                .find(|l| l.starts_with(k))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u64>().ok())
        };
        if let (Some(id), Some(mem)) = (get("map_id:"), get("memlock:")) {
            seen.insert(id, mem);
        }
    }
    Some(seen.values().sum::<u64>() as f64 / (1024.0 * 1024.0))
}

/// Checks as the status API counts them.
struct CheckTotals {
    run: u64,
    failed: u64,
    up: usize,
    servers: usize,
    /// The most common last failure reason, with the number of checks that report it.
    reason: Option<(String, usize)>,
}

fn check_totals(ftn: &Ftn) -> CheckTotals {
    let st = ftn.status();
    let servers = st["servers"].as_array().cloned().unwrap_or_default();
    let mut ok = 0;
    let mut failed = 0;
    let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
    for s in &servers {
        for c in s["checks"].as_array().into_iter().flatten() {
            ok += c["probes_ok"].as_u64().unwrap_or(0);
            failed += c["probes_failed"].as_u64().unwrap_or(0);
            if let Some(r) = c["last_failure"].as_str() {
                *reasons.entry(r.to_string()).or_default() += 1;
            }
        }
    }
    CheckTotals {
        run: ok + failed,
        failed,
        up: servers.iter().filter(|s| s["health"] == "up").count(),
        servers: servers.len(),
        reason: reasons.into_iter().max_by_key(|(_, n)| *n),
    }
}

// ---------------------------------------------------------------------------------------------
// heartbeat_cpu_1000

const HEARTBEAT_SERVERS: u32 = 1000;

struct CpuRun {
    cores: f64,
    user: f64,
    sys: f64,
    checks_per_s: f64,
    failed: u64,
    up: usize,
    servers: usize,
    reason: Option<(String, usize)>,
    accepted_per_s: f64,
    /// Cores busy on the whole machine in the window (everything, not only ftn).
    machine_busy: Option<f64>,
}

fn cpu_run(
    lab: &ServerLab,
    servers: u32,
    resources: u32,
    settle: Duration,
    window: Duration,
) -> Result<CpuRun, String> {
    let mut ftn = Ftn::new(&lab.gw);
    ftn.write_config(&gateway_config(&ftn, servers, resources, ""));
    ftn.start_within(Duration::from_secs(30))?;
    let pid = ftn.pid().ok_or("ftn is not running")?;
    std::thread::sleep(settle);
    let before = check_totals(&ftn);
    let a0 = lab.responder.accepted.load(Ordering::Relaxed);
    let t0 = Instant::now();
    let m0 = machine_jiffies();
    let c0 = cpu_seconds(pid)?;
    std::thread::sleep(window);
    let c1 = cpu_seconds(pid)?;
    let m1 = machine_jiffies();
    let elapsed = t0.elapsed().as_secs_f64();
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let machine_busy = match (m0, m1) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            Some((b1 - b0) as f64 / (t1 - t0) as f64 * ncpu)
        }
        _ => None,
    };
    let a1 = lab.responder.accepted.load(Ordering::Relaxed);
    let after = check_totals(&ftn);
    let counted = t0.elapsed().as_secs_f64();
    drop(ftn);
    Ok(CpuRun {
        cores: (c1.0 + c1.1 - c0.0 - c0.1) / elapsed,
        user: (c1.0 - c0.0) / elapsed,
        sys: (c1.1 - c0.1) / elapsed,
        checks_per_s: (after.run - before.run) as f64 / counted,
        failed: after.failed - before.failed,
        up: after.up,
        servers: after.servers,
        reason: after.reason,
        accepted_per_s: (a1 - a0) as f64 / elapsed,
        machine_busy,
    })
}

fn heartbeat(lab: &ServerLab, size: Size) -> Result<Figure, String> {
    let (settle, window) = match size {
        Size::Quick => (Duration::from_secs(1), Duration::from_secs(2)),
        Size::Full => (Duration::from_secs(3), Duration::from_secs(10)),
    };
    let base = cpu_run(lab, 0, 0, settle, window)?;
    let run = cpu_run(lab, HEARTBEAT_SERVERS, 10, settle, window)?;
    if run.servers != HEARTBEAT_SERVERS as usize {
        return Err(format!(
            "status lists {} servers, expected {HEARTBEAT_SERVERS}",
            run.servers
        ));
    }
    Ok(Figure::new(
        "heartbeat_cpu_1000",
        run.cores,
        "cores",
        format!(
            "CPU (utime+stime of the ftn process, /proc/<pid>/stat) over {} s / {} s (user {:.3}, system {:.3}), release build expected (FTN_BIN); 1,000 servers with one tcp:80 check each at the default timing (interval {:?}, timeout {:?}) against one accept-and-close responder in a servers namespace, 10 resources; {:.0} checks/s ran in the window ({} failed{}; expected {:.0}/s), the responder accepted {:.0}/s; {} of {} servers up at the end; {:.1} us of CPU per check; includes the kernel's socket work done in the process's context (IRQ time accounting {}: softirq work of both ends of the veth, i.e. part of the servers' side of each handshake, may be charged to ftn, so this overstates what ftn would use against remote servers); whole machine busy {} cores in the window (ftn, the responder, the kernel and anything else running; loadavg at the end {}); baseline: {:.4} cores for the same process with 0 servers and 0 resources over the same window",
            window.as_secs(),
            window.as_secs(),
            run.user,
            run.sys,
            ftn_controller::config::DEFAULT_CHECK_INTERVAL,
            ftn_controller::config::DEFAULT_CHECK_TIMEOUT,
            run.checks_per_s,
            run.failed,
            run.reason
                .as_ref()
                .map(|(r, n)| format!(", most common last failure: '{r}' on {n} checks"))
                .unwrap_or_default(),
            f64::from(HEARTBEAT_SERVERS) / ftn_controller::config::DEFAULT_CHECK_INTERVAL.as_secs_f64(),
            run.accepted_per_s,
            run.up,
            run.servers,
            if run.checks_per_s > 0.0 { run.cores / run.checks_per_s * 1e6 } else { f64::NAN },
            irq_time_accounting(),
            run.machine_busy.map_or("unknown".to_string(), |b| format!("{b:.2}")),
            loadavg(),
            base.cores,
        ),
    ))
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// rss_mb_100k

struct RssRun {
    rss_mb: f64,
    hwm_mb: f64,
    maps_mb: Option<f64>,
    startup: Duration,
    log_down: usize,
}

fn rss_run(
    lab: &ServerLab,
    servers: u32,
    resources: u32,
    within: Duration,
    settle: Duration,
) -> Result<RssRun, String> {
    let mut ftn = Ftn::new(&lab.gw);
    ftn.write_config(&gateway_config(
        &ftn,
        servers,
        resources,
        "interval = \"10s\"\ntimeout = \"1s\"",
    ));
    let startup = ftn.start_within(within)?;
    let pid = ftn.pid().ok_or("ftn is not running")?;
    std::thread::sleep(settle);
    let rss = vm_kb(pid, "VmRSS:")?;
    let hwm = vm_kb(pid, "VmHWM:")?;
    let maps_mb = map_memlock_mb(pid);
    let log_down = ftn.log_text().matches("server is down").count();
    drop(ftn);
    Ok(RssRun {
        rss_mb: rss as f64 / 1024.0,
        hwm_mb: hwm as f64 / 1024.0,
        maps_mb,
        startup,
        log_down,
    })
}

fn rss(lab: &ServerLab, size: Size) -> Result<Figure, String> {
    let (servers, resources, within, settle) = match size {
        Size::Quick => (100, 1_000, Duration::from_secs(30), Duration::from_secs(2)),
        Size::Full => (
            10_000,
            100_000,
            Duration::from_secs(180),
            Duration::from_secs(12),
        ),
    };
    let base = rss_run(lab, 0, 0, Duration::from_secs(30), Duration::from_secs(1))?;
    let run = rss_run(lab, servers, resources, within, settle)?;
    let mb = |v: Option<f64>| v.map_or("unknown".to_string(), |m| format!("{m:.1} MB"));
    Ok(Figure::new(
        "rss_mb_100k",
        run.rss_mb,
        "MB",
        format!(
            "VmRSS of ftn run with {resources} resources (one tcp port each, 4 per VIP) on {servers} servers{}, {} s after its API answered (startup took {:.1} s; peak VmHWM {:.1} MB); checks slowed to interval 10s, timeout 1s (all servers answer in a servers namespace; {} 'server is down' log lines); BPF maps are kernel memory, not RSS: {} locked; baseline: empty config (no servers, no resources) {:.1} MB RSS (maps {}); dataplane capacity: MAX_RESOURCES {MAX_RESOURCES}, MAX_SERVERS {MAX_SERVERS}",
            if size == Size::Quick { " (QUICK: scaled down from 100,000 / 10,000)" } else { "" },
            settle.as_secs(),
            run.startup.as_secs_f64(),
            run.hwm_mb,
            run.log_down,
            mb(run.maps_mb),
            base.rss_mb,
            mb(base.maps_mb),
        ),
    ))
}

/// `remap_10k_ms` (its own part: `--only remap`).
pub fn run_remap(size: Size) -> Vec<Figure> {
    vec![attempt(|| remap(size)).unwrap_or_else(|e| Figure::missing("remap_10k_ms", "ms", e))]
}

/// `heartbeat_cpu_1000` and `rss_mb_100k`.
pub fn run(size: Size) -> Vec<Figure> {
    let mut out = Vec::new();
    match attempt(server_lab) {
        Ok(lab) => {
            out.push(
                attempt(|| heartbeat(&lab, size))
                    .unwrap_or_else(|e| Figure::missing("heartbeat_cpu_1000", "cores", e)),
            );
            out.push(
                attempt(|| rss(&lab, size))
                    .unwrap_or_else(|e| Figure::missing("rss_mb_100k", "MB", e)),
            );
        }
        Err(e) => {
            let why = format!("the servers' namespace could not be set up: {e}");
            out.push(Figure::missing("heartbeat_cpu_1000", "cores", why.clone()));
            out.push(Figure::missing("rss_mb_100k", "MB", why));
        }
    }
    out
}
