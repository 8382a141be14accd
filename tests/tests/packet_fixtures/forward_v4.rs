//! The IPv4 forward path: client -> VIP is DNATed to the resource's server and redirected
//! (or sent back out of the ingress interface).

use ftn_common::GlobalCounter;
use ftn_tests::frames::{
    frame, tcp, tcp4_with_options, udp, ACK, BM, CM, G0, G1, L4, PM, PSH, SCM, SYN, XDP_REDIRECT,
    XDP_TX,
};

use super::{case, Addrs, Case, Ingress, PL};

/// Cases 1-8.
pub fn cases(a: &Addrs) -> Vec<Case> {
    [dnat, tx_and_options].iter().flat_map(|f| f(a)).collect()
}

/// TCP, UDP and ICMP DNATed by the exact-port and every-port resources.
fn dnat(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        case(
            "v4 TCP SYN to VIP:80 is DNATed to the primary and redirected to fx1",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, tcp(40000, 80, 100, 0, SYN), b""),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c4,
                a.p4,
                63,
                tcp(40000, 80, 100, 0, SYN),
                b"",
            )),
            G::Redirect,
        ),
        case(
            "v4 TCP data of the same flow follows the flow",
            Fx0,
            frame(
                CM,
                G0,
                a.c4,
                a.vip4,
                64,
                tcp(40000, 80, 101, 5001, ACK | PSH),
                PL,
            ),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c4,
                a.p4,
                63,
                tcp(40000, 80, 101, 5001, ACK | PSH),
                PL,
            )),
            G::Redirect,
        ),
        case(
            "v4 UDP to VIP:53 is DNATed with its checksum fixed",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, udp(50000, 53), PL),
            XDP_REDIRECT,
            Some(frame(G1, PM, a.c4, a.p4, 63, udp(50000, 53), PL)),
            G::Redirect,
        ),
        {
            let mut input = frame(CM, G0, a.c4, a.vip4, 64, udp(50001, 53), PL);
            input[40..42].copy_from_slice(&[0, 0]);
            let mut out = frame(G1, PM, a.c4, a.p4, 63, udp(50001, 53), PL);
            out[40..42].copy_from_slice(&[0, 0]);
            case(
                "v4 UDP without checksum (0) stays without checksum",
                Fx0,
                input,
                XDP_REDIRECT,
                Some(out),
                G::Redirect,
            )
        },
        case(
            "v4 TCP to another port hits that port's resource (on the backup)",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, tcp(40001, 8080, 1, 0, SYN), b""),
            XDP_REDIRECT,
            Some(frame(
                G1,
                BM,
                a.c4,
                a.b4,
                63,
                tcp(40001, 8080, 1, 0, SYN),
                b"",
            )),
            G::Redirect,
        ),
        case(
            "v4 ICMP echo request to the VIP is DNATed",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, L4::EchoReq { id: 7, seq: 1 }, PL),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c4,
                a.p4,
                63,
                L4::EchoReq { id: 7, seq: 1 },
                PL,
            )),
            G::Redirect,
        ),
    ]
}

/// A client on the server side (XDP_TX); IP options.
fn tx_and_options(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        case(
            "v4 client on the server side: DNAT and XDP_TX out of the ingress interface",
            Fx1,
            frame(SCM, G1, a.sc4, a.vip4, 64, tcp(40002, 80, 1, 0, SYN), b""),
            XDP_TX,
            Some(frame(
                G1,
                PM,
                a.sc4,
                a.p4,
                63,
                tcp(40002, 80, 1, 0, SYN),
                b"",
            )),
            G::Tx,
        ),
        case(
            "v4 with IP options: DNATed, options carried through",
            Fx0,
            tcp4_with_options(CM, G0, a.c4, a.vip4, 64, 40003, 80),
            XDP_REDIRECT,
            Some(tcp4_with_options(G1, PM, a.c4, a.p4, 63, 40003, 80)),
            G::Redirect,
        ),
    ]
}
