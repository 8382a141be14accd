//! Map definitions (names, types and sizes from `ftn_common`) and counter helpers.
//!
//! The static names below must equal `ftn_common::map_names::*`: the `#[map]` attribute takes
//! the static's identifier as the ELF name, and the `elf_names` test checks that every name of
//! `ftn_common` is present in the built object.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use ftn_common::{
    DataplaneConfig, FlowKey, FlowValue, GlobalCounter, NexthopKey, NexthopValue, PassiveState,
    ResourceKey, ResourceStats, ResourceValue, ReturnKey, ReturnValue, ServerStats, ServerValue,
    ADDR_FILTER_WORDS, BPF_F_NO_COMMON_LRU, DEFAULT_FLOW_CAPACITY, DEFAULT_PENDING_CAPACITY,
    EVENTS_BYTES, GLOBAL_COUNTERS, MAX_INTERFACES, MAX_RESOURCES, MAX_RESOURCE_KEYS,
    MAX_RETURN_KEYS, MAX_SERVERS, NEXTHOP_CAPACITY, PROTO_TCP, PROTO_UDP, RES_FLAG_FRAGMENTS,
};

use crate::parse::Pkt;

#[map]
pub static FTN_RESOURCES: HashMap<ResourceKey, ResourceValue> =
    HashMap::with_max_entries(MAX_RESOURCE_KEYS, 0);

#[map]
pub static FTN_SERVERS: Array<ServerValue> = Array::with_max_entries(MAX_SERVERS, 0);

#[map]
pub static FTN_FLOWS: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

#[map]
pub static FTN_PENDING: LruHashMap<FlowKey, FlowValue> =
    LruHashMap::with_max_entries(DEFAULT_PENDING_CAPACITY, BPF_F_NO_COMMON_LRU);

#[map]
pub static FTN_RETURN: HashMap<ReturnKey, ReturnValue> =
    HashMap::with_max_entries(MAX_RETURN_KEYS, 0);

#[map]
pub static FTN_CONFIG: Array<DataplaneConfig> = Array::with_max_entries(1, 0);

#[map]
pub static FTN_RES_STATS: PerCpuArray<ResourceStats> =
    PerCpuArray::with_max_entries(MAX_RESOURCES, 0);

#[map]
pub static FTN_SRV_STATS: PerCpuArray<ServerStats> = PerCpuArray::with_max_entries(MAX_SERVERS, 0);

#[map]
pub static FTN_GLOBAL: PerCpuArray<u64> = PerCpuArray::with_max_entries(GLOBAL_COUNTERS, 0);

#[map]
pub static FTN_DEVMAP: DevMapHash = DevMapHash::with_max_entries(MAX_INTERFACES, 0);

#[map]
pub static FTN_PASSIVE: Array<PassiveState> = Array::with_max_entries(MAX_SERVERS, 0);

#[map]
pub static FTN_NEXTHOP: LruHashMap<NexthopKey, NexthopValue> =
    LruHashMap::with_max_entries(NEXTHOP_CAPACITY, 0);

#[map]
pub static FTN_ADDRS: Array<u64> = Array::with_max_entries(ADDR_FILTER_WORDS, 0);

#[map]
pub static FTN_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// False when `addr` is certainly not an address of `kind` (`ADDR_VIP`, `ADDR_SERVER`): its
/// bit in the address filter is clear. True means "maybe": look the key up.
#[inline(always)]
pub fn maybe(addr: &[u32; 4], kind: u32) -> bool {
    let (word, mask) = ftn_common::addr_filter(addr, kind);
    FTN_ADDRS.get(word).is_some_and(|w| w & mask != 0)
}

#[inline(always)]
pub fn count(c: GlobalCounter) {
    count_at(c as u32);
}

/// [`count`] by the counter's index.
#[inline(always)]
pub fn count_at(index: u32) {
    if let Some(p) = FTN_GLOBAL.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, XDP runs with preemption disabled.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn res_stats(id: u32) -> Option<&'static mut ResourceStats> {
    // SAFETY: per-CPU slot, XDP runs with preemption disabled.
    FTN_RES_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn srv_stats(id: u32) -> Option<&'static mut ServerStats> {
    // SAFETY: as above.
    FTN_SRV_STATS.get_ptr_mut(id).map(|p| unsafe { &mut *p })
}

#[inline(always)]
pub fn server(id: u32) -> Option<&'static ServerValue> {
    FTN_SERVERS.get(id)
}

/// The dataplane's settings, read in place (a copy would cost the program ~70 bytes of its
/// 512-byte stack). The controller writes them with every default resolved
/// (`DataplaneConfig::resolved`). `None` only if the array has no entry 0, which it always has.
#[inline(always)]
pub fn config() -> Option<&'static DataplaneConfig> {
    FTN_CONFIG.get(0)
}

