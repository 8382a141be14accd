//! What the program passes to the kernel untouched (or DNATed only, when it cannot forward).

use etherparse::{Icmpv6Type, IpNumber, PacketBuilder};
use ftn_common::GlobalCounter;
use ftn_tests::frames::{frame, tcp, tcp4_fragment, udp, with_ipv6_ext, CM, G0, SYN, XDP_PASS};
use std::net::IpAddr;

use super::{case, Addrs, Case, Ingress, PL};

/// Cases 45-61.
pub fn cases(a: &Addrs) -> Vec<Case> {
    [not_parsed, malformed, not_forwarded]
        .iter()
        .flat_map(|f| f(a))
        .collect()
}

/// Not IP, VLAN-tagged, fragments and IPv6 extension headers.
fn not_parsed(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        {
            let mut arp = vec![0xff; 6];
            arp.extend_from_slice(&CM);
            arp.extend_from_slice(&[0x08, 0x06]);
            arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
            arp.extend_from_slice(&CM);
            arp.extend_from_slice(&[198, 18, 1, 10, 0, 0, 0, 0, 0, 0, 198, 18, 1, 1]);
            case("ARP is passed", Fx0, arp, XDP_PASS, None, G::PassNotIp)
        },
        {
            let mut f = Vec::new();
            PacketBuilder::ethernet2(CM, G0)
                .single_vlan(etherparse::VlanId::try_new(10).unwrap())
                .ipv4([198, 18, 1, 10], [198, 18, 100, 1], 64)
                .tcp(40200, 80, 1, 100)
                .syn()
                .write(&mut f, b"")
                .unwrap();
            case(
                "VLAN-tagged frame to the VIP is passed (tags are not parsed)",
                Fx0,
                f,
                XDP_PASS,
                None,
                G::PassNotIp,
            )
        },
        case(
            "IPv4 first fragment (MF) to a VIP with two TCP resources (no fragment entry) is passed",
            Fx0,
            tcp4_fragment(a.c4, a.vip4, true, 0),
            XDP_PASS,
            None,
            G::PassFragment,
        ),
        case(
            "IPv4 non-first fragment to a VIP with two TCP resources is passed",
            Fx0,
            tcp4_fragment(a.c4, a.vip4, false, 8),
            XDP_PASS,
            None,
            G::PassFragment,
        ),
        case(
            "IPv6 with a fragment header to a VIP without a fragment entry is passed",
            Fx0,
            with_ipv6_ext(
                &frame(CM, G0, a.c6, a.vip6, 64, tcp(40201, 80, 1, 0, SYN), b""),
                44,
            ),
            XDP_PASS,
            None,
            G::PassFragment,
        ),
        case(
            "IPv6 with a hop-by-hop header to the VIP is passed",
            Fx0,
            with_ipv6_ext(
                &frame(CM, G0, a.c6, a.vip6, 64, tcp(40202, 80, 1, 0, SYN), b""),
                0,
            ),
            XDP_PASS,
            None,
            G::PassIpv6Ext,
        ),
    ]
}

/// Truncated or inconsistent headers.
fn malformed(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        {
            let mut f = frame(CM, G0, a.c4, a.vip4, 64, tcp(40203, 80, 1, 0, SYN), b"");
            f.truncate(14 + 20 + 10);
            f[16..18].copy_from_slice(&30u16.to_be_bytes());
            case(
                "truncated TCP header is passed",
                Fx0,
                f,
                XDP_PASS,
                None,
                G::PassMalformed,
            )
        },
        {
            // (The kernel itself refuses frames shorter than an Ethernet header before XDP.)
            let mut f = G0.to_vec();
            f.extend_from_slice(&CM);
            f.extend_from_slice(&[0x08, 0x00]);
            case(
                "Ethernet header announcing IPv4 with no IP header is passed",
                Fx0,
                f,
                XDP_PASS,
                None,
                G::PassMalformed,
            )
        },
        {
            let mut f = frame(CM, G0, a.c4, a.vip4, 64, tcp(40204, 80, 1, 0, SYN), b"");
            f[16..18].copy_from_slice(&1500u16.to_be_bytes());
            case(
                "IPv4 total length beyond the frame is passed",
                Fx0,
                f,
                XDP_PASS,
                None,
                G::PassMalformed,
            )
        },
        {
            let mut f = frame(CM, G0, a.c4, a.vip4, 64, tcp(40205, 80, 1, 0, SYN), b"");
            f[14] = 0x44; // IHL 4
            case(
                "IPv4 header length below 20 is passed",
                Fx0,
                f,
                XDP_PASS,
                None,
                G::PassMalformed,
            )
        },
    ]
}

/// Parsed, but not for the program to forward.
fn not_forwarded(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        case(
            "TTL 1 to the VIP is passed for the kernel to answer",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 1, tcp(40206, 80, 1, 0, SYN), b""),
            XDP_PASS,
            None,
            G::PassTtl,
        ),
        case(
            "a packet to a non-VIP address is routed by the kernel (passed)",
            Fx0,
            frame(CM, G0, a.c4, a.other4, 64, tcp(40207, 80, 1, 0, SYN), b""),
            XDP_PASS,
            None,
            G::PassNoMatch,
        ),
        case(
            "UDP to a VIP port without resource (and no every-port UDP entry) is passed",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, udp(50300, 9999), PL),
            XDP_PASS,
            None,
            G::PassNoMatch,
        ),
        {
            let mut f = Vec::new();
            let (IpAddr::V4(s), IpAddr::V4(d)) = (a.c4, a.vip4) else {
                unreachable!()
            };
            PacketBuilder::ethernet2(CM, G0)
                .ipv4(s.octets(), d.octets(), 64)
                .write(&mut f, IpNumber(47), &[0u8; 24])
                .unwrap();
            case(
                "GRE to the VIP is passed",
                Fx0,
                f,
                XDP_PASS,
                None,
                G::PassNoMatch,
            )
        },
        {
            let mut f = Vec::new();
            let (IpAddr::V6(s), IpAddr::V6(d)) = (a.c6, a.vip6) else {
                unreachable!()
            };
            PacketBuilder::ethernet2(CM, G0)
                .ipv6(s.octets(), d.octets(), 255)
                .icmpv6(Icmpv6Type::Unknown {
                    type_u8: 135,
                    code_u8: 0,
                    bytes5to8: [0; 4],
                })
                .write(&mut f, &[0u8; 16])
                .unwrap();
            case(
                "ICMPv6 neighbour solicitation to the VIP is passed",
                Fx0,
                f,
                XDP_PASS,
                None,
                G::PassNoMatch,
            )
        },
        case(
            "server neighbour unresolved: DNATed packet passed (TTL, MACs unchanged)",
            Fx0,
            frame(CM, G0, a.c4, a.vip4_u, 64, tcp(40208, 80, 1, 0, SYN), b""),
            XDP_PASS,
            Some(frame(
                CM,
                G0,
                a.c4,
                a.u4,
                64,
                tcp(40208, 80, 1, 0, SYN),
                b"",
            )),
            G::PassNoNeigh,
        ),
        case(
            "egress interface not in the devmap: DNATed packet passed to the kernel",
            Fx0,
            frame(CM, G0, a.c4, a.vip4_x, 64, tcp(40209, 80, 1, 0, SYN), b""),
            XDP_PASS,
            Some(frame(
                CM,
                G0,
                a.c4,
                a.x4,
                64,
                tcp(40209, 80, 1, 0, SYN),
                b"",
            )),
            G::PassNotInDevmap,
        ),
    ]
}
