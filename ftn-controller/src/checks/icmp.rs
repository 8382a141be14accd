//! ICMP echo probes: raw sockets when allowed, else unprivileged ping sockets.

use super::*;

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
pub(super) static ICMP_COUNTER: AtomicU32 = AtomicU32::new(0);

pub(super) fn next_icmp_ids() -> (u16, u16) {
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

pub(super) const ICMPV4_ECHO_REQUEST: u8 = 8;
pub(super) const ICMPV4_ECHO_REPLY: u8 = 0;
pub(super) const ICMPV6_ECHO_REQUEST: u8 = 128;
pub(super) const ICMPV6_ECHO_REPLY: u8 = 129;
pub(super) const ICMP_PAYLOAD: &[u8] = b"ftn-check heartbeat";

/// The Internet checksum (RFC 1071) of `data`.
pub(super) fn internet_checksum(data: &[u8]) -> u16 {
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
pub(super) fn echo_request(v6: bool, id: u16, seq: u16) -> Vec<u8> {
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
pub(super) fn is_echo_reply(
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

pub(super) async fn icmp_probe(addr: IpAddr, timeout: Duration) -> Result<(), ProbeFailure> {
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
