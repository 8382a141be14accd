//! The flow table: which server a client's 5-tuple is on.
//!
//! A flow stays on the server it started on while that server is up, even after its resource
//! switched to another server (this is what makes failback lossless for established
//! connections). A flow whose server is marked down moves at once to the resource's current
//! server. Idle entries expire (per-protocol idle times from `FTN_CONFIG`). A FIN, or an RST the
//! flow honours, moves it to closing: its NAT stays for `tcp_closing_idle`, so the last packets
//! of either side are still translated, and a forged RST cannot delete it. A client's RST is
//! honoured only within [`RST_WINDOW`] bytes ahead of the client's last sequence number; one
//! outside is forwarded (the server's stack judges it) and changes nothing here. A new
//! connection (a SYN without ACK) always goes to the resource's current server: a flow left on
//! this 5-tuple by an earlier connection (closing, or a SYN the client gave up on during a
//! failover) must not send it elsewhere, e.g. to a primary the resource is held away from. The
//! LRU map evicts the oldest entries when full.

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use ftn_common::{
    DataplaneConfig, FlowKey, FlowValue, GlobalCounter, ResourceValue, ReverseKey, ReverseValue,
    ServerValue, FLOW_FLAG_CLOSING, NO_SERVER, PROTO_TCP, PROTO_UDP, RST_WINDOW, SERVER_UP,
};

use crate::{
    maps::{self, count, FTN_FLOWS, FTN_REVERSE},
    parse::{Pkt, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// The server a forward packet goes to.
pub struct Chosen {
    pub server_id: u32,
    pub server: ServerValue,
    pub new_flow: bool,
    /// The flow left this (down) server.
    pub moved_from: Option<u32>,
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_coarse_ns() }
}

#[inline(always)]
fn flow_key(pkt: &Pkt) -> FlowKey {
    FlowKey {
        client: pkt.src,
        vip: pkt.dst,
        client_port: pkt.sport,
        vip_port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn reverse_key(pkt: &Pkt, server: &[u32; 4]) -> ReverseKey {
    ReverseKey {
        server: *server,
        client: pkt.src,
        server_port: pkt.dport,
        client_port: pkt.sport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    }
}

#[inline(always)]
fn idle_limit(c: &DataplaneConfig, proto: u8, flags: u32) -> u64 {
    match proto {
        PROTO_TCP if flags & FLOW_FLAG_CLOSING != 0 => c.tcp_closing_ns,
        PROTO_TCP => c.tcp_idle_ns,
        PROTO_UDP => c.udp_idle_ns,
        _ => c.icmp_idle_ns,
    }
}

/// `FLOW_FLAG_CLOSING` for a FIN, or for an RST the flow honours (counted); else 0. A client
/// RST on a known flow (`last_seq`: the client's last sequence number) is honoured only within
/// [`RST_WINDOW`] ahead of it; a server's RST, or one that starts a flow, always.
#[inline(always)]
fn closing_flag(pkt: &Pkt, seq: u32, last_seq: Option<u32>) -> u32 {
    if pkt.proto != PROTO_TCP {
        return 0;
    }
    if pkt.tcp_flags & TCP_RST != 0 {
        let honoured = match last_seq {
            Some(s) => seq.wrapping_sub(s) < RST_WINDOW,
            None => true,
        };
        if !honoured {
            return 0;
        }
        count(GlobalCounter::FlowsReset);
        return FLOW_FLAG_CLOSING;
    }
    if pkt.tcp_flags & TCP_FIN != 0 {
        FLOW_FLAG_CLOSING
    } else {
        0
    }
}

/// Picks the server for a client -> VIP packet, creating or moving the flow as needed. `seq`:
/// the TCP sequence number (host order; 0 for other protocols).
/// `None`: the resource has no live server.
#[inline(always)]
pub fn select(
    pkt: &Pkt,
    seq: u32,
    res: &ResourceValue,
    now: u64,
    cfg: &DataplaneConfig,
) -> Option<Chosen> {
    let key = flow_key(pkt);
    let mut old: Option<(u32, ServerValue)> = None;
    let mut moved = false;
    if let Some(f) = FTN_FLOWS.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup; the LRU entry stays valid during the
        // program run (RCU).
        let fv = unsafe { *f };
        let expired = now.saturating_sub(fv.last_seen_ns) > idle_limit(cfg, pkt.proto, fv.flags);
        // A new connection on a 5-tuple that has a flow: the old one is closing, or it is on
        // another server than the resource's current one (a SYN the client gave up on).
        let restart = pkt.proto == PROTO_TCP
            && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
            && (fv.flags & FLOW_FLAG_CLOSING != 0 || fv.server_id != res.server_id);
        if let Some(s) = maps::server(fv.server_id) {
            if !expired && !restart && s.state == SERVER_UP {
                let closing = closing_flag(pkt, seq, Some(fv.client_seq));
                // SAFETY: as above.
                unsafe {
                    (*f).last_seen_ns = now;
                    (*f).flags |= closing;
                    if pkt.tcp_flags & TCP_RST == 0 {
                        (*f).client_seq = seq;
                    }
                }
                return Some(Chosen {
                    server_id: fv.server_id,
                    server: s,
                    new_flow: false,
                    moved_from: None,
                });
            }
            moved = !expired && !restart && s.state != SERVER_UP;
            old = Some((fv.server_id, s));
        }
    }
    if res.server_id == NO_SERVER {
        return None;
    }
    let s = maps::server(res.server_id)?;
    if s.family != pkt.family {
        // Unconfigured slot or a server of the other family: treat as no live server.
        return None;
    }
    let fv = FlowValue {
        last_seen_ns: now,
        server_id: res.server_id,
        resource_id: res.resource_id,
        flags: closing_flag(pkt, seq, None),
        client_seq: seq,
    };
    let rv = ReverseValue {
        vip: pkt.dst,
        resource_id: res.resource_id,
        server_id: res.server_id,
    };
    // Insert failures (map full is impossible for LRU; -ENOMEM under pressure) only cost the
    // flow its stickiness: the packet is still forwarded to the current server.
    let _ = FTN_FLOWS.insert(key, fv, 0);
    let _ = FTN_REVERSE.insert(reverse_key(pkt, &s.addr), rv, 0);
    let mut moved_from = None;
    if let Some((old_id, old_srv)) = old {
        if old_id != res.server_id {
            let _ = FTN_REVERSE.remove(reverse_key(pkt, &old_srv.addr));
        }
        if moved {
            count(GlobalCounter::FlowsMoved);
            moved_from = Some(old_id);
        }
    }
    Some(Chosen {
        server_id: res.server_id,
        server: s,
        new_flow: true,
        moved_from,
    })
}

/// A server -> client packet of a known flow: refresh the flow; a FIN or RST moves it to
/// closing (its NAT stays for `tcp_closing_idle`).
#[inline(always)]
pub fn on_reply(pkt: &Pkt, rev: &ReverseValue, now: u64) {
    let key = FlowKey {
        client: pkt.dst,
        vip: rev.vip,
        client_port: pkt.dport,
        vip_port: pkt.sport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    if let Some(f) = FTN_FLOWS.get_ptr_mut(key) {
        // SAFETY: pointer from a successful lookup (RCU-protected during the run).
        if unsafe { (*f).server_id } == rev.server_id {
            let closing = closing_flag(pkt, 0, None);
            // SAFETY: as above.
            unsafe {
                (*f).last_seen_ns = now;
                (*f).flags |= closing;
            }
        }
    }
}
