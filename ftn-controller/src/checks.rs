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

// ------------------------------------------------------------------------------------------------
// Probes
// ------------------------------------------------------------------------------------------------

/// Runs one probe against `addr` and returns its latency. The whole probe (connect, exchange)
/// is bounded by `timeout`.
pub async fn probe_once(
    probe: &Probe,
    addr: IpAddr,
    timeout: Duration,
) -> Result<Duration, ProbeFailure> {
    let started = Instant::now();
    let result = match probe {
        Probe::Tcp { port } => bounded(
            timeout,
            timed_out,
            tcp_connect(SocketAddr::new(addr, *port)),
        )
        .await
        .map(drop),
        Probe::Http {
            port,
            path,
            host,
            expect_status,
        } => {
            bounded(
                timeout,
                timed_out,
                http_probe(
                    SocketAddr::new(addr, *port),
                    path,
                    host.as_deref(),
                    *expect_status,
                ),
            )
            .await
        }
        Probe::Udp { port, send, expect } => {
            udp_probe(
                SocketAddr::new(addr, *port),
                send,
                expect.as_deref(),
                timeout,
            )
            .await
        }
        Probe::Icmp => icmp_probe(addr, timeout).await,
    };
    result.map(|()| started.elapsed())
}

/// Runs `fut` under `timeout`; on expiry fails with `expired(formatted timeout)`.
async fn bounded<T>(
    timeout: Duration,
    expired: impl FnOnce(String) -> String,
    fut: impl Future<Output = Result<T, ProbeFailure>>,
) -> Result<T, ProbeFailure> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(ProbeFailure::new(expired(fmt_duration(timeout)))),
    }
}

fn timed_out(t: String) -> String {
    format!("timed out after {t}")
}

/// `50ms`, `2s`, or the Debug form for anything not a whole number of milliseconds.
fn fmt_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if Duration::from_millis(ms as u64) != d {
        format!("{d:?}")
    } else if ms >= 1000 && ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// A short reason for an I/O error, without the "(os error N)" noise for the common cases.
fn describe_io(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused".into(),
        io::ErrorKind::ConnectionReset => "connection reset".into(),
        io::ErrorKind::ConnectionAborted => "connection aborted".into(),
        io::ErrorKind::HostUnreachable => "host unreachable".into(),
        io::ErrorKind::NetworkUnreachable => "network unreachable".into(),
        io::ErrorKind::AddrNotAvailable => "address not available".into(),
        _ => e.to_string(),
    }
}

/// Connects, then sets `SO_LINGER` to 0 so that dropping the stream sends a RST instead of a FIN.
///
/// A health checker opens a connection every interval to every server and closes it first; with
/// a normal close each of those connections would sit in TIME_WAIT on our side for 60 s, i.e.
/// thousands of sockets and, towards one server port, a slow exhaustion of ephemeral ports. An
/// abortive close (RST) leaves no TIME_WAIT behind. The server never notices the difference for
/// a bare connect check, and for HTTP it has already sent what we wanted. A zero linger never
/// blocks in `close()` (it is the non-zero values that make the kernel wait, which is why tokio
/// deprecated its own `set_linger`), so we set it through socket2 before connecting.
async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, ProbeFailure> {
    // socket2 rather than `TcpStream::connect`, to tell where an error comes from: `socket()`
    // and the first `connect()` call happen on this host only (their errors may be local), the
    // connection's result is the network's answer (always evidence about the server).
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(|e| ProbeFailure::setup("creating a socket", &e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| ProbeFailure::setup("creating a socket", &e))?;
    // Not a reason to fail the probe if it cannot be set: the server may still answer.
    if let Err(e) = socket.set_linger(Some(Duration::ZERO)) {
        debug!(%addr, error = %e, "cannot set SO_LINGER on health check connection");
    }
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(ProbeFailure::sending("", &e)),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))
        .map_err(|e| ProbeFailure::setup("registering a socket", &e))?;
    loop {
        stream
            .writable()
            .await
            .map_err(|e| ProbeFailure::new(describe_io(&e)))?;
        if let Some(e) = stream
            .take_error()
            .map_err(|e| ProbeFailure::new(describe_io(&e)))?
        {
            return Err(ProbeFailure::new(describe_io(&e)));
        }
        match stream.peer_addr() {
            Ok(_) => return Ok(stream),
            // Woken before the handshake finished: wait again.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
            Err(e) => return Err(ProbeFailure::new(describe_io(&e))),
        }
    }
}

