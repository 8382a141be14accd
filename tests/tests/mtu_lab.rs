//! Path MTU discovery through the gateway (issue 13).
//!
//! A classic black hole: the server advertises an MSS for 1500-byte packets (`advmss` on its
//! route) while its link, and the gateway's interface to it, carry 1400. The client then sends
//! segments the server's side cannot carry; only an ICMP "fragmentation needed" / "packet too
//! big" that quotes what the client sent (the VIP) makes it send smaller ones. Before, the
//! gateway redirected the oversized frame into the server's link, which dropped it, with no
//! error: the upload stalled. Now the XDP program answers from the VIP and the upload completes.
//!
//! Every wait is derived: the next-hop cache keeps an MTU for `nexthop_ttl` (the lab's config
//! keeps the default, 1 s), so the test waits that plus `timing::MARGIN` after changing the MTU;
//! each upload gets `lab::IO_TIMEOUT` plus the margin.

use std::{
    io::{BufRead, BufReader, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use ftn_tests::{
    gateway::Lab,
    lab::{in_ns, IO_TIMEOUT},
    timing::{Timing, MARGIN},
};

/// The server side's MTU (gateway `g1`, primary `p0`).
const MTU: &str = "1400";
/// `[dataplane] nexthop_ttl`'s default (the lab's config does not set it).
const NEXTHOP_TTL: Duration = Duration::from_secs(1);
/// One upload: one line of this many bytes, answered by the service with its name.
const UPLOAD: usize = 512 * 1024;

fn upload(vip: IpAddr) -> Result<(String, Duration), String> {
    let t0 = Instant::now();
    let limit = IO_TIMEOUT + MARGIN;
    let s = TcpStream::connect_timeout(&SocketAddr::new(vip, 80), IO_TIMEOUT)
        .map_err(|e| format!("connect to {vip}:80: {e}"))?;
    s.set_write_timeout(Some(limit)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut line = vec![b'x'; UPLOAD];
    line.push(b'\n');
    w.write_all(&line).map_err(|e| {
        format!(
            "upload of {UPLOAD} bytes to {vip}: {e} after {:?}",
            t0.elapsed()
        )
    })?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer).map_err(|e| {
        format!(
            "answer to the upload to {vip}: {e} after {:?}",
            t0.elapsed()
        )
    })?;
    Ok((answer.trim().to_string(), t0.elapsed()))
}

fn counter(metrics: &str, outcome: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.contains(&format!("=\"{outcome}\"")))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

#[test]
fn a_large_upload_through_a_smaller_server_side_mtu_completes() {
    let lab = Lab::start(Timing::DEFAULT, "");
    let (g, p) = (&lab.t.gateway, &lab.t.primary);
    g.ip(&["link", "set", "g1", "mtu", MTU]);
    p.ip(&["link", "set", "p0", "mtu", MTU]);
    p.ip(&[
        "route",
        "replace",
        "default",
        "via",
        "198.18.2.1",
        "advmss",
        "1460",
    ]);
    p.ip(&[
        "-6",
        "route",
        "replace",
        "default",
        "via",
        "2001:2:2::1",
        "advmss",
        "1440",
    ]);
    // Next hops cached before the change carry the old MTU.
    std::thread::sleep(NEXTHOP_TTL + MARGIN);
    for vip in [Lab::vip(), Lab::vip6()] {
        let r = in_ns(&lab.t.client, move || upload(vip));
        match r {
            Ok((who, took)) => {
                println!("upload of {UPLOAD} bytes to {vip} through MTU {MTU}: answered by {who} in {took:?}");
                assert_eq!(who, "primary", "upload to {vip}");
            }
            Err(e) => panic!("{e}\n{}", lab.ftn.log_text()),
        }
    }
    let (_, metrics) = lab.ftn.http("GET", "/metrics", None, None);
    let too_big = counter(&metrics, "icmp_too_big");
    println!("icmp_too_big = {too_big}");
    assert!(
        too_big >= 2,
        "the gateway sent {too_big} 'too big' answers (one per family at least expected)"
    );
}
