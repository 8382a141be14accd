//! The one-lookup fast path (`ftn-ebpf/src/fast.rs`): an established flow's packet is forwarded
//! from its flow entry alone, with the bytes the slow path gives; whatever the fast path must
//! not decide (a handshake, a FIN, a server down, an entry of an older epoch, a removed
//! resource, a packet over the path MTU) takes the slow path, which each case proves with the
//! `fast_forward` counter left unmoved. Resource 14 (VIP port 9000 TCP, 9053 UDP, IPv4; VIP6
//! port 9000) is used by these cases only.

use ftn_common::GlobalCounter;
use ftn_controller::model::{NoServerAction, Protocol};
use ftn_tests::frames::{
    frame, ip_part, tcp, udp, ACK, BM, CM, FIN, G0, G1, L4, PM, PSH, SYN, XDP_PASS, XDP_REDIRECT,
    XDP_TX,
};

use super::{case, m, slow, with, Addrs, Case, Ingress, Op, B4, P4, P6, PL};

const PORT: u16 = 9000;
const UPORT: u16 = 9053;
const RID: u32 = 14;
const RID6: u32 = 15;
const SPORT: u16 = 43000;

/// Client -> VIP:PORT, out to the primary or the backup (IPv4).
fn to_server(name: &'static str, a: &Addrs, seq: u32, flags: u8, backup: bool) -> Case {
    let (mac, addr) = if backup { (BM, a.b4) } else { (PM, a.p4) };
    let pl: &[u8] = if flags & SYN != 0 { b"" } else { PL };
    let counter = if flags & SYN != 0 {
        GlobalCounter::Redirect
    } else {
        GlobalCounter::FastForward
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
            tcp(SPORT, PORT, seq, 1, flags),
            pl,
        ),
        XDP_REDIRECT,
        Some(frame(
            G1,
            mac,
            a.c4,
            addr,
            63,
            tcp(SPORT, PORT, seq, 1, flags),
            pl,
        )),
        counter,
    )
}

