//! The fast path: a client's packet of an established flow, with one hash lookup.
//!
//! The flow entry holds everything the rewrite needs: the server (its address and state read
//! from the `FTN_SERVERS` array), and the next hop to it (egress interface, MACs, path MTU)
//! copied from the next-hop cache. The resource lookup is skipped: the entry's `epoch` says the
//! slow path checked it against the resource map as it is now (the controller changes the epoch
//! whenever a configuration change removes or reassigns a key or a server).
//!
//! Everything else takes the slow path (`nat::forward`), unchanged: a SYN, FIN or RST, a
//! closing or expired flow, a flow whose server is down, an entry of an older epoch, a next
//! hop neither in the entry nor fresh in the cache, a packet larger than the path MTU, a TTL
//! that expires here, fragments, ICMP. The fast path decides before it writes anything to the
//! packet, so a packet it declines reaches the slow path as it arrived.
//!
//! Writes to the entry only when something changed: `last_seen_ns` at most every
//! [`LAST_SEEN_STEP_NS`], `client_seq` when the client moved [`SEQ_STEP`] past it, the next
//! hop when it was refreshed.

use ftn_common::{
    GlobalCounter, NexthopKey, FLOW_FLAG_CLOSING, LAST_SEEN_STEP_NS, NEXTHOP_CACHE_OFF, PROTO_TCP,
    PROTO_UDP, SEQ_STEP, SERVER_UP,
};

use crate::{
    flow, fwd,
    maps::{self, count, res_stats, srv_stats, Env, ABORTED, FTN_FLOWS, FTN_NEXTHOP},
    nat::{rewrite_addr, Which},
    parse::{read, Pkt, Raw, FRAG_NONE, TCP_FIN, TCP_RST, TCP_SYN},
};

/// [`forward`]'s answer when the packet is not for the fast path (untouched).
pub const NOT_FAST: u32 = u32::MAX - 1;

/// Forwards `pkt` (to a VIP) when it belongs to an established flow the fast path can take;
/// [`NOT_FAST`] otherwise. A subprogram of its own (the flow key in its own frame).
#[inline(never)]
pub fn forward(raw: Raw, pkt: &Pkt) -> u32 {
    let ctx = &raw.ctx();
    match forward_checked(ctx, pkt) {
        Ok(Some(action)) => action,
        Ok(None) => NOT_FAST,
        Err(()) => ABORTED,
    }
}

#[inline(always)]
fn forward_checked(ctx: &aya_ebpf::programs::XdpContext, pkt: &Pkt) -> Result<Option<u32>, ()> {
    if pkt.frag != FRAG_NONE || pkt.ttl <= 1 {
        return Ok(None);
    }
    let idle_of = match pkt.proto {
        PROTO_TCP if pkt.tcp_flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0 => PROTO_TCP,
        PROTO_UDP => PROTO_UDP,
        _ => return Ok(None),
    };
    let env = Env::read().ok_or(())?;
    let cfg = env.cfg;
    let ttl = cfg.nexthop_ttl_ns;
    if ttl == NEXTHOP_CACHE_OFF {
        return Ok(None);
    }
    let Some(f) = FTN_FLOWS.get_ptr_mut(flow::flow_key(pkt)) else {
        return Ok(None);
    };
    // SAFETY: pointer from a successful lookup; the entry stays valid during the run (RCU).
    let f = unsafe { &mut *f };
    let idle = if idle_of == PROTO_TCP {
        cfg.tcp_idle_ns
    } else {
        cfg.udp_idle_ns
    };
    let now = env.now;
    if f.flags & FLOW_FLAG_CLOSING != 0
        || f.epoch != cfg.epoch
        || now.saturating_sub(f.last_seen_ns) > idle.saturating_add(LAST_SEEN_STEP_NS)
    {
        return Ok(None);
    }
    let server_id = f.server_id;
    let Some(s) = maps::server(server_id) else {
        return Ok(None);
    };
    if s.state != SERVER_UP {
        return Ok(None);
    }
    let ingress = ctx.ingress_ifindex() as u32;
    if f.hop_ingress != ingress || now.saturating_sub(f.hop_learned_ns) >= ttl {
        let key = NexthopKey {
            dst: s.addr,
            ingress,
            family: pkt.family,
            _pad: [0; 3],
        };
        let Some(h) = FTN_NEXTHOP.get_ptr(key) else {
            return Ok(None);
        };
        // SAFETY: as above.
        let h = unsafe { &*h };
        if now.saturating_sub(h.learned_ns) >= ttl {
            return Ok(None);
        }
        f.hop_ingress = ingress;
        f.hop_egress = h.egress;
        f.hop_mtu = h.mtu;
        f.hop_dmac = h.dmac;
        f.hop_smac = h.smac;
        f.hop_learned_ns = h.learned_ns;
    }
    if u32::from(pkt.ip_len) > f.hop_mtu {
        return Ok(None);
    }
    if idle_of == PROTO_TCP {
        let seq = u32::from_be(read::<u32>(ctx, pkt.l4_off + 4)?);
        let ahead = seq.wrapping_sub(f.client_seq);
        if (SEQ_STEP..1 << 31).contains(&ahead) {
            f.client_seq = seq;
        }
    }
    if now.saturating_sub(f.last_seen_ns) >= LAST_SEEN_STEP_NS {
        f.last_seen_ns = now;
    }
    let (egress, dmac, smac, resource_id) = (f.hop_egress, f.hop_dmac, f.hop_smac, f.resource_id);
    rewrite_addr(ctx, pkt, Which::Dst, &s.addr)?;
    let action = fwd::out(ctx, pkt, ingress, egress, &dmac, &smac)?;
    count(GlobalCounter::FastForward);
    if let Some(st) = res_stats(resource_id) {
        st.packets += 1;
        st.bytes += u64::from(pkt.frame_len);
    }
    if let Some(st) = srv_stats(server_id) {
        st.packets += 1;
        st.bytes += u64::from(pkt.frame_len);
    }
    Ok(Some(action))
}
