//! Active health checks ("heartbeats") for servers.
//!
//! # Pieces
//!
//! - [`probe_once`] runs one probe ([`Probe`]: TCP connect, HTTP status, UDP request/reply, ICMP
//!   echo) against an address and returns its latency or a human-readable [`ProbeFailure`].
//! - [`Hysteresis`] is the pure per-check state machine: from up, `fall` consecutive failures
//!   turn the check down; from down, `rise` consecutive successes turn it up. Any result that
//!   agrees with the current state resets the streak, so with `fall >= 2` a single lost probe
//!   never moves traffic, and a flapping target (alternating ok/fail) never changes state at all.
//! - [`ServerChecker`] runs one tokio task per [`CheckSpec`] of a server and combines them: a
//!   server is up when *all* its checks are up (with no checks it is always up).
//!
//! # Why only transitions go over the channel
//!
//! The consumer of [`HealthChange`]s is the failover engine, which moves traffic. It must act on
//! state *changes*, and only on them: sending every probe result would make it re-derive the
//! hysteresis, and a slow consumer would fall behind on thousands of stale "still up" messages.
//! A flip of the server-level verdict is rare, small, and carries its evidence (e.g.
//! `2 consecutive tcp:80 checks failed: connection refused`) for the log and the API. Everything
//! that changes per probe (latency, ok/failed counters, per-check state) lives in [`CheckStats`]
//! atomics shared with the API/metrics, which read them whenever they like. The server-level
//! flips are serialised under one lock that is held while the change is sent, so the receiver
//! always sees them in order and alternating (down, up, down, ...).
//!
//! # Why `initial_up`
//!
//! The directory records the last verdict. When the controller restarts, the dataplane keeps
//! forwarding according to that verdict. If checkers started "down" and had to re-run `rise`
//! successes, every server would be reported down then up again — moving traffic for nothing
//! — and if they started "up", a server that was down would briefly be re-admitted. Starting
//! every check in the recorded state means a restart changes nothing unless the probes disagree
//! with the record (and then only after `fall`/`rise` probes, as always).
//!
//! # Scheduling
//!
//! Each check probes on a [`tokio::time::interval`] with [`MissedTickBehavior::Delay`] (a slow
//! probe or a stalled runtime never causes a burst of catch-up probes). The first probe of each
//! check is delayed by a deterministic offset in `[0, interval)` derived from a hash of the
//! server name and the check's index, so a thousand servers configured at once do not probe in
//! lockstep. All timing goes through `tokio::time`, so tests can pause time.
//!
//! # `suspect()`
//!
//! The dataplane sees trouble before the probes do (e.g. "3 client SYNs unanswered"). Passive
//! evidence alone is not trusted to mark a server down — one unlucky client, a SYN flood or a
//! client-side problem would otherwise evict healthy servers — but it is a good reason to look
//! *now*. [`ServerChecker::suspect`] makes every check that is currently up probe immediately
//! and then back to back (a probe starts [`SUSPECT_PACE`] after the previous one started, or at
//! once when that one took longer) until the verdict is confirmed either way: `fall`
//! consecutive failures (the check goes down through the normal hysteresis) or a single success
//! (back to the normal pace). Detection time thus drops from about `fall * interval` to about
//! `fall * SUSPECT_PACE` for a refusing server and `fall * timeout` for a silent one, and the
//! decision is still made by active probes only.

use std::{
    future::Future,
    io::{self, Read, Write},
    net::{IpAddr, SocketAddr},
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, SystemTime},
};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{
    io::{unix::AsyncFd, Interest},
    net::{TcpStream, UdpSocket},
    sync::mpsc,
    time::{Instant, MissedTickBehavior},
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

// ------------------------------------------------------------------------------------------------
// Input types
// ------------------------------------------------------------------------------------------------

/// What one health check does: the configuration's check kinds, one type for both.
pub use crate::config::CheckKind as Probe;

impl Probe {
    /// Short label naming the check in evidence, logs and stats: `tcp:80`, `http:8080`,
    /// `udp:53`, `icmp`.
    pub fn label(&self) -> String {
        match self.port() {
            Some(port) => format!("{}:{port}", self.type_name()),
            None => self.type_name().to_string(),
        }
    }
}

/// One health check of a server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    pub probe: Probe,
    /// Time between the starts of two probes (normal pace).
    pub interval: Duration,
    /// How long one probe may take before it counts as failed.
    pub timeout: Duration,
    /// Consecutive successes that turn a down check up.
    pub rise: u32,
    /// Consecutive failures that turn an up check down.
    pub fall: u32,
}

/// Why a probe failed, as a short human-readable reason.
///
/// `local` separates the two kinds of failure. A probe that reached the network and got no good
/// answer (refused, reset, timed out, a wrong status) is evidence against the server. A probe
/// that could not be *run* from this host (no file descriptor left, no buffer, a socket or a
/// packet refused by the local kernel) says nothing about the server: counting it would let a
/// problem of the prober alone — an exhausted file limit, a firewall rule on output — declare
/// every server down at once and move all traffic the dataplane still forwards well (see
/// [`is_local_errno`] for why a missing route is not one of them). A local failure never feeds the hysteresis; it is
/// counted, logged and shown on its own (see [`CheckStats::local_errors`]).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct ProbeFailure {
    pub reason: String,
    /// The probe could not run for a reason on this host; not evidence about the server.
    pub local: bool,
}

