//! The controller for real: `ftn run` on the lab's gateway, real services on the primary and
//! backup, a client probing the VIP with a new TCP connection every 10 ms, faults injected by
//! killing services, downing links and killing the controller. Needs root; never skipped.

use std::time::{Duration, Instant};

use ftn_tests::{
    ftn::{answered_by, gap, TOKEN},
    gateway::Lab,
    lab::{in_ns, Conn, Service, VIP4},
    timing::{Timing, MARGIN},
};

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[test]
fn service_death_fails_over_and_hold_failback_breaks_nothing() {
    let hold = Duration::from_secs(2);
    let mut lab = Lab::start(Timing::DEFAULT, "failback = \"hold\"\nhold = \"2s\"");
    let probe = lab.probe();
    std::thread::sleep(Duration::from_millis(300));
    let killed = probe.now();
    lab.primary = None; // port 80 closed; host and link alive
    let took = lab.ftn.wait_current("web", Some("b1"), lab.timing.down());
    println!("failover decided {:.0} ms after the service died", ms(took));
    // A long-lived connection opened on the backup during the failover.
    let on_backup = lab.open();
    let (on_backup, r) = lab.ask(on_backup);
    assert_eq!(r.as_deref(), Ok("backup"));
    std::thread::sleep(Duration::from_millis(300));
    let restarted = probe.now();
    lab.primary = Some(Service::start(&lab.t.primary, "primary"));
    // Hold: 2 s of health before failback (and `rise` checks before that): not yet after 1 s.
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(
        lab.ftn.current("web").as_deref(),
        Some("b1"),
        "failback before the hold time"
    );
    lab.ftn
        .wait_current("web", Some("p1"), lab.timing.failback_after(hold));
    let back_at = probe.now();
    println!(
        "failback {:.0} ms after the primary's service returned",
        ms(back_at - restarted)
    );
    std::thread::sleep(Duration::from_millis(300));
    let samples = probe.finish();
    let end = samples.last().unwrap().at;
    let fo = gap(&samples, killed, restarted);
    let fb = gap(&samples, restarted, end + Duration::from_millis(1));
    println!(
        "probes {}: failover gap {fo} ({} failed), failback gap {fb} ({} failed)",
        samples.len(),
        fo.failed,
        fb.failed
    );
    assert!(
        !fo.open && !fb.open,
        "the client must be served at the end of each phase"
    );
    assert!(answered_by(&samples, killed, restarted, "backup") > 10);
    assert!(answered_by(&samples, back_at, end, "primary") > 10);
    assert_eq!(fb.failed, 0, "no probe may fail at failback");
    let (_c, r) = lab.ask(on_backup);
    assert_eq!(
        r.as_deref(),
        Ok("backup"),
        "the connection on the backup must survive failback"
    );
    let ev = lab.ftn.events();
    assert!(
        ev.contains("failover") && ev.contains("web moved p1 -> b1"),
        "{ev}"
    );
    assert!(ev.contains("failback") && ev.contains("hold 2s"), "{ev}");
}