/// What a subprogram returns for `Err(())` (a bounds check that failed after parsing): BPF
/// functions return one register, so `Result<u32, ()>` (returned through memory) cannot cross
/// a call. [`sub`] and [`unsub`] convert.
pub const ABORTED: u32 = u32::MAX;

/// A subprogram's `Result` as its one-register return value.
#[inline(always)]
pub fn sub(r: Result<u32, ()>) -> u32 {
    r.unwrap_or(ABORTED)
}

/// A subprogram's return value back as a `Result`.
#[inline(always)]
pub fn unsub(action: u32) -> Result<u32, ()> {
    if action == ABORTED {
        Err(())
    } else {
        Ok(action)
    }
}

/// What every stage of a packet's handling reads once per packet: the settings and the time.
pub struct Env {
    pub cfg: &'static DataplaneConfig,
    pub now: u64,
    /// `cfg.epoch` as it was before the packet's resource lookup (see `fast`): what a flow
    /// entry checked on this packet is stamped with.
    pub epoch: u32,
}

impl Env {
    /// `None` only if `FTN_CONFIG` has no entry 0, which it always has.
    #[inline(always)]
    pub fn read() -> Option<Env> {
        let cfg = config()?;
        Some(Env {
            cfg,
            epoch: cfg.epoch,
            // SAFETY: helper without arguments.
            now: unsafe { aya_ebpf::helpers::bpf_ktime_get_coarse_ns() },
        })
    }
}

/// The resource a packet is addressed to: one lookup, of the exact port (ICMP echo: port 0;
/// the identifier is not a port). The controller writes no every-port entry for TCP or UDP.
#[inline(always)]
pub fn lookup_resource(pkt: &Pkt) -> Option<&'static ResourceValue> {
    let port = if pkt.is_icmp() {
        if !pkt.is_echo_request() {
            return None;
        }
        0
    } else {
        pkt.dport
    };
    let key = ResourceKey {
        vip: pkt.dst,
        port,
        proto: pkt.proto,
        family: pkt.family,
    };
    // SAFETY: a map value stays valid for the program run (RCU); the controller replaces an
    // entry whole (a reader sees the old or the new one).
    let res = unsafe { FTN_RESOURCES.get(key) }?;
    // A TCP or UDP packet to port 0 finds a fragment entry: no resource of its own.
    if res.flags & RES_FLAG_FRAGMENTS != 0 {
        return None;
    }
    Some(res)
}

/// The resource a fragment to a VIP goes to: the controller writes a fragment entry (VIP,
/// protocol, port 0; [`RES_FLAG_FRAGMENTS`]) for a tcp or udp resource alone on that VIP and
/// protocol, which names the port entry to follow (two lookups: fragments are rare). `None`:
/// no such resource (the fragment is passed).
#[inline(always)]
pub fn lookup_fragment_resource(pkt: &Pkt) -> Option<&'static ResourceValue> {
    if pkt.proto != PROTO_TCP && pkt.proto != PROTO_UDP {
        return None;
    }
    let mut key = ResourceKey {
        vip: pkt.dst,
        port: 0,
        proto: pkt.proto,
        family: pkt.family,
    };
    // SAFETY: as for `lookup_resource`.
    let entry = unsafe { FTN_RESOURCES.get(key) }?;
    if entry.flags & RES_FLAG_FRAGMENTS == 0 {
        return None;
    }
    key.port = entry.fragment_port();
    // SAFETY: as above.
    unsafe { FTN_RESOURCES.get(key) }
}

/// The VIP a server's packet is SNATed to (see [`lookup_return_of`]); ICMP echo replies match
/// port 0. `None`: not from a server of any resource.
#[inline(always)]
pub fn lookup_return(pkt: &Pkt) -> Option<&'static ReturnValue> {
    let port = if pkt.is_icmp() {
        if !pkt.is_echo_reply() {
            return None;
        }
        0
    } else {
        pkt.sport
    };
    lookup_return_of(&pkt.src, port, pkt.proto, pkt.family)
}

/// The VIP of a server's (address, protocol, port): one lookup. `port` in network order.
#[inline(always)]
pub fn lookup_return_of(
    server: &[u32; 4],
    port: u16,
    proto: u8,
    family: u8,
) -> Option<&'static ReturnValue> {
    let key = ReturnKey {
        server: *server,
        port,
        proto,
        family,
    };
    // SAFETY: as for `lookup_resource`.
    unsafe { FTN_RETURN.get(key) }
}
