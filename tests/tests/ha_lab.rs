//! Gateway high availability with real routing daemons: an upstream BIRD 2 router with ECMP
//! and BFD in front of three ftn gateways (each with its own BIRD 2) on one etcd directory
//! (`ftn_tests::ha`). One lab, the cases in turn; each prints what the client saw.

use std::time::Duration;

use ftn_tests::cluster::{etcd_back_wait, failover_wait, MEMBERS, VIP};
use ftn_tests::ftn::{gap, PROBE_TIMEOUT};
use ftn_tests::ha::{bfd_detect, broken_by, ecmp_outage, failed, Ha, ETCD_GRACE, SESSIONS_UP};
use ftn_tests::timing::{MARGIN, START};

const EVERY: Duration = Duration::from_millis(10);

/// Long-lived connections (at least 2 through each gateway) must all still answer after a
/// case; prints how many went through `via` (the gateway the case was about).
fn check_conns(conns: &mut [(ftn_tests::lab::Conn, usize)], via: usize, case: &str) {
    let through = conns.iter().filter(|c| c.1 == via).count();
    let (on, off) = broken_by(conns, via);
    eprintln!(
        "   {case}: long-lived connections broken: through gw{via} {} of {through}, through the others {} of {}",
        on.len(),
        off.len(),
        conns.len() - through
    );
    assert!(on.is_empty() && off.is_empty(), "{case}: {on:?} {off:?}");
}

/// Every path through all three gateways: (router, primary's return, backup's return).
fn all3() -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    (vec![1, 2, 3], vec![1, 2, 3], vec![1, 2, 3])
}

