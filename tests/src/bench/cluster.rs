//! Several gateways on etcd (the cluster lab: 3 gateways, a 3-member etcd cluster, real `ftn`
//! processes): how long a leader's decision takes to reach every gateway's maps, beside etcd's
//! own put-to-watch latency measured in the same lab; and the client's interruption through each
//! gateway when the primary crashes, with the default configuration.

use std::time::{Duration, Instant};

use crate::timing::{Timing, MARGIN};
use crate::{
    bench::{attempt, median, Figure, Reps, Size},
    cluster::{self, Cluster, CHECKS, GATEWAYS},
    ftn::gap,
    lab::in_ns,
};

const EVERY: Duration = Duration::from_millis(10);

/// etcd's own latency from a put to the watch event, seen from gateway 1's namespace: the floor
/// under any propagation through etcd.
fn etcd_put_watch_ms(c: &Cluster, n: usize) -> Vec<f64> {
    let endpoints: Vec<String> = (1..=cluster::MEMBERS)
        .map(cluster::member_client_url)
        .collect();
    let key = format!("{}/bench-put-watch", c.prefix);
    in_ns(c.gw_ns(1), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut client = etcd_client::Client::connect(&endpoints, None)
                .await
                .expect("connect to etcd");
            let (_w, mut stream) = client
                .watch(key.clone(), None)
                .await
                .expect("watch")
                .split();
            let mut out = Vec::new();
            for i in 0..n {
                let t = Instant::now();
                client
                    .put(key.clone(), i.to_string(), None)
                    .await
                    .expect("put");
                loop {
                    let r = tokio::time::timeout(Duration::from_secs(2), stream.message())
                        .await
                        .expect("watch event within 2 s")
                        .expect("watch")
                        .expect("watch stream");
                    if r.events().iter().any(|e| {
                        e.kv()
                            .is_some_and(|kv| kv.value() == i.to_string().as_bytes())
                    }) {
                        break;
                    }
                }
                out.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            let _ = client.delete(key, None).await;
            out
        })
    })
}

