//! Path MTU: a packet larger than the egress path's MTU is answered with "fragmentation needed"
//! / "packet too big" quoting it as the client sent it (not dropped, not DNATed first), or, IPv4
//! without DF, rewritten and passed for the kernel to fragment. The lab routes M4 with `mtu lock
//! 1300` and M6 with `mtu lock 1280`; the first oversized packet finds no next-hop cache entry (the
//! FIB answers "fragmentation needed"), the one after a small packet hits the cache (its MTU).

use etherparse::{icmpv4::DestUnreachableHeader, Icmpv4Type, Icmpv6Type};
use ftn_common::GlobalCounter;
use ftn_tests::frames::{
    frame, ip_part, tcp, udp, ACK, CM, G0, G1, L4, SYN, XDP_PASS, XDP_REDIRECT, XDP_TX,
};

use super::{case, Addrs, Case, Ingress, MM4, MM6};

/// The path MTUs the lab's routes give M4 and M6.
pub const MTU4: u16 = 1300;
pub const MTU6: u16 = 1400;

/// `frame` with the IPv4 "don't fragment" bit cleared (header checksum fixed).
fn without_df(mut f: Vec<u8>) -> Vec<u8> {
    f[14 + 6] &= !0x40;
    f[14 + 10] = 0;
    f[14 + 11] = 0;
    let mut sum = 0u32;
    for i in (0..20).step_by(2) {
        sum += u32::from(u16::from_be_bytes([f[14 + i], f[14 + i + 1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    f[14 + 10..14 + 12].copy_from_slice(&c.to_be_bytes());
    f
}

fn too_big_v4(a: &Addrs, input: &[u8]) -> Vec<u8> {
    frame(
        G0,
        CM,
        a.vip4_m,
        a.c4,
        64,
        L4::Icmpv4Err(Icmpv4Type::DestinationUnreachable(
            DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: MTU4 },
        )),
        &ip_part(input, 28),
    )
}

pub fn cases(a: &Addrs) -> Vec<Case> {
    use GlobalCounter as G;
    use Ingress::*;
    let big = vec![0x5a; 1400];
    let big4 = frame(CM, G0, a.c4, a.vip4_m, 64, tcp(40400, 80, 1, 1, ACK), &big);
    let big4_again = frame(
        CM,
        G0,
        a.c4,
        a.vip4_m,
        64,
        tcp(40400, 80, 1401, 1, ACK),
        &big,
    );
    let udp4 = without_df(frame(CM, G0, a.c4, a.vip4_m, 64, udp(50400, 53), &big));
    let big6 = frame(CM, G0, a.c6, a.vip6_m, 64, tcp(40401, 80, 1, 1, ACK), &big);
    vec![
        case(
            "v4 TCP segment over the path MTU with DF (no next hop cached): 'fragmentation needed' with the MTU, from the VIP, quoting it as sent",
            Fx0,
            big4.clone(),
            XDP_TX,
            Some(too_big_v4(a, &big4)),
            G::IcmpTooBig,
        ),
        case(
            "a small segment of that flow is forwarded (and caches the next hop with its MTU)",
            Fx0,
            frame(CM, G0, a.c4, a.vip4_m, 64, tcp(40402, 80, 7, 0, SYN), b""),
            XDP_REDIRECT,
            Some(frame(G1, MM4, a.c4, a.m4, 63, tcp(40402, 80, 7, 0, SYN), b"")),
            G::Redirect,
        ),
        case(
            "v4 TCP segment over the path MTU, next hop cached: answered the same",
            Fx0,
            big4_again.clone(),
            XDP_TX,
            Some(too_big_v4(a, &big4_again)),
            G::IcmpTooBig,
        ),
        case(
            "v4 UDP datagram over the path MTU without DF: DNATed and passed for the kernel to fragment",
            Fx0,
            udp4,
            XDP_PASS,
            Some(without_df(frame(CM, G0, a.c4, a.m4, 64, udp(50400, 53), &big))),
            G::PassFragmentable,
        ),
        case(
            "v6 TCP segment over the path MTU: 'packet too big' with the MTU, from the VIP, quoting it as sent",
            Fx0,
            big6.clone(),
            XDP_TX,
            Some(frame(
                G0,
                CM,
                a.vip6_m,
                a.c6,
                64,
                L4::Icmpv6Err(Icmpv6Type::PacketTooBig {
                    mtu: u32::from(MTU6),
                }),
                &ip_part(&big6, 48),
            )),
            G::IcmpTooBig,
        ),
        case(
            "v6 small segment to the same VIP is forwarded",
            Fx0,
            frame(CM, G0, a.c6, a.vip6_m, 64, tcp(40403, 80, 7, 0, SYN), b""),
            XDP_REDIRECT,
            Some(frame(G1, MM6, a.c6, a.m6, 63, tcp(40403, 80, 7, 0, SYN), b"")),
            G::Redirect,
        ),
    ]
}