#[test]
fn gateways_announce_withdraw_and_survive_each_other() {
    assert_eq!(MEMBERS, 3);
    let mut ha = Ha::start();
    for k in 1..=3 {
        let table = ha.announced(k);
        assert!(
            table.contains(&format!("blackhole {VIP} proto 250")),
            "gw{k}'s announce table: {table:?}"
        );
        let st = ha.gws[k - 1].status();
        let a = &st["announce"];
        assert_eq!(a["withheld"], serde_json::Value::Null, "gw{k}: {a}");
        assert_eq!(a["vips"][0]["announced"], true, "gw{k}: {a}");
        let metrics = ha.metrics(k);
        assert!(
            metrics.contains(&format!("ftn_vip_announced{{vip=\"{VIP}\"}} 1")),
            "gw{k} /metrics lacks the announced VIP"
        );
    }

    let mut conns = ha.open_spread(2);

    // --- Only ftn dies (SIGKILL) on gateway 1, then starts again: the route stays (the pinned
    // dataplane forwards), no new connection fails.
    let p = ha.probe(EVERY, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = p.now();
    ha.kill_ftn(1);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(ha.paths(), all3(), "a controller crash withdrew");
    ha.start_ftn(1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ha.paths(), all3(), "a controller restart withdrew");
    let t1 = p.now();
    let s = p.finish();
    let n = failed(&s, t0, t1);
    eprintln!(
        "ftn SIGKILLed and restarted on gw1: {n} failed probes of {}",
        s.len()
    );
    assert_eq!(n, 0, "new connections failed while ftn restarted");
    check_conns(&mut conns, 1, "ftn SIGKILLed and restarted on gw1");

    // --- `systemctl stop ftn && ftn detach` on gateway 3: withdrawn before the dataplane goes.
    let p = ha.probe(EVERY, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = p.now();
    let out = ha.stop_and_detach(3);
    assert!(out.contains("withdrew 2 route(s)"), "{out}");
    // The withdrawal reached the router while detach waited.
    ha.wait_route(&[1, 2], MARGIN);
    std::thread::sleep(Duration::from_millis(300));
    let t1 = p.now();
    // --- Gateway 3 starts again (a fresh dataplane) and joins under traffic.
    ha.start_ftn(3);
    let joined = ha.wait_route(&[1, 2, 3], START + MARGIN);
    std::thread::sleep(Duration::from_millis(500));
    let t2 = p.now();
    let s = p.finish();
    let (detach_failed, join_failed) = (failed(&s, t0, t1), failed(&s, t1, t2));
    eprintln!(
        "ftn detach on gw3: {detach_failed} failed probes; gw3 joined (routed again {} ms after its start): {join_failed} failed probes",
        joined.as_millis()
    );
    assert_eq!(detach_failed, 0, "new connections failed during the detach");
    assert_eq!(join_failed, 0, "new connections failed while gw3 joined");
    check_conns(&mut conns, 3, "gw3 detached and joined again");

    // --- Gateway 1 cut off from etcd: it keeps announcing for the grace time, then withdraws;
    // announced again once etcd answers.
    let p = ha.probe(EVERY, Duration::from_secs(40));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = p.now();
    ha.cut_etcd(1);
    std::thread::sleep(ETCD_GRACE / 2);
    assert_eq!(ha.paths(), all3(), "withdrawn inside the etcd grace time");
    let took = ha.wait_route(&[2, 3], ETCD_GRACE + MARGIN);
    let withheld = ha.gws[0].status()["announce"]["withheld"].clone();
    assert!(
        withheld.as_str().is_some_and(|w| w.contains("etcd lost")),
        "{withheld}"
    );
    ha.heal_etcd(1);
    ha.wait_route(&[1, 2, 3], etcd_back_wait() + MARGIN);
    std::thread::sleep(Duration::from_millis(300));
    let t1 = p.now();
    let s = p.finish();
    let n = failed(&s, t0, t1);
    eprintln!(
        "gw1 cut from etcd: withdrawn {} ms after the cut (grace {} s), back after the heal; {n} failed probes",
        (took + ETCD_GRACE / 2).as_millis(),
        ETCD_GRACE.as_secs()
    );
    assert_eq!(n, 0, "new connections failed around the etcd cut");
    check_conns(&mut conns, 1, "gw1 cut from etcd");

    // --- The primary dies while clients arrive through all three gateways.
    let p = ha.probe(EVERY, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = p.now();
    ha.kill_primary();
    let window = failover_wait() + MARGIN;
    let deadline = std::time::Instant::now() + window;
    while (1..=3).any(|k| ha.gws[k - 1].current("web").as_deref() != Some("backup")) {
        assert!(
            std::time::Instant::now() < deadline,
            "web not on the backup on every gateway within {window:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let t1 = p.now();
    let s = p.finish();
    let g = gap(&s, t0, t1);
    eprintln!(
        "primary died under traffic through 3 gateways: {g}, {} failed probes",
        g.failed
    );
    assert!(!g.open, "the client was not served again: {g}");
    assert_eq!(
        ha.paths(),
        all3(),
        "a server's death changed the announcements"
    );
    ha.start_primary();
    // The primary's own connections died with its service; new ones for the last case.
    drop(conns);

    // --- Gateway 2's host dies (links down, every process SIGKILLed) under traffic, with
    // long-lived connections through every gateway.
    let mut conns = ha.open_spread(2);
    let p = ha.probe(EVERY, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let t0 = p.now();
    ha.kill_host(2);
    let detected = ha.wait_route(&[1, 3], bfd_detect() + MARGIN);
    std::thread::sleep(Duration::from_secs(1));
    let t1 = p.now();
    let s = p.finish();
    let outage = ecmp_outage(&s, t0, t1);
    eprintln!(
        "gw2's host died: the router dropped it after {} ms (BFD {} ms); new connections interrupted for {:?} (probe timeout {} ms), {} failed probes",
        detected.as_millis(),
        bfd_detect().as_millis(),
        outage.as_ref().map(|d| d.as_millis()),
        PROBE_TIMEOUT.as_millis(),
        failed(&s, t0, t1),
    );
    assert!(
        outage.is_ok(),
        "new connections did not recover: {outage:?}"
    );
    check_conns(&mut conns, 2, "gw2's host died");
    ha.revive_host(2);
    ha.wait_route(&[1, 2, 3], SESSIONS_UP);
    check_conns(&mut conns, 2, "gw2 came back");
}
