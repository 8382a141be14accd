//! Fragments of a server's reply (a large UDP answer: DNS with EDNS, say) are SNATed to the VIP
//! by the server's (address, protocol) alone: the controller writes that entry (port 0) for a
//! server that serves one VIP on the protocol. The first fragment carries the UDP header, whose
//! checksum covers the whole datagram and so changes once, there; later fragments carry none.
//!
//! Fragments to a VIP go to its resource's current server when one resource alone has that VIP
//! and protocol (the controller's fragment entry, port 0, which follows the resource's first
//! port entry): stateless, the same for every fragment of a datagram, and after a failover to
//! the backup. A VIP with two resources on the protocol (vip4's tcp 80 and 8080) has no entry:
//! its fragments are passed (the `passed` cases).

use ftn_common::GlobalCounter;
use ftn_controller::model::{NoServerAction, Protocol};
use ftn_tests::frames::{frame, udp, BM, CM, G0, G1, PM, XDP_DROP, XDP_PASS, XDP_REDIRECT};

use super::{case, m, with, Addrs, Case, Ingress, Op, B4, P4};

/// IP payload bytes in the first fragment (a multiple of 8).
const SPLIT: usize = 48;

fn ipv4_checksum(h: &[u8]) -> u16 {
    let mut sum = 0u32;
    for i in (0..h.len()).step_by(2) {
        if i != 10 {
            sum += u32::from(u16::from_be_bytes([h[i], h[i + 1]]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The two IPv4 fragments of `full` (Ethernet + IPv4 without options + payload): the first
/// with `SPLIT` bytes of the IP payload and MF, the second with the rest at offset `SPLIT`.
fn fragments4(full: &[u8]) -> [Vec<u8>; 2] {
    let (eth, ip, payload) = (&full[..14], &full[14..34], &full[34..]);
    let part = |data: &[u8], frags: u16| {
        let mut h = ip.to_vec();
        h[2..4].copy_from_slice(&((20 + data.len()) as u16).to_be_bytes());
        h[4..6].copy_from_slice(&0x77u16.to_be_bytes());
        h[6..8].copy_from_slice(&frags.to_be_bytes());
        let c = ipv4_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        [eth, &h, data].concat()
    };
    [
        part(&payload[..SPLIT], 0x2000),
        part(&payload[SPLIT..], (SPLIT / 8) as u16),
    ]
}

/// The two IPv6 fragments of `full` (Ethernet + IPv6 + payload), with a fragment header.
fn fragments6(full: &[u8]) -> [Vec<u8>; 2] {
    let (eth, ip, payload) = (&full[..14], &full[14..54], &full[54..]);
    let next = ip[6];
    let part = |data: &[u8], offset_m: u16| {
        let mut h = ip.to_vec();
        h[4..6].copy_from_slice(&((8 + data.len()) as u16).to_be_bytes());
        h[6] = 44;
        let o = offset_m.to_be_bytes();
        let fh = [next, 0, o[0], o[1], 0, 0, 0, 0x77];
        [eth, &h, &fh, data].concat()
    };
    [
        part(&payload[..SPLIT], 1),
        part(&payload[SPLIT..], ((SPLIT / 8) as u16) << 3),
    ]
}

pub fn cases(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    let answer = [0x33u8; 100];
    let in4 = fragments4(&frame(PM, G1, a.p4, a.c4, 64, udp(53, 50000), &answer));
    let out4 = fragments4(&frame(G0, CM, a.vip4, a.c4, 63, udp(53, 50000), &answer));
    let in6 = fragments6(&frame(PM, G1, a.p6, a.c6, 64, udp(53, 50002), &answer));
    let out6 = fragments6(&frame(G0, CM, a.vip6, a.c6, 63, udp(53, 50002), &answer));
    let names = [
        "v4 server's fragmented UDP answer, first fragment: SNATed, UDP checksum fixed for the whole datagram",
        "v4 its later fragment (no UDP header): SNATed, IP header only",
        "v6 server's fragmented UDP answer, first fragment: SNATed, UDP checksum fixed",
        "v6 its later fragment: SNATed",
    ];
    let pairs = in4.into_iter().zip(out4).chain(in6.into_iter().zip(out6));
    let mut v: Vec<Case> = names
        .into_iter()
        .zip(pairs)
        .map(|(name, (input, out))| case(name, Fx1, input, XDP_REDIRECT, Some(out), G::Redirect))
        .collect();
    v.extend(to_vip(a));
    v
}

/// Fragments of a client's datagram to a VIP.
fn to_vip(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    use NoServerAction::*;
    use Protocol::*;
    let query = [0x44u8; 100];
    let dns4 = m(a.vip4, Udp, 53);
    let frag4 = m(a.vip4, Udp, 0);
    let in4 = fragments4(&frame(CM, G0, a.c4, a.vip4, 64, udp(50010, 53), &query));
    let to_p4 = fragments4(&frame(G1, PM, a.c4, a.p4, 63, udp(50010, 53), &query));
    let to_b4 = fragments4(&frame(G1, BM, a.c4, a.b4, 63, udp(50010, 53), &query));
    let in6 = fragments6(&frame(CM, G0, a.c6, a.vip6, 64, udp(50012, 53), &query));
    let to_p6 = fragments6(&frame(G1, PM, a.c6, a.p6, 63, udp(50012, 53), &query));
    let on_p4 = vec![
        Op::Resource(dns4, 1, Some(P4), Drop),
        Op::Fragments(frag4, 1, 53),
    ];
    let [f4a, f4b] = in4.clone();
    let [p4a, p4b] = to_p4;
    let [b4a, b4b] = to_b4;
    let [f6a, f6b] = in6;
    let [p6a, p6b] = to_p6;
    let rej = m(a.vip4_rej, Udp, 53);
    let rej_frag = m(a.vip4_rej, Udp, 0);
    let [rej_a, _] = fragments4(&frame(CM, G0, a.c4, a.vip4_rej, 64, udp(50014, 53), &query));
    vec![
        with(
            case(
                "v4 client's fragmented UDP query to the VIP, first fragment: DNATed to the resource's server, UDP checksum fixed for the whole datagram",
                Fx0,
                f4a.clone(),
                XDP_REDIRECT,
                Some(p4a),
                G::FragmentForward,
            ),
            on_p4.clone(),
        ),
        case(
            "v4 its later fragment (no UDP header): DNATed to the same server, IP header only",
            Fx0,
            f4b.clone(),
            XDP_REDIRECT,
            Some(p4b),
            G::FragmentForward,
        ),
        with(
            case(
                "v4 after a failover of the resource (its port entry on the backup): fragments follow it",
                Fx0,
                f4a,
                XDP_REDIRECT,
                Some(b4a),
                G::FragmentForward,
            ),
            vec![Op::Resource(dns4, 1, Some(B4), Drop)],
        ),
        case(
            "v4 later fragment after the failover: the backup too",
            Fx0,
            f4b,
            XDP_REDIRECT,
            Some(b4b),
            G::FragmentForward,
        ),
        with(
            case(
                "v6 client's fragmented UDP query to the VIP, first fragment: DNATed to the resource's server",
                Fx0,
                f6a,
                XDP_REDIRECT,
                Some(p6a),
                G::FragmentForward,
            ),
            vec![Op::Fragments(m(a.vip6, Udp, 0), 5, 53)],
        ),
        case(
            "v6 its later fragment: DNATed to the same server",
            Fx0,
            f6b,
            XDP_REDIRECT,
            Some(p6b),
            G::FragmentForward,
        ),
        with(
            case(
                "a UDP datagram to the VIP's port 0 does not match the fragment entry: passed",
                Fx0,
                frame(CM, G0, a.c4, a.vip4, 64, udp(50016, 0), &query),
                XDP_PASS,
                None,
                G::PassNoMatch,
            ),
            on_p4,
        ),
        with(
            case(
                "fragment to a resource without a live server: dropped, even with the reject policy (a later fragment has no header to answer)",
                Fx0,
                rej_a,
                XDP_DROP,
                None,
                G::DropNoServer,
            ),
            vec![
                Op::Resource(rej, 8, None, Reject),
                Op::Fragments(rej_frag, 8, 53),
            ],
        ),
    ]
}
