//! The stateless return path: a server port that belongs to one VIP has a return entry
//! (written by the controller), so any gateway translates its replies, with or without a flow,
//! and a new flow to it records no per-flow reverse entry. Resource 10 (VIP port 9443) is used
//! by these cases only.

use ftn_common::GlobalCounter;
use ftn_controller::model::{NoServerAction, Protocol, ReturnMatch, ReturnTarget};
use ftn_tests::frames::{frame, tcp, ACK, CM, G0, G1, PM, SYN, XDP_REDIRECT};

use super::{case, m, with, Addrs, Case, Ingress, Op, P4, PL};

const PORT: u16 = 9443;
const RID: u32 = 10;
/// The client port of the flow created through this gateway.
pub const CLIENT_PORT: u16 = 42001;

pub fn cases(a: &Addrs) -> Vec<Case> {
    let ret = Op::Return(
        ReturnMatch {
            server: a.p4,
            protocol: Protocol::Tcp,
            port: PORT,
        },
        ReturnTarget {
            vip: a.vip4,
            resource_id: RID,
            server_id: P4,
        },
    );
    let res = Op::Resource(
        m(a.vip4, Protocol::Tcp, PORT),
        RID,
        Some(P4),
        NoServerAction::Drop,
    );
    vec![
        with(
            case(
                "a reply of a flow this gateway never saw (another gateway's) is SNATed through \
                 the server port's return entry",
                Ingress::Fx1,
                frame(PM, G1, a.p4, a.c4, 64, tcp(PORT, 42000, 7000, 300, ACK), PL),
                XDP_REDIRECT,
                Some(frame(
                    G0,
                    CM,
                    a.vip4,
                    a.c4,
                    63,
                    tcp(PORT, 42000, 7000, 300, ACK),
                    PL,
                )),
                GlobalCounter::Redirect,
            ),
            vec![ret, res],
        ),
        case(
            "a new flow to the stateless server port is DNATed (and records no reverse entry)",
            Ingress::Fx0,
            frame(
                CM,
                G0,
                a.c4,
                a.vip4,
                64,
                tcp(CLIENT_PORT, PORT, 1, 0, SYN),
                b"",
            ),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c4,
                a.p4,
                63,
                tcp(CLIENT_PORT, PORT, 1, 0, SYN),
                b"",
            )),
            GlobalCounter::Redirect,
        ),
        case(
            "its SYN-ACK is SNATed through the return entry",
            Ingress::Fx1,
            frame(
                PM,
                G1,
                a.p4,
                a.c4,
                64,
                tcp(PORT, CLIENT_PORT, 90, 2, SYN | ACK),
                b"",
            ),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip4,
                a.c4,
                63,
                tcp(PORT, CLIENT_PORT, 90, 2, SYN | ACK),
                b"",
            )),
            GlobalCounter::Redirect,
        ),
    ]
}
