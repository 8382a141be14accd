//! Fragments of a server's reply (a large UDP answer: DNS with EDNS, say) are SNATed to the VIP
//! by the server's (address, protocol) alone: the controller writes that entry (port 0) for a
//! server that serves one VIP on the protocol. The first fragment carries the UDP header, whose
//! checksum covers the whole datagram and so changes once, there; later fragments carry none.
//! Fragments to a VIP are still passed (the `passed` cases).

use ftn_common::GlobalCounter;
use ftn_tests::frames::{frame, udp, CM, G0, G1, PM, XDP_REDIRECT};

use super::{case, Addrs, Case, Ingress};

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
    names
        .into_iter()
        .zip(pairs)
        .map(|(name, (input, out))| case(name, Fx1, input, XDP_REDIRECT, Some(out), G::Redirect))
        .collect()
}
