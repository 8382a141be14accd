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
    ResourceKey, ResourceStats, ResourceValue, ReverseKey, ReverseValue, ServerStats, ServerValue,
    DEFAULT_FLOW_CAPACITY, EVENTS_BYTES, GLOBAL_COUNTERS, MAX_INTERFACES, MAX_RESOURCES,
    MAX_RESOURCE_KEYS, MAX_SERVERS, NEXTHOP_CAPACITY,
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
pub static FTN_REVERSE: LruHashMap<ReverseKey, ReverseValue> =
    LruHashMap::with_max_entries(DEFAULT_FLOW_CAPACITY, 0);

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
pub static FTN_EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[inline(always)]
pub fn count(c: GlobalCounter) {
    if let Some(p) = FTN_GLOBAL.get_ptr_mut(c as u32) {
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
pub fn server(id: u32) -> Option<ServerValue> {
    FTN_SERVERS.get(id).copied()
}

/// The dataplane's settings, read in place (a copy would cost the program ~70 bytes of its
/// 512-byte stack). The controller writes them with every default resolved
/// (`DataplaneConfig::resolved`). `None` only if the array has no entry 0, which it always has.
#[inline(always)]
pub fn config() -> Option<&'static DataplaneConfig> {
    FTN_CONFIG.get(0)
}

/// The resource a packet is addressed to: exact port first, then the VIP's every-port entry.
/// ICMP echo only matches port 0 (the identifier is not a port).
#[inline(always)]
pub fn lookup_resource(pkt: &Pkt) -> Option<ResourceValue> {
    if pkt.is_icmp() && !pkt.is_echo_request() {
        return None;
    }
    let mut key = ResourceKey {
        vip: pkt.dst,
        port: 0,
        proto: pkt.proto,
        family: pkt.family,
    };
    if !pkt.is_icmp() {
        key.port = pkt.dport;
        // SAFETY: the value is copied out at once.
        if let Some(v) = unsafe { FTN_RESOURCES.get(key) } {
            return Some(*v);
        }
        key.port = 0;
    }
    // SAFETY: as above.
    unsafe { FTN_RESOURCES.get(key) }.copied()
}

/// The flow a reply (server -> client) belongs to.
#[inline(always)]
pub fn lookup_reverse(pkt: &Pkt) -> Option<ReverseValue> {
    if pkt.is_icmp() && !pkt.is_echo_reply() {
        return None;
    }
    let key = ReverseKey {
        server: pkt.src,
        client: pkt.dst,
        server_port: pkt.sport,
        client_port: pkt.dport,
        proto: pkt.proto,
        family: pkt.family,
        _pad: [0; 2],
    };
    // SAFETY: the value is copied out at once.
    unsafe { FTN_REVERSE.get(key) }.copied()
}