pub fn cases(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    let setup = vec![
        Op::Server(P4, a.p4, true),
        Op::Server(B4, a.b4, true),
        Op::Resource(
            m(a.vip4, Protocol::Tcp, PORT),
            RID,
            Some(P4),
            NoServerAction::Drop,
        ),
        Op::Resource(
            m(a.vip4, Protocol::Udp, UPORT),
            RID,
            Some(P4),
            NoServerAction::Drop,
        ),
        Op::Resource(
            m(a.vip6, Protocol::Tcp, PORT),
            RID6,
            Some(P6),
            NoServerAction::Drop,
        ),
    ];
    let promote = |name, seq| {
        let mut c = to_server(name, a, seq, ACK, false);
        c.counter = G::FlowsPromoted;
        slow(c)
    };
    let mut v = vec![
        with(
            slow(to_server("fast: a SYN takes the slow path (pending table)", a, 100, SYN, false)),
            setup,
        ),
        promote("fast: the handshake's ACK takes the slow path (promoted)", 101),
        to_server("fast: the first data segment of the established flow: fast path, same bytes", a, 101, ACK | PSH, false),
        to_server("fast: the next one too (next hop from the flow entry)", a, 110, ACK | PSH, false),
        with(
            {
                let mut c = to_server("fast: after a revalidation (new epoch) the slow path checks the flow once", a, 119, ACK | PSH, false);
                c.counter = G::Redirect;
                slow(c)
            },
            vec![Op::Revalidate],
        ),
        to_server("fast: then the fast path again", a, 128, ACK | PSH, false),
        with(
            {
                let mut c = to_server("fast: its server is down: the slow path moves it to the backup", a, 137, ACK | PSH, true);
                c.counter = G::FlowsMoved;
                slow(c)
            },
            vec![
                Op::Server(P4, a.p4, false),
                Op::Resource(m(a.vip4, Protocol::Tcp, PORT), RID, Some(B4), NoServerAction::Drop),
            ],
        ),
        to_server("fast: the moved flow on the fast path, to the backup", a, 146, ACK | PSH, true),
        with(
            to_server("fast: failback: the primary is up and current again; the flow stays on the backup (fast path)", a, 155, ACK | PSH, true),
            vec![
                Op::Server(P4, a.p4, true),
                Op::Resource(m(a.vip4, Protocol::Tcp, PORT), RID, Some(P4), NoServerAction::Drop),
            ],
        ),
        {
            let mut c = to_server("fast: a FIN takes the slow path (closing)", a, 164, ACK | FIN, true);
            c.counter = G::Redirect;
            slow(c)
        },
        {
            let mut c = to_server("fast: a closing flow's segment takes the slow path", a, 174, ACK, true);
            c.counter = G::Redirect;
            slow(c)
        },
    ];
    // UDP: first datagram pending, second promoted, third fast.
    let dgram = |name: &'static str, counter: G| {
        let c = case(
            name,
            Ingress::Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, udp(SPORT, UPORT), PL),
            XDP_REDIRECT,
            Some(frame(G1, PM, a.c4, a.p4, 63, udp(SPORT, UPORT), PL)),
            counter,
        );
        if counter == G::FastForward {
            c
        } else {
            slow(c)
        }
    };
    v.push(dgram("fast: UDP first datagram: slow path", G::Redirect));
    v.push(dgram(
        "fast: UDP second datagram: promoted",
        G::FlowsPromoted,
    ));
    v.push(dgram("fast: UDP third datagram: fast path", G::FastForward));
    // IPv6.
    let seg6 = |name: &'static str, seq: u32, flags: u8, counter: G| {
        let pl: &[u8] = if flags & SYN != 0 { b"" } else { PL };
        let c = case(
            name,
            Ingress::Fx0,
            frame(
                CM,
                G0,
                a.c6,
                a.vip6,
                64,
                tcp(SPORT, PORT, seq, 1, flags),
                pl,
            ),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c6,
                a.p6,
                63,
                tcp(SPORT, PORT, seq, 1, flags),
                pl,
            )),
            counter,
        );
        if counter == G::FastForward {
            c
        } else {
            slow(c)
        }
    };
    v.push(with(
        seg6("fast: v6 SYN: slow path", 500, SYN, G::Redirect),
        vec![Op::Server(P6, a.p6, true)],
    ));
    v.push(seg6("fast: v6 ACK: promoted", 501, ACK, G::FlowsPromoted));
    v.push(seg6(
        "fast: v6 data: fast path, same bytes",
        501,
        ACK | PSH,
        G::FastForward,
    ));
    // A TTL that expires here: the slow path (the kernel answers).
    {
        let input = frame(CM, G0, a.c6, a.vip6, 1, tcp(SPORT, PORT, 510, 1, ACK), PL);
        v.push(slow(case(
            "fast: v6 data with hop limit 1: slow path, passed for the kernel to answer",
            Ingress::Fx0,
            input,
            XDP_PASS,
            None,
            G::PassTtl,
        )));
    }
    // Over the path MTU: the slow path answers "packet too big" quoting the packet as sent.
    {
        let big = vec![0x5a; 1400];
        let input = frame(
            CM,
            G0,
            a.c6,
            a.vip6,
            64,
            tcp(SPORT, PORT, 510, 1, ACK),
            &big,
        );
        let answer = frame(
            G0,
            CM,
            a.vip6,
            a.c6,
            64,
            L4::Icmpv6Err(etherparse::Icmpv6Type::PacketTooBig { mtu: 1400 }),
            &ip_part(&input, 48),
        );
        v.push(slow(case(
            "fast: v6 segment over the path MTU (1400 on fx1): slow path, 'packet too big' from the VIP",
            Ingress::Fx0,
            input,
            XDP_TX,
            Some(answer),
            G::IcmpTooBig,
        )));
    }
    // The resource's key removed by a configuration change (and the flows revalidated): the
    // established flow's packet no longer matches anything.
    v.push(with(
        slow(case(
            "fast: the resource removed (revalidated): the established UDP flow's datagram is passed untouched",
            Ingress::Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, udp(SPORT, UPORT), PL),
            XDP_PASS,
            None,
            G::PassNoMatch,
        )),
        vec![Op::RemoveResource(m(a.vip4, Protocol::Udp, UPORT)), Op::Revalidate],
    ));
    v
}
