//! Frames for the XDP program's tests and benchmarks, built with etherparse (which computes
//! every checksum from scratch), the independent checksum verifier, and the constants both use:
//! XDP actions, TCP flags and the lab's MAC addresses.

use std::net::IpAddr;

use etherparse::{
    Icmpv4Type, Icmpv6Type, IpHeaders, IpNumber, Ipv4Header, Ipv4Options, NetSlice, PacketBuilder,
    SlicedPacket, TransportSlice,
};

// XDP actions (`enum xdp_action`).
pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

/// The name of an XDP action, for messages.
pub fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "?",
    }
}

// MACs of the labs (the packet fixtures' and the per-packet bench's).
pub const CM: [u8; 6] = [2, 0, 0, 0, 1, 0x10]; // client C4/C6 (behind fx0)
pub const R0M: [u8; 6] = [2, 0, 0, 0, 1, 0xfe]; // router on the client side
pub const G0: [u8; 6] = [2, 0, 0, 0, 0, 1]; // gateway fx0 (client side)
pub const G1: [u8; 6] = [2, 0, 0, 0, 0, 2]; // gateway fx1 (server side)
pub const G2: [u8; 6] = [2, 0, 0, 0, 0, 3]; // gateway fx2 (not in the devmap)
pub const PM: [u8; 6] = [2, 0, 0, 0, 2, 0x10]; // primary P4/P6
pub const BM: [u8; 6] = [2, 0, 0, 0, 2, 0x11]; // backup B4/B6
pub const SCM: [u8; 6] = [2, 0, 0, 0, 2, 0x50]; // a client on the server side
pub const R1M: [u8; 6] = [2, 0, 0, 0, 2, 0xfe]; // router on the server side
pub const XM: [u8; 6] = [2, 0, 0, 0, 3, 0x10]; // server behind fx2

// TCP flags.
pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;

/// The transport part of a [`frame`].
#[derive(Clone)]
pub enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    EchoReq {
        id: u16,
        seq: u16,
    },
    EchoRep {
        id: u16,
        seq: u16,
    },
    /// An ICMPv4 error (IPv4 only); the payload is its quote (an IP packet, possibly truncated).
    Icmpv4Err(Icmpv4Type),
    /// An ICMPv6 error (IPv6 only); the payload is its quote.
    Icmpv6Err(Icmpv6Type),
}

/// A TCP segment: `ack` is written only when `flags` has ACK; window 64240.
pub fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
    }
}

/// A UDP datagram (etherparse computes its checksum).
pub fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

/// Ethernet + IP + L4 + payload. Addresses must be of one family.
pub fn frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), ttl),
        _ => panic!("mixed families"),
    };
    let v6 = src.is_ipv6();
    let mut out = Vec::new();
    match l4 {
        L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
        } => {
            let mut b = ip.tcp(sport, dport, seq, 64240);
            if flags & SYN != 0 {
                b = b.syn();
            }
            if flags & ACK != 0 {
                b = b.ack(ack);
            }
            if flags & FIN != 0 {
                b = b.fin();
            }
            if flags & RST != 0 {
                b = b.rst();
            }
            if flags & PSH != 0 {
                b = b.psh();
            }
            b.write(&mut out, payload).unwrap();
        }
        L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut out, payload).unwrap(),
        L4::EchoReq { id, seq } if v6 => ip
            .icmpv6_echo_request(id, seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::EchoRep { id, seq } if v6 => ip
            .icmpv6_echo_reply(id, seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::EchoReq { id, seq } => ip
            .icmpv4_echo_request(id, seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::EchoRep { id, seq } => ip
            .icmpv4_echo_reply(id, seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::Icmpv4Err(t) => {
            assert!(!v6, "v4 only");
            ip.icmpv4(t).write(&mut out, payload).unwrap()
        }
        L4::Icmpv6Err(t) => {
            assert!(v6, "v6 only");
            ip.icmpv6(t).write(&mut out, payload).unwrap()
        }
    }
    out
}

/// The IP packet inside a frame, first `n` bytes (a quote in an ICMP error).
pub fn ip_part(frame: &[u8], n: usize) -> Vec<u8> {
    frame[14..].iter().take(n).copied().collect()
}

/// IPv4 TCP frame with header options (NOP NOP NOP EOL).
pub fn tcp4_with_options(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut ip = Ipv4Header::new(0, ttl, IpNumber::TCP, s.octets(), d.octets()).unwrap();
    ip.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(sport, dport, 1000, 64240)
        .ack(5)
        .write(&mut out, b"options")
        .unwrap();
    out
}

/// IPv4 TCP frame that is a fragment (`more` = MF set, `offset` in 8-byte units).
pub fn tcp4_fragment(src: IpAddr, dst: IpAddr, more: bool, offset: u16) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).unwrap();
    ip.dont_fragment = false;
    ip.more_fragments = more;
    ip.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
    ip.identification = 77;
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CM, G0)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40000, 80, 1, 64240)
        .write(&mut out, &[0u8; 64])
        .unwrap();
    out
}

/// Inserts an 8-byte IPv6 extension header (`kind` = 0 hop-by-hop, 44 fragment) after the IPv6
/// header of `frame`.
pub fn with_ipv6_ext(frame: &[u8], kind: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    let next = f[14 + 6];
    let ext: [u8; 8] = match kind {
        0 => [next, 0, 1, 4, 0, 0, 0, 0],  // hop-by-hop with PadN
        44 => [next, 0, 0, 1, 0, 0, 0, 9], // fragment, offset 0, M=1
        _ => panic!("unsupported"),
    };
    f.splice(54..54, ext);
    f[14 + 6] = kind;
    let pl = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&pl.to_be_bytes());
    f
}

