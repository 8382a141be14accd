//! Packet fixtures: every behaviour of the XDP program, byte for byte, through
//! `BPF_PROG_TEST_RUN`.
//!
//! The program runs inside a private network namespace (so `bpf_fib_lookup` sees a known routing
//! table and static neighbours, never the machine's own), with its maps provisioned through the
//! controller's own `Dataplane` code. Each case gives the map changes it needs, the input frame,
//! the expected action, the expected output frame (built independently with etherparse, which
//! computes every checksum from scratch) and the global counter that must move. Cases run in
//! order and share the flow table, as packets of one gateway do. A mismatch fails the run and
//! prints both frames as hex.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::programs::{TestRun, TestRunOptions, Xdp};
use etherparse::{
    icmpv4::DestUnreachableHeader, icmpv6::DestUnreachableCode, Icmpv4Type, Icmpv6Type, IpHeaders,
    IpNumber, Ipv4Header, Ipv4Options, NetSlice, PacketBuilder, SlicedPacket, TransportSlice,
};
use ftn_common::{DataplaneConfig, FlowKey, FlowValue, GlobalCounter, FAMILY_V4, PROTO_TCP};
use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Dataplane, ResourceAssignment, ServerEntry,
};
use ftn_controller::model::{ip_words, NoServerAction, Protocol, ResourceMatch};
use ftn_tests::{hex, require_root, xdp_md, Netns};

const XDP_ABORTED: u32 = 0;
const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const XDP_REDIRECT: u32 = 4;

// MACs of the lab.
const CM: [u8; 6] = [2, 0, 0, 0, 1, 0x10]; // client C4/C6 (behind fx0)
const R0M: [u8; 6] = [2, 0, 0, 0, 1, 0xfe]; // router on the client side
const G0: [u8; 6] = [2, 0, 0, 0, 0, 1]; // gateway fx0 (client side)
const G1: [u8; 6] = [2, 0, 0, 0, 0, 2]; // gateway fx1 (server side)
const G2: [u8; 6] = [2, 0, 0, 0, 0, 3]; // gateway fx2 (not in the devmap)
const PM: [u8; 6] = [2, 0, 0, 0, 2, 0x10]; // primary P4/P6
const BM: [u8; 6] = [2, 0, 0, 0, 2, 0x11]; // backup B4/B6
const SCM: [u8; 6] = [2, 0, 0, 0, 2, 0x50]; // a client on the server side
const R1M: [u8; 6] = [2, 0, 0, 0, 2, 0xfe]; // router on the server side
const XM: [u8; 6] = [2, 0, 0, 0, 3, 0x10]; // server behind fx2

fn v4(s: &str) -> IpAddr {
    IpAddr::V4(s.parse::<Ipv4Addr>().unwrap())
}
fn v6(s: &str) -> IpAddr {
    IpAddr::V6(s.parse::<Ipv6Addr>().unwrap())
}

struct Addrs {
    c4: IpAddr,
    c6: IpAddr,
    sc4: IpAddr,
    p4: IpAddr,
    b4: IpAddr,
    u4: IpAddr,
    x4: IpAddr,
    r0_4: IpAddr,
    r1_4: IpAddr,
    p6: IpAddr,
    b6: IpAddr,
    r0_6: IpAddr,
    vip4: IpAddr,
    vip4_dead: IpAddr,
    vip4_rej: IpAddr,
    vip4_u: IpAddr,
    vip4_x: IpAddr,
    vip6: IpAddr,
    vip6_rej: IpAddr,
    other4: IpAddr,
}

fn addrs() -> Addrs {
    Addrs {
        c4: v4("198.18.1.10"),
        c6: v6("2001:2:1::10"),
        sc4: v4("198.18.2.50"),
        p4: v4("198.18.2.10"),
        b4: v4("198.18.2.11"),
        u4: v4("198.18.2.99"),
        x4: v4("198.18.3.10"),
        r0_4: v4("198.18.1.254"),
        r1_4: v4("198.18.2.254"),
        p6: v6("2001:2:2::10"),
        b6: v6("2001:2:2::11"),
        r0_6: v6("2001:2:1::fe"),
        vip4: v4("198.18.100.1"),
        vip4_dead: v4("198.18.100.2"),
        vip4_rej: v4("198.18.100.3"),
        vip4_u: v4("198.18.100.4"),
        vip4_x: v4("198.18.100.5"),
        vip6: v6("2001:2:100::1"),
        vip6_rej: v6("2001:2:100::3"),
        other4: v4("198.18.2.77"),
    }
}

// Server ids.
const P4: u32 = 0;
const B4: u32 = 1;
const P6: u32 = 2;
const B6: u32 = 3;
const U4: u32 = 4;
const X4: u32 = 5;

// ---------------------------------------------------------------------------------------------
// Frame construction (etherparse computes every checksum from scratch).

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const FIN: u8 = 0x01;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;

#[derive(Clone, Copy)]
enum L4 {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
        ack: u32,
        flags: u8,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    EchoReq {
        id: u16,
        seq: u16,
    },
    EchoRep {
        id: u16,
        seq: u16,
    },
}

