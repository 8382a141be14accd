//! The live demo lab (`cargo xtask demo`): a client, a gateway running ftn's XDP dataplane, and
//! a primary and a backup server, each in its own network namespace.
//!
//! The controller daemon (heartbeats, directory, failover policy) is not built yet (issue 3),
//! so this demo plays its part with a deliberately simple loop that it prints as such: a TCP
//! check of each server from the gateway every 20 ms, 3 failures to declare a server down,
//! 3 successes to declare it up, failback as soon as the primary is up. What it measures is
//! real: a client opens a new TCP connection to the VIP every 10 ms and records which server
//! answered, and connections opened before each switch are checked afterwards.

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Dataplane, NoServerAction, Protocol, ResourceAssignment,
    ResourceMatch, ServerEntry, XdpAttachMode,
};
use ftn_tests::lab::{attach_pass_in, in_ns, topology, Conn, Service, VIP4};

const PRIMARY: u32 = 0;
const BACKUP: u32 = 1;
const CHECK_INTERVAL: Duration = Duration::from_millis(20);
const CHECK_TIMEOUT: Duration = Duration::from_millis(50);
const FALL: u32 = 3;
const RISE: u32 = 3;

#[derive(Clone, Debug)]
struct Probe {
    at: Duration,
    answer: Option<String>,
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (network namespaces, XDP): run `sudo cargo xtask demo`");
        std::process::exit(2);
    }
    println!("== ftn demo lab: client -> gateway (XDP) -> primary / backup ==");
    let t = topology();
    let _pass = [
        attach_pass_in(&t.client, "c0"),
        attach_pass_in(&t.primary, "p0"),
        attach_pass_in(&t.backup, "b0"),
    ];
    let mut primary_svc = Some(Service::start(&t.primary, "primary"));
    let _backup_svc = Service::start(&t.backup, "backup");

    let _g = t.gateway.enter();
    let mut dp = AyaDataplane::load(&AyaOptions {
        interfaces: vec!["g0".into(), "g1".into(), "g2".into()],
        mode: XdpAttachMode::Auto,
        ..AyaOptions::default()
    })
    .expect("load and attach ftn's XDP program on the gateway");
    for a in dp.attached() {
        println!(
            "gateway: XDP attached to {} in {} mode",
            a.interface, a.mode
        );
    }
    let vip: IpAddr = VIP4.parse().unwrap();
    let servers: [(u32, IpAddr); 2] = [
        (PRIMARY, "198.18.2.10".parse().unwrap()),
        (BACKUP, "198.18.3.10".parse().unwrap()),
    ];
    for (id, addr) in servers {
        dp.set_server(
            id,
            &ServerEntry {
                addr,
                up: true,
                generation: 1,
            },
        )
        .unwrap();
    }
    let web = ResourceMatch {
        vip,
        protocol: Protocol::Tcp,
        port: 80,
    };
    let mut generation = 1;
    let assign = |dp: &mut AyaDataplane, server: u32, generation: u32| {
        dp.set_resource(
            &web,
            &ResourceAssignment {
                resource_id: 0,
                server: Some(server),
                generation,
                on_no_server: NoServerAction::Reject,
            },
        )
        .unwrap();
    };
    assign(&mut dp, PRIMARY, generation);
    println!("resource web: {VIP4}:80/tcp -> primary 198.18.2.10, backup 198.18.3.10");

    // The client: a new connection every 10 ms, for the whole demo.
    let probes: Arc<Mutex<Vec<Probe>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let client = {
        let (probes, stop, name) = (probes.clone(), stop.clone(), t.client.name.clone());
        std::thread::spawn(move || {
            let ns = ftn_tests::Netns { name };
            let _in = ns.enter();
            std::mem::forget(ns);
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let at = start.elapsed();
                let answer = probe(vip);
                probes.lock().unwrap().push(Probe { at, answer });
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let long_on_primary = in_ns(&t.client, move || Conn::open(vip));

    // The stand-in controller.
    let mut state = [true, true];
    let mut streak = [0u32, 0u32];
    let mut current = PRIMARY;
    let mut events: Vec<(Duration, String)> = Vec::new();
    let mut long_on_backup: Option<Conn> = None;
    let mut killed_at = None;
    let mut restarted_at = None;
    let demo_end = Duration::from_secs(6);
    while start.elapsed() < demo_end {
        let now = start.elapsed();
        if killed_at.is_none() && now >= Duration::from_millis(1500) {
            primary_svc = None; // the primary's service dies (host and link stay up)
            killed_at = Some(now);
            events.push((now, "primary's service killed (port 80 closed)".into()));
        }
        if restarted_at.is_none() && now >= Duration::from_millis(3500) {
            primary_svc = Some(Service::start(&t.primary, "primary"));
            restarted_at = Some(now);
            events.push((now, "primary's service restarted".into()));
        }
        for (i, (id, addr)) in servers.iter().enumerate() {
            let ok = TcpStream::connect_timeout(&SocketAddr::new(*addr, 80), CHECK_TIMEOUT).is_ok();
            if ok == state[i] {
                streak[i] = 0;
                continue;
            }
            streak[i] += 1;
            if streak[i] >= if ok { RISE } else { FALL } {
                state[i] = ok;
                streak[i] = 0;
                generation += 1;
                dp.set_server(
                    *id,
                    &ServerEntry {
                        addr: *addr,
                        up: ok,
                        generation,
                    },
                )
                .unwrap();
                let name = if *id == PRIMARY { "primary" } else { "backup" };
                events.push((
                    start.elapsed(),
                    format!("{name} declared {}", if ok { "up" } else { "down" }),
                ));
            }
        }
        let want = if state[0] { PRIMARY } else { BACKUP };
        if want != current {
            current = want;
            generation += 1;
            assign(&mut dp, current, generation);
            let to = if current == PRIMARY {
                "primary (failback)"
            } else {
                "backup (failover)"
            };
            events.push((
                start.elapsed(),
                format!("resource web -> {to}, generation {generation}"),
            ));
            if current == BACKUP {
                long_on_backup = Some(in_ns(&t.client, move || Conn::open(vip)));
            }
        }
        std::thread::sleep(CHECK_INTERVAL);
    }
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    drop(primary_svc);

    // Connections opened before each switch.
    let (long_primary_after, long_backup_after) = in_ns(&t.client, move || {
        let mut p = long_on_primary;
        let a = p.try_ask();
        let b = long_on_backup.map(|mut c| c.try_ask());
        (a, b)
    });

    let probes = probes.lock().unwrap().clone();
    println!("\n-- events (the stand-in controller: TCP check every {CHECK_INTERVAL:?}, fall {FALL}, rise {RISE}) --");
    for (at, e) in &events {
        println!("  {:>7.3} s  {e}", at.as_secs_f64());
    }
    let killed = killed_at.unwrap();
    let restarted = restarted_at.unwrap();
    let (fo_gap, fo_failed) = longest_gap(&probes, killed, restarted);
    let (fb_gap, fb_failed) = longest_gap(&probes, restarted, demo_end);
    let count = |who: &str| {
        probes
            .iter()
            .filter(|p| p.answer.as_deref() == Some(who))
            .count()
    };
    let failed = probes.iter().filter(|p| p.answer.is_none()).count();
    println!("\n-- client: a new TCP connection to {VIP4}:80 every 10 ms --");
    println!(
        "  probes: {} (primary {}, backup {}, failed {})",
        probes.len(),
        count("primary"),
        count("backup"),
        failed
    );
    println!("  failover: longest interruption {:.0} ms, {} failed probes (detection by 3 checks of 20 ms, then one map write)", fo_gap.as_secs_f64() * 1000.0, fo_failed);
    println!(
        "  failback: longest interruption {:.0} ms, {} failed probes",
        fb_gap.as_secs_f64() * 1000.0,
        fb_failed
    );
    println!(
        "  connection opened on the primary before the failure: {}",
        describe(
            &long_primary_after,
            "closed by the dying service, as expected"
        )
    );
    match &long_backup_after {
        Some(r) => println!(
            "  connection opened on the backup during the failover, after failback: {}",
            describe(r, "BROKEN")
        ),
        None => println!("  (no failover happened, no connection on the backup)"),
    }
    let backup_survived = matches!(long_backup_after, Some(Ok(ref s)) if s == "backup");
    println!("\n-- summary --");
    println!("  failover gap {:.0} ms, failback failed probes {fb_failed}, connection on the backup survived failback: {}",
        fo_gap.as_secs_f64() * 1000.0, if backup_survived { "yes" } else { "no" });
    drop(dp);
    println!("lab removed");
    if count("backup") == 0 || count("primary") == 0 || !backup_survived || fb_failed > 0 {
        eprintln!("demo: the lab did not behave as expected (see above)");
        std::process::exit(1);
    }
}

fn describe(r: &Result<String, String>, on_err: &str) -> String {
    match r {
        Ok(s) => format!("still answered by {s}"),
        Err(e) => format!("{on_err} ({e})"),
    }
}

/// One new TCP connection: who answered, or None.
fn probe(vip: IpAddr) -> Option<String> {
    let mut c = Conn::try_open(vip, Duration::from_millis(200)).ok()?;
    c.try_ask().ok()
}

/// Longest time without a successful probe between `from` and `to`, and failed probes there.
fn longest_gap(probes: &[Probe], from: Duration, to: Duration) -> (Duration, usize) {
    let mut last_ok = from;
    let mut gap = Duration::ZERO;
    let mut failed = 0;
    for p in probes.iter().filter(|p| p.at >= from && p.at < to) {
        match p.answer {
            Some(_) => {
                gap = gap.max(p.at.saturating_sub(last_ok));
                last_ok = p.at;
            }
            None => failed += 1,
        }
    }
    (gap, failed)
}