#[test]
fn primary_link_down_fails_over_and_stuck_connections_move_at_once() {
    let lab = Lab::start(Timing::DEFAULT, "failback = \"immediate\"");
    let probe = lab.probe();
    let stuck = lab.open();
    let (stuck, r) = lab.ask(stuck);
    assert_eq!(r.as_deref(), Ok("primary"));
    std::thread::sleep(Duration::from_millis(300));
    let down = probe.now();
    lab.t.primary.ip(&["link", "set", "p0", "down"]);
    let took = lab.ftn.wait_current("web", Some("b1"), lab.timing.down());
    println!(
        "failover decided {:.0} ms after the primary's link went down",
        ms(took)
    );
    // The connection to the dead primary: its next packet goes to the backup, which resets it
    // at once (no waiting for TCP's retransmission timeouts).
    let t = Instant::now();
    let (_stuck, r) = lab.ask(stuck);
    let answer_after = t.elapsed();
    println!(
        "connection to the dead primary: {r:?} after {:.0} ms",
        ms(answer_after)
    );
    assert!(
        r.is_err(),
        "a connection to the dead primary cannot be answered: {r:?}"
    );
    assert!(
        answer_after < Duration::from_secs(1),
        "it must end at once, not after TCP timeouts"
    );
    std::thread::sleep(Duration::from_millis(300));
    let up = probe.now();
    lab.t.primary.ip(&["link", "set", "p0", "up"]);
    // IPv6 addresses do not survive a link down (keep_addr_on_down = 0).
    lab.t.primary.ip(&[
        "-6",
        "addr",
        "replace",
        "2001:2:2::10/64",
        "dev",
        "p0",
        "nodad",
    ]);
    // Routes through a downed link are gone: put the defaults back (IPv6 needs the link's
    // prefix route first, which comes back shortly after the link).
    for args in [
        &["-4", "route", "replace", "default", "via", "198.18.2.1"],
        &["-6", "route", "replace", "default", "via", "2001:2:2::1"],
    ] {
        let t = Instant::now();
        while !ftn_tests::run_quiet(&[&["ip", "-n", &lab.t.primary.name][..], args].concat()) {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "cannot restore the route {args:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    lab.ftn.wait_current("web", Some("p1"), lab.timing.up());
    std::thread::sleep(Duration::from_millis(300));
    let samples = probe.finish();
    let fo = gap(&samples, down, up);
    println!("link down: failover gap {fo}, {} failed probes", fo.failed);
    assert!(
        !fo.open,
        "the backup must serve the client before the link comes back"
    );
    assert!(answered_by(&samples, down, up, "backup") > 10);
    assert!(lab.ftn.events().contains("server p1 is down"));
}

#[test]
fn manual_failback_waits_for_switchover() {
    let mut lab = Lab::start(Timing::DEFAULT, "failback = \"manual\"");
    lab.primary = None;
    lab.ftn.wait_current("web", Some("b1"), lab.timing.down());
    lab.primary = Some(Service::start(&lab.t.primary, "primary"));
    // Rise: 3 good checks at the default interval; then the manual policy keeps b1.
    let t = Instant::now();
    loop {
        let st = lab.ftn.status();
        let p1 = st["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "p1")
            .unwrap()
            .clone();
        if p1["health"] == "up" {
            break;
        }
        assert!(
            t.elapsed() < lab.timing.up(),
            "p1 not up again within {:?}: {st}",
            lab.timing.up()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(lab.ftn.current("web").as_deref(), Some("b1"));
    assert_eq!(lab.ask_new(), "backup");
    let out = lab.ftn.cli_ok(&["switchover", "web", "--to", "p1"]);
    assert!(out.contains("web moved b1 -> p1"), "{out}");
    assert_eq!(lab.ftn.current("web").as_deref(), Some("p1"));
    assert_eq!(lab.ask_new(), "primary");
    // Switchover to a server the resource does not list is refused with the reason.
    let out = lab.ftn.cli(&["switchover", "web", "--to", "p6"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("409") && err.contains("not in resource \"web\"'s list"),
        "{err}"
    );
}

#[test]
fn controller_kill9_and_restart_lose_nothing() {
    let lab_start = Instant::now();
    let mut lab = Lab::start(Timing::DEFAULT, "");
    let long = lab.open();
    let probe = lab.probe();
    std::thread::sleep(Duration::from_millis(300));
    let killed = probe.now();
    lab.ftn.kill9();
    std::thread::sleep(Duration::from_millis(700));
    lab.ftn.start();
    std::thread::sleep(Duration::from_millis(500));
    let samples = probe.finish();
    let end = samples.last().unwrap().at;
    let g = gap(&samples, killed, end + Duration::from_millis(1));
    let failed = g.failed;
    println!(
        "controller down ~0.7 s and restarted: {} probes, {failed} failed, longest gap {g}",
        samples.len()
    );
    assert_eq!(failed, 0, "no probe may fail while the controller restarts");
    assert_eq!(
        answered_by(&samples, killed, end + Duration::from_millis(1), "primary"),
        samples.iter().filter(|s| s.at >= killed).count()
    );
    let (_long, r) = lab.ask(long);
    assert_eq!(
        r.as_deref(),
        Ok("primary"),
        "established connection kept its server"
    );
    let log = lab.ftn.log_text();
    assert!(log.contains("adopted the pinned dataplane"), "{log}");
    let ev = lab.ftn.events();
    assert!(!ev.contains("moved p1 -> b1"), "no remap on restart: {ev}");
    println!("lab took {:.1} s", lab_start.elapsed().as_secs_f64());
}

#[test]
fn both_servers_down_then_recovery() {
    let mut lab = Lab::start(
        Timing::DEFAULT,
        "on_no_server = \"reject\"\nfailback = \"immediate\"",
    );
    lab.primary = None;
    lab.backup = None;
    lab.ftn.wait_current("web", None, lab.timing.down());
    // reject: the client is refused at once instead of timing out.
    let t = Instant::now();
    let r = in_ns(&lab.t.client, || {
        Conn::try_open(Lab::vip(), Duration::from_secs(2)).map(|_| ())
    });
    let e = r.expect_err("no server: the connection must fail");
    println!(
        "both down: connect failed in {:.1} ms: {e}",
        ms(t.elapsed())
    );
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(lab.ftn.events().contains("no-server"));
    // Each recovery needs `rise` passed checks (3 x 1 s by default) before it counts.
    lab.backup = Some(Service::start(&lab.t.backup, "backup"));
    lab.ftn.wait_current("web", Some("b1"), lab.timing.up());
    assert_eq!(lab.ask_new(), "backup");
    lab.primary = Some(Service::start(&lab.t.primary, "primary"));
    lab.ftn.wait_current("web", Some("p1"), lab.timing.up());
    assert_eq!(lab.ask_new(), "primary");
}

#[test]
fn flapping_primary_does_not_flap_traffic() {
    let mut lab = Lab::start(Timing::DEFAULT, "");
    let probe = lab.probe();
    // Up/down every 200 ms (4 probe intervals) for 4 s.
    let t = Instant::now();
    let mut up = true;
    while t.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(200));
        up = !up;
        lab.primary = if up {
            Some(Service::start(&lab.t.primary, "primary"))
        } else {
            None
        };
    }
    lab.primary = Some(Service::start(&lab.t.primary, "primary"));
    std::thread::sleep(Duration::from_millis(500));
    let samples = probe.finish();
    let st = lab.ftn.status();
    let moves = st["failovers"]["web"].as_u64().unwrap_or(0);
    println!(
        "flapping primary: web moved {moves} time(s); now on {:?}",
        lab.ftn.current("web")
    );
    assert_eq!(
        moves, 1,
        "one failover, no failback while it flaps (hold time): {st}"
    );
    assert_eq!(lab.ftn.current("web").as_deref(), Some("b1"));
    // Once on the backup, traffic stays there.
    let first_backup = samples
        .iter()
        .find(|s| s.answer.as_deref() == Some("backup"))
        .unwrap()
        .at;
    assert_eq!(
        answered_by(&samples, first_backup, Duration::MAX, "primary"),
        0
    );
}

#[test]
fn invalid_config_and_api_input_are_refused_and_change_nothing() {
    let lab = Lab::start(Timing::DEFAULT, "");
    let good = std::fs::read_to_string(&lab.ftn.config).unwrap();
    let before = lab.ftn.status();
    let cases: [(&str, String, &str); 5] = [
        (
            "unknown field",
            good.replace(
                "[[resource]]\nname = \"web\"\n",
                "[[resource]]\nname = \"web\"\ncolour = \"red\"\n",
            ),
            "unknown field `colour`",
        ),
        (
            "duplicate VIP",
            good.replace(ftn_tests::lab::VIP6, VIP4)
                .replace("servers = [\"p6\", \"b6\"]", "servers = [\"p1\", \"b1\"]"),
            "198.18.100.1",
        ),
        (
            "unknown server",
            good.replace("servers = [\"p1\", \"b1\"]", "servers = [\"p1\", \"b9\"]"),
            "unknown server \"b9\"",
        ),
        (
            "bad address",
            good.replace("address = \"198.18.3.10\"", "address = \"198.18.3.300\""),
            "198.18.3.300",
        ),
        (
            "primary twice",
            good.replace(
                "servers = [\"p1\", \"b1\"]",
                "servers = [\"p1\", \"b1\", \"p1\"]",
            ),
            "p1",
        ),
    ];
    for (what, text, needle) in &cases {
        let bad = lab.ftn.dir.join("bad.toml");
        std::fs::write(&bad, text).unwrap();
        let out = lab.ftn.cli_raw(&["check-config", bad.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        println!("{what}: {}", err.lines().next().unwrap_or(""));
        assert!(!out.status.success(), "{what}: accepted");
        assert!(
            err.contains(needle) && err.contains("bad.toml:"),
            "{what}: {err}"
        );
        // The same file as the running config: reload refused, state unchanged.
        std::fs::write(&lab.ftn.config, text).unwrap();
        // The CLI reads the token from the (invalid) file's [api] table as it is.
        let out = lab.ftn.cli(&["reload"]);
        assert!(!out.status.success(), "{what}: reload accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("422") && err.contains(needle), "{what}: {err}");
        lab.ftn.hup();
        std::thread::sleep(Duration::from_millis(200));
        let now = lab.ftn.status();
        assert_eq!(
            now["resources"], before["resources"],
            "{what}: state changed"
        );
        assert_eq!(
            now["revision"], before["revision"],
            "{what}: directory changed"
        );
    }
    std::fs::write(&lab.ftn.config, &good).unwrap();
    assert_eq!(lab.ask_new(), "primary");
    // API: no token, wrong token, malformed input, unknown names.
    let (c, b) = lab.ftn.http(
        "POST",
        "/v1/switchover",
        None,
        Some(r#"{"resource":"web","to":"b1"}"#),
    );
    assert_eq!(c, 401, "{b}");
    let (c, b) = lab.ftn.http(
        "POST",
        "/v1/switchover",
        Some("nope"),
        Some(r#"{"resource":"web","to":"b1"}"#),
    );
    assert_eq!(c, 403, "{b}");
    let (c, b) = lab.ftn.http(
        "POST",
        "/v1/switchover",
        Some(TOKEN),
        Some(r#"{"resource":"web""#),
    );
    assert_eq!(c, 400, "{b}");
    assert!(b.contains("error"), "{b}");
    let (c, b) = lab.ftn.http(
        "POST",
        "/v1/switchover",
        Some(TOKEN),
        Some(r#"{"resource":"web","to":"b1","force":true}"#),
    );
    assert_eq!(c, 422, "{b}");
    assert!(b.contains("force"), "{b}");
    let (c, b) = lab
        .ftn
        .http("POST", "/v1/drain", Some(TOKEN), Some(r#"{"server":"zz"}"#));
    assert_eq!(c, 404, "{b}");
    assert!(b.contains("no server named \\\"zz\\\""), "{b}");
    let (c, b) = lab.ftn.http("GET", "/v1/events?limit=abc", None, None);
    assert_eq!(c, 400, "{b}");
    let (c, _) = lab.ftn.http("GET", "/v1/nothing", None, None);
    assert_eq!(c, 404);
    assert_eq!(
        lab.ftn.status()["revision"],
        before["revision"],
        "refused calls changed the directory"
    );
    let (c, b) = lab.ftn.http("GET", "/metrics", None, None);
    assert_eq!(c, 200);
    assert!(
        b.contains("ftn_resource_server{resource=\"web\",server=\"p1\"} 1"),
        "{b}"
    );
    assert!(b.contains("ftn_dataplane_packets_total{outcome="), "{b}");
    // The daemon reads the counters through its own descriptors (not the map-sync thread).
    assert!(b.lines().any(|l| l == "ftn_dataplane_up 1"), "{b}");
    assert!(
        b.contains("# TYPE ftn_verdict_to_maps_seconds histogram"),
        "{b}"
    );
}

#[test]
fn drain_moves_new_flows_and_keeps_established_ones() {
    let drain = Duration::from_secs(2);
    let lab = Lab::start(Timing::DEFAULT, "failback = \"immediate\"\ndrain = \"2s\"");
    let long = lab.open();
    // The drain time counts from the command.
    let drained = Instant::now();
    let out = lab.ftn.cli_ok(&["drain", "p1"]);
    assert!(out.contains("web moved p1 -> b1"), "{out}");
    // The drain is timed from the API's receipt to the maps (recorded when the map write
    // returns, just after the command's answer): within the margin.
    let t = Instant::now();
    let timed = loop {
        let st = lab.ftn.status();
        if st["verdicts_applied"].as_u64() >= Some(1) || t.elapsed() > MARGIN {
            break st;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        timed["verdicts_applied"].as_u64() >= Some(1)
            && timed["last_verdict_to_maps_us"].as_u64().is_some(),
        "the drain was not timed to the maps: {timed}"
    );
    assert_eq!(lab.ask_new(), "backup");
    let (long, r) = lab.ask(long);
    assert_eq!(
        r.as_deref(),
        Ok("primary"),
        "established flows finish on the drained server"
    );
    // After the drain time the remaining flows move (and the backup resets them): asked
    // until that happens, at most the drain time plus the margin.
    let t = Instant::now();
    let mut long = long;
    let r = loop {
        std::thread::sleep(Duration::from_millis(100));
        let (c, r) = lab.ask(long);
        if r.is_err() || t.elapsed() > drain + MARGIN {
            break r;
        }
        long = c;
    };
    assert!(
        r.is_err(),
        "the remaining flows must move within {:?} of the drain: {r:?}",
        drain + MARGIN
    );
    assert!(
        drained.elapsed() >= drain,
        "flows moved before the drain time ({:?})",
        drained.elapsed()
    );
    lab.ftn.cli_ok(&["undrain", "p1"]);
    assert_eq!(lab.ftn.current("web").as_deref(), Some("p1"));
    assert_eq!(lab.ask_new(), "primary");
}

#[test]
fn passive_signals_catch_a_dead_server_between_slow_checks() {
    // Active checks only every 2 s: without the dataplane's passive reports, a failure would
    // take 2-4 s to notice; a failover sooner than `down_earliest_active` (one interval) can
    // only come from passive health.
    let mut lab = Lab::start(
        Timing::with_interval(Duration::from_secs(2)),
        "failback = \"immediate\"",
    );
    let passive_bound = lab.timing.down_earliest_active();
    let probe = lab.probe();
    std::thread::sleep(Duration::from_millis(300));
    let killed = probe.now();
    lab.primary = None;
    let took = lab.ftn.wait_current("web", Some("b1"), passive_bound);
    println!(
        "service killed, checks every 2 s: failover decided after {:.0} ms",
        ms(took)
    );
    std::thread::sleep(Duration::from_millis(200));
    lab.primary = Some(Service::start(&lab.t.primary, "primary"));
    lab.ftn.wait_current("web", Some("p1"), lab.timing.up());
    std::thread::sleep(Duration::from_millis(300));
    let crashed = probe.now();
    lab.t.primary.ip(&["link", "set", "p0", "down"]);
    let took = lab.ftn.wait_current("web", Some("b1"), passive_bound);
    println!(
        "link down, checks every 2 s: failover decided after {:.0} ms",
        ms(took)
    );
    std::thread::sleep(Duration::from_millis(200));
    let samples = probe.finish();
    let g1 = gap(&samples, killed, crashed);
    let end = samples.last().unwrap().at + Duration::from_millis(1);
    let g2 = gap(&samples, crashed, end);
    println!("client interruption: service killed {g1}, link down {g2}");
    assert!(
        !g1.open && !g2.open && g1.longest < passive_bound && g2.longest < passive_bound,
        "passive detection too slow: the client waited as long as the active checks would take"
    );
    let st = lab.ftn.status();
    assert!(
        st["passive_signals"]["p1"].as_u64().unwrap_or(0) >= 2,
        "{st}"
    );
    let log = lab.ftn.log_text();
    assert!(
        log.contains("refused (RST) in a row") && log.contains("unanswered for"),
        "{log}"
    );
}

#[test]
fn reload_applies_only_the_difference() {
    let lab = Lab::start(Timing::DEFAULT, "");
    let long = lab.open();
    let text = std::fs::read_to_string(&lab.ftn.config).unwrap();
    let added = format!(
        "{text}\n[[resource]]\nname = \"dns\"\nvip = \"198.18.100.2\"\nprotocol = \"udp\"\nports = [53]\nservers = [\"b1\", \"p1\"]\n"
    );
    std::fs::write(&lab.ftn.config, added).unwrap();
    let out = lab.ftn.cli_ok(&["reload"]);
    println!("reload: {out}");
    assert!(
        out.contains("dns moved no server -> b1: resource added"),
        "{out}"
    );
    let (answer, from) = in_ns(&lab.t.client, || {
        ftn_tests::lab::udp_ask("198.18.100.2".parse().unwrap())
    });
    assert_eq!(
        (answer.as_str(), from.to_string().as_str()),
        ("backup", "198.18.100.2")
    );
    let (_long, r) = lab.ask(long);
    assert_eq!(
        r.as_deref(),
        Ok("primary"),
        "an unchanged resource's connection is untouched"
    );
    // SIGHUP with the original file removes dns again.
    std::fs::write(&lab.ftn.config, text).unwrap();
    lab.ftn.hup();
    let t = Instant::now();
    while lab.ftn.status()["resources"].as_array().unwrap().len() != 2 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "SIGHUP reload not applied"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lab.ftn.events().contains("resource dns removed"));
    let st = lab.ftn.status();
    assert_eq!(st["reloads_ok"], 2, "{st}");
    let (c, cfg) = lab.ftn.http("GET", "/v1/config", None, None);
    assert_eq!(c, 200);
    assert!(
        cfg.contains("\"token_set\":true") && !cfg.contains(TOKEN),
        "{cfg}"
    );
}