fn tcp(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> L4 {
    L4::Tcp {
        sport,
        dport,
        seq,
        ack,
        flags,
    }
}
fn udp(sport: u16, dport: u16) -> L4 {
    L4::Udp { sport, dport }
}

/// Ethernet + IP + L4 + payload. Addresses must be of one family.
fn frame(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    l4: L4,
    payload: &[u8],
) -> Vec<u8> {
    let eth = PacketBuilder::ethernet2(smac, dmac);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), ttl),
        _ => panic!("mixed families"),
    };
    let v6 = src.is_ipv6();
    let mut out = Vec::new();
    match l4 {
        L4::Tcp {
            sport,
            dport,
            seq,
            ack,
            flags,
        } => {
            let mut b = ip.tcp(sport, dport, seq, 64240);
            if flags & SYN != 0 {
                b = b.syn();
            }
            if flags & ACK != 0 {
                b = b.ack(ack);
            }
            if flags & FIN != 0 {
                b = b.fin();
            }
            if flags & RST != 0 {
                b = b.rst();
            }
            if flags & PSH != 0 {
                b = b.psh();
            }
            b.write(&mut out, payload).unwrap();
        }
        L4::Udp { sport, dport } => ip.udp(sport, dport).write(&mut out, payload).unwrap(),
        L4::EchoReq { id, seq } if v6 => ip
            .icmpv6_echo_request(id, seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::EchoRep { id, seq } if v6 => ip
            .icmpv6_echo_reply(id, seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::EchoReq { id, seq } => ip
            .icmpv4_echo_request(id, seq)
            .write(&mut out, payload)
            .unwrap(),
        L4::EchoRep { id, seq } => ip
            .icmpv4_echo_reply(id, seq)
            .write(&mut out, payload)
            .unwrap(),
    }
    out
}

/// ICMPv4 error frame quoting `quote` (an IP packet, possibly truncated).
fn icmp4_err(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    t: Icmpv4Type,
    quote: &[u8],
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv4(s.octets(), d.octets(), ttl)
        .icmpv4(t)
        .write(&mut out, quote)
        .unwrap();
    out
}

fn icmp6_err(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    t: Icmpv6Type,
    quote: &[u8],
) -> Vec<u8> {
    let (IpAddr::V6(s), IpAddr::V6(d)) = (src, dst) else {
        panic!("v6 only")
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ipv6(s.octets(), d.octets(), ttl)
        .icmpv6(t)
        .write(&mut out, quote)
        .unwrap();
    out
}

/// The IP packet inside a frame, first `n` bytes (a quote in an ICMP error).
fn ip_part(frame: &[u8], n: usize) -> Vec<u8> {
    frame[14..].iter().take(n).copied().collect()
}

/// IPv4 TCP frame with header options (NOP NOP NOP EOL).
fn tcp4_with_options(
    smac: [u8; 6],
    dmac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    ttl: u8,
    sport: u16,
    dport: u16,
) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut ip = Ipv4Header::new(0, ttl, IpNumber::TCP, s.octets(), d.octets()).unwrap();
    ip.options = Ipv4Options::try_from(&[1u8, 1, 1, 0][..]).unwrap();
    let mut out = Vec::new();
    PacketBuilder::ethernet2(smac, dmac)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(sport, dport, 1000, 64240)
        .ack(5)
        .write(&mut out, b"options")
        .unwrap();
    out
}

/// IPv4 TCP frame that is a fragment (`more` = MF set, `offset` in 8-byte units).
fn tcp4_fragment(src: IpAddr, dst: IpAddr, more: bool, offset: u16) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) else {
        panic!("v4 only")
    };
    let mut ip = Ipv4Header::new(0, 64, IpNumber::TCP, s.octets(), d.octets()).unwrap();
    ip.dont_fragment = false;
    ip.more_fragments = more;
    ip.fragment_offset = etherparse::IpFragOffset::try_new(offset).unwrap();
    ip.identification = 77;
    let mut out = Vec::new();
    PacketBuilder::ethernet2(CM, G0)
        .ip(IpHeaders::Ipv4(ip, Default::default()))
        .tcp(40000, 80, 1, 64240)
        .write(&mut out, &[0u8; 64])
        .unwrap();
    out
}

/// Inserts an 8-byte IPv6 extension header (`kind` = 0 hop-by-hop, 44 fragment) after the IPv6
/// header of `frame`.
fn with_ipv6_ext(frame: &[u8], kind: u8) -> Vec<u8> {
    let mut f = frame.to_vec();
    let next = f[14 + 6];
    let ext: [u8; 8] = match kind {
        0 => [next, 0, 1, 4, 0, 0, 0, 0],  // hop-by-hop with PadN
        44 => [next, 0, 0, 1, 0, 0, 0, 9], // fragment, offset 0, M=1
        _ => panic!("unsupported"),
    };
    f.splice(54..54, ext);
    f[14 + 6] = kind;
    let pl = u16::from_be_bytes([f[18], f[19]]) + 8;
    f[18..20].copy_from_slice(&pl.to_be_bytes());
    f
}

// ---------------------------------------------------------------------------------------------
// Independent checksum verification (etherparse recomputes; compared with what is in the frame).

fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let Ok(p) = SlicedPacket::from_ethernet(frame) else {
        return Ok(()); // not parseable: nothing to verify (passed-through garbage)
    };
    let Some(net) = &p.net else { return Ok(()) };
    if let NetSlice::Ipv4(ip) = net {
        let h = ip.header().to_header();
        if h.header_checksum != h.calc_header_checksum() {
            return Err(format!(
                "IPv4 header checksum {:#06x}, expected {:#06x}",
                h.header_checksum,
                h.calc_header_checksum()
            ));
        }
    }
    let payload: Vec<u8> = match &p.transport {
        Some(TransportSlice::Tcp(t)) => t.payload().to_vec(),
        Some(TransportSlice::Udp(u)) => u.payload().to_vec(),
        _ => Vec::new(),
    };
    match (&p.net, &p.transport) {
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Tcp(t))) => {
            let h = t.to_header();
            let c = h
                .calc_checksum_ipv4(&ip.header().to_header(), &payload)
                .unwrap();
            if c != h.checksum {
                return Err(format!(
                    "TCP checksum {:#06x}, expected {c:#06x}",
                    h.checksum
                ));
            }
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Tcp(t))) => {
            let h = t.to_header();
            let c = h
                .calc_checksum_ipv6(&ip.header().to_header(), &payload)
                .unwrap();
            if c != h.checksum {
                return Err(format!(
                    "TCP checksum {:#06x}, expected {c:#06x}",
                    h.checksum
                ));
            }
        }
        (Some(NetSlice::Ipv4(ip)), Some(TransportSlice::Udp(u))) => {
            let h = u.to_header();
            if h.checksum != 0 {
                let c = h
                    .calc_checksum_ipv4(&ip.header().to_header(), &payload)
                    .unwrap();
                if c != h.checksum {
                    return Err(format!(
                        "UDP checksum {:#06x}, expected {c:#06x}",
                        h.checksum
                    ));
                }
            }
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Udp(u))) => {
            let h = u.to_header();
            let c = h
                .calc_checksum_ipv6(&ip.header().to_header(), &payload)
                .unwrap();
            if c != h.checksum {
                return Err(format!(
                    "UDP checksum {:#06x}, expected {c:#06x}",
                    h.checksum
                ));
            }
        }
        (Some(NetSlice::Ipv4(_)), Some(TransportSlice::Icmpv4(i))) => {
            let h = i.header();
            let c = h.icmp_type.calc_checksum(i.payload());
            if c != h.checksum {
                return Err(format!(
                    "ICMPv4 checksum {:#06x}, expected {c:#06x}",
                    h.checksum
                ));
            }
        }
        (Some(NetSlice::Ipv6(ip)), Some(TransportSlice::Icmpv6(i))) => {
            let h = i.header();
            let ih = ip.header();
            let c = h
                .icmp_type
                .calc_checksum(ih.source(), ih.destination(), i.payload())
                .unwrap();
            if c != h.checksum {
                return Err(format!(
                    "ICMPv6 checksum {:#06x}, expected {c:#06x}",
                    h.checksum
                ));
            }
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cases.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Ingress {
    Fx0,
    Fx1,
}

#[derive(Clone)]
enum Op {
    Server(u32, IpAddr, bool),
    Resource(ResourceMatch, u32, Option<u32>, NoServerAction),
    Config(DataplaneConfig),
    /// Insert a flow entry of client -> VIP on `server`, last seen at time 1 ns (long idle).
    AgedFlow {
        client: IpAddr,
        vip: IpAddr,
        sport: u16,
        dport: u16,
        server: u32,
        resource: u32,
    },
}

struct Case {
    name: &'static str,
    setup: Vec<Op>,
    ingress: Ingress,
    input: Vec<u8>,
    action: u32,
    /// `None`: the output must equal the input.
    output: Option<Vec<u8>>,
    counter: GlobalCounter,
}

fn m(vip: IpAddr, protocol: Protocol, port: u16) -> ResourceMatch {
    ResourceMatch {
        vip,
        protocol,
        port,
    }
}

fn case(
    name: &'static str,
    ingress: Ingress,
    input: Vec<u8>,
    action: u32,
    output: Option<Vec<u8>>,
    counter: GlobalCounter,
) -> Case {
    Case {
        name,
        setup: Vec::new(),
        ingress,
        input,
        action,
        output,
        counter,
    }
}

fn with(mut c: Case, setup: Vec<Op>) -> Case {
    c.setup = setup;
    c
}

#[allow(clippy::too_many_lines)]
fn cases(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    let pl = b"hello ftn";
    let mut v = Vec::new();

    // --- IPv4 forward path --------------------------------------------------------------------
    v.push(case(
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
    ));
    v.push(case(
        "v4 TCP data of the same flow follows the flow",
        Fx0,
        frame(
            CM,
            G0,
            a.c4,
            a.vip4,
            64,
            tcp(40000, 80, 101, 5001, ACK | PSH),
            pl,
        ),
        XDP_REDIRECT,
        Some(frame(
            G1,
            PM,
            a.c4,
            a.p4,
            63,
            tcp(40000, 80, 101, 5001, ACK | PSH),
            pl,
        )),
        G::Redirect,
    ));
    v.push(case(
        "v4 UDP to VIP:53 is DNATed with its checksum fixed",
        Fx0,
        frame(CM, G0, a.c4, a.vip4, 64, udp(50000, 53), pl),
        XDP_REDIRECT,
        Some(frame(G1, PM, a.c4, a.p4, 63, udp(50000, 53), pl)),
        G::Redirect,
    ));
    {
        let mut input = frame(CM, G0, a.c4, a.vip4, 64, udp(50001, 53), pl);
        input[40..42].copy_from_slice(&[0, 0]);
        let mut out = frame(G1, PM, a.c4, a.p4, 63, udp(50001, 53), pl);
        out[40..42].copy_from_slice(&[0, 0]);
        v.push(case(
            "v4 UDP without checksum (0) stays without checksum",
            Fx0,
            input,
            XDP_REDIRECT,
            Some(out),
            G::Redirect,
        ));
    }
    v.push(case(
        "v4 TCP to another port hits the VIP's every-port resource (backup)",
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
    ));
    v.push(case(
        "v4 ICMP echo request to the VIP is DNATed",
        Fx0,
        frame(CM, G0, a.c4, a.vip4, 64, L4::EchoReq { id: 7, seq: 1 }, pl),
        XDP_REDIRECT,
        Some(frame(
            G1,
            PM,
            a.c4,
            a.p4,
            63,
            L4::EchoReq { id: 7, seq: 1 },
            pl,
        )),
        G::Redirect,
    ));
    v.push(case(
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
    ));
    v.push(case(
        "v4 with IP options: DNATed, options carried through",
        Fx0,
        tcp4_with_options(CM, G0, a.c4, a.vip4, 64, 40003, 80),
        XDP_REDIRECT,
        Some(tcp4_with_options(G1, PM, a.c4, a.p4, 63, 40003, 80)),
        G::Redirect,
    ));

    // --- IPv4 return path ---------------------------------------------------------------------
    v.push(case(
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
    ));
    v.push(case(
        "v4 UDP reply from the primary is SNATed",
        Fx1,
        frame(PM, G1, a.p4, a.c4, 64, udp(53, 50000), pl),
        XDP_REDIRECT,
        Some(frame(G0, CM, a.vip4, a.c4, 63, udp(53, 50000), pl)),
        G::Redirect,
    ));
    v.push(case(
        "v4 ICMP echo reply from the primary is SNATed",
        Fx1,
        frame(PM, G1, a.p4, a.c4, 64, L4::EchoRep { id: 7, seq: 1 }, pl),
        XDP_REDIRECT,
        Some(frame(
            G0,
            CM,
            a.vip4,
            a.c4,
            63,
            L4::EchoRep { id: 7, seq: 1 },
            pl,
        )),
        G::Redirect,
    ));
    v.push(case(
        "v4 packet from a server to a port without flow is passed untouched",
        Fx1,
        frame(PM, G1, a.p4, a.c4, 64, tcp(80, 41999, 1, 1, ACK), b""),
        XDP_PASS,
        None,
        G::PassNoMatch,
    ));

    // --- Flow stickiness, failover, failback ---------------------------------------------------
    v.push(with(
        case(
            "after a switch to the backup, an open flow stays on the healthy primary",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, tcp(40000, 80, 110, 5001, ACK), pl),
            XDP_REDIRECT,
            Some(frame(
                G1,
                PM,
                a.c4,
                a.p4,
                63,
                tcp(40000, 80, 110, 5001, ACK),
                pl,
            )),
            G::Redirect,
        ),
        vec![Op::Resource(
            m(a.vip4, Protocol::Tcp, 80),
            0,
            Some(B4),
            NoServerAction::Drop,
        )],
    ));
    v.push(case(
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
    ));
    v.push(with(
        case(
            "primary marked down: its open flow moves at once to the current server",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, tcp(40000, 80, 120, 5001, ACK), pl),
            XDP_REDIRECT,
            Some(frame(
                G1,
                BM,
                a.c4,
                a.b4,
                63,
                tcp(40000, 80, 120, 5001, ACK),
                pl,
            )),
            G::Redirect,
        ),
        vec![Op::Server(P4, a.p4, false)],
    ));
    v.push(case(
        "a moved flow's old reverse entry is gone: the dead primary's packet is not SNATed",
        Fx1,
        frame(PM, G1, a.p4, a.c4, 64, tcp(80, 40000, 5001, 121, ACK), b""),
        XDP_PASS,
        None,
        G::PassNoMatch,
    ));
    v.push(case(
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
    ));
    v.push(with(
        case(
            "failback: the primary is back and current; the flow on the backup stays there",
            Fx0,
            frame(CM, G0, a.c4, a.vip4, 64, tcp(40010, 80, 2, 1, ACK), pl),
            XDP_REDIRECT,
            Some(frame(G1, BM, a.c4, a.b4, 63, tcp(40010, 80, 2, 1, ACK), pl)),
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
    ));
    v.push(case(
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
    ));
    v.push(case(
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
    ));
    v.push(case(
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
    ));
    v.push(with(
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
            m(a.vip4, Protocol::Tcp, 0),
            2,
            Some(P4),
            NoServerAction::Drop,
        )],
    ));
    v.push(case(
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
    ));
    v.push(with(
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
    ));

    // --- No live server -----------------------------------------------------------------------
    v.push(with(
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
    ));
    v.push(case(
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
    ));
    v.push(case(
        "reject policy: a segment with ACK gets a RST with seq = its ack",
        Fx0,
        frame(
            CM,
            G0,
            a.c4,
            a.vip4_rej,
            64,
            tcp(40032, 443, 5, 777, ACK | PSH),
            pl,
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
    ));
    {
        let input = frame(CM, G0, a.c4, a.vip4_rej, 64, udp(50010, 53), pl);
        let out = icmp4_err(
            G0,
            CM,
            a.vip4_rej,
            a.c4,
            64,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
            &ip_part(&input, 28),
        );
        v.push(case(
            "reject policy: UDP gets ICMP port unreachable quoting header + 8 bytes",
            Fx0,
            input,
            XDP_TX,
            Some(out),
            G::RejectIcmp,
        ));
    }
    {
        let input = frame(
            CM,
            G0,
            a.c4,
            a.vip4_rej,
            64,
            L4::EchoReq { id: 9, seq: 3 },
            pl,
        );
        let out = icmp4_err(
            G0,
            CM,
            a.vip4_rej,
            a.c4,
            64,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Host),
            &ip_part(&input, 28),
        );
        v.push(case(
            "reject policy: echo request gets ICMP host unreachable",
            Fx0,
            input,
            XDP_TX,
            Some(out),
            G::RejectIcmp,
        ));
    }
    v.push(case(
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
    ));
    v.push(case(
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
    ));
    {
        let input = frame(CM, G0, a.c6, a.vip6_rej, 64, udp(50011, 53), pl);
        let out = icmp6_err(
            G0,
            CM,
            a.vip6_rej,
            a.c6,
            64,
            Icmpv6Type::DestinationUnreachable(DestUnreachableCode::Port),
            &ip_part(&input, 48),
        );
        v.push(case(
            "reject policy, IPv6: UDP gets ICMPv6 port unreachable",
            Fx0,
            input,
            XDP_TX,
            Some(out),
            G::RejectIcmp,
        ));
    }

    // --- IPv6 ---------------------------------------------------------------------------------
    v.push(case(
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
    ));
    v.push(case(
        "v6 UDP to VIP:53 is DNATed",
        Fx0,
        frame(CM, G0, a.c6, a.vip6, 64, udp(50100, 53), pl),
        XDP_REDIRECT,
        Some(frame(G1, PM, a.c6, a.p6, 63, udp(50100, 53), pl)),
        G::Redirect,
    ));
    v.push(case(
        "v6 ICMPv6 echo request is DNATed (pseudo-header checksum fixed)",
        Fx0,
        frame(CM, G0, a.c6, a.vip6, 64, L4::EchoReq { id: 11, seq: 1 }, pl),
        XDP_REDIRECT,
        Some(frame(
            G1,
            PM,
            a.c6,
            a.p6,
            63,
            L4::EchoReq { id: 11, seq: 1 },
            pl,
        )),
        G::Redirect,
    ));
    v.push(case(
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
    ));
    v.push(case(
        "v6 ICMPv6 echo reply is SNATed",
        Fx1,
        frame(PM, G1, a.p6, a.c6, 64, L4::EchoRep { id: 11, seq: 1 }, pl),
        XDP_REDIRECT,
        Some(frame(
            G0,
            CM,
            a.vip6,
            a.c6,
            63,
            L4::EchoRep { id: 11, seq: 1 },
            pl,
        )),
        G::Redirect,
    ));
    v.push(with(
        case(
            "v6 primary marked down: the open flow moves to the backup",
            Fx0,
            frame(CM, G0, a.c6, a.vip6, 64, tcp(40100, 80, 2, 78, ACK), pl),
            XDP_REDIRECT,
            Some(frame(
                G1,
                BM,
                a.c6,
                a.b6,
                63,
                tcp(40100, 80, 2, 78, ACK),
                pl,
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
    ));

    // --- ICMP errors about NATed flows ----------------------------------------------------------
    {
        // The gateway DNATed C4:50000 -> P4:53 (case 3). A router on the server side says
        // "fragmentation needed" to the client about that datagram.
        let quoted = frame(G1, PM, a.c4, a.p4, 63, udp(50000, 53), pl);
        let input = icmp4_err(
            R1M,
            G1,
            a.r1_4,
            a.c4,
            64,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1400,
            }),
            &ip_part(&quoted, 28),
        );
        let quoted_vip = frame(G1, PM, a.c4, a.vip4, 63, udp(50000, 53), pl);
        let out = icmp4_err(
            G0,
            CM,
            a.r1_4,
            a.c4,
            63,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1400,
            }),
            &ip_part(&quoted_vip, 28),
        );
        v.push(case(
            "v4 'fragmentation needed' from a router about a DNATed datagram: quoted dst -> VIP",
            Fx1,
            input,
            XDP_REDIRECT,
            Some(out),
            G::Redirect,
        ));
    }
    {
        // The whole quoted TCP header: the quoted TCP checksum is fixed too.
        let quoted = frame(G1, PM, a.c4, a.p4, 63, tcp(40011, 80, 1, 0, SYN), b"");
        let input = icmp4_err(
            PM,
            G1,
            a.p4,
            a.c4,
            64,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
            &ip_part(&quoted, 40),
        );
        let quoted_vip = frame(G1, PM, a.c4, a.vip4, 63, tcp(40011, 80, 1, 0, SYN), b"");
        let out = icmp4_err(
            G0,
            CM,
            a.vip4,
            a.c4,
            63,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
            &ip_part(&quoted_vip, 40),
        );
        v.push(case(
            "v4 ICMP error from the server itself: outer source and quoted dst -> VIP",
            Fx1,
            input,
            XDP_REDIRECT,
            Some(out),
            G::Redirect,
        ));
    }
    {
        // A router on the client side says "fragmentation needed" to the VIP about a reply the
        // gateway SNATed (VIP:53 -> C4:50000): it goes to the primary, about P4 -> C4.
        let quoted = frame(G0, CM, a.vip4, a.c4, 63, udp(53, 50000), pl);
        let input = icmp4_err(
            R0M,
            G0,
            a.r0_4,
            a.vip4,
            64,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1280,
            }),
            &ip_part(&quoted, 28),
        );
        let quoted_srv = frame(G0, CM, a.p4, a.c4, 63, udp(53, 50000), pl);
        let out = icmp4_err(
            G1,
            PM,
            a.r0_4,
            a.p4,
            63,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: 1280,
            }),
            &ip_part(&quoted_srv, 28),
        );
        v.push(case(
            "v4 'fragmentation needed' to the VIP about a SNATed reply goes to the server",
            Fx0,
            input,
            XDP_REDIRECT,
            Some(out),
            G::Redirect,
        ));
    }
    {
        // v6: the backup B6 says "packet too big" about C6:40100 -> B6:80 (flow moved above).
        let quoted = frame(G1, BM, a.c6, a.b6, 63, tcp(40100, 80, 2, 78, ACK), pl);
        let input = icmp6_err(
            BM,
            G1,
            a.b6,
            a.c6,
            64,
            Icmpv6Type::PacketTooBig { mtu: 1280 },
            &ip_part(&quoted, 60),
        );
        let quoted_vip = frame(G1, BM, a.c6, a.vip6, 63, tcp(40100, 80, 2, 78, ACK), pl);
        let out = icmp6_err(
            G0,
            CM,
            a.vip6,
            a.c6,
            63,
            Icmpv6Type::PacketTooBig { mtu: 1280 },
            &ip_part(&quoted_vip, 60),
        );
        v.push(case(
            "v6 'packet too big' from the server: outer source and quoted dst -> VIP",
            Fx1,
            input,
            XDP_REDIRECT,
            Some(out),
            G::Redirect,
        ));
    }
    {
        // v6: an error to the VIP about VIP:80 -> C6:40100 goes to the flow's server (B6).
        let quoted = frame(G0, CM, a.vip6, a.c6, 63, tcp(80, 40100, 3, 3, ACK), b"");
        let input = icmp6_err(
            R0M,
            G0,
            a.r0_6,
            a.vip6,
            64,
            Icmpv6Type::PacketTooBig { mtu: 1280 },
            &ip_part(&quoted, 60),
        );
        let quoted_srv = frame(G0, CM, a.b6, a.c6, 63, tcp(80, 40100, 3, 3, ACK), b"");
        let out = icmp6_err(
            G1,
            BM,
            a.r0_6,
            a.b6,
            63,
            Icmpv6Type::PacketTooBig { mtu: 1280 },
            &ip_part(&quoted_srv, 60),
        );
        v.push(case(
            "v6 'packet too big' to the VIP about a SNATed reply goes to the server",
            Fx0,
            input,
            XDP_REDIRECT,
            Some(out),
            G::Redirect,
        ));
    }
    {
        let quoted = frame(G1, PM, a.c4, a.p4, 63, udp(59999, 53), pl);
        let input = icmp4_err(
            PM,
            G1,
            a.p4,
            a.c4,
            64,
            Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
            &ip_part(&quoted, 28),
        );
        v.push(case(
            "ICMP error about an unknown flow is passed untouched",
            Fx1,
            input,
            XDP_PASS,
            None,
            G::PassIcmpUnmatched,
        ));
    }

    // --- Passed untouched -----------------------------------------------------------------------
    {
        let mut arp = vec![0xff; 6];
        arp.extend_from_slice(&CM);
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        arp.extend_from_slice(&CM);
        arp.extend_from_slice(&[198, 18, 1, 10, 0, 0, 0, 0, 0, 0, 198, 18, 1, 1]);
        v.push(case(
            "ARP is passed",
            Fx0,
            arp,
            XDP_PASS,
            None,
            G::PassNotIp,
        ));
    }
    {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(CM, G0)
            .single_vlan(etherparse::VlanId::try_new(10).unwrap())
            .ipv4([198, 18, 1, 10], [198, 18, 100, 1], 64)
            .tcp(40200, 80, 1, 100)
            .syn()
            .write(&mut f, b"")
            .unwrap();
        v.push(case(
            "VLAN-tagged frame to the VIP is passed (tags are not parsed)",
            Fx0,
            f,
            XDP_PASS,
            None,
            G::PassNotIp,
        ));
    }
    v.push(case(
        "IPv4 first fragment (MF) to the VIP is passed",
        Fx0,
        tcp4_fragment(a.c4, a.vip4, true, 0),
        XDP_PASS,
        None,
        G::PassFragment,
    ));
    v.push(case(
        "IPv4 non-first fragment to the VIP is passed",
        Fx0,
        tcp4_fragment(a.c4, a.vip4, false, 8),
        XDP_PASS,
        None,
        G::PassFragment,
    ));
    v.push(case(
        "IPv6 with a fragment header to the VIP is passed",
        Fx0,
        with_ipv6_ext(
            &frame(CM, G0, a.c6, a.vip6, 64, tcp(40201, 80, 1, 0, SYN), b""),
            44,
        ),
        XDP_PASS,
        None,
        G::PassFragment,
    ));
    v.push(case(
        "IPv6 with a hop-by-hop header to the VIP is passed",
        Fx0,
        with_ipv6_ext(
            &frame(CM, G0, a.c6, a.vip6, 64, tcp(40202, 80, 1, 0, SYN), b""),
            0,
        ),
        XDP_PASS,
        None,
        G::PassIpv6Ext,
    ));
    {
        let mut f = frame(CM, G0, a.c4, a.vip4, 64, tcp(40203, 80, 1, 0, SYN), b"");
        f.truncate(14 + 20 + 10);
        f[16..18].copy_from_slice(&30u16.to_be_bytes());
        v.push(case(
            "truncated TCP header is passed",
            Fx0,
            f,
            XDP_PASS,
            None,
            G::PassMalformed,
        ));
    }
    {
        // (The kernel itself refuses frames shorter than an Ethernet header before XDP.)
        let mut f = G0.to_vec();
        f.extend_from_slice(&CM);
        f.extend_from_slice(&[0x08, 0x00]);
        v.push(case(
            "Ethernet header announcing IPv4 with no IP header is passed",
            Fx0,
            f,
            XDP_PASS,
            None,
            G::PassMalformed,
        ));
    }
    {
        let mut f = frame(CM, G0, a.c4, a.vip4, 64, tcp(40204, 80, 1, 0, SYN), b"");
        f[16..18].copy_from_slice(&1500u16.to_be_bytes());
        v.push(case(
            "IPv4 total length beyond the frame is passed",
            Fx0,
            f,
            XDP_PASS,
            None,
            G::PassMalformed,
        ));
    }
    {
        let mut f = frame(CM, G0, a.c4, a.vip4, 64, tcp(40205, 80, 1, 0, SYN), b"");
        f[14] = 0x44; // IHL 4
        v.push(case(
            "IPv4 header length below 20 is passed",
            Fx0,
            f,
            XDP_PASS,
            None,
            G::PassMalformed,
        ));
    }
    v.push(case(
        "TTL 1 to the VIP is passed for the kernel to answer",
        Fx0,
        frame(CM, G0, a.c4, a.vip4, 1, tcp(40206, 80, 1, 0, SYN), b""),
        XDP_PASS,
        None,
        G::PassTtl,
    ));
    v.push(case(
        "a packet to a non-VIP address is routed by the kernel (passed)",
        Fx0,
        frame(CM, G0, a.c4, a.other4, 64, tcp(40207, 80, 1, 0, SYN), b""),
        XDP_PASS,
        None,
        G::PassNoMatch,
    ));
    v.push(case(
        "UDP to a VIP port without resource (and no every-port UDP entry) is passed",
        Fx0,
        frame(CM, G0, a.c4, a.vip4, 64, udp(50300, 9999), pl),
        XDP_PASS,
        None,
        G::PassNoMatch,
    ));
    {
        let mut f = Vec::new();
        let (IpAddr::V4(s), IpAddr::V4(d)) = (a.c4, a.vip4) else {
            unreachable!()
        };
        PacketBuilder::ethernet2(CM, G0)
            .ipv4(s.octets(), d.octets(), 64)
            .write(&mut f, IpNumber(47), &[0u8; 24])
            .unwrap();
        v.push(case(
            "GRE to the VIP is passed",
            Fx0,
            f,
            XDP_PASS,
            None,
            G::PassNoMatch,
        ));
    }
    {
        let mut f = Vec::new();
        let (IpAddr::V6(s), IpAddr::V6(d)) = (a.c6, a.vip6) else {
            unreachable!()
        };
        PacketBuilder::ethernet2(CM, G0)
            .ipv6(s.octets(), d.octets(), 255)
            .icmpv6(Icmpv6Type::Unknown {
                type_u8: 135,
                code_u8: 0,
                bytes5to8: [0; 4],
            })
            .write(&mut f, &[0u8; 16])
            .unwrap();
        v.push(case(
            "ICMPv6 neighbour solicitation to the VIP is passed",
            Fx0,
            f,
            XDP_PASS,
            None,
            G::PassNoMatch,
        ));
    }
    v.push(case(
        "server neighbour unresolved: DNATed packet passed (TTL, MACs unchanged)",
        Fx0,
        frame(CM, G0, a.c4, a.vip4_u, 64, tcp(40208, 80, 1, 0, SYN), b""),
        XDP_PASS,
        Some(frame(
            CM,
            G0,
            a.c4,
            a.u4,
            64,
            tcp(40208, 80, 1, 0, SYN),
            b"",
        )),
        G::PassNoNeigh,
    ));
    v.push(case(
        "egress interface not in the devmap: DNATed packet passed to the kernel",
        Fx0,
        frame(CM, G0, a.c4, a.vip4_x, 64, tcp(40209, 80, 1, 0, SYN), b""),
        XDP_PASS,
        Some(frame(
            CM,
            G0,
            a.c4,
            a.x4,
            64,
            tcp(40209, 80, 1, 0, SYN),
            b"",
        )),
        G::PassNotInDevmap,
    ));
    v
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

