//! Gateway high availability (the HA lab, `crate::ha`): what a gateway's death, detach and
//! join cost the clients, with ECMP and BFD through real BIRD 2 daemons; beside the reference
//! deployment measured in the same run: two ftn gateways on one segment whose VIP keepalived's
//! VRRP moves (`crate::vrrp`).

use std::time::Duration;

use crate::bench::{attempt, median, Figure, Size};
use crate::ftn::PROBE_TIMEOUT;
use crate::ha::{bfd_detect, broken_by, ecmp_outage, failed, Ha, SESSIONS_UP};
use crate::timing::{MARGIN, START};

const EVERY: Duration = Duration::from_millis(10);
/// Long-lived connections opened before each crash, at least this many through each gateway
/// (the router's own ECMP choice, `ip route get`).
pub const PER_GATEWAY: usize = 4;

/// One host death of gateway k under traffic.
struct Crash {
    outage_ms: f64,
    /// Long-lived connections: (opened through the dead gateway, of them broken, through the
    /// others, of them broken).
    conns: (usize, usize, usize, usize),
    detected_ms: f64,
    failed: usize,
}

/// Gateway k's host dies under traffic; it is brought back and rejoined before returning.
fn crash_once(ha: &mut Ha, k: usize) -> Result<Crash, String> {
    let all: Vec<usize> = (1..=3).collect();
    let rest: Vec<usize> = all.iter().copied().filter(|g| *g != k).collect();
    let mut conns = ha.open_spread(PER_GATEWAY);
    let through = conns.iter().filter(|c| c.1 == k).count();
    let p = ha.probe(EVERY, Duration::from_secs(20));
    std::thread::sleep(Duration::from_millis(500));
    let t0 = p.now();
    ha.kill_host(k);
    let detected = ha.wait_route(&rest, bfd_detect() + MARGIN);
    std::thread::sleep(Duration::from_secs(1));
    let t1 = p.now();
    let s = p.finish();
    let outage = ecmp_outage(&s, t0, t1)?;
    let (on, off) = broken_by(&mut conns, k);
    let n = failed(&s, t0, t1);
    ha.revive_host(k);
    ha.wait_route(&all, SESSIONS_UP);
    Ok(Crash {
        outage_ms: outage.as_secs_f64() * 1000.0,
        conns: (through, on.len(), conns.len() - through, off.len()),
        detected_ms: detected.as_secs_f64() * 1000.0,
        failed: n,
    })
}

/// `systemctl stop ftn && ftn detach` on gateway 3, then its start (a fresh dataplane), under
/// traffic: (failed probes during the detach, failed probes during the join).
fn detach_join(ha: &mut Ha) -> Result<(usize, usize), String> {
    let p = ha.probe(EVERY, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(300));
    let t0 = p.now();
    ha.stop_and_detach(3);
    ha.wait_route(&[1, 2], MARGIN);
    std::thread::sleep(Duration::from_millis(300));
    let t1 = p.now();
    ha.start_ftn(3);
    ha.wait_route(&[1, 2, 3], START + MARGIN);
    std::thread::sleep(Duration::from_millis(500));
    let t2 = p.now();
    let s = p.finish();
    Ok((failed(&s, t0, t1), failed(&s, t1, t2)))
}

struct Bgp {
    crashes: Vec<Crash>,
    detach: usize,
    join: usize,
}

fn bgp(reps: usize) -> Result<Bgp, String> {
    let mut ha = Ha::start();
    let (detach, join) = detach_join(&mut ha)?;
    let mut crashes = Vec::new();
    for rep in 0..reps {
        eprintln!("   ha: host-death repetition {} of {reps}", rep + 1);
        // Every repetition must succeed: the first error ends the part (no median of survivors).
        let k = rep % 3 + 1;
        crashes.push(
            crash_once(&mut ha, k)
                .map_err(|e| format!("repetition {} of {reps} (gw{k}): {e}", rep + 1))?,
        );
    }
    Ok(Bgp {
        crashes,
        detach,
        join,
    })
}

