//! Hostile input against a running gateway: a connection flood on the admin API, checks that
//! cannot run for a local reason, a FIFO as the token file, an interface deleted and created
//! again under traffic, a dataplane that drops what it redirects, a corrupt directory. After
//! each, no resource lost its server and no committed state was lost. Needs root; never skipped.

use std::{
    net::SocketAddr,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use ftn_tests::{
    ftn::{answered_by, gap},
    gateway::{Lab, Options},
    lab::{attach_pass_in, in_ns, veth},
    timing::{Timing, MARGIN},
    Netns,
};

/// The open-file limit `dist/ftn.service` gives ftn (`LimitNOFILE=`).
fn unit_nofile() -> u64 {
    let unit = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/ftn.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("LimitNOFILE="))
        .unwrap_or_else(|| panic!("{} sets no LimitNOFILE", unit.display()))
        .trim()
        .parse()
        .expect("LimitNOFILE is a number")
}

/// Raises this process' soft open-file limit to its hard one; returns it.
fn raise_own_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
    lim.rlim_max
}

/// Non-blocking connects to `to`, from 127.0.0.2.. (16 source addresses, so that the
/// ephemeral ports suffice), none of which ever sends a byte: `n` half-open connections.
/// Bounded by `n` and by `within`; every socket is kept open until the result is dropped.
fn flood(gateway: &Netns, to: SocketAddr, n: usize, within: Duration) -> Vec<OwnedFd> {
    in_ns(gateway, move || {
        let started = Instant::now();
        let mut socks = Vec::with_capacity(n);
        for i in 0..n {
            assert!(
                started.elapsed() < within,
                "opened only {i} of {n} connections in {within:?}"
            );
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .unwrap_or_else(|e| panic!("socket #{i}: {e}"));
            s.set_nonblocking(true).unwrap();
            // The source port is chosen at connect time (IP_BIND_ADDRESS_NO_PORT), per
            // (source, destination): 16 sources give 16 x 28,000 ports.
            let one: libc::c_int = 1;
            // SAFETY: setsockopt with a valid int option.
            unsafe {
                libc::setsockopt(
                    s.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    &one as *const libc::c_int as *const libc::c_void,
                    std::mem::size_of::<libc::c_int>() as u32,
                );
            }
            let src: SocketAddr = format!("127.0.0.{}:0", 2 + i % 16).parse().unwrap();
            s.bind(&src.into()).unwrap();
            match s.connect(&to.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => panic!("connect #{i} from {src}: {e}"),
            }
            socks.push(OwnedFd::from(s));
        }
        socks
    })
}

/// Lines of ftn's log that say a server went down.
fn servers_down(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("server is down"))
        .map(String::from)
        .collect()
}

/// The status must show every resource with a server, and only `down` servers down.
fn assert_servers(lab: &Lab, down: &[&str]) {
    let st = lab.ftn.status();
    for r in st["resources"].as_array().unwrap() {
        assert!(r["current"].is_string(), "resource without a server: {r}");
    }
    for s in st["servers"].as_array().unwrap() {
        let name = s["name"].as_str().unwrap();
        let want = if down.contains(&name) { "down" } else { "up" };
        assert_eq!(s["health"], want, "server {name}: {s}");
    }
}

