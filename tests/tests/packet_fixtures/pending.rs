//! The pending table: a flow's first packet (a TCP SYN, a first datagram) puts it there, its
//! second (the handshake's ACK) moves it to the flow table; a flood of first packets fills only
//! the pending table. A SYN never touches the flow table: a blind SYN on an established flow
//! cannot move it, and a new handshake on a closing flow's 5-tuple wins over the old flow when
//! its ACK completes that handshake (its sequence number follows the pending SYN's).

use ftn_common::GlobalCounter;
use ftn_controller::model::{NoServerAction, Protocol};
use ftn_tests::frames::{frame, tcp, udp, ACK, BM, CM, FIN, G0, G1, PM, SYN, XDP_REDIRECT};

use super::{case, m, with, Addrs, Case, Ingress, Op, B4, P4, PL};

/// Resource id of the pending cases' resource (VIP `vip4_p`, TCP 81 and UDP 54).
const RID: u32 = 14;

fn on(a: &Addrs, server: u32) -> Vec<Op> {
    [(Protocol::Tcp, 81), (Protocol::Udp, 54)]
        .into_iter()
        .map(|(p, port)| {
            Op::Resource(
                m(a.vip4_p, p, port),
                RID,
                Some(server),
                NoServerAction::Drop,
            )
        })
        .collect()
}

/// A client segment on port 40500 to VIP:81 and what leaves for `server` (P4 or B4).
fn seg(
    a: &Addrs,
    name: &'static str,
    to: u32,
    seq: u32,
    ack: u32,
    flags: u8,
    counter: GlobalCounter,
) -> Case {
    let (mac, addr) = if to == P4 { (PM, a.p4) } else { (BM, a.b4) };
    case(
        name,
        Ingress::Fx0,
        frame(
            CM,
            G0,
            a.c4,
            a.vip4_p,
            64,
            tcp(40500, 81, seq, ack, flags),
            b"",
        ),
        XDP_REDIRECT,
        Some(frame(
            G1,
            mac,
            a.c4,
            addr,
            63,
            tcp(40500, 81, seq, ack, flags),
            b"",
        )),
        counter,
    )
}

fn datagram(a: &Addrs, name: &'static str, counter: GlobalCounter) -> Case {
    case(
        name,
        Ingress::Fx0,
        frame(CM, G0, a.c4, a.vip4_p, 64, udp(50500, 54), PL),
        XDP_REDIRECT,
        Some(frame(G1, PM, a.c4, a.p4, 63, udp(50500, 54), PL)),
        counter,
    )
}

pub fn cases(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    vec![
        with(
            seg(
                a,
                "a SYN goes to the current server, into the pending table",
                P4,
                100,
                0,
                SYN,
                G::Redirect,
            ),
            on(a, P4),
        ),
        seg(
            a,
            "its retransmission goes the same way (the same pending flow)",
            P4,
            100,
            0,
            SYN,
            G::Redirect,
        ),
        seg(
            a,
            "the handshake's ACK moves the flow to the flow table",
            P4,
            101,
            7001,
            ACK,
            G::FlowsPromoted,
        ),
        datagram(a, "a UDP flow's first datagram is pending", G::Redirect),
        datagram(a, "its second moves it to the flow table", G::FlowsPromoted),
        with(
            seg(
                a,
                "a blind SYN on the established flow goes to the resource's new current server",
                B4,
                9_000_000,
                0,
                SYN,
                G::Redirect,
            ),
            on(a, B4),
        ),
        seg(
            a,
            "and leaves the flow where it is: the client's next segment still reaches the primary",
            P4,
            102,
            7001,
            ACK,
            G::Redirect,
        ),
        seg(
            a,
            "the client's FIN moves the flow to closing (still on the primary)",
            P4,
            103,
            7001,
            FIN | ACK,
            G::Redirect,
        ),
        seg(
            a,
            "its last ACK still reaches the primary: the blind SYN's pending entry completes no handshake",
            P4,
            104,
            7002,
            ACK,
            G::Redirect,
        ),
        seg(
            a,
            "a new handshake on that 5-tuple goes to the current server",
            B4,
            200,
            0,
            SYN,
            G::Redirect,
        ),
        seg(
            a,
            "and its ACK wins over the closing flow: the new connection stays on the backup",
            B4,
            201,
            8001,
            ACK,
            G::FlowsPromoted,
        ),
    ]
}