impl ProbeFailure {
    /// A failure that counts against the server.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            local: false,
        }
    }

    /// A probe that could not run for a local reason (see [`is_local_errno`]).
    pub fn local(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            local: true,
        }
    }

    /// An error of a step that happens on this host only, before any packet left for the server
    /// (creating, binding or registering a socket): always local.
    fn setup(what: &str, e: &io::Error) -> Self {
        Self::local(format!("{what}: {}", describe_io(e)))
    }

    /// An error returned synchronously by a system call that sends (connect's route lookup,
    /// send): local when the errno is one the local stack produces ([`is_local_errno`]), else
    /// evidence against the server.
    fn sending(what: &str, e: &io::Error) -> Self {
        let reason = if what.is_empty() {
            describe_io(e)
        } else {
            format!("{what}: {}", describe_io(e))
        };
        if is_local_errno(e) {
            Self::local(reason)
        } else {
            Self::new(reason)
        }
    }
}

/// Errnos that a send-side system call (socket, connect before any packet, send) returns for a
/// reason that concerns the *prober* on this host, not the path to the server:
/// - EMFILE, ENFILE: no file descriptor (process or system limit);
/// - ENOBUFS, ENOMEM: no kernel memory for the socket or packet;
/// - EPERM, EACCES: refused by the local kernel (a netfilter rule on output, a raw socket without
///   CAP_NET_RAW, a BPF cgroup program): forwarded traffic never meets those;
/// - EADDRNOTAVAIL, EADDRINUSE: no local address or ephemeral port left;
/// - EAFNOSUPPORT: the address family is disabled for local sockets (e.g. IPv6 off).
///
/// "No route" (ENETUNREACH, or EHOSTUNREACH from a reject route) is deliberately NOT local: the
/// dataplane forwards with the same routing table (its FIB lookup fails the same way), so the
/// server is unreachable through this gateway for clients too, and moving its resources to a
/// reachable backup is what must happen (a gateway's link to the primary going down removes its
/// routes: that is a failover, not a frozen verdict).
pub fn is_local_errno(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPERM
                | libc::EACCES
                | libc::EADDRNOTAVAIL
                | libc::EADDRINUSE
                | libc::EAFNOSUPPORT
        )
    )
}

mod checker;
mod hysteresis;
mod icmp;
mod probe;

