//! IPv6: DNAT, SNAT of the replies, and a flow moved off a dead primary.

use ftn_common::GlobalCounter;
use ftn_controller::model::{NoServerAction, Protocol};
use ftn_tests::frames::{frame, tcp, udp, ACK, BM, CM, G0, G1, L4, PM, SYN, XDP_REDIRECT};

use super::{case, m, with, Addrs, Case, Ingress, Op, B6, P6, PL};

/// Cases 33-38.
pub fn cases(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        case(
            "v6 TCP SYN to VIP:80 is DNATed to the primary, hop limit decremented",
            Fx0,
            frame(CM, G0, a.c6, a.vip6, 64, tcp(40100, 80, 1, 0, SYN), b""),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c6,
                a.p6,
                63,
                tcp(40100, 80, 1, 0, SYN),
                b"",
            )),
            G::Redirect,
        ),
        case(
            "v6 UDP to VIP:53 is DNATed",
            Fx0,
            frame(CM, G0, a.c6, a.vip6, 64, udp(50100, 53), PL),
            XDP_REDIRECT,
            Some(frame(G1, PM, a.c6, a.p6, 63, udp(50100, 53), PL)),
            G::Redirect,
        ),
        case(
            "v6 ICMPv6 echo request is DNATed (pseudo-header checksum fixed)",
            Fx0,
            frame(CM, G0, a.c6, a.vip6, 64, L4::EchoReq { id: 11, seq: 1 }, PL),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c6,
                a.p6,
                63,
                L4::EchoReq { id: 11, seq: 1 },
                PL,
            )),
            G::Redirect,
        ),
        case(
            "v6 SYN-ACK from the primary is SNATed",
            Fx1,
            frame(
                PM,
                G1,
                a.p6,
                a.c6,
                64,
                tcp(80, 40100, 77, 2, SYN | ACK),
                b"",
            ),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip6,
                a.c6,
                63,
                tcp(80, 40100, 77, 2, SYN | ACK),
                b"",
            )),
            G::Redirect,
        ),
        case(
            "v6 ICMPv6 echo reply is SNATed",
            Fx1,
            frame(PM, G1, a.p6, a.c6, 64, L4::EchoRep { id: 11, seq: 1 }, PL),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip6,
                a.c6,
                63,
                L4::EchoRep { id: 11, seq: 1 },
                PL,
            )),
            G::Redirect,
        ),
        with(
            case(
                "v6 primary marked down: the open flow moves to the backup",
                Fx0,
                frame(CM, G0, a.c6, a.vip6, 64, tcp(40100, 80, 2, 78, ACK), PL),
                XDP_REDIRECT,
                Some(frame(
                    G1,
                    BM,
                    a.c6,
                    a.b6,
                    63,
                    tcp(40100, 80, 2, 78, ACK),
                    PL,
                )),
                G::Redirect,
            ),
            vec![
                Op::Server(P6, a.p6, false),
                Op::Resource(
                    m(a.vip6, Protocol::Tcp, 80),
                    4,
                    Some(B6),
                    NoServerAction::Drop,
                ),
            ],
        ),
    ]
}
