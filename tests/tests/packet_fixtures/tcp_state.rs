//! TCP flow state against what a client or an attacker can send: a new connection (SYN without
//! ACK) always goes to the resource's current server; an RST moves a flow to closing (its NAT
//! kept) instead of deleting it, and a client's RST outside the flow's sequence window changes
//! nothing. Resource 9 (VIP port 8443) is used by these cases only.

use ftn_common::GlobalCounter;
use ftn_controller::model::{NoServerAction, Protocol};
use ftn_tests::frames::{frame, tcp, ACK, BM, CM, G0, G1, PM, RST, SYN, XDP_REDIRECT};

use super::{case, m, with, Addrs, Case, Ingress, Op, B4, P4, PL};

/// The resource's VIP port in these cases.
const PORT: u16 = 8443;
/// Its resource id.
const RID: u32 = 9;
/// The client port of the flow that is failed over, failed back, reset.
pub const HELD: u16 = 41000;
/// The client port of the flow the server resets.
pub const SERVER_RESET: u16 = 41001;

/// A client -> VIP:8443 segment and what leaves towards `to` (P4 or B4).
fn forward(
    name: &'static str,
    a: &Addrs,
    sport: u16,
    (seq, ack, flags): (u32, u32, u8),
    to_backup: bool,
) -> Case {
    let (mac, addr) = if to_backup { (BM, a.b4) } else { (PM, a.p4) };
    let payload: &[u8] = if flags & ACK != 0 && flags & RST == 0 {
        PL
    } else {
        b""
    };
    case(
        name,
        Ingress::Fx0,
        frame(
            CM,
            G0,
            a.c4,
            a.vip4,
            64,
            tcp(sport, PORT, seq, ack, flags),
            payload,
        ),
        XDP_REDIRECT,
        Some(frame(
            G1,
            mac,
            a.c4,
            addr,
            63,
            tcp(sport, PORT, seq, ack, flags),
            payload,
        )),
        GlobalCounter::Redirect,
    )
}

/// The resource now on `server` (P4 or B4).
fn resource_on(a: &Addrs, server: u32) -> Op {
    Op::Resource(
        m(a.vip4, Protocol::Tcp, PORT),
        RID,
        Some(server),
        NoServerAction::Drop,
    )
}

pub fn cases(a: &Addrs) -> Vec<Case> {
    vec![
        with(
            forward(
                "a SYN to VIP:8443 starts a flow on the primary",
                a,
                HELD,
                (100, 0, SYN),
                false,
            ),
            vec![
                Op::Server(P4, a.p4, true),
                Op::Server(B4, a.b4, true),
                resource_on(a, P4),
            ],
        ),
        with(
            forward(
                "the resource moved to the backup: a new SYN on that 5-tuple (the client gave up \
                 on the first) goes to the backup, not to the flow's primary",
                a,
                HELD,
                (5000, 0, SYN),
                true,
            ),
            vec![resource_on(a, B4)],
        ),
        forward("its ACK stays on the backup", a, HELD, (5001, 1, ACK), true),
        with(
            forward(
                "failback: the resource is on the primary again; the established flow stays on \
                 the backup",
                a,
                HELD,
                (5010, 1, ACK),
                true,
            ),
            vec![resource_on(a, P4)],
        ),
        forward(
            "a blind RST far outside the flow's sequence window is forwarded to its server and \
             changes nothing",
            a,
            HELD,
            (5010 + (1 << 31), 0, RST),
            true,
        ),
        forward(
            "after the blind RST the flow is still on the backup (not deleted, not re-pinned)",
            a,
            HELD,
            (5020, 1, ACK),
            true,
        ),
        forward(
            "the client's own RST (in its window) is forwarded and moves the flow to closing",
            a,
            HELD,
            (5030, 0, RST),
            true,
        ),
        case(
            "after the RST the backup's last segment is still SNATed to the VIP (NAT kept)",
            Ingress::Fx1,
            frame(
                BM,
                G1,
                a.b4,
                a.c4,
                64,
                tcp(PORT, HELD, 9000, 5030, ACK),
                b"",
            ),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip4,
                a.c4,
                63,
                tcp(PORT, HELD, 9000, 5030, ACK),
                b"",
            )),
            GlobalCounter::Redirect,
        ),
        forward(
            "a client segment after its RST still reaches the backup while the flow closes",
            a,
            HELD,
            (5030, 1, ACK),
            true,
        ),
        forward(
            "a new flow on the primary",
            a,
            SERVER_RESET,
            (1, 0, SYN),
            false,
        ),
        case(
            "the primary's RST is SNATed to the VIP (the reply path leaves the flow as it is)",
            Ingress::Fx1,
            frame(
                PM,
                G1,
                a.p4,
                a.c4,
                64,
                tcp(PORT, SERVER_RESET, 700, 2, RST | ACK),
                b"",
            ),
            XDP_REDIRECT,
            Some(frame(
                G0,
                CM,
                a.vip4,
                a.c4,
                63,
                tcp(PORT, SERVER_RESET, 700, 2, RST | ACK),
                b"",
            )),
            GlobalCounter::Redirect,
        ),
    ]
}
