//! Header parsing: Ethernet, IPv4/IPv6, TCP/UDP/ICMP. Everything the program does not handle is
//! reported as the `GlobalCounter` that explains why the packet is passed.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use ftn_common::{
    GlobalCounter, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
use network_types::{
    eth::EthHdr,
    ip::{Ipv4Hdr, Ipv6Hdr},
};

pub const ETH_LEN: usize = EthHdr::LEN;
pub const IPV4_LEN: usize = Ipv4Hdr::LEN;
pub const IPV6_LEN: usize = Ipv6Hdr::LEN;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Offset of the L4 checksum field in each transport header.
pub const TCP_CSUM_OFF: usize = 16;
pub const UDP_CSUM_OFF: usize = 6;
pub const ICMP_CSUM_OFF: usize = 2;

/// The one bounds-checked access to packet memory.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, off: usize) -> Result<*mut T, ()> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return Err(());
    }
    Ok((start + off) as *mut T)
}

/// Reads a `T` (unaligned) at `off`.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, ()> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`; packet memory may be unaligned.
    Ok(unsafe { p.read_unaligned() })
}

/// Writes a `T` (unaligned) at `off`.
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> Result<(), ()> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`; packet memory may be unaligned.
    unsafe { p.write_unaligned(v) };
    Ok(())
}

/// What the program needs to know about a packet it may handle.
#[derive(Clone, Copy)]
pub struct Pkt {
    pub family: u8,
    pub proto: u8,
    /// Offset of the transport header. IPv4 options are carried through untouched, so this is
    /// 14 + IHL * 4 (at most 74).
    pub l4_off: usize,
    /// Addresses in network order (`ftn_common` layout).
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Ports in network order; for ICMP echo both hold the identifier; 0 for ICMP errors.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub ttl: u8,
    /// Frame length (for byte counters and MTU checks).
    pub frame_len: u32,
    /// IP total length (IPv4) or header + payload length (IPv6).
    pub ip_len: u16,
}

impl Pkt {
    #[inline(always)]
    pub fn v6(&self) -> bool {
        self.family == FAMILY_V6
    }

    #[inline(always)]
    pub fn is_icmp(&self) -> bool {
        self.proto == PROTO_ICMP || self.proto == PROTO_ICMPV6
    }

    /// Destination unreachable / time exceeded / parameter problem (and packet too big in v6).
    #[inline(always)]
    pub fn is_icmp_error(&self) -> bool {
        match self.proto {
            PROTO_ICMP => matches!(self.icmp_type, 3 | 11 | 12),
            PROTO_ICMPV6 => matches!(self.icmp_type, 1..=4),
            _ => false,
        }
    }

    #[inline(always)]
    pub fn is_echo_request(&self) -> bool {
        (self.proto == PROTO_ICMP && self.icmp_type == 8)
            || (self.proto == PROTO_ICMPV6 && self.icmp_type == 128)
    }

    #[inline(always)]
    pub fn is_echo_reply(&self) -> bool {
        (self.proto == PROTO_ICMP && self.icmp_type == 0)
            || (self.proto == PROTO_ICMPV6 && self.icmp_type == 129)
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        self.l4_off
            + match self.proto {
                PROTO_TCP => TCP_CSUM_OFF,
                PROTO_UDP => UDP_CSUM_OFF,
                _ => ICMP_CSUM_OFF,
            }
    }
}

/// Parses the headers, or says (as a counter) why the packet is left to the kernel.
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Pkt, GlobalCounter> {
    let ether_type = u16::from_be(read::<u16>(ctx, 12).map_err(|()| GlobalCounter::PassMalformed)?);
    let frame_len = (ctx.data_end() - ctx.data()) as u32;
    let mut pkt = Pkt {
        family: 0,
        proto: 0,
        l4_off: 0,
        src: [0; 4],
        dst: [0; 4],
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        icmp_type: 0,
        ttl: 0,
        frame_len,
        ip_len: 0,
    };
    match ether_type {
        ETH_P_IP => parse_v4(ctx, &mut pkt)?,
        ETH_P_IPV6 => parse_v6(ctx, &mut pkt)?,
        // ARP, VLAN tags, LLDP...: the kernel's business.
        _ => return Err(GlobalCounter::PassNotIp),
    }
    parse_l4(ctx, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, pkt: &mut Pkt) -> Result<(), GlobalCounter> {
    let ip: Ipv4Hdr = read(ctx, ETH_LEN).map_err(|()| GlobalCounter::PassMalformed)?;
    let ihl = usize::from(ip.vihl & 0x0f) * 4;
    if ip.vihl >> 4 != 4 || ihl < IPV4_LEN {
        return Err(GlobalCounter::PassMalformed);
    }
    let tot_len = u16::from_be_bytes(ip.tot_len);
    // The frame may carry Ethernet padding after the datagram, never less than the datagram.
    if usize::from(tot_len) < ihl || ETH_LEN + usize::from(tot_len) > pkt.frame_len as usize {
        return Err(GlobalCounter::PassMalformed);
    }
    // MF set or a fragment offset: no L4 header we could trust in every fragment.
    if u16::from_be_bytes(ip.frags) & 0x3fff != 0 {
        return Err(GlobalCounter::PassFragment);
    }
    pkt.family = FAMILY_V4;
    pkt.proto = ip.proto;
    pkt.l4_off = ETH_LEN + ihl;
    pkt.src = [u32::from_ne_bytes(ip.src_addr), 0, 0, 0];
    pkt.dst = [u32::from_ne_bytes(ip.dst_addr), 0, 0, 0];
    pkt.ttl = ip.ttl;
    pkt.ip_len = tot_len;
    Ok(())
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, pkt: &mut Pkt) -> Result<(), GlobalCounter> {
    let ip: Ipv6Hdr = read(ctx, ETH_LEN).map_err(|()| GlobalCounter::PassMalformed)?;
    if ip.vcf[0] >> 4 != 6 {
        return Err(GlobalCounter::PassMalformed);
    }
    let payload_len = u16::from_be_bytes(ip.payload_len);
    // payload_len 0 is a jumbogram (hop-by-hop option): not ours either way.
    if payload_len == 0 || ETH_LEN + IPV6_LEN + usize::from(payload_len) > pkt.frame_len as usize {
        return Err(GlobalCounter::PassMalformed);
    }
    match ip.next_hdr {
        PROTO_TCP | PROTO_UDP | PROTO_ICMPV6 => {}
        44 => return Err(GlobalCounter::PassFragment),
        // Hop-by-hop, routing, destination options, AH, ESP, mobility, HIP, shim6: not parsed.
        0 | 43 | 60 | 51 | 50 | 135 | 139 | 140 => return Err(GlobalCounter::PassIpv6Ext),
        _ => return Err(GlobalCounter::PassNoMatch),
    }
    pkt.family = FAMILY_V6;
    pkt.proto = ip.next_hdr;
    pkt.l4_off = ETH_LEN + IPV6_LEN;
    pkt.src = ftn_common::addr::v6(ip.src_addr);
    pkt.dst = ftn_common::addr::v6(ip.dst_addr);
    pkt.ttl = ip.hop_limit;
    pkt.ip_len = payload_len + IPV6_LEN as u16;
    Ok(())
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, pkt: &mut Pkt) -> Result<(), GlobalCounter> {
    let off = pkt.l4_off;
    let ip_end = ETH_LEN + usize::from(pkt.ip_len);
    match pkt.proto {
        PROTO_TCP => {
            let h: [u8; 20] = read(ctx, off).map_err(|()| GlobalCounter::PassMalformed)?;
            let doff = usize::from(h[12] >> 4) * 4;
            if doff < 20 || off + doff > ip_end {
                return Err(GlobalCounter::PassMalformed);
            }
            pkt.sport = u16::from_ne_bytes([h[0], h[1]]);
            pkt.dport = u16::from_ne_bytes([h[2], h[3]]);
            pkt.tcp_flags = h[13];
        }
        PROTO_UDP => {
            let h: [u8; 8] = read(ctx, off).map_err(|()| GlobalCounter::PassMalformed)?;
            if off + 8 > ip_end {
                return Err(GlobalCounter::PassMalformed);
            }
            pkt.sport = u16::from_ne_bytes([h[0], h[1]]);
            pkt.dport = u16::from_ne_bytes([h[2], h[3]]);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            if (pkt.proto == PROTO_ICMP) == (pkt.family == FAMILY_V6) {
                // ICMPv4 in IPv6 or ICMPv6 in IPv4: nonsense, not ours.
                return Err(GlobalCounter::PassNoMatch);
            }
            let h: [u8; 8] = read(ctx, off).map_err(|()| GlobalCounter::PassMalformed)?;
            if off + 8 > ip_end {
                return Err(GlobalCounter::PassMalformed);
            }
            pkt.icmp_type = h[0];
            if pkt.is_echo_request() || pkt.is_echo_reply() {
                let id = u16::from_ne_bytes([h[4], h[5]]);
                pkt.sport = id;
                pkt.dport = id;
            } else if !pkt.is_icmp_error() {
                // Neighbour discovery, router advertisements, timestamps...: the kernel's.
                return Err(GlobalCounter::PassNoMatch);
            }
        }
        _ => return Err(GlobalCounter::PassNoMatch),
    }
    Ok(())
}
