//! Flow stickiness, failover and failback: open flows stay on a healthy server, move off a
//! dead one, and end on RST or idle expiry.

use ftn_common::{DataplaneConfig, GlobalCounter};
use ftn_controller::model::{NoServerAction, Protocol};
use ftn_tests::frames::{frame, tcp, ACK, BM, CM, FIN, G0, G1, PM, RST, SYN, XDP_REDIRECT};

use super::{case, m, with, Addrs, Case, Ingress, Op, B4, P4, PL};

/// Cases 13-24.
pub fn cases(a: &Addrs) -> Vec<Case> {
    [failover, failback, reset_and_idle]
        .iter()
        .flat_map(|f| f(a))
        .collect()
}

/// The resource switches to the backup, then the primary is marked down.
fn failover(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        with(
            case(
                "after a switch to the backup, an open flow stays on the healthy primary",
                Fx0,
                frame(CM, G0, a.c4, a.vip4, 64, tcp(40000, 80, 110, 5001, ACK), PL),
                XDP_REDIRECT,
                Some(frame(
                    G1,
                    PM,
                    a.c4,
                    a.p4,
                    63,
                    tcp(40000, 80, 110, 5001, ACK),
                    PL,
                )),
                G::Redirect,
            ),
            vec![Op::Resource(
                m(a.vip4, Protocol::Tcp, 80),
                0,
                Some(B4),
                NoServerAction::Drop,
            )],
        ),
        case(
            "after the switch, a new flow goes to the backup",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, tcp(40010, 80, 1, 0, SYN), b""),
            XDP_REDIRECT,
            Some(frame(
                G1,
                BM,
                a.c4,
                a.b4,
                63,
                tcp(40010, 80, 1, 0, SYN),
                b"",
            )),
            G::Redirect,
        ),
        with(
            case(
                "primary marked down: its open flow moves at once to the current server",
                Fx0,
                frame(CM, G0, a.c4, a.vip4, 64, tcp(40000, 80, 120, 5001, ACK), PL),
                XDP_REDIRECT,
                Some(frame(
                    G1,
                    BM,
                    a.c4,
                    a.b4,
                    63,
                    tcp(40000, 80, 120, 5001, ACK),
                    PL,
                )),
                G::Redirect,
            ),
            vec![Op::Server(P4, a.p4, false)],
        ),
        case(
            "the dead primary's late packet is still SNATed (the return path keeps no per-flow state; the client's stack judges it)",
            Fx1,
            frame(PM, G1, a.p4, a.c4, 64, tcp(80, 40000, 5001, 121, ACK), b""),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip4,
                a.c4,
                63,
                tcp(80, 40000, 5001, 121, ACK),
                b"",
            )),
            G::Redirect,
        ),
        case(
            "the moved flow's replies from the backup are SNATed",
            Fx1,
            frame(BM, G1, a.b4, a.c4, 64, tcp(80, 40000, 9000, 121, ACK), b""),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip4,
                a.c4,
                63,
                tcp(80, 40000, 9000, 121, ACK),
                b"",
            )),
            G::Redirect,
        ),
    ]
}

/// The primary comes back; the flow left on the backup closes.
fn failback(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        with(
            case(
                "failback: the primary is back and current; the flow on the backup stays there",
                Fx0,
                frame(CM, G0, a.c4, a.vip4, 64, tcp(40010, 80, 2, 1, ACK), PL),
                XDP_REDIRECT,
                Some(frame(G1, BM, a.c4, a.b4, 63, tcp(40010, 80, 2, 1, ACK), PL)),
                G::Redirect,
            ),
            vec![
                Op::Server(P4, a.p4, true),
                Op::Resource(
                    m(a.vip4, Protocol::Tcp, 80),
                    0,
                    Some(P4),
                    NoServerAction::Drop,
                ),
            ],
        ),
        case(
            "failback: a new flow goes to the primary",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, tcp(40011, 80, 1, 0, SYN), b""),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c4,
                a.p4,
                63,
                tcp(40011, 80, 1, 0, SYN),
                b"",
            )),
            G::Redirect,
        ),
        case(
            "a client FIN is forwarded on its flow (which starts closing)",
            Fx0,
            frame(
                CM,
                G0,
                a.c4,
                a.vip4,
                64,
                tcp(40010, 80, 50, 1, FIN | ACK),
                b"",
            ),
            XDP_REDIRECT,
            Some(frame(
                G1,
                BM,
                a.c4,
                a.b4,
                63,
                tcp(40010, 80, 50, 1, FIN | ACK),
                b"",
            )),
            G::Redirect,
        ),
        case(
            "a new SYN on a closing 5-tuple starts a new flow on the current server",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, tcp(40010, 80, 900, 0, SYN), b""),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c4,
                a.p4,
                63,
                tcp(40010, 80, 900, 0, SYN),
                b"",
            )),
            G::Redirect,
        ),
    ]
}

/// A client RST ends its flow; an idle-expired flow is replaced.
fn reset_and_idle(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    vec![
        with(
            case(
                "a client RST is forwarded on its flow and ends it",
                Fx0,
                frame(CM, G0, a.c4, a.vip4, 64, tcp(40001, 8080, 2, 0, RST), b""),
                XDP_REDIRECT,
                Some(frame(
                    G1,
                    BM,
                    a.c4,
                    a.b4,
                    63,
                    tcp(40001, 8080, 2, 0, RST),
                    b"",
                )),
                G::Redirect,
            ),
            vec![Op::Resource(
                m(a.vip4, Protocol::Tcp, 8080),
                2,
                Some(P4),
                NoServerAction::Drop,
            )],
        ),
        case(
            "after the RST the next packet of that 5-tuple is a new flow on the current server",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, tcp(40001, 8080, 3, 0, SYN), b""),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c4,
                a.p4,
                63,
                tcp(40001, 8080, 3, 0, SYN),
                b"",
            )),
            G::Redirect,
        ),
        with(
            case(
                "an idle-expired flow on the backup is replaced by a new one on the current server",
                Fx0,
                frame(CM, G0, a.c4, a.vip4, 64, tcp(40020, 80, 7, 7, ACK), b""),
                XDP_REDIRECT,
                Some(frame(
                    G1,
                    PM,
                    a.c4,
                    a.p4,
                    63,
                    tcp(40020, 80, 7, 7, ACK),
                    b"",
                )),
                G::Redirect,
            ),
            vec![
                // Idle limit 1 s for this case only; the flow was last seen at boot + 1 ns.
                Op::Config(DataplaneConfig {
                    tcp_idle_ns: 1_000_000_000,
                    ..DataplaneConfig::default()
                }),
                Op::AgedFlow {
                    client: a.c4,
                    vip: a.vip4,
                    sport: 40020,
                    dport: 80,
                    server: B4,
                    resource: 0,
                },
            ],
        ),
    ]
}