pub fn run(size: Size) -> Vec<Figure> {
    let reps = match size {
        Size::Quick => 1,
        Size::Full => 5,
    };
    let vrrp = attempt(|| crate::vrrp::crash_reference(reps));
    let reference = match &vrrp {
        Ok(r) => format!(
            "reference in the same run: two ftn gateways on one segment, the VIP moved by keepalived VRRP (advert_int {} ms): interruption {} ms (median of {}), broken connections {}",
            crate::vrrp::ADVERT.as_millis(),
            median(&r.gaps).round(),
            r.gaps.len(),
            r.broken
        ),
        Err(e) => format!("reference (keepalived VRRP) not measured: {e}"),
    };
    let mut out = Vec::new();
    match attempt(|| bgp(reps)) {
        Err(e) => {
            for (key, unit) in [
                ("gateway_crash_gap_ms", "ms"),
                ("gateway_crash_broken_connections", "connections"),
                ("gateway_detach_failed_probes", "probes"),
                ("gateway_join_failed_probes", "probes"),
            ] {
                out.push(Figure::missing(key, unit, e.clone()));
            }
        }
        Ok(b) => {
            let gaps: Vec<f64> = b.crashes.iter().map(|c| c.outage_ms.round()).collect();
            let detect: Vec<f64> = b.crashes.iter().map(|c| c.detected_ms.round()).collect();
            let failed: Vec<usize> = b.crashes.iter().map(|c| c.failed).collect();
            let sum = |f: fn(&Crash) -> usize| b.crashes.iter().map(f).sum::<usize>();
            let (dead, dead_lost) = (sum(|c| c.conns.0), sum(|c| c.conns.1));
            let (others, others_lost) = (sum(|c| c.conns.2), sum(|c| c.conns.3));
            out.push(Figure::new(
                "gateway_crash_gap_ms",
                median(&gaps),
                "ms",
                format!(
                    "median of {} host deaths (links down, ftn and BIRD SIGKILLed) of one of 3 gateways behind a BIRD 2 router (ECMP, 5-tuple hash; BFD {} ms x {}): from the death to the start of the last new connection that failed (probes every 10 ms, {} ms timeout, 1/3 of them hashed to the dead gateway until the router drops it): runs {gaps:?} ms; the router dropped the dead gateway after {detect:?} ms; failed probes {failed:?}; {reference}",
                    gaps.len(),
                    crate::ha::BFD_INTERVAL.as_millis(),
                    crate::ha::BFD_MULTIPLIER,
                    PROBE_TIMEOUT.as_millis(),
                ),
            ));
            out.push(Figure::new(
                "gateway_crash_broken_connections",
                (dead_lost + others_lost) as f64,
                "connections",
                format!(
                    "long-lived connections opened before each death (at least {PER_GATEWAY} through each gateway, by the router's own ECMP choice) that no longer answered after it, over {} host death(s): through the dead gateway {dead_lost} of {dead}, through the others {others_lost} of {others}; {reference}",
                    b.crashes.len()
                ),
            ));
            out.push(Figure::new(
                "gateway_detach_failed_probes",
                b.detach as f64,
                "probes",
                "new connections (every 10 ms) that failed while one gateway ran `systemctl stop ftn && ftn detach` (withdraw, withdraw_wait 1 s, detach)",
            ));
            out.push(Figure::new(
                "gateway_join_failed_probes",
                b.join as f64,
                "probes",
                "new connections (every 10 ms) that failed while the detached gateway started again (a fresh dataplane) and was announced",
            ));
        }
    }
    match vrrp {
        Ok(r) => {
            out.push(Figure::new(
                "vrrp_crash_gap_ms",
                median(&r.gaps),
                "ms",
                format!(
                    "reference: the master's host dies (server links down, its segment link silent but up, ftn and keepalived SIGKILLed); two ftn gateways on one segment, keepalived VRRPv3 advert_int {} ms moves the VIP (gratuitous ARP): longest interruption for new connections, runs {:?} ms",
                    crate::vrrp::ADVERT.as_millis(),
                    r.gaps
                ),
            ));
            out.push(Figure::new(
                "vrrp_crash_broken_connections",
                r.broken as f64,
                "connections",
                format!(
                    "reference: long-lived connections ({} per death, all through the master) that no longer answered after the VIP moved",
                    crate::vrrp::CONNS
                ),
            ));
        }
        Err(e) => {
            out.push(Figure::missing("vrrp_crash_gap_ms", "ms", e.clone()));
            out.push(Figure::missing(
                "vrrp_crash_broken_connections",
                "connections",
                e,
            ));
        }
    }
    out
}
