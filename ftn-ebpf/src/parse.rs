//! Header parsing: Ethernet, IPv4/IPv6, TCP/UDP/ICMP. Everything the program does not handle is
//! reported as the `GlobalCounter` that explains why the packet is passed.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use ftn_common::{
    GlobalCounter, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};
pub const ETH_LEN: usize = 14;
pub const IPV4_LEN: usize = 20;
pub const IPV6_LEN: usize = 40;
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

/// The context as it crosses a subprogram call: an integer, not a pointer. Given a pointer,
/// LLVM moves the loads of its fields into the caller (argument promotion) and hands the callee
/// `data_end` as an integer it zero-extends with shifts, which the verifier refuses ("pointer
/// arithmetic on pkt_end prohibited"). The register is the context pointer either way.
#[derive(Clone, Copy)]
pub struct Raw(usize);

impl Raw {
    #[inline(always)]
    pub fn of(ctx: &XdpContext) -> Raw {
        Raw(ctx.ctx as usize)
    }

    #[inline(always)]
    pub fn ctx(self) -> XdpContext {
        XdpContext::new(self.0 as *mut aya_ebpf::bindings::xdp_md)
    }
}

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

/// `N` bytes of packet at one offset, bounds-checked once: fields are read at constant offsets
/// from that one checked pointer. (Reading each field at `off + k` with its own check does not
/// work at a variable `off`: LLVM merges the checks and recomputes the field's pointer as
/// `(data + k) + off`, a pointer the verifier has not seen checked.)
#[derive(Clone, Copy)]
pub struct Header<const N: usize> {
    p: *const u8,
}

impl<const N: usize> Header<N> {
    #[inline(always)]
    pub fn at(ctx: &XdpContext, off: usize) -> Result<Self, ()> {
        Ok(Header {
            p: ptr_at::<[u8; N]>(ctx, off)?.cast(),
        })
    }

    /// The `T` at `k`; `k + size_of::<T>()` must be at most `N` (checked at compile time where
    /// `k` is a constant, as in every use).
    #[inline(always)]
    pub fn get<T: Copy>(&self, k: usize) -> T {
        debug_assert!(k + size_of::<T>() <= N);
        // SAFETY: `p` points at `N` checked bytes of packet and `k + size_of::<T>() <= N`; see
        // `read` for the alignment.
        unsafe { self.p.add(k).cast::<T>().read() }
    }
}

/// Reads a `T` at `off` with one load of `T`'s width.
///
/// Packet memory is not aligned (an IPv4 address sits at offset 26 of the frame), and the load is
/// the width of `T` anyway: the BPF verifier checks packet accesses for bounds, not alignment
/// (x86, arm64 and the other JITs with efficient unaligned access), and `read_unaligned` would
/// become byte loads, each spilled to its own 8-byte stack slot, on a target that has 512 bytes
/// of stack. Read whole fields (`u16`, `u32`, `[u32; 4]`), never a header struct of bytes.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Result<T, ()> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`; see above for the alignment.
    Ok(unsafe { p.read() })
}

/// Writes a `T` at `off` with one store of `T`'s width (see [`read`]).
#[inline(always)]
pub fn write<T: Copy>(ctx: &XdpContext, off: usize, v: T) -> Result<(), ()> {
    let p = ptr_at::<T>(ctx, off)?;
    // SAFETY: bounds checked by `ptr_at`; see [`read`] for the alignment.
    unsafe { p.write(v) };
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
    /// [`FRAG_NONE`], [`FRAG_FIRST`] (offset 0: the transport header is there) or
    /// [`FRAG_LATER`] (no transport header: ports 0).
    pub frag: u8,
}

pub const FRAG_NONE: u8 = 0;
pub const FRAG_FIRST: u8 = 1;
pub const FRAG_LATER: u8 = 2;

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

impl Pkt {
    /// All zero, for [`parse`] to fill.
    #[inline(always)]
    pub const fn empty() -> Pkt {
        Pkt {
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
            frame_len: 0,
            ip_len: 0,
            frag: FRAG_NONE,
        }
    }
}

/// Parses the headers into `pkt`: 0, or the `GlobalCounter` (never 0, which is `Packets`) that
/// says why the packet is left to the kernel. A subprogram of its own: the parser's temporaries live in its frame, which is gone
/// before the packet is handled.
#[inline(never)]
pub fn parse(raw: Raw, pkt: &mut Pkt) -> u32 {
    let ctx = &raw.ctx();
    match parse_checked(ctx, pkt) {
        Ok(()) => 0,
        Err(reason) => reason as u32,
    }
}

#[inline(always)]
fn parse_checked(ctx: &XdpContext, pkt: &mut Pkt) -> Result<(), GlobalCounter> {
    let ether_type = u16::from_be(read::<u16>(ctx, 12).map_err(|()| GlobalCounter::PassMalformed)?);
    pkt.frame_len = (ctx.data_end() - ctx.data()) as u32;
    match ether_type {
        ETH_P_IP => parse_v4(ctx, pkt)?,
        ETH_P_IPV6 => parse_v6(ctx, pkt)?,
        // ARP, VLAN tags, LLDP...: the kernel's business.
        _ => return Err(GlobalCounter::PassNotIp),
    }
    if pkt.frag == FRAG_LATER {
        return Ok(());
    }
    parse_l4(ctx, pkt)
}

/// A fragment's kind from its offset; only TCP and UDP fragments are handled (translated by
/// the server's address alone, see `main`), others are passed.
#[inline(always)]
fn fragment(proto: u8, offset: u16) -> Result<u8, GlobalCounter> {
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return Err(GlobalCounter::PassFragment);
    }
    Ok(if offset == 0 { FRAG_FIRST } else { FRAG_LATER })
}