/// Recomputes every checksum of `frame` with etherparse and compares it with the one in the
/// frame (a frame etherparse cannot parse has nothing to verify).
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return Ok(()); // not parseable: nothing to verify (passed-through garbage)
    };
    let Some(net) = &p.net else { return Ok(()) };
    if let NetSlice::Ipv4(ip) = net {
        let h = ip.header().to_header();
        if h.header_checksum != h.calc_header_checksum() {
            return Err(format!(
                "IPv4 header checksum {:#06x}, expected {:#06x}",
                h.header_checksum,
                h.calc_header_checksum()
            ));
        }
    }
    let payload: Vec<u8> = match &p.transport {
        Some(TransportSlice::Tcp(t)) => t.payload().to_vec(),
        Some(TransportSlice::Udp(u)) => u.payload().to_vec(),
        _ => Vec::new(),
    };
    // (what, the checksum in the frame, the one etherparse computes)
    let check: Option<(&str, u16, u16)> = match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) => {
            let h = t.to_header();
            let c = h.calc_checksum_ipv4(&ip.header().to_header(), &payload);
            Some(("TCP", h.checksum, c.unwrap()))
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(t))) => {
            let h = t.to_header();
            let c = h.calc_checksum_ipv6(&ip.header().to_header(), &payload);
            Some(("TCP", h.checksum, c.unwrap()))
        }
        // Over IPv4, a UDP checksum of 0 means none.
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(u))) => {
            let h = u.to_header();
            (h.checksum != 0).then(|| {
                let c = h.calc_checksum_ipv4(&ip.header().to_header(), &payload);
                ("UDP", h.checksum, c.unwrap())
            })
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Udp(u))) => {
            let h = u.to_header();
            let c = h.calc_checksum_ipv6(&ip.header().to_header(), &payload);
            Some(("UDP", h.checksum, c.unwrap()))
        }
        (Some(NetSlice::Ipv4(_)), Some(TransportSlice::Icmpv4(i))) => {
            let h = i.header();
            Some(("ICMPv4", h.checksum, h.icmp_type.calc_checksum(i.payload())))
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(i))) => {
            let (h, ih) = (i.header(), ip.header());
            let c = h
                .icmp_type
                .calc_checksum(ih.source(), ih.destination(), i.payload());
            Some(("ICMPv6", h.checksum, c.unwrap()))
        }
        _ => None,
    };
    match check {
        Some((what, got, want)) if got != want => {
            Err(format!("{what} checksum {got:#06x}, expected {want:#06x}"))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> IpAddr {
        IpAddr::V4(s.parse().unwrap())
    }

    fn v6(s: &str) -> IpAddr {
        IpAddr::V6(s.parse().unwrap())
    }

    /// `f` with the byte at `at` changed.
    fn spoiled(mut f: Vec<u8>, at: usize) -> Vec<u8> {
        f[at] ^= 0x55;
        f
    }

    #[test]
    fn every_checksum_is_verified() {
        let (c4, s4, c6, s6) = (
            v4("198.18.1.10"),
            v4("198.18.2.10"),
            v6("2001:2:1::10"),
            v6("2001:2:2::10"),
        );
        let tcp4 = frame(CM, G0, c4, s4, 64, tcp(1, 2, 3, 4, ACK), b"data");
        let tcp6 = frame(CM, G0, c6, s6, 64, tcp(1, 2, 3, 4, ACK), b"data");
        let udp4 = frame(CM, G0, c4, s4, 64, udp(1, 2), b"data");
        let udp6 = frame(CM, G0, c6, s6, 64, udp(1, 2), b"data");
        let echo4 = frame(CM, G0, c4, s4, 64, L4::EchoReq { id: 1, seq: 2 }, b"data");
        let echo6 = frame(CM, G0, c6, s6, 64, L4::EchoReq { id: 1, seq: 2 }, b"data");
        for f in [&tcp4, &tcp6, &udp4, &udp6, &echo4, &echo6] {
            assert_eq!(verify_checksums(f), Ok(()), "{}", crate::hex(f));
        }
        // Checksum offsets: IPv4 header 14 + 10, TCP + 16, UDP + 6, ICMP + 2.
        for (f, at, what) in [
            (&tcp4, 14 + 10, "IPv4 header checksum"),
            (&tcp4, 34 + 16, "TCP checksum"),
            (&tcp6, 54 + 16, "TCP checksum"),
            (&udp4, 34 + 6, "UDP checksum"),
            (&udp6, 54 + 6, "UDP checksum"),
            (&echo4, 34 + 2, "ICMPv4 checksum"),
            (&echo6, 54 + 2, "ICMPv6 checksum"),
        ] {
            let e = verify_checksums(&spoiled(f.clone(), at)).expect_err(what);
            assert!(e.starts_with(&format!("{what} 0x")), "{e}");
            assert!(e.contains(", expected 0x"), "{e}");
        }
        // Over IPv4, a UDP checksum of 0 is none; over IPv6 it is wrong.
        let mut none4 = udp4.clone();
        none4[40..42].copy_from_slice(&[0, 0]);
        assert_eq!(verify_checksums(&none4), Ok(()));
        let mut none6 = udp6.clone();
        none6[60..62].copy_from_slice(&[0, 0]);
        assert!(verify_checksums(&none6).is_err());
        // Not parseable: nothing to verify.
        assert_eq!(verify_checksums(&[0u8; 10]), Ok(()));
    }
}