pub use checker::*;
pub use hysteresis::Hysteresis;
use icmp::*;
pub use probe::probe_once;
use probe::*;

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        net::{Ipv4Addr, Ipv6Addr},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);
    const T: Duration = Duration::from_millis(500);

    // --- hysteresis -----------------------------------------------------------------------------

    fn feed(h: &mut Hysteresis, results: &[bool]) -> Vec<Option<bool>> {
        results.iter().map(|&ok| h.observe(ok)).collect()
    }

    #[test]
    fn hysteresis_one_failure_does_not_flip_with_fall_2() {
        let mut h = Hysteresis::new(true, 3, 2);
        assert_eq!(feed(&mut h, &[false, true, false, true]), [None; 4]);
        assert!(h.is_up());
        assert_eq!(h.streak(), 0);
    }

    #[test]
    fn hysteresis_two_failures_flip_down() {
        let mut h = Hysteresis::new(true, 3, 2);
        assert_eq!(
            feed(&mut h, &[false, false, false]),
            [None, Some(false), None]
        );
        assert!(!h.is_up());
    }

    #[test]
    fn hysteresis_rise_needs_three_successes() {
        let mut h = Hysteresis::new(false, 3, 2);
        assert_eq!(
            feed(&mut h, &[true, true, false, true, true, true, true]),
            [None, None, None, None, None, Some(true), None]
        );
        assert!(h.is_up());
    }

    #[test]
    fn hysteresis_flapping_never_flips() {
        for start in [true, false] {
            let mut h = Hysteresis::new(start, 3, 2);
            let flapping: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
            assert_eq!(feed(&mut h, &flapping), vec![None; 100], "start up={start}");
            assert_eq!(h.is_up(), start);
        }
    }

    #[test]
    fn hysteresis_zero_thresholds_mean_one() {
        let mut h = Hysteresis::new(true, 0, 0);
        assert_eq!(feed(&mut h, &[false, true]), [Some(false), Some(true)]);
    }

    // --- helpers --------------------------------------------------------------------------------

    #[test]
    fn checksum_and_echo_request() {
        // RFC 1071 example.
        assert_eq!(
            internet_checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]),
            !0xddf2
        );
        // Odd length: the last byte is padded with zero.
        assert_eq!(internet_checksum(&[0xff]), !0xff00);
        let req = echo_request(false, 0x1234, 7);
        assert_eq!(req[0], 8);
        assert_eq!(
            internet_checksum(&req),
            0,
            "a packet with its checksum sums to zero"
        );
        let req6 = echo_request(true, 0x1234, 7);
        assert_eq!((req6[0], &req6[2..8]), (128, &[0, 0, 0x12, 0x34, 0, 7][..]));
    }

    #[test]
    fn echo_reply_matching() {
        let mut reply = echo_request(false, 0xbeef, 3);
        reply[0] = ICMPV4_ECHO_REPLY;
        let mut with_ip = vec![0x45; 1];
        with_ip.resize(20, 0);
        with_ip.extend_from_slice(&reply);
        assert!(is_echo_reply(&with_ip, false, true, 0xbeef, 3, true));
        assert!(
            !is_echo_reply(&with_ip, false, true, 0xbeee, 3, true),
            "other identifier"
        );
        assert!(
            !is_echo_reply(&with_ip, false, true, 0xbeef, 4, true),
            "other sequence"
        );
        assert!(
            is_echo_reply(&reply, false, false, 0, 3, false),
            "ping socket: id rewritten"
        );
        let request = echo_request(false, 0xbeef, 3);
        assert!(
            !is_echo_reply(&request, false, false, 0xbeef, 3, true),
            "our own request"
        );
        assert!(
            !is_echo_reply(&with_ip[..24], false, true, 0xbeef, 3, true),
            "truncated"
        );
        let mut reply6 = echo_request(true, 9, 10);
        reply6[0] = ICMPV6_ECHO_REPLY;
        assert!(is_echo_reply(&reply6, true, false, 9, 10, true));
        assert!(!is_echo_reply(&reply6, false, false, 9, 10, true));
    }

    #[test]
    fn local_errnos() {
        for errno in [
            libc::EMFILE,
            libc::ENFILE,
            libc::ENOBUFS,
            libc::EPERM,
            libc::EADDRNOTAVAIL,
        ] {
            assert!(
                is_local_errno(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        // No route: the dataplane cannot forward to the server either.
        for errno in [
            libc::ECONNREFUSED,
            libc::ECONNRESET,
            libc::ETIMEDOUT,
            libc::EPIPE,
            libc::ENETUNREACH,
            libc::EHOSTUNREACH,
        ] {
            assert!(
                !is_local_errno(&io::Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
        let f = ProbeFailure::sending(
            "sending request",
            &io::Error::from_raw_os_error(libc::EMFILE),
        );
        assert!(f.local);
        assert!(f.reason.starts_with("sending request: "), "{}", f.reason);
        assert!(
            !ProbeFailure::sending("", &io::Error::from_raw_os_error(libc::ECONNREFUSED)).local
        );
    }

    #[test]
    fn host_headers_and_durations() {
        assert_eq!(host_header("[::1]:80".parse().unwrap()), "[::1]");
        assert_eq!(
            host_header("10.0.0.1:8080".parse().unwrap()),
            "10.0.0.1:8080"
        );
        assert_eq!(fmt_duration(Duration::from_millis(50)), "50ms");
        assert_eq!(fmt_duration(Duration::from_secs(2)), "2s");
    }

    #[test]
    fn start_offsets_are_deterministic_and_within_the_interval() {
        let i = Duration::from_secs(2);
        assert_eq!(start_offset("web-1", 0, i), start_offset("web-1", 0, i));
        let offsets: std::collections::HashSet<_> = (0..100)
            .map(|n| start_offset(&format!("web-{n}"), 0, i))
            .collect();
        assert!(offsets.iter().all(|o| *o < i));
        assert!(offsets.len() > 50, "offsets spread out: {}", offsets.len());
    }

    // --- probes against loopback ----------------------------------------------------------------

    /// A port on `ip` with nothing listening (TCP and UDP alike, most likely).
    fn closed_tcp_port(ip: IpAddr) -> u16 {
        std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn tcp_probe_ok_and_refused() {
        for ip in [V4, V6] {
            let listener = TcpListener::bind((ip, 0)).await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let latency = probe_once(&Probe::Tcp { port }, ip, T).await.unwrap();
            assert!(latency < T);
            drop(listener);

            let port = closed_tcp_port(ip);
            let err = probe_once(&Probe::Tcp { port }, ip, T).await.unwrap_err();
            assert_eq!(err.reason, "connection refused", "{ip}");
        }
    }

    /// Serves one canned response per connection; returns the port and the requests received.
    async fn http_server(ip: IpAddr, status_line: &'static str) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&req).into_owned());
                    let resp = format!(
                        "{status_line}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    );
                    let _ = conn.write_all(resp.as_bytes()).await;
                });
            }
        });
        (port, requests)
    }

    /// `GET /` on `port`, expecting `expect_status`.
    fn http_check(port: u16, expect_status: u16) -> Probe {
        Probe::Http {
            port,
            path: "/".into(),
            host: None,
            expect_status,
        }
    }

    #[tokio::test]
    async fn http_probe_200_ok() {
        for ip in [V4, V6] {
            let (port, requests) = http_server(ip, "HTTP/1.1 200 OK").await;
            let probe = Probe::Http {
                port,
                path: "/healthz".into(),
                host: None,
                expect_status: 200,
            };
            probe_once(&probe, ip, T).await.unwrap();
            let host = host_header(SocketAddr::new(ip, port));
            assert_eq!(
                requests.lock().unwrap().as_slice(),
                [format!(
                    "GET /healthz HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: ftn-check\r\n\r\n"
                )]
            );
            let probe = Probe::Http {
                port,
                path: "/".into(),
                host: Some("example.org".into()),
                expect_status: 200,
            };
            probe_once(&probe, ip, T).await.unwrap();
            assert!(requests.lock().unwrap()[1].contains("\r\nHost: example.org\r\n"));
        }
    }

    #[tokio::test]
    async fn http_probe_503_fails() {
        let (port, _) = http_server(V4, "HTTP/1.1 503 Service Unavailable").await;
        let probe = http_check(port, 200);
        let err = probe_once(&probe, V4, T).await.unwrap_err();
        assert_eq!(err.reason, "HTTP status 503 (expected 200)");
        let probe = http_check(port, 503);
        probe_once(&probe, V4, T).await.unwrap();
        let probe = Probe::Http {
            port: closed_tcp_port(V4),
            path: "/".into(),
            host: None,
            expect_status: 200,
        };
        assert_eq!(
            probe_once(&probe, V4, T).await.unwrap_err().reason,
            "connection refused"
        );
    }

    /// An answer that is not HTTP (or a malformed status line) fails the probe.
    #[tokio::test]
    async fn http_probe_non_http_answers_fail() {
        for line in ["SSH-2.0-OpenSSH_9.2", "HTTP/1.1 20 OK"] {
            let (port, _) = http_server(V4, line).await;
            let probe = http_check(port, 200);
            let err = probe_once(&probe, V4, T).await.unwrap_err();
            assert!(
                err.reason.starts_with("not a valid HTTP response") && !err.local,
                "{line}: {}",
                err.reason
            );
        }
        let (port, _) = http_server(V4, "HTTP/1.0 503").await;
        let probe = http_check(port, 503);
        probe_once(&probe, V4, T).await.unwrap();
    }

    #[tokio::test]
    async fn http_probe_silent_server_times_out() {
        let listener = TcpListener::bind((V4, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let probe = http_check(port, 200);
        let err = probe_once(&probe, V4, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.reason, "timed out after 50ms");
    }

    /// Echoes every datagram; returns the port.
    async fn udp_echo(ip: IpAddr) -> u16 {
        let socket = UdpSocket::bind((ip, 0)).await.unwrap();
        let port = socket.local_addr().unwrap().port();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let _ = socket.send_to(&buf[..n], from).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn udp_probe_echo_ok_and_expect_mismatch() {
        for ip in [V4, V6] {
            let port = udp_echo(ip).await;
            let any = Probe::Udp {
                port,
                send: b"ping".to_vec(),
                expect: None,
            };
            probe_once(&any, ip, T).await.unwrap();
            let ping = Probe::Udp {
                port,
                send: b"xx ping xx".to_vec(),
                expect: Some(b"ping".to_vec()),
            };
            probe_once(&ping, ip, T).await.unwrap();
            let pong = Probe::Udp {
                port,
                send: b"ping".to_vec(),
                expect: Some(b"pong".to_vec()),
            };
            let err = probe_once(&pong, ip, T).await.unwrap_err();
            assert_eq!(err.reason, "reply did not contain \"pong\"");
        }
    }

    #[tokio::test]
    async fn udp_probe_closed_port_fails() {
        for ip in [V4, V6] {
            let port = std::net::UdpSocket::bind((ip, 0))
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let probe = Probe::Udp {
                port,
                send: b"ping".to_vec(),
                expect: None,
            };
            let err = probe_once(&probe, ip, Duration::from_millis(200))
                .await
                .unwrap_err();
            assert!(
                err.reason == "port unreachable" || err.reason == "no reply within 200ms",
                "{ip}: {}",
                err.reason
            );
        }
    }

    #[tokio::test]
    async fn udp_probe_silent_server_times_out() {
        let socket = UdpSocket::bind((V4, 0)).await.unwrap(); // bound, never answers
        let port = socket.local_addr().unwrap().port();
        let probe = Probe::Udp {
            port,
            send: b"ping".to_vec(),
            expect: None,
        };
        let err = probe_once(&probe, V4, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(err.reason, "no reply within 50ms");
    }

    #[tokio::test]
    async fn icmp_probe_loopback_v4_and_v6() {
        for ip in [V4, V6] {
            // We run as root: the raw socket must work; say why loudly if it does not.
            let (_, kind) = open_icmp_socket(ip).unwrap_or_else(|f| panic!("{ip}: {}", f.reason));
            if let Err(e) = Socket::new(
                if ip.is_ipv4() {
                    Domain::IPV4
                } else {
                    Domain::IPV6
                },
                Type::RAW,
                Some(if ip.is_ipv4() {
                    Protocol::ICMPV4
                } else {
                    Protocol::ICMPV6
                }),
            ) {
                panic!("cannot open a raw ICMP socket for {ip} (tests must run as root / with CAP_NET_RAW): {e}");
            }
            assert_eq!(kind, IcmpSocketKind::Raw);
            // Several concurrent probes: each must match only its own reply.
            let results = futures_join(ip).await;
            for r in results {
                let latency = r.unwrap_or_else(|f| panic!("{ip}: {}", f.reason));
                assert!(latency < T);
            }
        }
    }

    async fn futures_join(ip: IpAddr) -> Vec<Result<Duration, ProbeFailure>> {
        let tasks: Vec<_> = (0..4)
            .map(|_| tokio::spawn(async move { probe_once(&Probe::Icmp, ip, T).await }))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    }

    // --- checker with real sockets --------------------------------------------------------------

    fn tcp_spec(port: u16, interval_ms: u64) -> CheckSpec {
        CheckSpec {
            probe: Probe::Tcp { port },
            interval: Duration::from_millis(interval_ms),
            timeout: Duration::from_millis(200),
            rise: 2,
            fall: 2,
        }
    }

    /// Accepts and drops connections until the task is aborted (which closes the listener).
    fn serve(listener: TcpListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                drop(conn);
            }
        })
    }

    #[tokio::test]
    async fn checker_end_to_end_tcp() {
        let interval = 20;
        let listener = TcpListener::bind((V4, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = serve(listener);
        let (tx, mut rx) = mpsc::channel(8);
        let cancel = CancellationToken::new();
        let checker = ServerChecker::spawn(
            "web-1".into(),
            V4,
            vec![tcp_spec(port, interval)],
            true,
            tx,
            cancel.clone(),
        );
        let stats = checker.stats();
        assert_eq!(stats.len(), 1);
        assert_eq!(stats[0].0, "tcp:80".replace("80", &port.to_string()));
        assert!(checker.is_up());

        // Healthy: probes succeed, no change is reported.
        tokio::time::sleep(Duration::from_millis(interval * 5)).await;
        assert!(rx.try_recv().is_err(), "no transition while healthy");
        assert!(
            stats[0].1.probes_ok() >= 2,
            "ok probes: {}",
            stats[0].1.probes_ok()
        );
        assert!(stats[0].1.is_up());

        // Listener gone -> down within interval * (fall + 1) + slack.
        server.abort();
        let _ = server.await;
        let started = std::time::Instant::now();
        let deadline = Duration::from_millis(interval * 3) + Duration::from_secs(1);
        let change = tokio::time::timeout(deadline, rx.recv())
            .await
            .expect("down in time")
            .unwrap();
        assert!(!change.up);
        assert_eq!(change.server, "web-1");
        assert_eq!(
            change.evidence,
            format!("2 consecutive tcp:{port} checks failed: connection refused")
        );
        assert!(started.elapsed() < deadline);
        assert!(!checker.is_up());
        assert!(!stats[0].1.is_up());
        assert_eq!(
            stats[0].1.last_failure().as_deref(),
            Some("connection refused")
        );

        // Back on the same port -> up after `rise` successes.
        let listener = TcpListener::bind((V4, port))
            .await
            .expect("re-bind the same port");
        let server = serve(listener);
        let change = tokio::time::timeout(deadline, rx.recv())
            .await
            .expect("up in time")
            .unwrap();
        assert!(change.up);
        assert_eq!(
            change.evidence,
            format!("2 consecutive tcp:{port} checks passed")
        );
        assert!(checker.is_up());
        assert!(stats[0].1.last_latency_us() > 0);

        checker.stop();
        server.abort();
    }

    // --- checker with injected outcomes, paused time --------------------------------------------

    /// Outcomes per check label (default: ok), with the time of every probe.
    #[derive(Default)]
    struct Scripted {
        failing: Mutex<HashMap<String, bool>>,
        /// Labels whose probes cannot run (a local error).
        local: Mutex<HashMap<String, bool>>,
        calls: Mutex<Vec<(String, Instant)>>,
    }

    impl Scripted {
        fn set_local(&self, label: &str, local: bool) {
            self.local.lock().unwrap().insert(label.to_string(), local);
        }

        fn set_ok(&self, label: &str, ok: bool) {
            self.failing.lock().unwrap().insert(label.to_string(), !ok);
        }

        fn calls(&self, label: &str) -> Vec<Instant> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .filter(|(l, _)| l == label)
                .map(|(_, t)| *t)
                .collect()
        }
    }

    impl Prober for Scripted {
        fn probe<'a>(&'a self, probe: &'a Probe, _: IpAddr, _: Duration) -> ProbeFuture<'a> {
            Box::pin(async move {
                let label = probe.label();
                self.calls
                    .lock()
                    .unwrap()
                    .push((label.clone(), Instant::now()));
                if self.local.lock().unwrap().get(&label) == Some(&true) {
                    return Err(ProbeFailure::local(
                        "creating a socket: Too many open files",
                    ));
                }
                if self
                    .failing
                    .lock()
                    .unwrap()
                    .get(&label)
                    .copied()
                    .unwrap_or(false)
                {
                    Err(ProbeFailure::new("injected failure"))
                } else {
                    Ok(Duration::from_micros(150))
                }
            })
        }
    }

    fn spec(port: u16, interval_s: u64, timeout_ms: u64, rise: u32, fall: u32) -> CheckSpec {
        CheckSpec {
            probe: Probe::Tcp { port },
            interval: Duration::from_secs(interval_s),
            timeout: Duration::from_millis(timeout_ms),
            rise,
            fall,
        }
    }

    struct Harness {
        checker: ServerChecker,
        rx: mpsc::Receiver<HealthChange>,
        prober: Arc<Scripted>,
        t0: Instant,
    }

    fn harness(checks: Vec<CheckSpec>, initial_up: bool, prober: Scripted) -> Harness {
        let prober = Arc::new(prober);
        let (tx, rx) = mpsc::channel(8);
        let t0 = Instant::now();
        let checker = ServerChecker::spawn_with_prober(
            "srv".into(),
            V4,
            checks,
            initial_up,
            tx,
            CancellationToken::new(),
            Arc::clone(&prober) as Arc<dyn Prober>,
        );
        Harness {
            checker,
            rx,
            prober,
            t0,
        }
    }

    impl Harness {
        async fn next_change(&mut self, within: Duration) -> Option<HealthChange> {
            tokio::time::timeout(within, self.rx.recv())
                .await
                .ok()
                .flatten()
        }
    }

    /// Real time, injected outcomes: suspect() finds a refusing server in `fall * SUSPECT_PACE`
    /// although the interval is a minute (real time, unlike the tests below).
    #[tokio::test]
    async fn suspect_confirms_down_long_before_the_interval() {
        let s = Scripted::default();
        s.set_ok("tcp:80", false);
        // A timeout much longer than SUSPECT_PACE: the bound below tells the two paces apart
        // with room for a loaded machine's timer delays.
        let timeout = Duration::from_millis(500);
        let mut h = harness(vec![spec(80, 60, 500, 2, 3)], true, s);
        h.checker.suspect("3 client SYNs unanswered");
        let change = h
            .next_change(Duration::from_secs(5))
            .await
            .expect("down long before 60s");
        assert!(!change.up);
        assert_eq!(
            change.evidence,
            "3 consecutive tcp:80 checks failed: injected failure"
        );
        let calls = h.prober.calls("tcp:80");
        assert_eq!(calls.len(), 3, "{calls:?}");
        // Instant failures: one probe per SUSPECT_PACE (10 ms), not per timeout (500 ms).
        assert!(
            calls[2] - calls[0] >= SUSPECT_PACE * 2 && calls[2] - calls[0] < timeout * 2,
            "one probe per SUSPECT_PACE: {calls:?}"
        );
        assert!(h.t0.elapsed() < Duration::from_secs(5));
    }

    /// Paused-time tests: exact schedules (tokio's `test-util`, enabled in dev-dependencies).
    mod paused {
        use std::sync::atomic::AtomicUsize;

        use super::*;

        #[tokio::test(start_paused = true)]
        async fn paused_always_failing_goes_down_after_exactly_fall_probes() {
            let s = Scripted::default();
            s.set_ok("tcp:80", false);
            let mut h = harness(vec![spec(80, 10, 1000, 2, 3)], true, s);
            assert!(h.checker.is_up());

            let change = h
                .next_change(Duration::from_secs(60))
                .await
                .expect("a down change");
            assert!(!change.up);
            assert_eq!(
                change.evidence,
                "3 consecutive tcp:80 checks failed: injected failure"
            );
            let offset = start_offset("srv", 0, Duration::from_secs(10));
            let expected: Vec<Instant> = (0..3)
                .map(|i| h.t0 + offset + Duration::from_secs(10) * i)
                .collect();
            assert_eq!(
                h.prober.calls("tcp:80"),
                expected,
                "first probe at the offset, then every interval"
            );
            assert_eq!(
                Instant::now(),
                expected[2],
                "reported at the third failure, no earlier, no later"
            );
            assert!(!h.checker.is_up());

            // Only transitions are sent: nothing more while it stays down (9 more probes).
            assert!(h.next_change(Duration::from_secs(95)).await.is_none());
            let stats = h.checker.stats();
            assert_eq!(stats[0].1.probes_ok(), 0);
            assert_eq!(stats[0].1.probes_failed(), 12);
        }

        /// Probes that cannot run (EMFILE...) never move the verdict, either way, and are
        /// counted apart from failures.
        #[tokio::test(start_paused = true)]
        async fn paused_local_errors_never_change_the_verdict() {
            for initial_up in [true, false] {
                let s = Scripted::default();
                s.set_local("tcp:80", true);
                let mut h = harness(vec![spec(80, 1, 500, 1, 1)], initial_up, s);
                // rise = fall = 1: one counted probe would flip it. 30 probes that cannot run.
                assert!(h.next_change(Duration::from_secs(30)).await.is_none());
                assert_eq!(h.checker.is_up(), initial_up);
                let stats = &h.checker.stats()[0].1;
                assert_eq!(stats.local_errors(), 30);
                assert_eq!(stats.probes_failed(), 0);
                assert_eq!(stats.probes_ok(), 0);
                assert_eq!(
                    stats.unable_to_run().as_deref(),
                    Some("creating a socket: Too many open files")
                );
                // Passive suspicion while probes cannot run: no verdict either, and no
                // back-to-back probing (the suspicion ends with the first local error).
                h.checker.suspect("3 new connections unanswered");
                let before = h.prober.calls("tcp:80").len();
                assert!(h.next_change(Duration::from_secs(5)).await.is_none());
                let probed = h.prober.calls("tcp:80").len() - before;
                assert!(
                    probed <= 6,
                    "{probed} probes in 5 s: suspect pace kept going"
                );
                // Probes run again: the verdict follows them as usual.
                h.prober.set_local("tcp:80", false);
                h.prober.set_ok("tcp:80", initial_up);
                assert!(h.next_change(Duration::from_secs(3)).await.is_none());
                let stats = &h.checker.stats()[0].1;
                assert_eq!(stats.unable_to_run(), None);
                assert!(stats.probes_ok() + stats.probes_failed() >= 2);
                h.prober.set_ok("tcp:80", !initial_up);
                let change = h.next_change(Duration::from_secs(3)).await.expect("a flip");
                assert_eq!(change.up, !initial_up);
            }
        }

        #[tokio::test(start_paused = true)]
        async fn paused_healthy_from_recorded_up_sends_nothing() {
            let mut h = harness(vec![spec(80, 1, 100, 3, 2)], true, Scripted::default());
            assert!(h.next_change(Duration::from_secs(30)).await.is_none());
            assert!(h.checker.is_up());
            assert!(h.checker.stats()[0].1.probes_ok() >= 29);
        }

        #[tokio::test(start_paused = true)]
        async fn paused_recorded_down_rises_after_rise_successes() {
            let mut h = harness(vec![spec(80, 1, 100, 3, 2)], false, Scripted::default());
            assert!(!h.checker.is_up());
            let change = h
                .next_change(Duration::from_secs(30))
                .await
                .expect("an up change");
            assert!(change.up);
            assert_eq!(change.evidence, "3 consecutive tcp:80 checks passed");
            assert_eq!(h.prober.calls("tcp:80").len(), 3);
            assert!(h.checker.is_up());
        }

        #[tokio::test(start_paused = true)]
        async fn paused_single_lost_probe_does_not_flip() {
            let mut h = harness(vec![spec(80, 1, 100, 3, 2)], true, Scripted::default());
            let offset = start_offset("srv", 0, Duration::from_secs(1));
            // Fail exactly the probe at offset + 2s.
            tokio::time::sleep_until(h.t0 + offset + Duration::from_millis(1500)).await;
            h.prober.set_ok("tcp:80", false);
            tokio::time::sleep(Duration::from_secs(1)).await;
            h.prober.set_ok("tcp:80", true);
            assert!(h.next_change(Duration::from_secs(10)).await.is_none());
            assert_eq!(h.checker.stats()[0].1.probes_failed(), 1);
            assert!(h.checker.is_up());
        }

        #[tokio::test(start_paused = true)]
        async fn paused_server_is_up_only_when_all_checks_are_up() {
            let s = Scripted::default();
            let checks = vec![spec(80, 1, 100, 2, 2), spec(443, 1, 100, 2, 2)];
            let mut h = harness(checks, true, s);

            h.prober.set_ok("tcp:443", false);
            let change = h.next_change(Duration::from_secs(10)).await.expect("down");
            assert!(!change.up);
            assert!(change.evidence.contains("tcp:443"), "{}", change.evidence);

            // The other check going down as well is not a server-level transition.
            h.prober.set_ok("tcp:80", false);
            assert!(h.next_change(Duration::from_secs(10)).await.is_none());
            let stats = h.checker.stats();
            assert!(!stats[0].1.is_up() && !stats[1].1.is_up());

            // One check recovering is not enough.
            h.prober.set_ok("tcp:80", true);
            assert!(h.next_change(Duration::from_secs(10)).await.is_none());
            assert!(h.checker.stats()[0].1.is_up());
            assert!(!h.checker.is_up());

            h.prober.set_ok("tcp:443", true);
            let change = h.next_change(Duration::from_secs(10)).await.expect("up");
            assert!(change.up);
            assert_eq!(change.evidence, "2 consecutive tcp:443 checks passed");
            assert!(h.checker.is_up());
        }

        /// A server that answers nothing: every probe takes its whole timeout.
        struct Silent;

        impl Prober for Silent {
            fn probe<'a>(&'a self, _: &'a Probe, _: IpAddr, timeout: Duration) -> ProbeFuture<'a> {
                Box::pin(async move {
                    tokio::time::sleep(timeout).await;
                    Err(ProbeFailure::new(format!(
                        "timed out after {}",
                        fmt_duration(timeout)
                    )))
                })
            }
        }

        #[tokio::test(start_paused = true)]
        async fn paused_suspected_silent_server_is_confirmed_with_overlapping_probes() {
            let (tx, mut rx) = mpsc::channel(8);
            let checker = ServerChecker::spawn_with_prober(
                "srv".into(),
                IpAddr::from([198, 18, 2, 10]),
                vec![spec(80, 60, 50, 3, 2)],
                true,
                tx,
                CancellationToken::new(),
                Arc::new(Silent),
            );
            // Before the first regular probe (its offset is under a minute but above 0).
            let suspected_at = Instant::now();
            checker.suspect("3 client SYNs unanswered for 20 ms");
            let change = tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .expect("a verdict")
                .expect("a change");
            assert!(!change.up);
            // Probes at +0 and +10 ms, each failing after its 50 ms timeout: down at +60 ms,
            // not at +100 ms (two probes back to back).
            assert_eq!(Instant::now() - suspected_at, Duration::from_millis(60));
            checker.stop();
        }

        #[tokio::test(start_paused = true)]
        async fn paused_suspect_confirms_down_at_suspect_pace() {
            let mut h = harness(vec![spec(80, 60, 500, 2, 3)], true, Scripted::default());
            let offset = start_offset("srv", 0, Duration::from_secs(60));
            // Let the first regular probe pass, then the server dies.
            tokio::time::sleep_until(h.t0 + offset + Duration::from_secs(1)).await;
            assert_eq!(h.prober.calls("tcp:80").len(), 1);
            h.prober.set_ok("tcp:80", false);

            let suspected_at = Instant::now();
            h.checker.suspect("3 client SYNs unanswered");
            let change = h
                .next_change(Duration::from_secs(5))
                .await
                .expect("down well before the interval");
            assert!(!change.up);
            assert_eq!(
                change.evidence,
                "3 consecutive tcp:80 checks failed: injected failure"
            );
            let burst: Vec<Instant> = (0..3).map(|i| suspected_at + SUSPECT_PACE * i).collect();
            assert_eq!(
                h.prober.calls("tcp:80")[1..],
                burst[..],
                "probes at once, then every SUSPECT_PACE (the failures come at once)"
            );

            // Confirmed down: back to the normal pace (next probe one interval later).
            tokio::time::sleep(Duration::from_secs(59)).await;
            assert_eq!(h.prober.calls("tcp:80").len(), 4);
            // And suspect() on a down server is a no-op.
            h.checker.suspect("more SYNs");
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert_eq!(h.prober.calls("tcp:80").len(), 4);
        }

        #[tokio::test(start_paused = true)]
        async fn paused_suspect_one_success_returns_to_normal_pace() {
            let mut h = harness(vec![spec(80, 60, 500, 2, 3)], true, Scripted::default());
            let offset = start_offset("srv", 0, Duration::from_secs(60));
            tokio::time::sleep_until(h.t0 + offset + Duration::from_secs(1)).await;
            assert_eq!(h.prober.calls("tcp:80").len(), 1);

            // Passive evidence, but the server answers: one extra probe, no transition.
            let suspected_at = Instant::now();
            h.checker.suspect("3 client SYNs unanswered");
            assert!(h.next_change(Duration::from_secs(30)).await.is_none());
            assert_eq!(h.prober.calls("tcp:80"), [h.t0 + offset, suspected_at]);

            // Next regular probe one interval after the suspect probe.
            tokio::time::sleep_until(suspected_at + Duration::from_secs(61)).await;
            assert_eq!(
                h.prober.calls("tcp:80"),
                [
                    h.t0 + offset,
                    suspected_at,
                    suspected_at + Duration::from_secs(60)
                ]
            );
            assert!(h.checker.is_up());
        }

        #[tokio::test(start_paused = true)]
        async fn paused_suspect_never_marks_down_by_itself() {
            // One failure then success again: fall=3 is never reached, the server stays up.
            let calls = Arc::new(AtomicUsize::new(0));
            struct FailOnce(Arc<AtomicUsize>);
            impl Prober for FailOnce {
                fn probe<'a>(&'a self, _: &'a Probe, _: IpAddr, _: Duration) -> ProbeFuture<'a> {
                    let n = self.0.fetch_add(1, Ordering::SeqCst);
                    Box::pin(async move {
                        if n == 1 {
                            Err(ProbeFailure::new("lost"))
                        } else {
                            Ok(Duration::ZERO)
                        }
                    })
                }
            }
            let (tx, mut rx) = mpsc::channel(8);
            let checker = ServerChecker::spawn_with_prober(
                "srv".into(),
                V4,
                vec![spec(80, 60, 500, 2, 3)],
                true,
                tx,
                CancellationToken::new(),
                Arc::new(FailOnce(Arc::clone(&calls))),
            );
            tokio::time::sleep(Duration::from_secs(61)).await;
            assert_eq!(calls.load(Ordering::SeqCst), 1);
            for _ in 0..5 {
                checker.suspect("SYNs unanswered");
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            // Probe 1 failed (lost), probe 2 succeeded: burst over after two probes.
            assert_eq!(calls.load(Ordering::SeqCst), 3);
            assert!(rx.try_recv().is_err());
            assert!(checker.is_up());
        }

        #[tokio::test(start_paused = true)]
        async fn paused_no_checks_is_always_up() {
            let mut h = harness(vec![], true, Scripted::default());
            assert!(h.checker.is_up() && h.checker.stats().is_empty());
            assert!(h.next_change(Duration::from_secs(5)).await.is_none());

            // Recorded down but nothing to check: corrected once.
            let mut h = harness(vec![], false, Scripted::default());
            assert!(h.checker.is_up());
            let change = h.next_change(Duration::from_secs(5)).await.expect("up");
            assert!(change.up);
            assert!(h.next_change(Duration::from_secs(5)).await.is_none());
        }

        #[tokio::test(start_paused = true)]
        async fn paused_stop_and_cancel_stop_probing() {
            let h = harness(vec![spec(80, 1, 100, 2, 2)], true, Scripted::default());
            tokio::time::sleep(Duration::from_secs(5)).await;
            let n = h.prober.calls("tcp:80").len();
            assert!(n >= 4);
            let prober = Arc::clone(&h.prober);
            h.checker.stop();
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(prober.calls("tcp:80").len(), n);

            let cancel = CancellationToken::new();
            let prober = Arc::new(Scripted::default());
            let (tx, _rx) = mpsc::channel(8);
            let checker = ServerChecker::spawn_with_prober(
                "srv".into(),
                V4,
                vec![spec(80, 1, 100, 2, 2)],
                true,
                tx,
                cancel.clone(),
                Arc::clone(&prober) as Arc<dyn Prober>,
            );
            tokio::time::sleep(Duration::from_secs(3)).await;
            cancel.cancel();
            let n = prober.calls("tcp:80").len();
            tokio::time::sleep(Duration::from_secs(5)).await;
            assert_eq!(prober.calls("tcp:80").len(), n);
            drop(checker);
        }
    }
}
