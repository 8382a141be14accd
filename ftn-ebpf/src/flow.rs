//! The flow table: which server a client's 5-tuple is on.
//!
//! A flow stays on the server it started on while that server is up, even after its resource
//! switched to another server (this is what makes failback lossless for established
//! connections). A flow whose server is marked down moves at once to the resource's current
//! server. Idle entries expire (per-protocol idle times from `FTN_CONFIG`, measured from the
//! client's last packet: replies take the stateless return path and never touch this table).
//! The client's FIN, or an RST the flow honours, moves it to closing: its entry stays for
//! `tcp_closing_idle`, so the last packets are still forwarded to the same server, and a
//! forged RST cannot delete it. A client's RST is
//! honoured only within [`RST_WINDOW`] bytes ahead of the client's last sequence number; one
//! outside is forwarded (the server's stack judges it) and changes nothing here. A new
//! connection (a SYN without ACK) always goes to the resource's current server: a flow left on
//! this 5-tuple by an earlier connection (closing, or a SYN the client gave up on during a
//! failover) must not send it elsewhere, e.g. to a primary the resource is held away from. The
//! LRU map evicts the oldest entries when full.

use ftn_common::{
    DataplaneConfig, FlowKey, FlowValue, GlobalCounter, ResourceValue, FLOW_FLAG_CLOSING,
    LAST_SEEN_STEP_NS, NO_SERVER, PROTO_TCP, PROTO_UDP, RST_WINDOW, SERVER_UP,
};

use crate::{
    maps::{self, count, Env, FTN_FLOWS, FTN_PENDING},
    parse::{Pkt, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN},
};

/// The server a forward packet goes to (filled by [`select`]).
pub struct Chosen {
    pub server_id: u32,
    /// The server's address.
    pub addr: [u32; 4],
    pub new_flow: bool,
    /// The (down) server the flow left, or `NO_SERVER`.
    pub moved_from: u32,
}

impl Chosen {
    #[inline(always)]
    pub const fn empty() -> Chosen {
        Chosen {
            server_id: NO_SERVER,
            addr: [0; 4],
            new_flow: false,
            moved_from: NO_SERVER,
        }
    }
}