/// Twice the unit's open-file limit in half-open API connections while the primary's service
/// dies: the checks keep their descriptors (no other server down, no check unable to run),
/// the failover is as fast as without the flood, and the API answers again once it stops.
#[test]
fn api_connection_flood_starves_no_check_and_delays_no_failover() {
    // ftn runs under the unit's limit when this machine allows the test to hold twice as many
    // sockets; else (raising a hard limit needs CAP_SYS_RESOURCE) under the largest limit
    // whose double the test can hold, which is said.
    let unit = unit_nofile();
    let own = raise_own_nofile();
    let nofile = unit.min(own.saturating_sub(1024) / 2);
    if nofile < unit {
        println!(
            "this process may hold {own} descriptors: ftn runs with a limit of {nofile} instead of the unit's {unit}"
        );
    }
    let timing = Timing::DEFAULT;
    let mut lab = Lab::start_with(
        timing,
        "",
        Options {
            nofile: Some(nofile),
            ..Options::default()
        },
    );
    lab.ftn
        .wait_current("web", Some("p1"), timing.first_serve());
    let n = 2 * nofile as usize;
    let probe = lab.probe();
    // Opening 131,072 sockets takes a few seconds; 60 s is the bound.
    let started = Instant::now();
    let held = flood(
        &lab.t.gateway,
        "127.0.0.1:7480".parse().unwrap(),
        n,
        Duration::from_secs(60),
    );
    println!(
        "{} half-open connections to the API opened in {:.1} s (ftn's limit: {nofile})",
        held.len(),
        started.elapsed().as_secs_f64()
    );
    let killed = probe.now();
    lab.primary = None;
    // The failover is seen by the client (the API is flooded: the status is read afterwards).
    std::thread::sleep(timing.down());
    let until = probe.now();
    let samples = probe.finish();
    let fo = gap(&samples, killed, until);
    println!("failover under the flood: client gap {fo}");
    assert!(
        !fo.open,
        "the client was not served again within {:?}",
        timing.down()
    );
    assert!(
        fo.longest <= timing.down_exact() + MARGIN,
        "failover took {fo} under the flood"
    );
    assert!(answered_by(&samples, killed, until, "backup") > 0);
    let during = lab.ftn.log_text();
    drop(held);
    // The API answers again: the held connections end within the header timeout.
    let header_timeout = Duration::from_secs(5);
    let t = Instant::now();
    let st = loop {
        match lab.ftn.try_status() {
            Ok(st) => break st,
            Err(e) => {
                assert!(
                    t.elapsed() < header_timeout + MARGIN,
                    "the API did not answer within {:?} of the flood's end: {e}",
                    header_timeout + MARGIN
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    println!(
        "the API answered {:.1} s after the flood ended",
        t.elapsed().as_secs_f64()
    );
    // The primary's service answers for p1 (IPv4) and p6 (IPv6): both go down, nobody else.
    assert_servers(&lab, &["p1", "p6"]);
    let down = servers_down(&during);
    assert!(
        down.len() == 2
            && down.iter().any(|l| l.contains("p1"))
            && down.iter().any(|l| l.contains("p6")),
        "only p1 and p6 may go down: {down:?}"
    );
    for s in st["servers"].as_array().unwrap() {
        for c in s["checks"].as_array().unwrap() {
            assert_eq!(c["local_errors"], 0, "a check could not run: {s}");
        }
    }
    let (_, metrics) = lab.ftn.http("GET", "/metrics", None, None);
    let capacity = metrics
        .lines()
        .find(|l| l.starts_with("ftn_api_connections_total{outcome=\"capacity\"}"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(
        capacity >= 1,
        "the listener never reached its cap:\n{metrics}"
    );
}

/// Every new descriptor refused to ftn (its soft limit lowered to 3: only stdin, stdout and
/// stderr fit) for three times the time a dead server takes to be declared down: no verdict
/// changes (the client is served by the primary throughout), and the checks say why.
#[test]
fn checks_that_cannot_run_locally_change_no_verdict() {
    let timing = Timing::DEFAULT;
    let lab = Lab::start(timing, "");
    let pid = lab.ftn.pid().unwrap().to_string();
    let probe = lab.probe();
    std::thread::sleep(Duration::from_millis(200));
    let soft = ftn_tests::run(&[
        "prlimit",
        "--pid",
        &pid,
        "--nofile",
        "--output=SOFT",
        "--noheadings",
    ]);
    let soft = String::from_utf8_lossy(&soft.stdout).trim().to_string();
    let from = probe.now();
    ftn_tests::run(&["prlimit", "--pid", &pid, "--nofile=3:"]);
    std::thread::sleep(timing.down_exact() * 3);
    ftn_tests::run(&["prlimit", "--pid", &pid, &format!("--nofile={soft}:")]);
    let to = probe.now();
    std::thread::sleep(Duration::from_millis(200));
    let samples = probe.finish();
    let g = gap(&samples, from, to);
    println!(
        "client while checks could not run: gap {g}, {} failed",
        g.failed
    );
    assert!(!g.open && g.failed == 0, "the client lost service: {g}");
    assert_eq!(
        answered_by(&samples, from, to, "backup"),
        0,
        "traffic moved to the backup"
    );
    // Probes run again within one interval; the API answers again.
    std::thread::sleep(timing.interval + timing.timeout + MARGIN);
    assert_servers(&lab, &[]);
    let st = lab.ftn.status();
    for s in st["servers"].as_array().unwrap() {
        for c in s["checks"].as_array().unwrap() {
            assert!(
                c["local_errors"].as_u64().unwrap() > 0,
                "no local error counted: {s}"
            );
            assert!(c["unable_to_run"].is_null(), "still unable: {s}");
        }
    }
    let log = lab.ftn.log_text();
    assert!(servers_down(&log).is_empty(), "{log}");
    assert!(
        log.contains("check failed to run") && log.contains("Too many open files"),
        "{log}"
    );
    let (_, metrics) = lab.ftn.http("GET", "/metrics", None, None);
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("ftn_check_probes_total")
                && l.contains("result=\"local_error\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );
}

/// A FIFO as `api.token_file`: `ftn check-config` and a reload refuse it at once, and a failover
/// meanwhile is as fast as ever.
#[test]
fn fifo_token_file_is_refused_at_once_and_failover_goes_on() {
    let timing = Timing::DEFAULT;
    let mut lab = Lab::start(timing, "");
    let fifo = lab.ftn.dir.join("token.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let good = std::fs::read_to_string(&lab.ftn.config).unwrap();
    let token = lab.ftn.token_file();
    lab.ftn
        .write_config(&good.replace(token.to_str().unwrap(), fifo.to_str().unwrap()));
    let t = Instant::now();
    let out = lab
        .ftn
        .cli_raw(&["check-config", lab.ftn.config.to_str().unwrap()]);
    let took = t.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted a FIFO");
    assert!(err.contains("FIFO"), "{err}");
    assert!(took < Duration::from_secs(2), "check-config took {took:?}");
    lab.ftn.hup();
    let killed = Instant::now();
    lab.primary = None;
    let took = lab.ftn.wait_current("web", Some("b1"), timing.down());
    println!(
        "failover {:.0} ms after the service died, with a FIFO reload in between",
        took.as_secs_f64() * 1000.0
    );
    assert!(killed.elapsed() <= timing.down());
    let log = lab.ftn.log_text();
    assert!(
        log.contains("configuration reload refused") || log.contains("reload refused"),
        "{log}"
    );
    assert!(log.contains("FIFO"), "{log}");
    lab.ftn.wait_current("web6", Some("b6"), timing.down());
    let st = lab.ftn.status();
    assert_eq!(st["reloads_failed"], 1, "{st}");
    assert_servers(&lab, &["p1", "p6"]);
}

/// Re-creates the client's link (c0 in the client, g0 on the gateway) as the lab first made it.
fn recreate_client_link(lab: &mut Lab) -> aya::Ebpf {
    let (c, g) = (&lab.t.client, &lab.t.gateway);
    g.ip(&["link", "del", "g0"]);
    veth(c, "c0", g, "g0");
    c.ip(&["addr", "add", "198.18.1.10/24", "dev", "c0"]);
    c.ip(&["addr", "add", "2001:2:1::10/64", "dev", "c0", "nodad"]);
    g.ip(&["addr", "add", "198.18.1.1/24", "dev", "g0"]);
    g.ip(&["addr", "add", "2001:2:1::1/64", "dev", "g0", "nodad"]);
    c.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.c0.rp_filter=0"]);
    g.exec(&["sysctl", "-q", "-w", "net.ipv4.conf.g0.rp_filter=0"]);
    c.exec(&["ethtool", "-K", "c0", "tx", "off"]);
    c.ip(&["route", "add", "default", "via", "198.18.1.1"]);
    c.ip(&["-6", "route", "add", "default", "via", "2001:2:1::1"]);
    attach_pass_in(c, "c0")
}

/// When a new connection through the VIP first succeeds after `from` (bounded by `within`).
fn served_again(lab: &Lab, within: Duration) -> Duration {
    let t = Instant::now();
    loop {
        let ok = in_ns(&lab.t.client, || {
            ftn_tests::lab::Conn::try_open(Lab::vip(), Duration::from_millis(100))
                .ok()
                .and_then(|mut c| c.try_ask().ok())
        });
        if ok.as_deref() == Some("primary") {
            return t.elapsed();
        }
        assert!(
            t.elapsed() < within,
            "not served within {within:?} of the interface's return"
        );
    }
}

/// The gateway's client-side interface deleted and created again (new ifindex) while the
/// controller runs: XDP is attached to the new one and forwarding resumes within a second,
/// without a restart; the same while the controller is stopped: the next start repairs it.
#[test]
fn a_recreated_interface_is_followed_without_a_restart() {
    let timing = Timing::DEFAULT;
    let mut lab = Lab::start(timing, "");
    let before = lab.t.gateway.ifindex("g0").unwrap();
    let pass = recreate_client_link(&mut lab);
    lab.pass.push(pass);
    let after = lab.t.gateway.ifindex("g0").unwrap();
    assert_ne!(before, after);
    // The netlink wake-up comes within milliseconds; the periodic look (2 s) is the fallback.
    let took = served_again(&lab, Duration::from_secs(1));
    println!(
        "g0 re-created (ifindex {before} -> {after}): served again {:.0} ms later",
        took.as_secs_f64() * 1000.0
    );
    let st = lab.ftn.status();
    let g0 = st["interface_states"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "g0")
        .cloned()
        .unwrap();
    assert_eq!(g0["ifindex"], after, "{st}");
    assert_eq!(g0["attached"], true, "{st}");
    assert!(st["warnings"].as_array().unwrap().is_empty(), "{st}");
    // Again with the controller stopped: the pinned link is defunct; the next start (an
    // adoption) repairs it.
    lab.ftn.stop();
    let pass = recreate_client_link(&mut lab);
    lab.pass.push(pass);
    lab.ftn.start();
    let took = served_again(&lab, Duration::from_secs(1));
    println!(
        "g0 re-created while stopped: served {:.0} ms after the restart",
        took.as_secs_f64() * 1000.0
    );
    assert!(lab.ftn.log_text().contains("XDP attached to the new one"));
    assert_servers(&lab, &[]);
}

/// Native XDP redirecting into a veth whose peer has neither an XDP program nor GRO drops
/// every redirected frame: the gateway says so (status warning, metric, log) while its
/// checks, which do not go through XDP, pass.
#[test]
fn a_dataplane_that_drops_redirected_frames_is_reported() {
    let timing = Timing::DEFAULT;
    let lab = Lab::start_with(
        timing,
        "",
        Options {
            primary_pass: false,
            ..Options::default()
        },
    );
    lab.t.primary.exec(&["ethtool", "-K", "p0", "gro", "off"]);
    lab.ftn
        .wait_current("web", Some("p1"), timing.first_serve());
    // Every server answered a check once. Seen in this lab: the IPv6 servers' very first
    // probes, about 0.2 s after the links came up, can take longer than their 50 ms (both p6
    // and b6 went down that way, once in four runs); this test is about the dataplane.
    let t = Instant::now();
    while !lab.ftn.status()["servers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["checks"][0]["probes_ok"].as_u64() > Some(0))
    {
        assert!(t.elapsed() < timing.first_serve(), "{}", lab.ftn.status());
        std::thread::sleep(Duration::from_millis(50));
    }
    let (p4, p6) = (lab.probe(), lab.probe6());
    // A report needs `passive_min` (3) SYNs unanswered for `passive_window` (20 ms); one comes
    // per server per `passive_rearm` (250 ms). Both servers in use report within 0.5 s.
    let within = Duration::from_millis(500) + MARGIN;
    let t = Instant::now();
    let st = loop {
        let st = lab.ftn.status();
        if st["dataplane_fault_suspected"] == true {
            break st;
        }
        assert!(
            t.elapsed() < within,
            "no dataplane fault reported within {within:?}: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let (at4, at6) = (p4.now(), p6.now());
    println!(
        "dataplane fault reported {:.0} ms after the clients started",
        t.elapsed().as_secs_f64() * 1000.0
    );
    std::thread::sleep(Duration::from_millis(300));
    let (s4, s6) = (p4.finish(), p6.finish());
    // The first connections may be answered: until the gateway's neighbour entries exist, the
    // program hands the rewritten packets to the kernel, which sends them the normal way. From
    // the report on, every connection is redirected, and lost.
    let after: Vec<_> = s4
        .iter()
        .filter(|s| s.at >= at4)
        .chain(s6.iter().filter(|s| s.at >= at6))
        .collect();
    assert!(!after.is_empty());
    assert!(
        after.iter().all(|s| s.answer.is_none()),
        "a connection was answered after the report: the lab does not drop redirected frames"
    );
    let warnings = st["warnings"].to_string();
    assert!(
        warnings.contains("xdp_mode = \\\"generic\\\"") && warnings.contains("p1, p6"),
        "{warnings}"
    );
    let (_, metrics) = lab.ftn.http("GET", "/metrics", None, None);
    assert!(
        metrics.contains("ftn_dataplane_fault_suspected 1"),
        "{metrics}"
    );
    assert!(lab.ftn.log_text().contains("dataplane fault suspected"));
    // The servers are healthy: nothing failed over.
    assert_servers(&lab, &[]);
    assert_eq!(lab.ftn.current("web").as_deref(), Some("p1"));
}

fn wal(state_dir: &Path) -> PathBuf {
    state_dir.join("wal.jsonl")
}

/// A byte flipped in a committed WAL record: `ftn run` refuses to start, naming the file and
/// the offset, and changes nothing on disk; the record restored, it starts with every commit.
#[test]
fn a_corrupt_directory_record_refuses_to_start_and_is_not_cut() {
    let timing = Timing::DEFAULT;
    let mut lab = Lab::start(timing, "");
    // Commits: a failover, and an operator's drain of the backup's IPv6 twin.
    lab.primary = None;
    lab.ftn.wait_current("web", Some("b1"), timing.down());
    lab.ftn.wait_current("web6", Some("b6"), timing.down());
    lab.ftn.cli_ok(&["drain", "b6"]);
    lab.ftn.stop();
    let path = wal(&lab.ftn.state_dir);
    let good = std::fs::read(&path).unwrap();
    let lines: Vec<usize> = good
        .iter()
        .enumerate()
        .filter(|(_, &b)| b == b'\n')
        .map(|(i, _)| i)
        .collect();
    assert!(lines.len() >= 3, "{} WAL records", lines.len());
    // A byte inside the first record's JSON (not its last line).
    let mut bad = good.clone();
    let at = lines[0] / 2;
    bad[at] ^= 0x01;
    std::fs::write(&path, &bad).unwrap();
    let err = lab.ftn.start_expect_failure();
    assert!(
        err.contains("wal.jsonl") && err.contains("line 1 (byte offset 0)"),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), bad, "the WAL was changed");
    std::fs::write(&path, &good).unwrap();
    lab.ftn.start();
    assert_eq!(lab.ftn.current("web").as_deref(), Some("b1"));
    let st = lab.ftn.status();
    let b6 = st["servers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "b6")
        .cloned()
        .unwrap();
    assert_eq!(b6["drained"], true, "the drain was lost: {b6}");
}
