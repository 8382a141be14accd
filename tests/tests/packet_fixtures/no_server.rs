//! A resource without a live server: its drop or reject policy.

use etherparse::{
    icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode, Icmpv4Type, Icmpv6Type, NetSlice,
    SlicedPacket, TransportSlice,
};
use ftn_common::{DataplaneConfig, GlobalCounter};
use ftn_tests::frames::{
    frame, ip_part, tcp, udp, ACK, CM, G0, L4, PSH, RST, SYN, XDP_DROP, XDP_TX,
};

use super::{case, with, Addrs, Case, Ingress, Op, PL};

/// Cases 25-32.
pub fn cases(a: &Addrs) -> Vec<Case> {
    [drop_policy, reject_v4_rst, reject_v4_unreachable, reject_v6]
        .iter()
        .flat_map(|f| f(a))
        .collect()
}

/// Drop policy.
fn drop_policy(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![with(
        case(
            "resource without live server, drop policy: dropped",
            Fx0,
            frame(
                CM,
                G0,
                a.c4,
                a.vip4_dead,
                64,
                tcp(40030, 80, 1, 0, SYN),
                b"",
            ),
            XDP_DROP,
            None,
            G::DropNoServer,
        ),
        vec![Op::Config(DataplaneConfig::default())],
    )]
}

/// Reject policy, IPv4: TCP segments get RSTs from the VIP.
fn reject_v4_rst(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        case(
            "reject policy: a SYN gets a RST+ACK from the VIP",
            Fx0,
            frame(
                CM,
                G0,
                a.c4,
                a.vip4_rej,
                64,
                tcp(40031, 443, 1000, 0, SYN),
                b"",
            ),
            XDP_TX,
            Some(rst(frame(
                G0,
                CM,
                a.vip4_rej,
                a.c4,
                64,
                tcp(443, 40031, 0, 1001, RST | ACK),
                b"",
            ))),
            G::RejectTcpRst,
        ),
        case(
            "reject policy: a segment with ACK gets a RST with seq = its ack",
            Fx0,
            frame(
                CM,
                G0,
                a.c4,
                a.vip4_rej,
                64,
                tcp(40032, 443, 5, 777, ACK | PSH),
                PL,
            ),
            XDP_TX,
            Some(rst(frame(
                G0,
                CM,
                a.vip4_rej,
                a.c4,
                64,
                tcp(443, 40032, 777, 0, RST),
                b"",
            ))),
            G::RejectTcpRst,
        ),
    ]
}

/// Reject policy, IPv4: UDP and echo requests get ICMP unreachables; a RST gets nothing.
fn reject_v4_unreachable(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        {
            let input = frame(CM, G0, a.c4, a.vip4_rej, 64, udp(50010, 53), PL);
            let out = frame(
                G0,
                CM,
                a.vip4_rej,
                a.c4,
                64,
                L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::Port,
                )),
                &ip_part(&input, 28),
            );
            case(
                "reject policy: UDP gets ICMP port unreachable quoting header + 8 bytes",
                Fx0,
                input,
                XDP_TX,
                Some(out),
                G::RejectIcmp,
            )
        },
        {
            let input = frame(
                CM,
                G0,
                a.c4,
                a.vip4_rej,
                64,
                L4::EchoReq { id: 9, seq: 3 },
                PL,
            );
            let out = frame(
                G0,
                CM,
                a.vip4_rej,
                a.c4,
                64,
                L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
                    DestUnreachableHeader::Host,
                )),
                &ip_part(&input, 28),
            );
            case(
                "reject policy: echo request gets ICMP host unreachable",
                Fx0,
                input,
                XDP_TX,
                Some(out),
                G::RejectIcmp,
            )
        },
        case(
            "reject policy: a RST is never answered (dropped)",
            Fx0,
            frame(
                CM,
                G0,
                a.c4,
                a.vip4_rej,
                64,
                tcp(40033, 443, 5, 0, RST),
                b"",
            ),
            XDP_DROP,
            None,
            G::DropRejectFailed,
        ),
    ]
}

/// Reject policy, IPv6.
fn reject_v6(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        case(
            "reject policy, IPv6: a SYN gets a RST+ACK",
            Fx0,
            frame(
                CM,
                G0,
                a.c6,
                a.vip6_rej,
                64,
                tcp(40034, 443, 1000, 0, SYN),
                b"",
            ),
            XDP_TX,
            Some(rst(frame(
                G0,
                CM,
                a.vip6_rej,
                a.c6,
                64,
                tcp(443, 40034, 0, 1001, RST | ACK),
                b"",
            ))),
            G::RejectTcpRst,
        ),
        {
            let input = frame(CM, G0, a.c6, a.vip6_rej, 64, udp(50011, 53), PL);
            let out = frame(
                G0,
                CM,
                a.vip6_rej,
                a.c6,
                64,
                L4::Icmpv6Err(Icmpv6Type::DestinationUnreachable(
                    DestUnreachableCode::Port,
                )),
                &ip_part(&input, 48),
            );
            case(
                "reject policy, IPv6: UDP gets ICMPv6 port unreachable",
                Fx0,
                input,
                XDP_TX,
                Some(out),
                G::RejectIcmp,
            )
        },
    ]
}

/// The program's resets carry window 0 (etherparse's builder writes 64240): zero it and
/// recompute the TCP checksum with etherparse.
fn rst(mut f: Vec<u8>) -> Vec<u8> {
    let p = SlicedPacket::from_ethernet(&f).unwrap();
    let (tcp_off, c) = match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) => {
            let mut h = t.to_header();
            h.window_size = 0;
            (
                14 + 20,
                h.calc_checksum_ipv4(&ip.header().to_header(), t.payload())
                    .unwrap(),
            )
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(t))) => {
            let mut h = t.to_header();
            h.window_size = 0;
            (
                14 + 40,
                h.calc_checksum_ipv6(&ip.header().to_header(), t.payload())
                    .unwrap(),
            )
        }
        _ => panic!("not TCP"),
    };
    f[tcp_off + 14..tcp_off + 16].copy_from_slice(&[0, 0]);
    f[tcp_off + 16..tcp_off + 18].copy_from_slice(&c.to_be_bytes());
    f
}