/// Switchovers through the leader's API, alternately to the backup and back; for each, the time
/// from the leader's directory write (the event's timestamp) to the last gateway's maps holding
/// it (each gateway publishes when its map writes are done).
pub fn propagation_ms(c: &Cluster, n: usize) -> Result<(Vec<f64>, String), String> {
    let leader = c.leader().ok_or("no leader")?;
    let lk = c.index_of(&leader);
    let mut out = Vec::new();
    // Only the events after those already in the log (a large configuration's start writes
    // one per resource).
    let mut after = c.last_event_seq(lk)?;
    for i in 0..n {
        let to = if i % 2 == 0 { "backup" } else { "primary" };
        c.gw(lk).cli_ok(&["switchover", "web", "--to", to]);
        let events = c.try_events_after(lk, after)?;
        after = events
            .iter()
            .filter_map(|e| e["seq"].as_u64())
            .max()
            .unwrap_or(after);
        let ev = events
            .iter()
            .rev()
            .find(|e| e["kind"] == "switchover")
            .ok_or("no switchover event after the command")?;
        let (rev, at) = (
            ev["revision"].as_u64().ok_or("event without revision")?,
            ev["at_ms"].as_u64().ok_or("event without at_ms")?,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut applied_at = Vec::new();
        for k in 1..=GATEWAYS {
            loop {
                let cs = c.cluster_status(k)?;
                let own = cs["gateways"]
                    .as_array()
                    .and_then(|g| g.iter().find(|g| g["name"] == cluster::gw_name(k)).cloned())
                    .ok_or("no own record")?;
                if own["applied_revision"].as_u64().unwrap_or(0) >= rev {
                    applied_at.push(own["applied_at_ms"].as_u64().unwrap_or(0));
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "gateway {k} did not apply revision {rev} within 5 s"
                    ));
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let last = applied_at.iter().copied().max().unwrap_or(at);
        out.push(last.saturating_sub(at) as f64);
    }
    Ok((out, leader))
}

/// The primary crashes (all its links down) with the default checks; client probes through
/// every gateway; returns the longest interruption over the gateways, and the time until every
/// gateway's status shows the backup.
/// The lab with ftn's default check and etcd timings (the lab's own 100 ms checks and short
/// etcd timeouts removed from every gateway's configuration); no controller runs yet.
fn default_cluster() -> Result<Cluster, String> {
    let c = Cluster::new("");
    // The default checks: remove the lab's 100 ms check interval.
    for k in 1..=GATEWAYS {
        let f = c.gw(k);
        let text = std::fs::read_to_string(&f.config).map_err(|e| e.to_string())?;
        let text = text.replace(
            &format!(
                "checks = [{{ type = \"tcp\", port = 80{} }}]",
                CHECKS.check_options()
            ),
            "checks = [{ type = \"tcp\", port = 80 }]",
        );
        // And etcd's timings: the defaults too.
        let text = text
            .lines()
            .filter(|l| {
                !["dial_timeout =", "request_timeout =", "lease_ttl ="]
                    .iter()
                    .any(|k| l.starts_with(k))
            })
            .collect::<Vec<_>>()
            .join("\n");
        if text.contains("interval") || text.contains("lease_ttl") {
            return Err(format!("the lab config changed shape:\n{text}"));
        }
        f.write_config(&text);
    }
    Ok(c)
}

/// The worst case of one etcd request with ftn's default timeouts.
fn default_etcd_worst() -> Duration {
    cluster::etcd_request_worst_with(
        ftn_controller::config::DEFAULT_ETCD_DIAL_TIMEOUT,
        ftn_controller::config::DEFAULT_ETCD_REQUEST_TIMEOUT,
    )
}

fn crash_once() -> Result<(f64, f64, Vec<f64>), String> {
    let mut c = default_cluster()?;
    c.start_gateways();
    let probers = c.probe_all(EVERY, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    // Each prober has its own clock (its start): the fault's time on each.
    let t0 = Instant::now();
    let t_fault: Vec<Duration> = probers.iter().map(|p| t0 - p.start).collect();
    for k in 1..=GATEWAYS {
        c.primary.ip(&["link", "set", &format!("p{k}"), "down"]);
    }
    // The wait for this default config: the default checks' down verdict, then publish, commit
    // and watch, each at worst one pool request with ftn's default etcd timeouts.
    c.wait_all_current(
        "web",
        Some("backup"),
        Timing::DEFAULT.down() + default_etcd_worst() * 3,
    );
    let all_ms = t0.elapsed().as_secs_f64() * 1000.0;
    std::thread::sleep(Duration::from_millis(500));
    let mut gaps = Vec::new();
    for (p, t_fault) in probers.into_iter().zip(t_fault) {
        let until = p.now();
        let samples = p.finish();
        let g = gap(&samples, t_fault, until).closed_ms()?;
        gaps.push(g.round());
    }
    let worst = gaps.iter().copied().fold(0.0, f64::max);
    Ok((worst, all_ms, gaps))
}

/// The leader gateway's host and the primary die at the same instant (every link of both down,
/// the leader's `ftn` SIGKILLed), default config, clients probing through every gateway (under
/// traffic). Returns the time until both surviving gateways' status shows `web` on the backup,
/// when the new leader was seen, and the longest interruption for new connections through each
/// survivor.
fn leader_death_once() -> Result<(f64, f64, Vec<f64>), String> {
    let mut c = default_cluster()?;
    c.start_gateways();
    let (leader, _) =
        c.wait_leader(ftn_controller::config::DEFAULT_LEASE_TTL + default_etcd_worst() + MARGIN);
    let lk = c.index_of(&leader);
    let survivors: Vec<usize> = (1..=GATEWAYS).filter(|&k| k != lk).collect();
    let probers: Vec<_> = survivors
        .iter()
        .map(|&k| c.probe_via(k, EVERY, Duration::from_secs(30)))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let t0 = Instant::now();
    let t_fault: Vec<Duration> = probers.iter().map(|p| t0 - p.start).collect();
    for k in 1..=GATEWAYS {
        c.primary.ip(&["link", "set", &format!("p{k}"), "down"]);
    }
    c.kill_gateway(lk);
    for dev in ["gc", "gp", "gb", "ge"] {
        c.gw_ns(lk).ip(&["link", "set", dev, "down"]);
    }
    // The dead leader's lease expires (lease_ttl), a survivor campaigns, then the primary's
    // down verdict (the default checks or passive health), publish, commit and watch, plus the
    // margin.
    let within = ftn_controller::config::DEFAULT_LEASE_TTL
        + Timing::DEFAULT.down()
        + default_etcd_worst() * 4
        + MARGIN;
    let new_leader_at = {
        let t = Instant::now();
        loop {
            match c.leader() {
                Some(l) if l != leader => break t0.elapsed(),
                _ if t.elapsed() > within => {
                    return Err(format!(
                        "no new leader within {within:?}:\n{}",
                        c.describe()
                    ))
                }
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    };
    c.wait_current_on(&survivors, "web", Some("backup"), within);
    let all = t0.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let mut gaps = Vec::new();
    for (p, t_fault) in probers.into_iter().zip(t_fault) {
        let until = p.now();
        let samples = p.finish();
        gaps.push(gap(&samples, t_fault, until).closed_ms()?.round());
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    Ok((ms(all), ms(new_leader_at), gaps))
}

pub fn run(size: Size) -> Vec<Figure> {
    let (n_prop, n_floor, reps) = match size {
        Size::Quick => (3, 5, 1),
        Size::Full => (20, 50, 3),
    };
    let mut out = Vec::new();
    match attempt(|| {
        let c = Cluster::start("");
        let floor = etcd_put_watch_ms(&c, n_floor);
        let (prop, leader) = propagation_ms(&c, n_prop)?;
        Ok((floor, prop, leader))
    }) {
        Ok((floor, prop, leader)) => {
            let fl = median(&floor);
            out.push(Figure::new(
                "etcd_propagation_ms",
                median(&prop),
                "ms",
                format!(
                    "median of {} switchovers through the leader {leader}: its directory write (event time) to the last of 3 gateways' maps holding it (ms resolution; runs {:?}); baseline in the same lab: etcd put -> watch event {fl:.2} ms (median of {})",
                    prop.len(),
                    prop.iter().map(|v| *v as u64).collect::<Vec<_>>(),
                    floor.len()
                ),
            ));
            out.push(Figure::new(
                "etcd_put_watch_ms",
                fl,
                "ms",
                "baseline: etcd's own put -> watch event latency from a gateway's namespace (3-member cluster)",
            ));
        }
        Err(e) => {
            out.push(Figure::missing("etcd_propagation_ms", "ms", e.clone()));
            out.push(Figure::missing("etcd_put_watch_ms", "ms", e));
        }
    }
    let mut crashes = Reps::new(reps);
    for rep in 0..reps {
        eprintln!("   cluster: crash repetition {} of {reps}", rep + 1);
        crashes.run(rep, crash_once);
    }
    out.push(match crashes.all() {
        Err(why) => Figure::missing("failover_3gw_gap_ms", "ms", why),
        Ok(runs) => {
            let worst: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let all: Vec<f64> = runs.iter().map(|r| r.1).collect();
            let per_gw: Vec<&Vec<f64>> = runs.iter().map(|r| &r.2).collect();
            Figure::new(
                "failover_3gw_gap_ms",
                median(&worst),
                "ms",
                format!(
                    "median over {} crash(es) of the longest client interruption through any of 3 gateways (probes every 10 ms through each: UNDER TRAFFIC), default config (checks every 1 s, passive health on, etcd timings default); per gateway {:?}; every gateway's status on the backup {:.0} ms after the crash (median); single-gateway baseline: failover_crash_gap_ms",
                    worst.len(),
                    per_gw,
                    median(&all),
                ),
            )
        }
    });
    // The baseline of the leader's death: the same crash of the primary with every gateway alive.
    let baseline = match crashes.all() {
        Ok(runs) => format!(
            "baseline in the same run: the primary's crash alone, every gateway on the backup after {:.0} ms (median of {})",
            median(&runs.iter().map(|r| r.1).collect::<Vec<_>>()),
            runs.len()
        ),
        Err(why) => format!("baseline (the primary's crash alone) not measured: {why}"),
    };
    let mut deaths = Reps::new(reps);
    for rep in 0..reps {
        eprintln!("   cluster: leader-death repetition {} of {reps}", rep + 1);
        deaths.run(rep, leader_death_once);
    }
    out.push(match deaths.all() {
        Err(why) => Figure::missing("leader_death_failover_ms", "ms", why),
        Ok(runs) => {
            let all: Vec<f64> = runs.iter().map(|r| r.0).collect();
            let leader: Vec<f64> = runs.iter().map(|r| r.1).collect();
            let gaps: Vec<&Vec<f64>> = runs.iter().map(|r| &r.2).collect();
            Figure::new(
                "leader_death_failover_ms",
                median(&all),
                "ms",
                format!(
                    "median over {} run(s): the leader gateway's host and the primary die together (links down, the leader's ftn SIGKILLed), default config (lease_ttl 3 s, checks every 1 s, passive health on: clients probe every 10 ms through both survivors), until both survivors' status shows web on the backup: runs {:?} ms; a new leader seen after {:?} ms; longest interruption for new connections through each survivor {:?} ms. The handover waits for the dead leader's lease to expire (etcd grants at least 2 s); {baseline}",
                    all.len(),
                    all.iter().map(|v| v.round()).collect::<Vec<_>>(),
                    leader.iter().map(|v| v.round()).collect::<Vec<_>>(),
                    gaps,
                ),
            )
        }
    });
    out
}