#[inline(always)]
pub fn flow_key(pkt: &Pkt) -> FlowKey {
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

/// How long an entry may have been idle and still count: the protocol's idle time plus
/// [`LAST_SEEN_STEP_NS`] (the fast path refreshes `last_seen_ns` at most that often, so an
/// entry never expires early).
#[inline(always)]
fn idle_limit(c: &DataplaneConfig, proto: u8, flags: u32) -> u64 {
    let idle = match proto {
        PROTO_TCP if flags & FLOW_FLAG_CLOSING != 0 => c.tcp_closing_ns,
        PROTO_TCP => c.tcp_idle_ns,
        PROTO_UDP => c.udp_idle_ns,
        _ => c.icmp_idle_ns,
    };
    idle.saturating_add(LAST_SEEN_STEP_NS)
}

/// `FLOW_FLAG_CLOSING` for a FIN, or for an RST the flow honours (counted); else 0. A client
/// RST on a known flow (`last_seq`: the client's last sequence number) is honoured only within
/// [`RST_WINDOW`] ahead of it; one that starts a flow, always.
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
///
/// A subprogram of its own (its keys and values in its own frame): fills `out`, returns 1, or
/// 0 when the resource has no live server.
#[inline(never)]
pub fn select(pkt: &Pkt, seq: u32, res: &ResourceValue, env: &Env, out: &mut Chosen) -> u32 {
    match select_checked(pkt, seq, res, env) {
        Some(c) => {
            *out = c;
            1
        }
        None => 0,
    }
}

#[inline(always)]
fn select_checked(pkt: &Pkt, seq: u32, res: &ResourceValue, env: &Env) -> Option<Chosen> {
    let (now, cfg, epoch) = (env.now, env.cfg, env.epoch);
    let key = flow_key(pkt);
    let syn = pkt.proto == PROTO_TCP && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    let mut moved_from = NO_SERVER;
    // A new connection (a SYN without ACK) never looks at the flow table: it goes to the
    // resource's current server, and its state to the pending table.
    if !syn {
        if let Some(f) = FTN_FLOWS.get_ptr_mut(key) {
            // SAFETY: pointer from a successful lookup; the LRU entry stays valid during the
            // program run (RCU). Fields are read one by one: no copy of the entry.
            let (last_seen, server_id, flags, last_seq) = unsafe {
                (
                    (*f).last_seen_ns,
                    (*f).server_id,
                    (*f).flags,
                    (*f).client_seq,
                )
            };
            let expired = now.saturating_sub(last_seen) > idle_limit(cfg, pkt.proto, flags);
            // A closing flow whose 5-tuple started a new handshake since: the new one wins when
            // this segment completes that handshake (its sequence number follows the pending
            // SYN's), so that a blind SYN cannot take the closing flow's last segments.
            let superseded = flags & FLOW_FLAG_CLOSING != 0
                && pkt.proto == PROTO_TCP
                && FTN_PENDING
                    .get_ptr(key)
                    // SAFETY: pointer from a successful lookup (RCU-protected during the run).
                    .is_some_and(|p| unsafe { (*p).client_seq }.wrapping_add(1) == seq);
            if let Some(s) = maps::server(server_id) {
                if !expired && !superseded && s.state == SERVER_UP {
                    let closing = closing_flag(pkt, seq, Some(last_seq));
                    // SAFETY: as above.
                    unsafe {
                        (*f).last_seen_ns = now;
                        (*f).flags = flags | closing;
                        if pkt.tcp_flags & TCP_RST == 0 {
                            (*f).client_seq = seq;
                        }
                        // Checked against the resource map as it is at `epoch` (read before
                        // the resource lookup): the fast path may take the flow. A next hop
                        // learned under another epoch is learned again.
                        if (*f).epoch != epoch {
                            (*f).epoch = epoch;
                            (*f).hop_learned_ns = 0;
                        }
                        (*f).resource_id = res.resource_id;
                    }
                    return Some(Chosen {
                        server_id,
                        addr: s.addr,
                        new_flow: false,
                        moved_from: NO_SERVER,
                    });
                }
                if !expired && !superseded {
                    // Its server is down: the established flow moves to the resource's current
                    // server (and stays in the flow table).
                    moved_from = server_id;
                }
            }
        }
        if moved_from == NO_SERVER {
            if let Some(c) = promote(pkt, seq, &key, env, &mut moved_from) {
                return Some(c);
            }
        }
    }
    if syn {
        if let Some(c) = syn_again(seq, &key, now, cfg) {
            return Some(c);
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
        epoch,
        ..FlowValue::default()
    };
    // Insert failures (map full is impossible for LRU; -ENOMEM under pressure) only cost the
    // flow its stickiness: the packet is still forwarded to the current server.
    if moved_from != NO_SERVER {
        count(GlobalCounter::FlowsMoved);
        let _ = FTN_FLOWS.insert(key, fv, 0);
    } else {
        let _ = FTN_PENDING.insert(key, fv, 0);
    }
    Some(Chosen {
        server_id: res.server_id,
        addr: s.addr,
        new_flow: moved_from == NO_SERVER,
        moved_from,
    })
}

/// A retransmission of a pending SYN (same sequence number, its server still up): it goes
/// where the first one went and is no new flow. `None` otherwise.
#[inline(always)]
fn syn_again(seq: u32, key: &FlowKey, now: u64, cfg: &DataplaneConfig) -> Option<Chosen> {
    let p = FTN_PENDING.get_ptr_mut(key)?;
    // SAFETY: pointer from a successful lookup (RCU-protected during the run).
    let (last_seen, server_id, last_seq) =
        unsafe { ((*p).last_seen_ns, (*p).server_id, (*p).client_seq) };
    if last_seq != seq || now.saturating_sub(last_seen) > cfg.tcp_idle_ns {
        return None;
    }
    let s = maps::server(server_id)?;
    if s.state != SERVER_UP {
        return None;
    }
    // SAFETY: as above.
    unsafe { (*p).last_seen_ns = now };
    Some(Chosen {
        server_id,
        addr: s.addr,
        new_flow: false,
        moved_from: NO_SERVER,
    })
}

/// The second packet of a pending flow (for TCP the handshake's ACK): the flow moves to the
/// flow table, on the server its first packet went to. An RST instead ends it (honoured as a
/// new flow's: the pending entry goes). `None`: no live pending flow; `moved_from` is set
/// when there was one but its server is down (the caller puts the flow on the current server,
/// in the flow table).
#[inline(always)]
fn promote(pkt: &Pkt, seq: u32, key: &FlowKey, env: &Env, moved_from: &mut u32) -> Option<Chosen> {
    let (now, cfg) = (env.now, env.cfg);
    let p = FTN_PENDING.get_ptr(key)?;
    // SAFETY: pointer from a successful lookup (RCU-protected during the run); copied at once.
    let pv = unsafe { *p };
    if now.saturating_sub(pv.last_seen_ns) > idle_limit(cfg, pkt.proto, pv.flags) {
        return None;
    }
    let s = maps::server(pv.server_id)?;
    if s.state != SERVER_UP {
        let _ = FTN_PENDING.remove(key);
        *moved_from = pv.server_id;
        return None;
    }
    if pkt.tcp_flags & TCP_RST != 0 {
        count(GlobalCounter::FlowsReset);
        let _ = FTN_PENDING.remove(key);
    } else {
        let fv = FlowValue {
            last_seen_ns: now,
            server_id: pv.server_id,
            resource_id: pv.resource_id,
            flags: closing_flag(pkt, seq, None),
            client_seq: seq,
            epoch: env.epoch,
            ..FlowValue::default()
        };
        let _ = FTN_FLOWS.insert(key, fv, 0);
        let _ = FTN_PENDING.remove(key);
        count(GlobalCounter::FlowsPromoted);
    }
    Some(Chosen {
        server_id: pv.server_id,
        addr: s.addr,
        new_flow: false,
        moved_from: NO_SERVER,
    })
}
