//! Three gateways, one directory: `ftn run` on three gateways that share their directory on a
//! real three-member etcd cluster (tests/src/cluster.rs draws the lab), real services on the
//! primary and the backup, clients probing the VIP through every gateway, and faults injected
//! by killing services, gateways and etcd members and by cutting links. Needs root; never
//! skipped. The tests take a lock so that they run one at a time even without
//! `--test-threads=1` (each lab runs three controllers and three etcd members).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use ftn_tests::{
    cluster::{
        client_addr, count_events, etcd_back_wait, etcd_lost_wait, etcd_request_worst,
        failback_wait, failover_wait, gw_name, leader_wait, output_text, Cluster, BACKUP_ADDR,
        CHECKS, ETCD_START, GATEWAYS, LEASE_TTL, MEMBERS, PRIMARY_ADDR,
    },
    ftn::{answered_by, gap, Prober, Sample},
    lab::{in_ns, Conn},
    timing::{MARGIN, START},
};

/// One new connection through each gateway every 20 ms (three probers: 150 connections a
/// second on a 2-core machine that also runs three controllers and three etcd members).
const EVERY: Duration = Duration::from_millis(20);
const PROBE_MAX: Duration = Duration::from_secs(90);

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every probe in [from, to) was answered, by the primary, and there were at least `min`:
/// prints the figures under `what` and asserts them.
fn all_answered_by_primary(
    samples: &[Sample],
    from: Duration,
    to: Duration,
    min: usize,
    what: &str,
) {
    let n = probes_in(samples, from, to);
    let g = gap(samples, from, to);
    let failed = g.failed;
    println!("{what}: {n} probes, {failed} failed, longest gap {g}");
    assert!(n >= min, "{what}: too few probes ({n})");
    assert_eq!(
        failed,
        0,
        "{what}: failed probes at {:?} (window {from:?}..{to:?})",
        failed_in(samples, from, to)
    );
    assert_eq!(answered_by(samples, from, to, "primary"), n, "{what}");
}

