//! One probe: TCP connect, HTTP status (through hyper), UDP request and reply.

use super::*;

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
pub(super) async fn bounded<T>(
    timeout: Duration,
    expired: impl FnOnce(String) -> String,
    fut: impl Future<Output = Result<T, ProbeFailure>>,
) -> Result<T, ProbeFailure> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(result) => result,
        Err(_) => Err(ProbeFailure::new(expired(fmt_duration(timeout)))),
    }
}

pub(super) fn timed_out(t: String) -> String {
    format!("timed out after {t}")
}

/// `50ms`, `2s`, or the Debug form for anything not a whole number of milliseconds.
pub(super) fn fmt_duration(d: Duration) -> String {
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
pub(super) fn describe_io(e: &io::Error) -> String {
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
pub(super) async fn tcp_connect(addr: SocketAddr) -> Result<TcpStream, ProbeFailure> {
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
pub(super) const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// `GET path` through hyper's HTTP/1 client on a connection made by [`tcp_connect`] (so its
/// errors are classified the same way); passes when the status is `expect_status`. The body is
/// not read: dropping the connection resets it.
pub(super) async fn http_probe(
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
pub(super) fn http_failure(e: hyper::Error) -> ProbeFailure {
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
pub(super) fn host_header(addr: SocketAddr) -> String {
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

pub(super) async fn udp_probe(
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

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}