struct Lab {
    ns: Netns,
    fx0: u32,
    fx1: u32,
}

fn lab() -> Lab {
    let ns = Netns::new("ftfx");
    ns.exec(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    ns.exec(&["sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1"]);
    for (dev, m) in [("fx0", G0), ("fx1", G1), ("fx2", G2)] {
        ns.veth_with_mac(dev, m);
    }
    ns.ip(&["addr", "add", "198.18.1.1/24", "dev", "fx0"]);
    ns.ip(&["addr", "add", "2001:2:1::1/64", "dev", "fx0", "nodad"]);
    ns.ip(&["addr", "add", "198.18.2.1/24", "dev", "fx1"]);
    ns.ip(&["addr", "add", "2001:2:2::1/64", "dev", "fx1", "nodad"]);
    ns.ip(&["addr", "add", "198.18.3.1/24", "dev", "fx2"]);
    for (ip, m, dev) in [
        ("198.18.1.10", CM, "fx0"),
        ("198.18.1.254", R0M, "fx0"),
        ("2001:2:1::10", CM, "fx0"),
        ("2001:2:1::fe", R0M, "fx0"),
        ("198.18.2.10", PM, "fx1"),
        ("198.18.2.11", BM, "fx1"),
        ("198.18.2.50", SCM, "fx1"),
        ("198.18.2.254", R1M, "fx1"),
        ("2001:2:2::10", PM, "fx1"),
        ("2001:2:2::11", BM, "fx1"),
        ("198.18.3.10", XM, "fx2"),
    ] {
        ns.neigh_permanent(ip, m, dev);
    }
    let (fx0, fx1) = (ns.ifindex("fx0").unwrap(), ns.ifindex("fx1").unwrap());
    Lab { ns, fx0, fx1 }
}

fn apply(dp: &mut AyaDataplane, op: &Op) {
    match op {
        Op::Server(id, addr, up) => dp
            .set_server(
                *id,
                &ServerEntry {
                    addr: *addr,
                    up: *up,
                    generation: 1,
                },
            )
            .unwrap(),
        Op::Resource(mt, rid, server, act) => dp
            .set_resource(
                mt,
                &ResourceAssignment {
                    resource_id: *rid,
                    server: *server,
                    generation: 1,
                    on_no_server: *act,
                },
            )
            .unwrap(),
        Op::Config(c) => dp.set_config(c).unwrap(),
        Op::AgedFlow {
            client,
            vip,
            sport,
            dport,
            server,
            resource,
        } => {
            let key = FlowKey {
                client: ip_words(*client),
                vip: ip_words(*vip),
                client_port: sport.to_be(),
                vip_port: dport.to_be(),
                proto: PROTO_TCP,
                family: FAMILY_V4,
                _pad: [0; 2],
            };
            let value = FlowValue {
                last_seen_ns: 1,
                server_id: *server,
                resource_id: *resource,
                flags: 0,
                _pad: 0,
            };
            dp.insert_flow(&key, &value).unwrap();
        }
    }
}

fn provision(dp: &mut AyaDataplane, a: &Addrs) {
    use NoServerAction::*;
    use Protocol::*;
    for (id, addr) in [
        (P4, a.p4),
        (B4, a.b4),
        (P6, a.p6),
        (B6, a.b6),
        (U4, a.u4),
        (X4, a.x4),
    ] {
        apply(dp, &Op::Server(id, addr, true));
    }
    let res = [
        (m(a.vip4, Tcp, 80), 0, Some(P4), Drop),
        (m(a.vip4, Udp, 53), 1, Some(P4), Drop),
        (m(a.vip4, Tcp, 0), 2, Some(B4), Drop),
        (m(a.vip4, Icmp, 0), 3, Some(P4), Drop),
        (m(a.vip6, Tcp, 80), 4, Some(P6), Drop),
        (m(a.vip6, Udp, 53), 5, Some(P6), Drop),
        (m(a.vip6, Icmp, 0), 6, Some(P6), Drop),
        (m(a.vip4_dead, Tcp, 80), 7, None, Drop),
        (m(a.vip4_rej, Tcp, 0), 8, None, Reject),
        (m(a.vip4_rej, Udp, 0), 8, None, Reject),
        (m(a.vip4_rej, Icmp, 0), 8, None, Reject),
        (m(a.vip6_rej, Tcp, 0), 9, None, Reject),
        (m(a.vip6_rej, Udp, 0), 9, None, Reject),
        (m(a.vip4_u, Tcp, 80), 10, Some(U4), Drop),
        (m(a.vip4_x, Tcp, 80), 11, Some(X4), Drop),
    ];
    for (mt, rid, s, act) in res {
        apply(dp, &Op::Resource(mt, rid, s, act));
    }
}

fn run_prog(prog: &Xdp, ingress: u32, input: &[u8]) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; 4096];
    let ctx = xdp_md(ingress, input.len());
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(input);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    opts.repeat = 1;
    let r = prog.test_run(opts).expect("BPF_PROG_TEST_RUN");
    let n = r.data_size_out as usize;
    out.truncate(n);
    (r.return_value, out)
}