/// The largest response head we read (hyper's smallest read buffer); a longer one fails.
const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// `GET path` through hyper's HTTP/1 client on a connection made by [`tcp_connect`] (so its
/// errors are classified the same way); passes when the status is `expect_status`. The body is
/// not read: dropping the connection resets it.
async fn http_probe(
    addr: SocketAddr,
    path: &str,
    host: Option<&str>,
    expect_status: u16,
) -> Result<(), ProbeFailure> {
    let path = if path.is_empty() { "/" } else { path };
    if path.contains(['\r', '\n', ' ']) {
        return Err(ProbeFailure::new(format!("invalid HTTP path {path:?}")));
    }
    let host = match host {
        Some(h) if h.contains(['\r', '\n']) => {
            return Err(ProbeFailure::new(format!("invalid HTTP host {h:?}")))
        }
        Some(h) => h.to_string(),
        None => host_header(addr),
    };
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, &host)
        .header(hyper::header::CONNECTION, "close")
        .header(hyper::header::USER_AGENT, "ftn-check")
        .body(http_body_util::Empty::<hyper::body::Bytes>::new())
        .map_err(|e| ProbeFailure::new(format!("invalid HTTP request for {path:?}: {e}")))?;
    let stream = tcp_connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .title_case_headers(true)
        .max_buf_size(MAX_RESPONSE_HEAD)
        .handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .map_err(|e| ProbeFailure::new(format!("HTTP: {e}")))?;
    let conn = tokio::spawn(conn);
    let answer = sender.send_request(request).await;
    conn.abort();
    let status = answer.map_err(http_failure)?.status().as_u16();
    if status == expect_status {
        Ok(())
    } else {
        Err(ProbeFailure::new(format!(
            "HTTP status {status} (expected {expect_status})"
        )))
    }
}

/// A reason for a failed HTTP exchange.
fn http_failure(e: hyper::Error) -> ProbeFailure {
    use std::error::Error as _;
    let io = e
        .source()
        .and_then(|s| s.downcast_ref::<io::Error>())
        .map(describe_io);
    ProbeFailure::new(if e.is_incomplete_message() {
        "connection closed without a complete response".to_string()
    } else if e.is_parse_too_large() {
        "HTTP response head too long".to_string()
    } else if e.is_parse() {
        format!("not a valid HTTP response ({e})")
    } else if let Some(io) = io {
        format!("HTTP exchange: {io}")
    } else {
        format!("HTTP exchange: {e}")
    })
}

/// The default `Host` header for an address: `[v6]` in brackets, the port omitted when it is 80.
fn host_header(addr: SocketAddr) -> String {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    if addr.port() == 80 {
        ip
    } else {
        format!("{ip}:{}", addr.port())
    }
}

