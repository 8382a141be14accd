//! ICMP errors about NATed flows: the quoted packet and the outer addresses are translated
//! the way the flow was.

use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, Icmpv6Type};
use ftn_common::GlobalCounter;
use ftn_tests::frames::{
    frame, ip_part, tcp, udp, ACK, BM, CM, G0, G1, L4, PM, R0M, R1M, SYN, XDP_PASS, XDP_REDIRECT,
};

use super::{case, Addrs, Case, Ingress, PL};

/// Cases 39-44.
pub fn cases(a: &Addrs) -> Vec<Case> {
    [v4, v6, unmatched, trailer_and_local]
        .iter()
        .flat_map(|f| f(a))
        .collect()
}

/// ICMPv4 errors from the server side and to the VIP.
fn v4(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        {
            // The gateway DNATed C4:50000 -> P4:53 (case 3). A router on the server side says
            // "fragmentation needed" to the client about that datagram.
            let quoted = frame(G1, PM, a.c4, a.p4, 63, udp(50000, 53), PL);
            let input = frame(
                R1M,
                G1,
                a.r1_4,
                a.c4,
                64,
                L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
                )),
                &ip_part(&quoted, 28),
            );
            let quoted_vip = frame(G1, PM, a.c4, a.vip4, 63, udp(50000, 53), PL);
            let out = frame(
                G0,
                CM,
                a.r1_4,
                a.c4,
                63,
                L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
                )),
                &ip_part(&quoted_vip, 28),
            );
            case(
                "v4 'fragmentation needed' from a router about a DNATed datagram: quoted dst -> VIP",
                Fx1,
                input,
                XDP_REDIRECT,
                Some(out),
                G::Redirect,
            )
        },
        {
            // The whole quoted TCP header: the quoted TCP checksum is fixed too.
            let quoted = frame(G1, PM, a.c4, a.p4, 63, tcp(40011, 80, 1, 0, SYN), b"");
            let input = frame(
                PM,
                G1,
                a.p4,
                a.c4,
                64,
                L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::Port,
                )),
                &ip_part(&quoted, 40),
            );
            let quoted_vip = frame(G1, PM, a.c4, a.vip4, 63, tcp(40011, 80, 1, 0, SYN), b"");
            let out = frame(
                G0,
                CM,
                a.vip4,
                a.c4,
                63,
                L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::Port,
                )),
                &ip_part(&quoted_vip, 40),
            );
            case(
                "v4 ICMP error from the server itself: outer source and quoted dst -> VIP",
                Fx1,
                input,
                XDP_REDIRECT,
                Some(out),
                G::Redirect,
            )
        },
        {
            // A router on the client side says "fragmentation needed" to the VIP about a reply the
            // gateway SNATed (VIP:53 -> C4:50000): it goes to the primary, about P4 -> C4.
            let quoted = frame(G0, CM, a.vip4, a.c4, 63, udp(53, 50000), PL);
            let input = frame(
                R0M,
                G0,
                a.r0_4,
                a.vip4,
                64,
                L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
                )),
                &ip_part(&quoted, 28),
            );
            let quoted_srv = frame(G0, CM, a.p4, a.c4, 63, udp(53, 50000), PL);
            let out = frame(
                G1,
                PM,
                a.r0_4,
                a.p4,
                63,
                L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1280 },
                )),
                &ip_part(&quoted_srv, 28),
            );
            case(
                "v4 'fragmentation needed' to the VIP about a SNATed reply goes to the server",
                Fx0,
                input,
                XDP_REDIRECT,
                Some(out),
                G::Redirect,
            )
        },
    ]
}