#[inline(always)]
fn malformed<T>(r: Result<T, ()>) -> Result<T, GlobalCounter> {
    r.map_err(|()| GlobalCounter::PassMalformed)
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, pkt: &mut Pkt) -> Result<(), GlobalCounter> {
    const IP: usize = ETH_LEN;
    // The header's last byte first: one bounds check covers the fixed header.
    malformed(read::<u32>(ctx, IP + 16))?;
    let vihl = malformed(read::<u8>(ctx, IP))?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < IPV4_LEN {
        return Err(GlobalCounter::PassMalformed);
    }
    let tot_len = u16::from_be(malformed(read::<u16>(ctx, IP + 2))?);
    // The frame may carry Ethernet padding after the datagram, never less than the datagram.
    if usize::from(tot_len) < ihl || ETH_LEN + usize::from(tot_len) > pkt.frame_len as usize {
        return Err(GlobalCounter::PassMalformed);
    }
    pkt.family = FAMILY_V4;
    pkt.ttl = malformed(read::<u8>(ctx, IP + 8))?;
    pkt.proto = malformed(read::<u8>(ctx, IP + 9))?;
    // MF set or a fragment offset: a fragment.
    let frags = u16::from_be(malformed(read::<u16>(ctx, IP + 6))?);
    if frags & 0x3fff != 0 {
        pkt.frag = fragment(pkt.proto, frags & 0x1fff)?;
    }
    pkt.l4_off = ETH_LEN + ihl;
    pkt.src = [malformed(read::<u32>(ctx, IP + 12))?, 0, 0, 0];
    pkt.dst = [malformed(read::<u32>(ctx, IP + 16))?, 0, 0, 0];
    pkt.ip_len = tot_len;
    Ok(())
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, pkt: &mut Pkt) -> Result<(), GlobalCounter> {
    const IP: usize = ETH_LEN;
    malformed(read::<[u32; 4]>(ctx, IP + 24))?;
    if malformed(read::<u8>(ctx, IP))? >> 4 != 6 {
        return Err(GlobalCounter::PassMalformed);
    }
    let payload_len = u16::from_be(malformed(read::<u16>(ctx, IP + 4))?);
    // payload_len 0 is a jumbogram (hop-by-hop option): not ours either way.
    if payload_len == 0 || ETH_LEN + IPV6_LEN + usize::from(payload_len) > pkt.frame_len as usize {
        return Err(GlobalCounter::PassMalformed);
    }
    let mut next_hdr = malformed(read::<u8>(ctx, IP + 6))?;
    pkt.l4_off = ETH_LEN + IPV6_LEN;
    if next_hdr == 44 {
        // Fragment header: next header, reserved, offset (13 bits) + flags, identification.
        let h = malformed(Header::<8>::at(ctx, ETH_LEN + IPV6_LEN))?;
        next_hdr = h.get::<u8>(0);
        pkt.frag = fragment(next_hdr, u16::from_be(h.get::<u16>(2)) >> 3)?;
        pkt.l4_off += 8;
    }
    match next_hdr {
        PROTO_TCP | PROTO_UDP | PROTO_ICMPV6 => {}
        // Hop-by-hop, routing, destination options, AH, ESP, mobility, HIP, shim6: not parsed.
        0 | 43 | 60 | 51 | 50 | 135 | 139 | 140 => return Err(GlobalCounter::PassIpv6Ext),
        _ => return Err(GlobalCounter::PassNoMatch),
    }
    pkt.family = FAMILY_V6;
    pkt.proto = next_hdr;
    pkt.ttl = malformed(read::<u8>(ctx, IP + 7))?;
    pkt.src = malformed(read::<[u32; 4]>(ctx, IP + 8))?;
    pkt.dst = malformed(read::<[u32; 4]>(ctx, IP + 24))?;
    pkt.ip_len = payload_len + IPV6_LEN as u16;
    Ok(())
}

#[inline(always)]
fn parse_l4(ctx: &XdpContext, pkt: &mut Pkt) -> Result<(), GlobalCounter> {
    let off = pkt.l4_off;
    let ip_end = ETH_LEN + usize::from(pkt.ip_len);
    match pkt.proto {
        PROTO_TCP => {
            let h = malformed(Header::<20>::at(ctx, off))?;
            let [doff, flags] = h.get::<u16>(12).to_ne_bytes();
            let doff = usize::from(doff >> 4) * 4;
            if doff < 20 || off + doff > ip_end {
                return Err(GlobalCounter::PassMalformed);
            }
            pkt.sport = h.get::<u16>(0);
            pkt.dport = h.get::<u16>(2);
            pkt.tcp_flags = flags;
        }
        PROTO_UDP => {
            if off + 8 > ip_end {
                return Err(GlobalCounter::PassMalformed);
            }
            let h = malformed(Header::<8>::at(ctx, off))?;
            pkt.sport = h.get::<u16>(0);
            pkt.dport = h.get::<u16>(2);
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            if (pkt.proto == PROTO_ICMP) == (pkt.family == FAMILY_V6) {
                // ICMPv4 in IPv6 or ICMPv6 in IPv4: nonsense, not ours.
                return Err(GlobalCounter::PassNoMatch);
            }
            if off + 8 > ip_end {
                return Err(GlobalCounter::PassMalformed);
            }
            let h = malformed(Header::<8>::at(ctx, off))?;
            pkt.icmp_type = h.get::<u8>(0);
            if pkt.is_echo_request() || pkt.is_echo_reply() {
                let id = h.get::<u16>(4);
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