async fn udp_probe(
    addr: SocketAddr,
    send: &[u8],
    expect: Option<&[u8]>,
    timeout: Duration,
) -> Result<(), ProbeFailure> {
    // An ICMP port unreachable for a connected UDP socket is reported as ECONNREFUSED on the next
    // send or recv.
    let io_err = |what: &str, e: io::Error| {
        if e.kind() == io::ErrorKind::ConnectionRefused {
            ProbeFailure::new("port unreachable")
        } else if what == "receiving" {
            // Whatever recv reports came from the network (an ICMP error).
            ProbeFailure::new(format!("{what}: {}", describe_io(&e)))
        } else {
            ProbeFailure::sending(what, &e)
        }
    };
    let exchange = async {
        let local: SocketAddr = match addr {
            SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = UdpSocket::bind(local)
            .await
            .map_err(|e| ProbeFailure::setup("creating a socket", &e))?;
        socket
            .connect(addr)
            .await
            .map_err(|e| io_err("connecting", e))?;
        socket.send(send).await.map_err(|e| io_err("sending", e))?;
        let mut buf = vec![0u8; 65536];
        let n = socket
            .recv(&mut buf)
            .await
            .map_err(|e| io_err("receiving", e))?;
        match expect {
            Some(expect) if !contains(&buf[..n], expect) => Err(ProbeFailure::new(format!(
                "reply did not contain {:?}",
                String::from_utf8_lossy(expect)
            ))),
            _ => Ok(()),
        }
    };
    bounded(timeout, |t| format!("no reply within {t}"), exchange).await
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

// --- ICMP ---------------------------------------------------------------------------------------

/// How an ICMP socket was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IcmpSocketKind {
    /// `SOCK_RAW`: needs CAP_NET_RAW; we choose the identifier; sees every ICMP packet (IPv4:
    /// with the IP header in front).
    Raw,
    /// `SOCK_DGRAM` "ping socket": unprivileged when `net.ipv4.ping_group_range` allows it; the
    /// kernel replaces the identifier, computes the checksum and delivers only our replies,
    /// without the IP header.
    Dgram,
}

/// Source of echo identifiers and sequence numbers: each probe gets a fresh (identifier,
/// sequence) pair, so replies to an earlier, timed-out probe are never taken for a new one.
static ICMP_COUNTER: AtomicU32 = AtomicU32::new(0);

fn next_icmp_ids() -> (u16, u16) {
    let n = ICMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    // The pid in the identifier keeps two ftn processes (or a `ping`) apart on raw sockets.
    let id = (std::process::id() as u16).wrapping_add(n as u16);
    let seq = (n >> 16) as u16;
    (id, seq)
}

/// Opens an ICMP socket for `addr`'s family: raw if we may, else an unprivileged ping socket.
pub(crate) fn open_icmp_socket(addr: IpAddr) -> Result<(Socket, IcmpSocketKind), ProbeFailure> {
    let (domain, protocol) = match addr {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let raw_err = match Socket::new(domain, Type::RAW, Some(protocol)) {
        Ok(s) => return Ok((s, IcmpSocketKind::Raw)),
        Err(e) => e,
    };
    match Socket::new(domain, Type::DGRAM, Some(protocol)) {
        Ok(s) => Ok((s, IcmpSocketKind::Dgram)),
        Err(dgram_err) => Err(ProbeFailure::local(format!(
            "cannot open an ICMP socket: raw socket: {raw_err} (needs CAP_NET_RAW); \
             ping socket: {dgram_err} (see net.ipv4.ping_group_range)"
        ))),
    }
}

const ICMPV4_ECHO_REQUEST: u8 = 8;
const ICMPV4_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
const ICMP_PAYLOAD: &[u8] = b"ftn-check heartbeat";

/// The Internet checksum (RFC 1071) of `data`.
fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An echo request. ICMPv4 carries its checksum; for ICMPv6 the kernel computes it (it covers
/// a pseudo-header with addresses only the kernel knows for sure).
fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut pkt = Vec::with_capacity(8 + ICMP_PAYLOAD.len());
    pkt.push(if v6 {
        ICMPV6_ECHO_REQUEST
    } else {
        ICMPV4_ECHO_REQUEST
    });
    pkt.push(0); // code
    pkt.extend_from_slice(&[0, 0]); // checksum
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(ICMP_PAYLOAD);
    if !v6 {
        let sum = internet_checksum(&pkt);
        pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    }
    pkt
}

/// Whether `pkt` (as received) is the echo reply to (`id`, `seq`). `check_id` is false for ping
/// sockets, whose identifier the kernel rewrites (and filters on itself).
fn is_echo_reply(
    pkt: &[u8],
    v6: bool,
    strip_ip_header: bool,
    id: u16,
    seq: u16,
    check_id: bool,
) -> bool {
    let icmp = if strip_ip_header {
        let Some(&first) = pkt.first() else {
            return false;
        };
        if first >> 4 != 4 {
            return false;
        }
        let ihl = usize::from(first & 0x0f) * 4;
        if ihl < 20 {
            return false;
        }
        match pkt.get(ihl..) {
            Some(rest) => rest,
            None => return false,
        }
    } else {
        pkt
    };
    if icmp.len() < 8 {
        return false;
    }
    let want_type = if v6 {
        ICMPV6_ECHO_REPLY
    } else {
        ICMPV4_ECHO_REPLY
    };
    icmp[0] == want_type
        && icmp[1] == 0
        && (!check_id || u16::from_be_bytes([icmp[4], icmp[5]]) == id)
        && u16::from_be_bytes([icmp[6], icmp[7]]) == seq
}

async fn icmp_probe(addr: IpAddr, timeout: Duration) -> Result<(), ProbeFailure> {
    let (socket, kind) = open_icmp_socket(addr)?;
    let v6 = addr.is_ipv6();
    let setup = |e: io::Error| ProbeFailure::setup("ICMP socket", &e);
    socket.set_nonblocking(true).map_err(setup)?;
    // Connecting filters what the socket receives to packets from `addr` (raw sockets otherwise
    // see every ICMP packet reaching the host) and lets us use plain send/recv.
    socket
        .connect(&SockAddr::from(SocketAddr::new(addr, 0)))
        .map_err(|e| ProbeFailure::sending("ICMP socket", &e))?;
    // SAFETY: `Socket` owns its file descriptor, which stays open and unchanged until the
    // `AsyncFd` (which owns the `Socket`) is dropped.
    let fd = unsafe { AsyncFd::register(socket) }.map_err(|e| setup(e.into()))?;

    let (id, seq) = next_icmp_ids();
    let request = echo_request(v6, id, seq);
    let exchange = async {
        fd.async_io(Interest::WRITABLE, |s| (&*s).write(&request))
            .await
            .map_err(|e| ProbeFailure::sending("sending echo request", &e))?;
        let mut buf = vec![0u8; 2048];
        loop {
            let n = fd
                .async_io(Interest::READABLE, |s| (&*s).read(&mut buf))
                .await
                .map_err(|e| ProbeFailure::new(format!("receiving: {}", describe_io(&e))))?;
            let strip = kind == IcmpSocketKind::Raw && !v6;
            if is_echo_reply(&buf[..n], v6, strip, id, seq, kind == IcmpSocketKind::Raw) {
                return Ok(());
            }
            // Someone else's echo, our own request (loopback), an error message...: keep waiting.
        }
    };
    bounded(timeout, |t| format!("no echo reply within {t}"), exchange).await
}

// ------------------------------------------------------------------------------------------------
// Hysteresis
// ------------------------------------------------------------------------------------------------

/// The per-check up/down state machine.
///
/// From up, `fall` consecutive failures turn it down; from down, `rise` consecutive successes
/// turn it up. A result agreeing with the current state resets the streak.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hysteresis {
    up: bool,
    /// Consecutive results contradicting `up`.
    streak: u32,
    rise: u32,
    fall: u32,
}

impl Hysteresis {
    /// `rise` and `fall` below 1 are treated as 1.
    pub fn new(up: bool, rise: u32, fall: u32) -> Self {
        Self {
            up,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// Records one probe result; returns the new state when it flips.
    pub fn observe(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if self.streak >= needed {
            self.up = ok;
            self.streak = 0;
            Some(ok)
        } else {
            None
        }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive results so far that contradict the current state.
    pub fn streak(&self) -> u32 {
        self.streak
    }

    pub fn rise(&self) -> u32 {
        self.rise
    }

    pub fn fall(&self) -> u32 {
        self.fall
    }
}

// ------------------------------------------------------------------------------------------------
// Checker
// ------------------------------------------------------------------------------------------------

/// A server-level state change, sent by a [`ServerChecker`] only when the verdict flips.
#[derive(Clone, Debug)]
pub struct HealthChange {
    pub server: String,
    pub up: bool,
    /// Why, e.g. `3 consecutive tcp:80 checks passed` or
    /// `2 consecutive tcp:80 checks failed: connection refused`.
    pub evidence: String,
    pub at: SystemTime,
}

/// Live counters of one check, shared with the API and metrics.
#[derive(Default, Debug)]
pub struct CheckStats {
    last_latency_us: AtomicU64,
    probes_ok: AtomicU64,
    probes_failed: AtomicU64,
    up: AtomicBool,
    last_failure: Mutex<Option<String>>,
    /// Probes that could not run for a local reason (never counted as failures).
    local_errors: AtomicU64,
    /// Consecutive probes that could not run, up to the latest (0 once one runs again).
    local_streak: AtomicU64,
    last_local_error: Mutex<Option<String>>,
}

impl CheckStats {
    /// Latency of the last successful probe, in microseconds (0 before the first success).
    pub fn last_latency_us(&self) -> u64 {
        self.last_latency_us.load(Ordering::Relaxed)
    }

    pub fn probes_ok(&self) -> u64 {
        self.probes_ok.load(Ordering::Relaxed)
    }

    pub fn probes_failed(&self) -> u64 {
        self.probes_failed.load(Ordering::Relaxed)
    }

    /// This check's own (hysteresis) state.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The reason of the most recent failed probe, if any probe failed yet.
    pub fn last_failure(&self) -> Option<String> {
        lock(&self.last_failure).clone()
    }

    /// Probes that could not run for a local reason, since start.
    pub fn local_errors(&self) -> u64 {
        self.local_errors.load(Ordering::Relaxed)
    }

    /// The reason why the check cannot run now: set while the latest probes could not run for a
    /// local reason, cleared by the first probe that runs again.
    pub fn unable_to_run(&self) -> Option<String> {
        if self.local_streak.load(Ordering::Relaxed) == 0 {
            return None;
        }
        lock(&self.last_local_error).clone()
    }

    fn record(&self, outcome: &Result<Duration, ProbeFailure>) {
        if let Err(f) = outcome {
            if f.local {
                self.local_errors.fetch_add(1, Ordering::Relaxed);
                self.local_streak.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_local_error) = Some(f.reason.clone());
                return;
            }
        }
        self.local_streak.store(0, Ordering::Relaxed);
        match outcome {
            Ok(latency) => {
                let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
                self.last_latency_us.store(us, Ordering::Relaxed);
                self.probes_ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(f) => {
                self.probes_failed.fetch_add(1, Ordering::Relaxed);
                *lock(&self.last_failure) = Some(f.reason.clone());
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A boxed probe future, as returned by a [`Prober`].
pub type ProbeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Duration, ProbeFailure>> + Send + 'a>>;

/// Runs probes for a [`ServerChecker`]. [`NetProber`] is the real one; tests inject outcomes.
pub trait Prober: Send + Sync + 'static {
    fn probe<'a>(&'a self, probe: &'a Probe, addr: IpAddr, timeout: Duration) -> ProbeFuture<'a>;
}

/// The real prober: [`probe_once`].
#[derive(Clone, Copy, Debug, Default)]
pub struct NetProber;

impl Prober for NetProber {
    fn probe<'a>(&'a self, probe: &'a Probe, addr: IpAddr, timeout: Duration) -> ProbeFuture<'a> {
        Box::pin(probe_once(probe, addr, timeout))
    }
}

/// The smallest interval/timeout we accept (tokio's interval panics on zero).
const MIN_PERIOD: Duration = Duration::from_millis(1);
/// While a server is suspected, a probe starts this long (or the check's timeout, if shorter)
/// after the previous one started, with up to `fall` probes in flight: a refused connection is
/// confirmed in milliseconds, a silent server in about one timeout.
pub const SUSPECT_PACE: Duration = Duration::from_millis(10);
/// A streak of probes that cannot run is logged at its first probe and then once every this
/// many (at a 1 s interval: every minute).
pub const LOCAL_ERROR_LOG_EVERY: u64 = 60;

/// Deterministic first-probe delay in `[0, interval)`, in whole milliseconds (tokio's timer
/// resolution), for check `index` of `server` (FNV-1a of the name and the index), so checks
/// configured together do not fire together.
pub fn start_offset(server: &str, index: usize, interval: Duration) -> Duration {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in server.bytes().chain((index as u64).to_le_bytes()) {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let ms = interval.as_millis().max(1);
    Duration::from_millis((u128::from(hash) % ms) as u64)
}

/// State shared by the check tasks of one server.
struct Shared {
    server: String,
    up: AtomicBool,
    /// Per-check states and the server-level verdict. An async mutex because it is held while a
    /// change is sent, which keeps the changes ordered.
    verdict: tokio::sync::Mutex<Verdict>,
    tx: mpsc::Sender<HealthChange>,
}

struct Verdict {
    checks_up: Vec<bool>,
    server_up: bool,
}

impl Shared {
    /// Records that check `index` flipped to `up`; sends a [`HealthChange`] when that flips the
    /// server.
    async fn check_flipped(
        &self,
        index: usize,
        up: bool,
        evidence: String,
        cancel: &CancellationToken,
    ) {
        let mut verdict = self.verdict.lock().await;
        verdict.checks_up[index] = up;
        let server_up = verdict.checks_up.iter().all(|&u| u);
        if server_up == verdict.server_up {
            debug!(server = %self.server, up, %evidence, "check changed state, server unchanged");
            return;
        }
        verdict.server_up = server_up;
        self.up.store(server_up, Ordering::Relaxed);
        if server_up {
            info!(server = %self.server, %evidence, "server is up");
        } else {
            warn!(server = %self.server, %evidence, "server is down");
        }
        let change = HealthChange {
            server: self.server.clone(),
            up: server_up,
            evidence,
            at: SystemTime::now(),
        };
        tokio::select! {
            _ = cancel.cancelled() => {}
            sent = self.tx.send(change) => {
                if sent.is_err() {
                    debug!(server = %self.server, "health change receiver is gone");
                }
            }
        }
    }
}

struct CheckHandle {
    label: String,
    stats: Arc<CheckStats>,
    suspect: mpsc::Sender<String>,
}

/// Runs the health checks of one server. Dropping it (or [`ServerChecker::stop`]) stops its
/// tasks.
pub struct ServerChecker {
    shared: Arc<Shared>,
    checks: Vec<CheckHandle>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for ServerChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerChecker")
            .field("server", &self.shared.server)
            .field("up", &self.is_up())
            .field(
                "checks",
                &self.checks.iter().map(|c| &c.label).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl ServerChecker {
    /// Starts one tokio task per check of this server (must be called within a tokio runtime).
    ///
    /// `initial_up` is the state the directory last recorded: the checker starts in that state
    /// so a controller restart does not re-run the rise count and move traffic. A server without
    /// checks is always up; if it was recorded down, one `up` change is sent right away.
    /// Cancelling `cancel` stops the checker, as does [`ServerChecker::stop`].
    pub fn spawn(
        server: String,
        addr: IpAddr,
        checks: Vec<CheckSpec>,
        initial_up: bool,
        tx: mpsc::Sender<HealthChange>,
        cancel: CancellationToken,
    ) -> ServerChecker {
        Self::spawn_with_prober(
            server,
            addr,
            checks,
            initial_up,
            tx,
            cancel,
            Arc::new(NetProber),
        )
    }

    /// [`ServerChecker::spawn`] with a custom [`Prober`].
    pub fn spawn_with_prober(
        server: String,
        addr: IpAddr,
        checks: Vec<CheckSpec>,
        initial_up: bool,
        tx: mpsc::Sender<HealthChange>,
        cancel: CancellationToken,
        prober: Arc<dyn Prober>,
    ) -> ServerChecker {
        let cancel = cancel.child_token();
        let server_up = checks.is_empty() || initial_up;
        let shared = Arc::new(Shared {
            server: server.clone(),
            up: AtomicBool::new(server_up),
            verdict: tokio::sync::Mutex::new(Verdict {
                checks_up: vec![initial_up; checks.len()],
                server_up,
            }),
            tx,
        });

        if server_up != initial_up {
            // No checks, recorded down: correct the record once.
            let shared = Arc::clone(&shared);
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let change = HealthChange {
                    server: shared.server.clone(),
                    up: true,
                    evidence: "no health checks configured".into(),
                    at: SystemTime::now(),
                };
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = shared.tx.send(change) => {}
                }
            });
        }

        let mut handles = Vec::with_capacity(checks.len());
        for (index, spec) in checks.into_iter().enumerate() {
            let label = spec.probe.label();
            let stats = Arc::new(CheckStats::default());
            stats.up.store(initial_up, Ordering::Relaxed);
            // Capacity 1: suspicion that arrives while one is pending adds nothing.
            let (suspect_tx, suspect_rx) = mpsc::channel(1);
            let task = CheckTask {
                shared: Arc::clone(&shared),
                index,
                label: label.clone(),
                addr,
                offset: start_offset(&server, index, spec.interval.max(MIN_PERIOD)),
                hysteresis: Hysteresis::new(initial_up, spec.rise, spec.fall),
                last_ok: initial_up,
                launched: 0,
                observed: 0,
                spec,
                stats: Arc::clone(&stats),
                prober: Arc::clone(&prober),
                suspect: suspect_rx,
                cancel: cancel.clone(),
            };
            tokio::spawn(task.run());
            handles.push(CheckHandle {
                label,
                stats,
                suspect: suspect_tx,
            });
        }
        ServerChecker {
            shared,
            checks: handles,
            cancel,
        }
    }

    /// The server's name.
    pub fn server(&self) -> &str {
        &self.shared.server
    }

    /// Each check's label (e.g. `tcp:80`) and live counters.
    pub fn stats(&self) -> Vec<(String, Arc<CheckStats>)> {
        self.checks
            .iter()
            .map(|c| (c.label.clone(), Arc::clone(&c.stats)))
            .collect()
    }

    /// The server-level verdict: all checks up.
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Relaxed)
    }

    /// Passive evidence from the dataplane (e.g. "3 client SYNs unanswered"): every check that is
    /// up probes at once and then back to back (every `timeout`) until the verdict is confirmed
    /// either way — `fall` consecutive failures (down, as usual) or one success (back to the
    /// normal pace). Never marks the server down by itself.
    pub fn suspect(&self, why: &str) {
        if !self.is_up() {
            return;
        }
        // A full channel means a suspicion is already pending for that check, which covers
        // this one too (the dataplane may report the same trouble many times a second).
        let accepted = self
            .checks
            .iter()
            .filter(|check| check.suspect.try_send(why.to_string()).is_ok())
            .count();
        if accepted > 0 {
            info!(server = %self.shared.server, why, "server suspected, probing now");
        } else {
            debug!(server = %self.shared.server, why, "server suspected again, already probing");
        }
    }

    /// Stops the checker's tasks.
    pub fn stop(self) {
        // Drop cancels.
    }
}

impl Drop for ServerChecker {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// One check's task.
struct CheckTask {
    shared: Arc<Shared>,
    index: usize,
    label: String,
    addr: IpAddr,
    spec: CheckSpec,
    offset: Duration,
    stats: Arc<CheckStats>,
    prober: Arc<dyn Prober>,
    suspect: mpsc::Receiver<String>,
    cancel: CancellationToken,
    hysteresis: Hysteresis,
    /// The last probe succeeded.
    last_ok: bool,
    /// Probes launched, and the launch number of the newest result observed.
    launched: u64,
    observed: u64,
}

impl CheckTask {
    /// Starts one probe in `inflight`; its result comes back with its launch number.
    fn launch(
        &mut self,
        inflight: &mut tokio::task::JoinSet<(u64, Result<Duration, ProbeFailure>)>,
        timeout: Duration,
    ) {
        self.launched += 1;
        let seq = self.launched;
        let (prober, probe, addr) = (self.prober.clone(), self.spec.probe.clone(), self.addr);
        inflight.spawn(async move {
            // The prober bounds itself; this only guards against one that does not.
            let r =
                tokio::time::timeout(timeout + timeout / 2, prober.probe(&probe, addr, timeout))
                    .await
                    .unwrap_or_else(|_| {
                        Err(ProbeFailure::new(format!(
                            "timed out after {}",
                            fmt_duration(timeout)
                        )))
                    });
            (seq, r)
        });
    }

    async fn run(mut self) {
        let interval = self.spec.interval.max(MIN_PERIOD);
        let timeout = self.spec.timeout.max(MIN_PERIOD);
        let fall = self.hysteresis.fall().max(1) as usize;
        let mut ticker = tokio::time::interval_at(Instant::now() + self.offset, interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // Some(why) while probing at the suspect pace because of passive evidence.
        let mut suspicion: Option<String> = None;
        // While suspected: when the next probe may start. Probes overlap (up to `fall` in
        // flight), so a silent server is confirmed down in about `timeout + (fall - 1) *
        // SUSPECT_PACE` rather than `fall * timeout`.
        let mut next_start = Instant::now();
        let mut inflight: tokio::task::JoinSet<(u64, Result<Duration, ProbeFailure>)> =
            tokio::task::JoinSet::new();

        loop {
            if suspicion.is_some() && inflight.len() < fall && Instant::now() >= next_start {
                self.launch(&mut inflight, timeout);
                next_start = Instant::now() + SUSPECT_PACE.min(timeout);
            }
            let can_start_more = suspicion.is_some() && inflight.len() < fall;
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => {
                    inflight.abort_all();
                    return;
                }
                done = inflight.join_next(), if !inflight.is_empty() => {
                    let (seq, outcome) = match done {
                        Some(Ok(done)) => done,
                        // A probe task cannot panic short of a bug; count it as a failure.
                        Some(Err(e)) => (self.launched, Err(ProbeFailure::new(format!("probe task failed: {e}")))),
                        None => continue,
                    };
                    if seq < self.observed {
                        // Overtaken by a probe launched later: the verdict follows launch
                        // order, so a late failure cannot count after a newer success.
                        self.stats.record(&outcome);
                        continue;
                    }
                    self.observed = seq;
                    let local = matches!(&outcome, Err(f) if f.local);
                    self.observe(outcome).await;
                    if suspicion.is_some() && (local || self.last_ok || !self.hysteresis.is_up()) {
                        // Confirmed either way: back to the normal pace, counted from now. (A
                        // probe that cannot run confirms nothing, but probing back to back would
                        // only repeat the local error: the suspicion ends too.)
                        suspicion = None;
                        ticker.reset();
                    }
                }
                _ = tokio::time::sleep_until(next_start), if can_start_more => {}
                _ = ticker.tick(), if suspicion.is_none() && inflight.is_empty() => {
                    self.launch(&mut inflight, timeout);
                }
                why = self.suspect.recv(), if suspicion.is_none() => {
                    let Some(why) = why else { return };
                    if !self.hysteresis.is_up() {
                        // Already down: nothing to confirm; rise at the normal pace.
                        continue;
                    }
                    debug!(server = %self.shared.server, check = %self.label, %why, "suspected: probing at the suspect pace");
                    suspicion = Some(why);
                    next_start = Instant::now();
                }
            }
        }
    }

    /// Counts one probe's outcome and, when the check flips, tells the server's aggregate.
    ///
    /// A probe that could not run for a local reason is not an observation: the hysteresis, and
    /// so the verdict, stay where they are. The first one of a streak, and then one in every
    /// [`LOCAL_ERROR_LOG_EVERY`], is logged as a warning; the streak's end is logged too.
    async fn observe(&mut self, outcome: Result<Duration, ProbeFailure>) {
        let was_unable = self.stats.local_streak.load(Ordering::Relaxed);
        self.stats.record(&outcome);
        match &outcome {
            Err(f) if f.local => {
                if was_unable % LOCAL_ERROR_LOG_EVERY == 0 {
                    warn!(
                        server = %self.shared.server, check = %self.label, reason = %f.reason,
                        unable = was_unable + 1,
                        "check failed to run (a local error on this gateway, not counted against the server; its verdict is kept)"
                    );
                }
                return;
            }
            _ if was_unable > 0 => {
                info!(server = %self.shared.server, check = %self.label, unable = was_unable, "check runs again after local errors");
            }
            _ => {}
        }
        self.last_ok = outcome.is_ok();
        if let Err(f) = &outcome {
            debug!(server = %self.shared.server, check = %self.label, reason = %f.reason, "probe failed");
        }
        if let Some(up) = self.hysteresis.observe(self.last_ok) {
            self.stats.up.store(up, Ordering::Relaxed);
            let evidence = self.evidence(up, &outcome);
            self.shared
                .check_flipped(self.index, up, evidence, &self.cancel)
                .await;
        }
    }

    fn evidence(&self, up: bool, outcome: &Result<Duration, ProbeFailure>) -> String {
        let n = if up {
            self.hysteresis.rise()
        } else {
            self.hysteresis.fall()
        };
        let counted = if n == 1 {
            format!("{} check", self.label)
        } else {
            format!("{n} consecutive {} checks", self.label)
        };
        match outcome {
            Ok(_) => format!("{counted} passed"),
            Err(f) => format!("{counted} failed: {}", f.reason),
        }
    }
}

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
        let mut h = harness(vec![spec(80, 60, 20, 2, 3)], true, s);
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
        // Instant failures: one probe per SUSPECT_PACE (10 ms), not per timeout (20 ms).
        assert!(
            calls[2] - calls[0] >= SUSPECT_PACE * 2
                && calls[2] - calls[0] < Duration::from_millis(40),
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