/// ICMPv6 "packet too big" from the server and to the VIP.
fn v6(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        {
            // v6: the backup B6 says "packet too big" about C6:40100 -> B6:80 (flow moved above).
            let quoted = frame(G1, BM, a.c6, a.b6, 63, tcp(40100, 80, 2, 78, ACK), PL);
            let input = frame(
                BM,
                G1,
                a.b6,
                a.c6,
                64,
                L4::Icmpv6Err(Icmpv6Type::PacketTooBig { mtu: 1280 }),
                &ip_part(&quoted, 60),
            );
            let quoted_vip = frame(G1, BM, a.c6, a.vip6, 63, tcp(40100, 80, 2, 78, ACK), PL);
            let out = frame(
                G0,
                CM,
                a.vip6,
                a.c6,
                63,
                L4::Icmpv6Err(Icmpv6Type::PacketTooBig { mtu: 1280 }),
                &ip_part(&quoted_vip, 60),
            );
            case(
                "v6 'packet too big' from the server: outer source and quoted dst -> VIP",
                Fx1,
                input,
                XDP_REDIRECT,
                Some(out),
                G::Redirect,
            )
        },
        {
            // v6: an error to the VIP about VIP:80 -> C6:40100 goes to the flow's server (B6).
            let quoted = frame(G0, CM, a.vip6, a.c6, 63, tcp(80, 40100, 3, 3, ACK), b"");
            let input = frame(
                R0M,
                G0,
                a.r0_6,
                a.vip6,
                64,
                L4::Icmpv6Err(Icmpv6Type::PacketTooBig { mtu: 1280 }),
                &ip_part(&quoted, 60),
            );
            let quoted_srv = frame(G0, CM, a.b6, a.c6, 63, tcp(80, 40100, 3, 3, ACK), b"");
            let out = frame(
                G1,
                BM,
                a.r0_6,
                a.b6,
                63,
                L4::Icmpv6Err(Icmpv6Type::PacketTooBig { mtu: 1280 }),
                &ip_part(&quoted_srv, 60),
            );
            case(
                "v6 'packet too big' to the VIP about a SNATed reply goes to the server",
                Fx0,
                input,
                XDP_REDIRECT,
                Some(out),
                G::Redirect,
            )
        },
    ]
}

/// An error about no known flow.
fn unmatched(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![{
        // UDP 54 is no resource's port: no flow, and no return entry for the quoted server.
        let quoted = frame(G1, PM, a.c4, a.p4, 63, udp(59999, 54), PL);
        let input = frame(
            PM,
            G1,
            a.p4,
            a.c4,
            64,
            L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::Port,
            )),
            &ip_part(&quoted, 28),
        );
        case(
            "ICMP error about a packet of no flow and no resource is passed untouched",
            Fx1,
            input,
            XDP_PASS,
            None,
            G::PassIcmpUnmatched,
        )
    }]
}

/// Frames with an Ethernet trailer (padding after the IP datagram), and errors to the gateway
/// itself.
fn trailer_and_local(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    // The server answers a DNATed TCP segment with "port unreachable"; the quote (IP header +
    // 8 bytes) ends before the quoted TCP checksum, and the frame carries 18 bytes of trailer
    // where that checksum would be: only the IP length counts.
    let trailer = [0xa5u8; 18];
    // "Port unreachable" from `src` to `dst` quoting the first 28 bytes of `quoted`'s packet.
    let unreachable = |(smac, dmac), src, dst, ttl, quoted: &[u8]| {
        frame(
            smac,
            dmac,
            src,
            dst,
            ttl,
            L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                DestUnreachableHeader::Port,
            )),
            &ip_part(quoted, 28),
        )
    };
    let quoted = frame(G1, PM, a.c4, a.p4, 63, tcp(40000, 80, 1, 0, ACK), b"");
    let mut input = unreachable((PM, G1), a.p4, a.c4, 64, &quoted);
    input.extend_from_slice(&trailer);
    let quoted_vip = frame(G1, PM, a.c4, a.vip4, 63, tcp(40000, 80, 1, 0, ACK), b"");
    let mut out = unreachable((G0, CM), a.vip4, a.c4, 63, &quoted_vip);
    out.extend_from_slice(&trailer);
    // The server's "port unreachable" about the gateway's own health-check probe: the quoted
    // packet went from the gateway (198.18.2.1) to P4:80, a resource's server port.
    let gw = "198.18.2.1".parse().unwrap();
    let probe = frame(G1, PM, gw, a.p4, 64, tcp(45000, 80, 1, 0, SYN), b"");
    let to_gw = unreachable((PM, G1), a.p4, gw, 64, &probe);
    vec![
        case(
            "v4 error in a frame with an Ethernet trailer: translated, checksums over the IP length (trailer untouched)",
            Fx1,
            input,
            XDP_REDIRECT,
            Some(out),
            G::Redirect,
        ),
        case(
            "an error to the gateway itself about its own probe of a server port is passed untouched",
            Fx1,
            to_gw,
            XDP_PASS,
            None,
            G::PassLocal,
        ),
    ]
}
