//! The live demo lab (`cargo xtask demo`): a client, a gateway running the real `ftn` daemon
//! (XDP dataplane, health checks, embedded directory), and a primary and a backup server, each
//! in its own network namespace. No real servers are needed.
//!
//! Scenario: a client opens a new TCP connection to the VIP every 10 ms for the whole demo and
//! records which server answered. The primary's service is killed (host alive), the backup
//! takes over; the primary's service returns and, after the hold time, traffic fails back; a
//! connection opened on the backup during the failover is checked after the failback. Then the
//! primary's link goes down (a crash), and comes back. Every figure printed is measured.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use ftn_tests::{
    ftn::{answered_by, failed_in, gap, Ftn, Gap, Prober, Sample},
    lab::{attach_pass_in, in_ns, topology, Conn, Service, VIP4},
    timing::Timing,
};

const HOLD: &str = "3s";
/// The demo's checks use ftn's defaults; every wait is derived from them (tests/src/timing.rs).
const T: Timing = Timing::DEFAULT;
const HOLD_TIME: Duration = Duration::from_secs(3);

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (network namespaces, XDP): run `cargo xtask demo` as root");
        std::process::exit(2);
    }
    let total = Instant::now();
    println!("== ftn demo lab: client -> gateway (ftn, XDP) -> primary p1 / backup b1 ==\n");
    let t = topology();
    let _pass = [
        attach_pass_in(&t.client, "c0"),
        attach_pass_in(&t.primary, "p0"),
        attach_pass_in(&t.backup, "b0"),
    ];
    let mut primary = Some(Service::start(&t.primary, "primary"));
    let _backup = Service::start(&t.backup, "backup");
    let mut ftn = Ftn::new(&t.gateway);
    let config = ftn.standard_config("", &format!("failback = \"hold\"\nhold = \"{HOLD}\""));
    ftn.write_config(&config);
    println!("-- the gateway's ftn.toml (checks use the defaults: every 1 s, timeout 50 ms, fall 2, rise 3, with passive health; hold shortened to {HOLD} for the demo, default 10s) --");
    for l in config
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
    {
        println!("  {l}");
    }
    ftn.start();
    ftn.wait_current("web", Some("p1"), T.first_serve());
    println!("\n-- `ftn status` on the gateway --");
    print!("{}", indent(&ftn.cli_ok(&["status"])));

    let vip: IpAddr = VIP4.parse().unwrap();
    let probe = Prober::start(
        &t.client,
        vip,
        Duration::from_millis(10),
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(500));

    // 1. The primary's service dies; host and link stay up.
    let killed = probe.now();
    primary = drop_service(primary);
    println!(
        "\n[{:>6.3} s] primary's service killed (port 80 closed, host up)",
        killed.as_secs_f64()
    );
    ftn.wait_current("web", Some("b1"), T.down());
    println!("[{:>6.3} s] failover to b1", probe.now().as_secs_f64());
    let on_backup = in_ns(&t.client, move || Conn::open(vip));
    std::thread::sleep(Duration::from_millis(700));

    // 2. The primary's service returns: failback after the hold time.
    let returned = probe.now();
    primary = Some(primary.unwrap_or_else(|| Service::start(&t.primary, "primary")));
    println!("[{:>6.3} s] primary's service back", returned.as_secs_f64());
    ftn.wait_current("web", Some("p1"), T.failback_after(HOLD_TIME));
    let failed_back = probe.now();
    println!(
        "[{:>6.3} s] failback to p1 (hold {HOLD})",
        failed_back.as_secs_f64()
    );
    std::thread::sleep(Duration::from_millis(500));
    let (on_backup, backup_after) = in_ns(&t.client, move || {
        let mut c = on_backup;
        let r = c.try_ask();
        (c, r)
    });
    drop(on_backup);

    // 3. The primary crashes: its link goes down.
    let crashed = probe.now();
    t.primary.ip(&["link", "set", "p0", "down"]);
    println!(
        "[{:>6.3} s] primary's link down (crash)",
        crashed.as_secs_f64()
    );
    ftn.wait_current("web", Some("b1"), T.down());
    println!("[{:>6.3} s] failover to b1", probe.now().as_secs_f64());
    std::thread::sleep(Duration::from_millis(700));
    let relinked = probe.now();
    t.primary.ip(&["link", "set", "p0", "up"]);
    t.primary.ip(&[
        "-6",
        "addr",
        "replace",
        "2001:2:2::10/64",
        "dev",
        "p0",
        "nodad",
    ]);
    t.primary
        .ip(&["route", "replace", "default", "via", "198.18.2.1"]);
    println!("[{:>6.3} s] primary's link up", relinked.as_secs_f64());
    ftn.wait_current("web", Some("p1"), T.failback_after(HOLD_TIME));
    std::thread::sleep(Duration::from_millis(500));
    let samples = probe.finish();
    let end = samples.last().map(|s| s.at).unwrap_or_default() + Duration::from_millis(1);

    println!("\n-- `ftn events` (the directory's event log) --");
    print!("{}", indent(&ftn.events()));

    let svc = gap(&samples, killed, returned);
    let fb = gap(&samples, returned, crashed);
    let crash = gap(&samples, crashed, relinked);
    let fb2 = gap(&samples, relinked, end);
    println!(
        "\n-- client: a new TCP connection to {VIP4}:80 every 10 ms ({} probes) --",
        samples.len()
    );
    report("service killed", &samples, killed, returned, svc);
    report("failback      ", &samples, returned, crashed, fb);
    report("link down     ", &samples, crashed, relinked, crash);
    report("failback      ", &samples, relinked, end, fb2);
    let survived = backup_after.as_deref() == Ok("backup");
    println!(
        "  connection opened on the backup during the failover, after failback: {}",
        match &backup_after {
            Ok(s) => format!("still answered by {s}"),
            Err(e) => format!("BROKEN ({e})"),
        }
    );
    drop(primary);
    drop(ftn);
    drop(t);
    println!("\n-- summary --");
    println!(
        "  failover when the service died: {svc} interruption; when the link went down: {crash}"
    );
    println!(
        "  failback: {} + {} failed probes; connection on the backup survived failback: {}",
        fb.failed,
        fb2.failed,
        if survived { "yes" } else { "no" }
    );
    println!(
        "  lab removed (namespaces, XDP, pinned maps); demo took {:.1} s",
        total.elapsed().as_secs_f64()
    );
    let ok = survived
        && fb.failed == 0
        && fb2.failed == 0
        && !(svc.open || fb.open || crash.open || fb2.open)
        && answered_by(&samples, killed, returned, "backup") > 0
        && answered_by(&samples, crashed, relinked, "backup") > 0;
    if !ok {
        eprintln!("demo: the lab did not behave as expected (see above)");
        std::process::exit(1);
    }
}

fn drop_service(s: Option<Service>) -> Option<Service> {
    drop(s);
    None
}

fn report(what: &str, samples: &[Sample], from: Duration, to: Duration, g: Gap) {
    println!(
        "  {what}: longest interruption {g}, {} failed probes (primary answered {}, backup {})",
        g.failed,
        answered_by(samples, from, to, "primary"),
        answered_by(samples, from, to, "backup")
    );
    // When each failed probe started and how long it took to fail (a timeout: no answer in
    // 200 ms; quicker: refused or reset).
    let failed: Vec<String> = failed_in(samples, from, to)
        .map(|s| {
            format!(
                "{:.3} s (+{} ms)",
                s.at.as_secs_f64(),
                s.done.saturating_sub(s.at).as_millis()
            )
        })
        .collect();
    if !failed.is_empty() {
        println!(
            "    failed probes (start, time to fail): {}",
            failed.join(", ")
        );
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("  {l}\n")).collect()
}