/// A new connection through every gateway is answered by `who`.
fn answered_through_all(c: &Cluster, who: &str) {
    for k in 1..=GATEWAYS {
        assert_eq!(
            c.ask_via_retry(k, Duration::from_secs(1)).as_deref(),
            Ok(who),
            "gw{k}"
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `t` on a prober's clock.
fn at(p: &Prober, t: Instant) -> Duration {
    t.saturating_duration_since(p.start)
}

/// Just after the last sample (the end of an interval that includes every sample).
fn end_of(samples: &[Sample]) -> Duration {
    samples.last().map_or(Duration::ZERO, |s| s.at) + Duration::from_millis(1)
}

fn failed_in(samples: &[Sample], from: Duration, to: Duration) -> Vec<Duration> {
    samples
        .iter()
        .filter(|s| s.at >= from && s.at < to && s.answer.is_none())
        .map(|s| s.at)
        .collect()
}

fn probes_in(samples: &[Sample], from: Duration, to: Duration) -> usize {
    samples.iter().filter(|s| s.at >= from && s.at < to).count()
}

/// The lab itself without ftn: the topology forwards through each gateway (the kernel, no
/// XDP), the etcd cluster forms and is reachable from every gateway, and the fault helpers
/// do what they say (server link cut and healed, etcd cut and healed, a member killed and
/// restarted, all members stopped and restarted), and `ftn check-config` accepts the generated
/// gateway configurations.
#[test]
fn cluster_lab_topology_and_etcd_without_ftn() {
    let _serial = serial();
    let mut c = Cluster::new("failback = \"immediate\"");
    // Direct routes to the servers through each gateway (only for this test: the lab routes
    // only the VIP).
    for k in 1..=GATEWAYS {
        c.client.ip(&[
            "route",
            "add",
            "198.18.50.0/24",
            "via",
            &ftn_tests::cluster::client_gw(k),
            "table",
            &format!("10{k}"),
        ]);
    }
    let (p, b) = (PRIMARY_ADDR.parse().unwrap(), BACKUP_ADDR.parse().unwrap());
    let timeout = Duration::from_secs(2);
    for k in 1..=GATEWAYS {
        assert_eq!(
            c.ask_addr_via(k, p, timeout).as_deref(),
            Ok("primary"),
            "primary through gw{k}"
        );
        assert_eq!(
            c.ask_addr_via(k, b, timeout).as_deref(),
            Ok("backup"),
            "backup through gw{k}"
        );
        // The path really goes through gateway k: the route the client takes from that
        // source, and the primary's route back.
        let out = c.client.ip(&[
            "route",
            "get",
            PRIMARY_ADDR,
            "from",
            &client_addr(k).to_string(),
        ]);
        let route = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            route.contains(&format!("via 198.18.1{k}.1 dev c{k}")),
            "{route}"
        );
        let out = c.primary.ip(&["route", "get", &client_addr(k).to_string()]);
        let route = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            route.contains(&format!("via 198.18.6{k}.1 dev p{k}")),
            "{route}"
        );
        // And from the gateway itself (what its checks do).
        for (addr, name) in [(p, "primary"), (b, "backup")] {
            let r = in_ns(c.gw_ns(k), move || {
                Conn::try_open(addr, timeout)
                    .map_err(|e| e.to_string())
                    .and_then(|mut conn| conn.try_ask())
            });
            assert_eq!(r.as_deref(), Ok(name), "{name} from gw{k}");
        }
    }
    // etcd from every gateway.
    for k in 1..=GATEWAYS {
        let out = c.etcdctl_from_gateway(k, &["endpoint", "health"]);
        let text = output_text(&out);
        assert!(out.status.success(), "gw{k}: {text}");
        assert_eq!(text.matches("is healthy").count(), MEMBERS, "gw{k}: {text}");
        let key = format!("{}/probe/gw{k}", c.prefix);
        let out = c.etcdctl_from_gateway(k, &["put", &key, &gw_name(k)]);
        assert!(out.status.success(), "{}", output_text(&out));
    }
    let got = c
        .etcd
        .etcdctl_ok(&["get", "--prefix", &format!("{}/probe/", c.prefix)]);
    for k in 1..=GATEWAYS {
        assert!(got.contains(&gw_name(k)), "{got}");
    }
    let leader = c.etcd.leader_member().expect("an etcd leader");
    println!("etcd leader: member {leader}");

    // cut_server / heal_server: gw1 loses the primary, gw2 still reaches it.
    c.cut_server(1, "primary");
    assert!(
        c.ask_addr_via(1, p, Duration::from_millis(500)).is_err(),
        "primary still reachable through gw1 after cut_server"
    );
    assert_eq!(c.ask_addr_via(2, p, timeout).as_deref(), Ok("primary"));
    c.heal_server(1, "primary");
    let t = Instant::now();
    let r = loop {
        let r = c.ask_addr_via(1, p, Duration::from_millis(500));
        if r.is_ok() || t.elapsed() > Duration::from_secs(5) {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.as_deref(), Ok("primary"), "after heal_server");

    // cut_etcd / heal_etcd.
    c.cut_etcd(2);
    let out = c.etcdctl_from_gateway(2, &["endpoint", "health"]);
    assert!(
        !out.status.success(),
        "etcd reachable from gw2 after cut_etcd"
    );
    assert!(c
        .etcdctl_from_gateway(3, &["endpoint", "health"])
        .status
        .success());
    c.heal_etcd(2);
    let out = c.etcdctl_from_gateway(2, &["endpoint", "health"]);
    assert!(
        out.status.success(),
        "after heal_etcd: {}",
        output_text(&out)
    );

    // kill_member / start_member: two members keep the cluster working.
    c.etcd.kill_member(1);
    assert!(!c
        .etcd
        .etcdctl_on(&[1], &["endpoint", "health"])
        .status
        .success());
    let t = Instant::now();
    let out = c
        .etcd
        .etcdctl_on(&[2, 3], &["put", &format!("{}/k", c.prefix), "v"]);
    println!(
        "member 1 killed: a put on members 2, 3 took {:.0} ms",
        ms(t.elapsed())
    );
    assert!(out.status.success(), "{}", output_text(&out));
    c.etcd.start_member(1);
    let back = c.etcd.wait_healthy(&[1, 2, 3], ETCD_START);
    println!("member 1 restarted: healthy after {:.0} ms", ms(back));
    let got = c.etcd.etcdctl_ok(&["get", &format!("{}/k", c.prefix)]);
    assert!(got.contains('v'), "{got}");

    // stop_all_members / start_all_members.
    let took = c.etcd.stop_all_members();
    println!("all members stopped in {:.0} ms", ms(took));
    assert!(c.etcd.running().is_empty());
    assert!(!c.etcd.etcdctl(&["endpoint", "health"]).status.success());
    let back = c.etcd.start_all_members();
    println!("all members restarted: healthy after {:.0} ms", ms(back));
    let got = c.etcd.etcdctl_ok(&["get", "--prefix", &c.prefix]);
    assert!(got.contains(&format!("{}/k", c.prefix)), "data kept: {got}");

    // kill_service / start_service.
    c.kill_service("primary");
    assert!(c.ask_addr_via(2, p, timeout).is_err());
    c.start_service("primary");
    assert_eq!(c.ask_addr_via(2, p, timeout).as_deref(), Ok("primary"));

    // The generated configurations are valid.
    for k in 1..=GATEWAYS {
        match c.check_config(k) {
            Ok(s) => {
                println!("ftn check-config (gw{k}): {}", s.trim());
                assert!(s.contains("valid"), "{s}");
            }
            Err(e) => panic!("ftn check-config refuses gw{k}'s configuration:\n{e}"),
        }
    }
}

/// Case 1: The primary's service dies: every gateway moves `web` to the backup, and a client
/// through each gateway is answered by the backup; the service returns: the failback (immediate)
/// reaches every gateway. One failover and one failback event.
#[test]
fn primary_death_fails_over_on_every_gateway_and_fails_back() {
    let _serial = serial();
    let mut c = Cluster::start("failback = \"immediate\"");
    let probes = c.probe_all(EVERY, PROBE_MAX);
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    c.kill_service("primary");
    let took = c.wait_all_current("web", Some("backup"), failover_wait());
    println!(
        "failover on all 3 gateways {:.0} ms after the service died",
        ms(took)
    );
    answered_through_all(&c, "backup");
    std::thread::sleep(Duration::from_millis(500));
    let restarted = Instant::now();
    c.start_service("primary");
    let back = c.wait_all_current("web", Some("primary"), failback_wait());
    println!(
        "failback on all 3 gateways {:.0} ms after the service returned",
        ms(back)
    );
    answered_through_all(&c, "primary");
    std::thread::sleep(Duration::from_millis(500));
    for (i, p) in probes.into_iter().enumerate() {
        let k = i + 1;
        let (kill_at, back_at) = (at(&p, killed), at(&p, restarted));
        let samples = p.finish();
        let end = end_of(&samples);
        let fo = gap(&samples, kill_at, back_at);
        let fb = gap(&samples, back_at, end);
        println!(
            "gw{k}: {} probes; failover gap {fo} ({} failed), failback gap {fb} ({} failed)",
            samples.len(),
            fo.failed,
            fb.failed
        );
        assert!(
            !fo.open && !fb.open,
            "gw{k}: the client must be served at the end of each phase"
        );
        assert!(
            answered_by(&samples, kill_at, back_at, "backup") >= 5,
            "gw{k}: the backup answered too few probes during the failure"
        );
        assert!(
            answered_by(&samples, back_at + back, end, "primary") >= 5,
            "gw{k}: the primary answered too few probes after failback"
        );
        assert_eq!(fb.failed, 0, "gw{k}: no probe may fail at failback");
    }
    for k in 1..=GATEWAYS {
        let ev = c.events(k);
        assert_eq!(count_events(&ev, "failover", "web"), 1, "gw{k}: {ev:?}");
        assert_eq!(count_events(&ev, "failback", "web"), 1, "gw{k}: {ev:?}");
    }
}

/// Case 2: The leader gateway is killed (SIGKILL) right after the primary's service: another
/// gateway becomes leader and finishes the failover; the event log holds exactly one failover of
/// `web`, also after the killed gateway is restarted (not lost, not applied twice).
#[test]
fn leader_killed_during_failover_another_gateway_finishes_it_once() {
    let _serial = serial();
    let mut c = Cluster::start("failback = \"immediate\"");
    let (leader, _) = c.wait_leader(leader_wait());
    let lk = c.index_of(&leader);
    let survivors: Vec<usize> = (1..=GATEWAYS).filter(|&k| k != lk).collect();
    println!("leader {leader} will be killed; survivors {survivors:?}");
    let t = Instant::now();
    c.kill_service("primary");
    c.kill_gateway(lk);
    let killed_after = t.elapsed();
    let (new_leader, took_leader) = c.wait_leader(leader_wait());
    assert_ne!(new_leader, leader, "a killed gateway cannot stay leader");
    c.wait_current_on(
        &survivors,
        "web",
        Some("backup"),
        leader_wait() + failover_wait(),
    );
    let failed_over = t.elapsed();
    println!(
        "service and leader killed {:.0} ms apart; new leader {new_leader} {:.0} ms after \
         that; failover on the survivors {:.0} ms after the service died",
        ms(killed_after),
        ms(took_leader),
        ms(failed_over)
    );
    for &k in &survivors {
        assert_eq!(
            c.ask_via_retry(k, Duration::from_secs(1)).as_deref(),
            Ok("backup"),
            "gw{k}"
        );
        assert_eq!(c.failover_events(k, "web"), 1, "gw{k}: {:?}", c.events(k));
    }
    // The killed gateway comes back: it adopts its pinned dataplane and the directory's
    // decision; nothing is decided again.
    c.start_gateway(lk);
    let t = Instant::now();
    c.wait_current_on(&[lk], "web", Some("backup"), START + etcd_back_wait());
    println!(
        "{leader} restarted: on the backup {:.0} ms after its API answered",
        ms(t.elapsed())
    );
    assert_eq!(
        c.ask_via_retry(lk, Duration::from_secs(2)).as_deref(),
        Ok("backup"),
        "gw{lk} after restart"
    );
    std::thread::sleep(Duration::from_millis(500));
    for k in 1..=GATEWAYS {
        assert_eq!(c.failover_events(k, "web"), 1, "gw{k}: {:?}", c.events(k));
    }
    let keys = c
        .etcd
        .etcdctl_ok(&["get", "--prefix", "--keys-only", &c.prefix]);
    println!(
        "directory keys under {}: {}",
        c.prefix,
        keys.lines().filter(|l| !l.is_empty()).count()
    );
}

/// Case 3: One etcd member killed while clients probe through every gateway: no probe fails and
/// nothing moves. The member killed is the lowest-numbered one that is not the raft leader (killing
/// the leader adds an election, about 1 s with etcd's defaults, which the gateways must also ride
/// out, but that is a different test).
#[test]
fn etcd_member_death_changes_nothing() {
    let _serial = serial();
    let mut c = Cluster::start("failback = \"immediate\"");
    let leader = c.etcd.leader_member().expect("an etcd leader");
    let victim = (1..=MEMBERS).find(|&i| i != leader).unwrap();
    println!("etcd leader is member {leader}; killing member {victim}");
    let probes = c.probe_all(EVERY, PROBE_MAX);
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    c.etcd.kill_member(victim);
    let ftn_leader = c.leader();
    // 3 s with one member down: every gateway keeps `web` on the primary, and keeps talking
    // to etcd (two members of three are a majority).
    let mut polls = 0;
    let mut not_connected = Vec::new();
    while killed.elapsed() < Duration::from_secs(3) {
        for k in 1..=GATEWAYS {
            let st = c.status(k).unwrap_or_else(|e| panic!("gw{k}: {e}"));
            let current = st["resources"]
                .as_array()
                .and_then(|rs| rs.iter().find(|r| r["name"] == "web"))
                .map(|r| r["current"].clone());
            assert_eq!(
                current,
                Some(serde_json::json!("primary")),
                "gw{k} with etcd member {victim} down:\n{}",
                c.describe()
            );
            if st["cluster"]["etcd"] != "connected" {
                not_connected.push(format!(
                    "gw{k} at {:.0} ms: {} ({})",
                    ms(killed.elapsed()),
                    st["cluster"]["etcd"],
                    st["cluster"]["etcd_error"]
                ));
            }
        }
        polls += 1;
        std::thread::sleep(Duration::from_millis(100));
    }
    // The directory (event log) is readable through every gateway with one member down
    // (three reads each: the client may pick any endpoint for each request).
    for k in 1..=GATEWAYS {
        for _ in 0..3 {
            let ev = c.try_events(k).unwrap_or_else(|e| {
                panic!(
                    "with etcd member {victim} down (members {:?} up): {e}",
                    c.etcd.running()
                )
            });
            assert_eq!(count_events(&ev, "failover", "web"), 0, "gw{k}: {ev:?}");
        }
    }
    assert!(
        not_connected.is_empty(),
        "with one etcd member of three down, the gateways must stay connected to the others: \
         {not_connected:?}"
    );
    assert_eq!(
        c.leader(),
        ftn_leader,
        "one etcd member down must not change ftn's leader:\n{}",
        c.describe()
    );
    let restarted = Instant::now();
    c.etcd.start_member(victim);
    let healthy = c.etcd.wait_healthy(&[1, 2, 3], ETCD_START);
    std::thread::sleep(Duration::from_millis(500));
    println!(
        "member {victim} down {:.1} s ({polls} status rounds), healthy {:.0} ms after restart",
        (restarted - killed).as_secs_f64(),
        ms(healthy)
    );
    for (i, p) in probes.into_iter().enumerate() {
        let k = i + 1;
        let from = at(&p, killed);
        let samples = p.finish();
        let end = end_of(&samples);
        all_answered_by_primary(&samples, from, end, 100, &format!("gw{k}"));
    }
    for k in 1..=GATEWAYS {
        assert_eq!(c.failover_events(k, "web"), 0, "gw{k}: {:?}", c.events(k));
        assert_eq!(c.current_of(k, "web"), Ok(Some("primary".to_string())));
    }
}

/// Case 4: Gateway 3 cut off from etcd: it keeps forwarding (its probes are answered) and says etcd
/// is unreachable; the primary dies: gateways 1 and 2 move `web` to the backup, gateway 3 does not
/// decide alone; after the heal, gateway 3 converges to the backup within a few seconds, and the
/// directory holds one failover.
#[test]
fn gateway_cut_from_etcd_keeps_forwarding_and_does_not_decide_alone() {
    let _serial = serial();
    let mut c = Cluster::start("failback = \"immediate\"");
    println!("leader before the cut: {:?}", c.leader());
    let probe3 = c.probe_via(3, EVERY, PROBE_MAX);
    std::thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    c.cut_etcd(3);
    let noticed = c.wait_etcd_state(3, "unreachable", etcd_lost_wait());
    println!(
        "gw3 reports etcd unreachable {:.0} ms after the cut",
        ms(noticed)
    );
    let cl = c.cluster_status(3).unwrap();
    assert!(
        cl["etcd_error"].as_str().is_some_and(|e| !e.is_empty()),
        "etcd_error must say why: {cl}"
    );
    // Without etcd, gw3 cannot hold the leader lease (LEASE_TTL): it is a follower at the
    // latest once the lease has run out.
    let t = Instant::now();
    while c.cluster_status(3).is_ok_and(|cl| cl["role"] == "leader") {
        assert!(
            t.elapsed() < LEASE_TTL + MARGIN,
            "gw3 still says it is the leader {:?} after losing etcd:\n{}",
            LEASE_TTL + MARGIN,
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // gw1 and gw2 keep (or elect) a leader among themselves.
    let (leader, _) = c.wait_leader(leader_wait());
    assert_ne!(
        leader, "gw3",
        "a gateway cut from etcd cannot be the leader"
    );
    std::thread::sleep(Duration::from_millis(1000));
    let killed = Instant::now();
    c.kill_service("primary");
    let took = c.wait_current_on(&[1, 2], "web", Some("backup"), failover_wait());
    println!(
        "gw1, gw2 on the backup {:.0} ms after the service died",
        ms(took)
    );
    // gw3 does not decide alone: for 1.5 s more it keeps the directory's last decision.
    let t = Instant::now();
    while t.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            c.current_of(3, "web"),
            Ok(Some("primary".to_string())),
            "gw3 moved web without etcd:\n{}",
            c.describe()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    c.heal_etcd(3);
    let conv = c.wait_current_on(&[3], "web", Some("backup"), etcd_back_wait());
    let connected = c.wait_etcd_state(3, "connected", etcd_back_wait());
    println!(
        "after the heal: gw3 on the backup after {:.0} ms, etcd connected after {:.0} ms",
        ms(conv),
        ms(connected)
    );
    assert_eq!(
        c.ask_via_retry(3, Duration::from_secs(1)).as_deref(),
        Ok("backup")
    );
    // The window ends 250 ms before the service was killed: a probe started just before the
    // kill (they time out after 200 ms) may fail because of the kill, not because of the cut.
    let (p_cut, p_kill) = (
        at(&probe3, cut),
        at(&probe3, killed).saturating_sub(Duration::from_millis(250)),
    );
    let samples = probe3.finish();
    // gw3 must keep forwarding while cut from etcd.
    all_answered_by_primary(
        &samples,
        p_cut,
        p_kill,
        50,
        "gw3 cut from etcd, primary alive",
    );
    for k in 1..=GATEWAYS {
        assert_eq!(c.failover_events(k, "web"), 1, "gw{k}: {:?}", c.events(k));
    }
}

/// Case 5: Gateway 1 loses its link to the primary only: gateway 1 sees the primary down, the
/// others see it up: no failover for at least 3 s, and clients through gateways 2 and 3 keep being
/// answered by the primary.
#[test]
fn one_gateway_losing_the_primary_does_not_fail_over() {
    let _serial = serial();
    let c = Cluster::start("failback = \"immediate\"");
    let probes = [
        c.probe_via(2, EVERY, PROBE_MAX),
        c.probe_via(3, EVERY, PROBE_MAX),
    ];
    std::thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    c.cut_server(1, "primary");
    // The cut is real: gw1 publishes that it sees the primary down.
    let seen = c.wait_observation(
        2,
        1,
        "primary",
        "down",
        CHECKS.down() + etcd_request_worst(),
    );
    println!(
        "gw2 shows gw1's observation of the primary down {:.0} ms after the cut",
        ms(seen)
    );
    assert_eq!(c.observation(2, 2, "primary").as_deref(), Some("up"));
    assert_eq!(c.observation(2, 3, "primary").as_deref(), Some("up"));
    let t = Instant::now();
    let mut rounds = 0;
    while t.elapsed() < Duration::from_millis(3500) {
        for k in 1..=GATEWAYS {
            assert_eq!(
                c.current_of(k, "web"),
                Ok(Some("primary".to_string())),
                "gw{k}: a minority's observation failed web over:\n{}",
                c.describe()
            );
        }
        rounds += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    let via1 = c.ask_via(1);
    println!(
        "{rounds} status rounds over 3.5 s: web stays on the primary; through gw1 now: {via1:?}"
    );
    let healed = Instant::now();
    c.heal_server(1, "primary");
    let up = c.wait_observation(2, 1, "primary", "up", CHECKS.up() + etcd_request_worst());
    println!(
        "gw1 sees the primary up again {:.0} ms after the heal",
        ms(up)
    );
    assert_eq!(
        c.ask_via_retry(1, Duration::from_secs(2)).as_deref(),
        Ok("primary")
    );
    for (i, p) in probes.into_iter().enumerate() {
        let k = i + 2;
        let (from, to) = (at(&p, cut), at(&p, healed));
        let samples = p.finish();
        all_answered_by_primary(&samples, from, to, 100, &format!("gw{k} while gw1 was cut"));
    }
    for k in 1..=GATEWAYS {
        assert_eq!(c.failover_events(k, "web"), 0, "gw{k}: {:?}", c.events(k));
    }
}

/// Case 6: Every etcd member stopped for 3 s, and longer if needed until every gateway says
/// etcd is unreachable (at most `etcd_lost_wait()`, from the lab's lease and request timeouts):
/// clients through every gateway keep being answered; after the restart the gateways reconnect,
/// and a primary death is still decided and reaches every gateway.
#[test]
fn all_etcd_members_stopped_forwarding_continues_and_decisions_resume() {
    let _serial = serial();
    let mut c = Cluster::start("failback = \"immediate\"");
    let probes = c.probe_all(EVERY, PROBE_MAX);
    std::thread::sleep(Duration::from_millis(500));
    let stopped = Instant::now();
    let stop_took = c.etcd.stop_all_members();
    // Without etcd until every gateway says so; note when each does.
    let mut noticed: [Option<Duration>; GATEWAYS] = [None; GATEWAYS];
    let outage = Duration::from_secs(3);
    while stopped.elapsed() < stop_took + outage
        || (stopped.elapsed() < stop_took + etcd_lost_wait() && noticed.iter().any(Option::is_none))
    {
        for k in 1..=GATEWAYS {
            if noticed[k - 1].is_none()
                && c.cluster_status(k)
                    .is_ok_and(|cl| cl["etcd"] == "unreachable")
            {
                noticed[k - 1] = Some(stopped.elapsed());
            }
            assert_eq!(
                c.current_of(k, "web"),
                Ok(Some("primary".to_string())),
                "gw{k}"
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!(
        "etcd stopped ({:.0} ms to stop); gateways reported unreachable after {noticed:?}",
        ms(stop_took)
    );
    let restarted = Instant::now();
    let healthy = c.etcd.start_all_members();
    let mut reconnected = Vec::new();
    for k in 1..=GATEWAYS {
        reconnected.push(c.wait_etcd_state(k, "connected", etcd_back_wait()));
    }
    let (leader, _) = c.wait_leader(leader_wait());
    println!(
        "etcd healthy {:.0} ms after restart; gateways connected after {:?} more; leader {leader} \
         {:.0} ms after the restart",
        ms(healthy),
        reconnected,
        ms(restarted.elapsed())
    );
    for (k, n) in noticed.iter().enumerate() {
        assert!(
            n.is_some(),
            "gw{}: did not report etcd unreachable within {:?} of the outage",
            k + 1,
            etcd_lost_wait()
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    for (i, p) in probes.into_iter().enumerate() {
        let k = i + 1;
        let (from, to) = (at(&p, stopped), at(&p, Instant::now()));
        let samples = p.finish();
        all_answered_by_primary(
            &samples,
            from,
            to,
            100,
            &format!("gw{k} during the outage and restart"),
        );
    }
    c.kill_service("primary");
    let took = c.wait_all_current("web", Some("backup"), failover_wait());
    println!(
        "after the etcd restart: failover on all 3 gateways {:.0} ms after the service died",
        ms(took)
    );
    for k in 1..=GATEWAYS {
        assert_eq!(
            c.ask_via_retry(k, Duration::from_secs(1)).as_deref(),
            Ok("backup"),
            "gw{k}"
        );
        assert_eq!(c.failover_events(k, "web"), 1, "gw{k}: {:?}", c.events(k));
    }
}

/// A leader stopped normally (SIGTERM) revokes its lease on the way out: another gateway leads
/// at once, not a lease time later; nothing moves.
#[test]
fn leader_stopped_normally_hands_over_at_once() {
    let _serial = serial();
    let mut c = Cluster::start("failback = \"immediate\"");
    let (leader, _) = c.wait_leader(leader_wait());
    let lk = c.index_of(&leader);
    let t = Instant::now();
    c.gws[lk - 1].stop();
    let stopped = t.elapsed();
    let (next, took) = c.wait_leader(leader_wait());
    println!(
        "{leader} stopped (SIGTERM) in {:.0} ms; {next} leads {:.0} ms after that",
        ms(stopped),
        ms(took)
    );
    assert_ne!(next, leader);
    // The lab's lease is LEASE_TTL (2 s): a hand-over within half of it can only come from
    // the revoke.
    assert!(
        took < LEASE_TTL / 2,
        "the next leader took {took:?}: the stopped leader's lease was not revoked"
    );
    let survivors: Vec<usize> = (1..=GATEWAYS).filter(|&k| k != lk).collect();
    for &k in &survivors {
        assert_eq!(c.current_of(k, "web"), Ok(Some("primary".to_string())));
        assert_eq!(c.failover_events(k, "web"), 0);
    }
    // Operator decisions go to the leader: a follower refuses them and names the leader; the
    // leader applies them, and every gateway follows.
    let nk = c.index_of(&next);
    let follower = *survivors.iter().find(|&&k| k != nk).unwrap();
    let out = c.gw(follower).cli(&["switchover", "web", "--to", "backup"]);
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a follower must refuse a switchover: {text}"
    );
    assert!(
        text.contains("does not lead") && text.contains(&next),
        "the refusal names the leader: {text}"
    );
    c.gw(nk).cli_ok(&["switchover", "web", "--to", "backup"]);
    c.wait_current_on(
        &survivors,
        "web",
        Some("backup"),
        etcd_request_worst() + MARGIN,
    );
}
