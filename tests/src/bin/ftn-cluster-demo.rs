//! The live multi-gateway demo (`cargo xtask demo --cluster`): three gateways, each running the
//! real `ftn` daemon with its XDP dataplane, sharing one directory on a three-member etcd
//! cluster; a client that reaches the VIP through any gateway; a primary and a backup linked to
//! every gateway. Each in its own network namespace; no real servers are needed.
//!
//! Scenario, with a client opening a new TCP connection through every gateway every 10 ms for
//! the whole demo: the primary's service dies (every gateway moves to the backup) and returns
//! (every gateway fails back); the leader gateway is killed together with the primary's service
//! (another gateway takes the lead and finishes the failover); gateway 3 is cut off from etcd
//! (it keeps forwarding and decides nothing) and joins again. Every figure printed is measured.

use std::time::{Duration, Instant};

use ftn_tests::{
    cluster::{etcd_back_wait, failback_wait, failover_wait, leader_wait, Cluster, GATEWAYS},
    ftn::gap,
    timing::START,
};

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn views(c: &Cluster) -> String {
    (1..=GATEWAYS)
        .map(|k| match c.current_of(k, "web") {
            Ok(Some(s)) => format!("gw{k}: {s}"),
            Ok(None) => format!("gw{k}: no server"),
            Err(_) => format!("gw{k}: (controller not running)"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the demo needs root (network namespaces, XDP): run `cargo xtask demo --cluster` as root");
        std::process::exit(2);
    }
    let total = Instant::now();
    println!("== ftn cluster demo: client -> 3 gateways (ftn, XDP) -> primary / backup; directory on a 3-member etcd cluster ==\n");
    let mut c = Cluster::start("failback = \"immediate\"");
    let probes = c.probe_all(Duration::from_millis(10), Duration::from_secs(90));
    let t0 = probes[0].start;
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "\n`ftn status` on gateway 1:\n{}",
        c.gw(1).cli_ok(&["status"])
    );

    println!("-- 1. the primary's service dies");
    let t = Instant::now();
    c.kill_service("primary");
    let took = c.wait_all_current("web", Some("backup"), failover_wait());
    println!(
        "   every gateway on the backup {} after the kill ({})",
        ms(took),
        views(&c)
    );
    std::thread::sleep(Duration::from_millis(500));
    println!("-- 2. the primary's service returns");
    c.start_service("primary");
    let back = c.wait_all_current("web", Some("primary"), failback_wait());
    println!(
        "   every gateway back on the primary {} later ({})",
        ms(back),
        views(&c)
    );
    let phase1 = (t - t0, Instant::now() - t0);
    std::thread::sleep(Duration::from_millis(500));

    let (leader, _) = c.wait_leader(leader_wait());
    let lk = c.index_of(&leader);
    let survivors: Vec<usize> = (1..=GATEWAYS).filter(|&k| k != lk).collect();
    println!("-- 3. the leader {leader} is killed (SIGKILL) together with the primary's service");
    let failovers_before = c.failover_events(survivors[0], "web");
    let t = Instant::now();
    c.kill_service("primary");
    c.kill_gateway(lk);
    let (new_leader, took) = c.wait_leader(leader_wait());
    println!(
        "   {new_leader} leads {} later (the dead leader's lease ran out; until then nobody decides)",
        ms(took)
    );
    c.wait_current_on(
        &survivors,
        "web",
        Some("backup"),
        leader_wait() + failover_wait(),
    );
    println!(
        "   the survivors are on the backup {} after the kill ({}); {leader}'s pinned dataplane kept forwarding",
        ms(t.elapsed()),
        views(&c)
    );
    c.start_gateway(lk);
    c.wait_current_on(&[lk], "web", Some("backup"), START + etcd_back_wait());
    println!(
        "   {leader} restarted: it follows the directory ({})",
        views(&c)
    );
    c.start_service("primary");
    let back = c.wait_all_current("web", Some("primary"), failback_wait());
    println!(
        "   the primary returns: every gateway fails back {} later",
        ms(back)
    );
    println!(
        "   failover events for this death in the shared log: {} (decided once)",
        c.failover_events(survivors[0], "web") - failovers_before
    );
    let phase3 = (t - t0, Instant::now() - t0);

    println!("-- 4. gateway 3 is cut off from etcd");
    c.cut_etcd(3);
    let lost = c.wait_etcd_state(3, "unreachable", Duration::from_secs(10));
    println!(
        "   gw3 says etcd is unreachable after {} and keeps forwarding with its last directory",
        ms(lost)
    );
    let via3 = c.ask_via(3);
    println!("   a new connection through gw3 is answered by: {via3:?}");
    c.heal_etcd(3);
    let again = c.wait_etcd_state(3, "connected", Duration::from_secs(15));
    println!("   healed: gw3 is connected again {} later", ms(again));

    println!("\n-- what the client saw (a new connection through each gateway every 10 ms)");
    for (i, p) in probes.into_iter().enumerate() {
        let samples = p.finish();
        let failed = samples.iter().filter(|s| s.answer.is_none()).count();
        let g1 = gap(&samples, phase1.0, phase1.1);
        let g3 = gap(&samples, phase3.0, phase3.1);
        println!(
            "   through gw{}: {} probes, {failed} failed; steps 1-2: longest interruption {g1} ({} failed); step 3: {g3} ({} failed){}",
            i + 1,
            samples.len(),
            g1.failed,
            g3.failed,
            if i + 1 == lk {
                ": its controller was dead and its dataplane kept the dead primary until it restarted"
            } else {
                ": no leader decided until the dead leader's lease ran out"
            }
        );
    }
    println!(
        "\n`ftn events` on gateway 1:\n{}",
        c.gw(1).cli_ok(&["events"])
    );
    drop(c);
    println!(
        "demo done in {:.1} s; lab removed",
        total.elapsed().as_secs_f64()
    );
}
