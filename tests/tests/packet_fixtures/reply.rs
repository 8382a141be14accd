//! The IPv4 return path: a server's packets are SNATed back to the VIP with no per-flow state;
//! a server port that is no resource's, and packets to the gateway itself, are passed.

use ftn_common::GlobalCounter;
use ftn_tests::frames::{frame, tcp, udp, ACK, CM, G0, G1, L4, PM, SYN, XDP_PASS, XDP_REDIRECT};

use super::{case, Addrs, Case, Ingress, PL};

/// Cases 9-12.
pub fn cases(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        case(
            "v4 SYN-ACK from the primary is SNATed back to the VIP",
            Fx1,
            frame(
                PM,
                G1,
                a.p4,
                a.c4,
                64,
                tcp(80, 40000, 5000, 101, SYN | ACK),
                b"",
            ),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip4,
                a.c4,
                63,
                tcp(80, 40000, 5000, 101, SYN | ACK),
                b"",
            )),
            G::Redirect,
        ),
        case(
            "v4 UDP reply from the primary is SNATed",
            Fx1,
            frame(PM, G1, a.p4, a.c4, 64, udp(53, 50000), PL),
            XDP_REDIRECT,
            Some(frame(G0, CM, a.vip4, a.c4, 63, udp(53, 50000), PL)),
            G::Redirect,
        ),
        case(
            "v4 ICMP echo reply from the primary is SNATed",
            Fx1,
            frame(PM, G1, a.p4, a.c4, 64, L4::EchoRep { id: 7, seq: 1 }, PL),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip4,
                a.c4,
                63,
                L4::EchoRep { id: 7, seq: 1 },
                PL,
            )),
            G::Redirect,
        ),
        case(
            "v4 packet from a resource's server port without a flow here is SNATed all the same (stateless return: any gateway translates any reply)",
            Fx1,
            frame(PM, G1, a.p4, a.c4, 64, tcp(80, 41999, 1, 1, ACK), b""),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip4,
                a.c4,
                63,
                tcp(80, 41999, 1, 1, ACK),
                b"",
            )),
            G::Redirect,
        ),
        case(
            "a server's SYN-ACK to the gateway itself (its health check) is passed untouched, not SNATed",
            Fx1,
            frame(
                PM,
                G1,
                a.p4,
                "198.18.2.1".parse().unwrap(),
                64,
                tcp(80, 45000, 1, 2, SYN | ACK),
                b"",
            ),
            XDP_PASS,
            None,
            G::PassLocal,
        ),
        case(
            "v4 packet from a server port that is no resource's is passed untouched",
            Fx1,
            frame(PM, G1, a.p4, a.c4, 64, tcp(81, 41999, 1, 1, ACK), b""),
            XDP_PASS,
            None,
            G::PassNoMatch,
        ),
    ]
}