fn action_name(a: u32) -> &'static str {
    match a {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "?",
    }
}

#[test]
fn packet_fixtures() {
    require_root();
    let a = addrs();
    let lab = lab();
    let _inside = lab.ns.enter();
    let mut dp = AyaDataplane::load(&AyaOptions::default()).expect("load the XDP program");
    dp.add_egress("fx0").unwrap();
    dp.add_egress("fx1").unwrap();
    provision(&mut dp, &a);
    let cases = cases(&a);
    assert!(
        cases.len() >= 40,
        "the table must hold at least 40 cases, has {}",
        cases.len()
    );

    let mut failures = Vec::new();
    let mut counted: std::collections::HashMap<&'static str, u64> = Default::default();
    for (i, c) in cases.iter().enumerate() {
        for op in &c.setup {
            apply(&mut dp, op);
        }
        let before = dp.global_stats().unwrap();
        let ingress = match c.ingress {
            Ingress::Fx0 => lab.fx0,
            Ingress::Fx1 => lab.fx1,
        };
        let (action, out) = run_prog(dp.program_mut().unwrap(), ingress, &c.input);
        let after = dp.global_stats().unwrap();
        let expected = c.output.clone().unwrap_or_else(|| c.input.clone());
        let mut problems = Vec::new();
        if action != c.action {
            problems.push(format!(
                "action {} expected {}",
                action_name(action),
                action_name(c.action)
            ));
        }
        if out != expected {
            problems.push(format!(
                "output frame differs\n got ({} bytes):\n{} expected ({} bytes):\n{}",
                out.len(),
                hex(&out),
                expected.len(),
                hex(&expected)
            ));
        }
        if c.output.is_some() {
            if let Err(e) = verify_checksums(&out) {
                problems.push(format!("checksum check (etherparse): {e}"));
            }
        }
        let delta = |g: GlobalCounter| after[g as usize].1 - before[g as usize].1;
        if delta(GlobalCounter::Packets) != 1 {
            problems.push(format!(
                "packets counter moved by {}",
                delta(GlobalCounter::Packets)
            ));
        }
        if delta(c.counter) != 1 {
            let moved: Vec<String> = GlobalCounter::ALL
                .iter()
                .filter(|g| delta(**g) != 0)
                .map(|g| format!("{}+{}", g.name(), delta(*g)))
                .collect();
            problems.push(format!(
                "counter {} moved by {} (moved: {})",
                c.counter.name(),
                delta(c.counter),
                moved.join(", ")
            ));
        }
        *counted.entry(c.counter.name()).or_default() += 1;
        let status = if problems.is_empty() { "ok  " } else { "FAIL" };
        println!(
            "[{status}] {:2} {} -> {}",
            i + 1,
            c.name,
            action_name(action)
        );
        if !problems.is_empty() {
            failures.push(format!(
                "case {} '{}':\n  {}",
                i + 1,
                c.name,
                problems.join("\n  ")
            ));
        }
    }

    // Counters after the table: per resource and per server, as the cases imply.
    let web4 = dp.resource_stats(0).unwrap();
    let dead = dp.resource_stats(7).unwrap();
    let rej4 = dp.resource_stats(8).unwrap();
    let b4 = dp.server_stats(B4).unwrap();
    let p4 = dp.server_stats(P4).unwrap();
    let g = dp.global_stats().unwrap();
    println!("web4 {web4:?}\ndead4 {dead:?}\nrej4 {rej4:?}\nP4 {p4:?}\nB4 {b4:?}");
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(format!("counters: {what}"));
        }
    };
    check(
        dead.drop_no_server == 1,
        format!(
            "dead4 drop_no_server = {} (1 expected)",
            dead.drop_no_server
        ),
    );
    check(
        rej4.reject_no_server == 4 && rej4.drop_no_server == 1,
        format!(
            "rej4 reject/drop = {}/{} (4/1 expected)",
            rej4.reject_no_server, rej4.drop_no_server
        ),
    );
    check(
        web4.flows_moved == 1,
        format!("web4 flows_moved = {} (1 expected)", web4.flows_moved),
    );
    check(
        p4.flows_moved_away == 1,
        format!("P4 flows_moved_away = {} (1 expected)", p4.flows_moved_away),
    );
    check(
        web4.new_flows >= 6,
        format!("web4 new_flows = {} (>= 6 expected)", web4.new_flows),
    );
    check(
        web4.reply_packets >= 1 && b4.reply_packets >= 1,
        format!(
            "reply counters web4 {} B4 {}",
            web4.reply_packets, b4.reply_packets
        ),
    );
    check(
        p4.icmp_errors >= 2,
        format!("P4 icmp_errors = {} (>= 2 expected)", p4.icmp_errors),
    );
    check(
        g[GlobalCounter::FlowsReset as usize].1 == 1,
        format!("flows_reset = {}", g[GlobalCounter::FlowsReset as usize].1),
    );
    check(
        g[GlobalCounter::FlowsMoved as usize].1 == 2,
        format!(
            "flows_moved = {} (2 expected)",
            g[GlobalCounter::FlowsMoved as usize].1
        ),
    );
    check(
        g[GlobalCounter::IcmpErrorTranslated as usize].1 == 5,
        format!(
            "icmp_error_translated = {} (5 expected)",
            g[GlobalCounter::IcmpErrorTranslated as usize].1
        ),
    );

    // The flow table holds what the cases created: the RSTed flow is gone.
    let flows = dp.flows().unwrap();
    let rst_gone = !flows
        .iter()
        .any(|(k, v)| u16::from_be(k.client_port) == 40001 && v.server_id == B4);
    if !rst_gone {
        failures.push("the RSTed flow 40001 -> B4 is still in the flow table".into());
    }
    println!(
        "{} cases, {} flows in the table, counters by case: {counted:?}",
        cases.len(),
        flows.len()
    );
    drop(dp);
    assert!(
        failures.is_empty(),
        "{} failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Passive health: SYNs left unanswered and RSTs in a row are reported through the ring
/// buffer; any other answer from the server clears the record.
#[test]
fn passive_health_reports() {
    require_root();
    let a = addrs();
    let lab = lab();
    let _inside = lab.ns.enter();
    let mut dp = AyaDataplane::load(&AyaOptions::default()).expect("load the XDP program");
    dp.add_egress("fx0").unwrap();
    dp.add_egress("fx1").unwrap();
    provision(&mut dp, &a);
    dp.set_config(&DataplaneConfig {
        passive_window_ns: 20_000_000,
        passive_rearm_ns: 1_000,
        passive_min: 3,
        ..DataplaneConfig::default()
    })
    .unwrap();
    let mut ring = dp.take_events().expect("events ring");
    let drain = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>| {
        let mut v = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<ftn_common::PassiveEvent>());
            // SAFETY: the program writes whole PassiveEvents.
            v.push(unsafe {
                std::ptr::read_unaligned(item.as_ptr().cast::<ftn_common::PassiveEvent>())
            });
        }
        v
    };
    let syn = |port: u16| frame(CM, G0, a.c4, a.vip4, 64, tcp(port, 80, 1, 0, SYN), b"");
    let from_p4 =
        |port: u16, flags: u8| frame(PM, G1, a.p4, a.c4, 64, tcp(80, port, 9, 2, flags), b"");
    let prog_run = |dp: &mut AyaDataplane, ingress: u32, f: &[u8]| {
        let (action, _) = run_prog(dp.program_mut().unwrap(), ingress, f);
        assert_eq!(action, XDP_REDIRECT, "{}", hex(f));
    };

    // Three SYNs to P4 within the window: not reported yet (the oldest is too young).
    for p in 41000..41003 {
        prog_run(&mut dp, lab.fx0, &syn(p));
    }
    assert!(
        drain(&mut ring).is_empty(),
        "reported before the window passed"
    );
    assert_eq!(dp.passive_state(P4).unwrap().unanswered, 3);
    std::thread::sleep(std::time::Duration::from_millis(25));
    prog_run(&mut dp, lab.fx0, &syn(41003));
    let ev = drain(&mut ring);
    println!("after 4 unanswered SYNs over 25 ms: {ev:?}");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].server_id, ev[0].kind, ev[0].count),
        (P4, ftn_common::PASSIVE_UNANSWERED, 4)
    );
    assert!(ev[0].age_us >= 20_000, "{:?}", ev[0]);

    // A SYN-ACK from P4 clears the record.
    prog_run(&mut dp, lab.fx1, &from_p4(41000, SYN | ACK));
    let st = dp.passive_state(P4).unwrap();
    assert_eq!((st.unanswered, st.rsts), (0, 0), "{st:?}");

    // RSTs in a row: reported at the third.
    for p in 41001..41003 {
        prog_run(&mut dp, lab.fx1, &from_p4(p, RST | ACK));
    }
    assert_eq!(dp.passive_state(P4).unwrap().rsts, 2);
    assert!(drain(&mut ring).is_empty());
    // The program's clock is coarse (a few ms): let the re-arm time pass visibly.
    std::thread::sleep(std::time::Duration::from_millis(10));
    prog_run(&mut dp, lab.fx0, &syn(41010));
    prog_run(&mut dp, lab.fx1, &from_p4(41010, RST | ACK));
    let ev = drain(&mut ring);
    println!("after 3 RSTs in a row: {ev:?}");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].server_id, ev[0].kind, ev[0].count),
        (P4, ftn_common::PASSIVE_RST, 3)
    );

    // Off: nothing is recorded.
    dp.set_config(&DataplaneConfig {
        passive_min: ftn_common::PASSIVE_OFF,
        ..DataplaneConfig::default()
    })
    .unwrap();
    dp.set_server(
        P4,
        &ServerEntry {
            addr: a.p4,
            up: true,
            generation: 9,
        },
    )
    .unwrap();
    for p in 41020..41030 {
        prog_run(&mut dp, lab.fx0, &syn(p));
    }
    assert_eq!(
        dp.passive_state(P4).unwrap(),
        ftn_common::PassiveState::default()
    );
    assert!(drain(&mut ring).is_empty());
}
