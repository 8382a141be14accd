//! The contract between ftn's XDP program (`ftn-ebpf`) and its controller.
//!
//! Every map key and value lives here, once. Layout rules, checked at compile time:
//! - `#[repr(C)]`, `Clone + Copy`, padding written out as `_pad` fields (zero them: the kernel
//!   hashes every byte of a key), no `bool`/enum/`Option` inside a map type;
//! - addresses are stored as the 16 raw bytes of the address in **network byte order**, viewed as
//!   `[u32; 4]` (IPv4 uses the first word, the other three are zero);
//! - ports are **network byte order** `u16` (as they sit in the packet);
//! - everything else (ids, counters, times, flags) is host byte order.
#![no_std]

use core::mem::size_of;

/// Name of the XDP program in the eBPF object.
pub const PROGRAM_NAME: &str = "ftn_xdp";

/// Map names (at most 15 characters: the kernel's `BPF_OBJ_NAME_LEN` is 16 with the NUL).
pub mod map_names {
    /// `HashMap<ResourceKey, ResourceValue>`: which resource a (VIP, protocol, port) belongs to.
    pub const RESOURCES: &str = "FTN_RESOURCES";
    /// `Array<ServerValue>` indexed by server id.
    pub const SERVERS: &str = "FTN_SERVERS";
    /// `LruHashMap<FlowKey, FlowValue>`: client-side 5-tuple -> server the flow is on.
    pub const FLOWS: &str = "FTN_FLOWS";
    /// `LruHashMap<FlowKey, FlowValue>` with per-CPU LRU lists (`BPF_F_NO_COMMON_LRU`): flows
    /// that have sent one packet (a TCP SYN, a first datagram). Their second packet (for TCP the
    /// handshake's ACK) moves them to [`FLOWS`]: a flood of new or spoofed flows fills this
    /// table, never the one the established flows are in.
    pub const PENDING: &str = "FTN_PENDING";
    /// `HashMap<ReturnKey, ReturnValue>`: (server address, port, protocol) -> the VIP its
    /// replies are SNATed to. Written by the controller from the configuration, never evicted:
    /// the return path keeps no per-flow state, so any gateway translates any reply.
    pub const RETURN: &str = "FTN_RETURN";
    /// `Array<DataplaneConfig>` with one element.
    pub const CONFIG: &str = "FTN_CONFIG";
    /// `PerCpuArray<ResourceStats>` indexed by resource id.
    pub const RESOURCE_STATS: &str = "FTN_RES_STATS";
    /// `PerCpuArray<ServerStats>` indexed by server id.
    pub const SERVER_STATS: &str = "FTN_SRV_STATS";
    /// `PerCpuArray<u64>` indexed by [`crate::GlobalCounter`].
    pub const GLOBAL_STATS: &str = "FTN_GLOBAL";
    /// `DevMapHash` keyed by ifindex: the interfaces XDP may redirect to.
    pub const DEVMAP: &str = "FTN_DEVMAP";
    /// `Array<PassiveState>` indexed by server id: what the program saw of the server's
    /// answers to new TCP connections (passive health).
    pub const PASSIVE: &str = "FTN_PASSIVE";
    /// `RingBuf` of [`crate::PassiveEvent`]s for the controller.
    pub const EVENTS: &str = "FTN_EVENTS";
    /// `LruHashMap<NexthopKey, NexthopValue>`: FIB answers cached for `nexthop_ttl_ns`.
    pub const NEXTHOP: &str = "FTN_NEXTHOP";
    /// `Array<u64>` of [`crate::ADDR_FILTER_WORDS`]: a bitmap of the addresses that are a VIP
    /// (first half) or a resource's server (second half), see [`crate::addr_filter`]. A packet
    /// whose destination is no VIP and whose source is no server is passed after two array
    /// reads, without a hash lookup.
    pub const ADDRS: &str = "FTN_ADDRS";

    /// Every map of the object, for checks and pinning.
    pub const ALL: [&str; 14] = [
        RESOURCES,
        SERVERS,
        FLOWS,
        PENDING,
        RETURN,
        CONFIG,
        RESOURCE_STATS,
        SERVER_STATS,
        GLOBAL_STATS,
        DEVMAP,
        PASSIVE,
        EVENTS,
        NEXTHOP,
        ADDRS,
    ];
}

/// Bits per half of the address filter ([`map_names::ADDRS`]): 2^20, so that 100,000 VIPs set
/// under 10 % of them (a packet for a non-VIP then pays the resource lookup 1 time in 10).
pub const ADDR_FILTER_BITS_LOG2: u32 = 20;
/// `u64` words of the whole filter (both halves): 32,768 (256 KiB).
pub const ADDR_FILTER_WORDS: u32 = 2 * ((1 << ADDR_FILTER_BITS_LOG2) / 64);
/// [`addr_filter`]'s `kind`: the address is a VIP (a resource's destination).
pub const ADDR_VIP: u32 = 0;
/// [`addr_filter`]'s `kind`: the address is a resource's server (a reply's source).
pub const ADDR_SERVER: u32 = 1;

/// The word index and bit mask of `addr` (network-order words, as in every key) in the address
/// filter's half `kind` ([`ADDR_VIP`] or [`ADDR_SERVER`]). The same function on both sides: the
/// controller sets the bit before it writes a key with that address; the program tests it
/// before it looks the key up. Bits are never cleared while the dataplane runs (a removed
/// address's bit only costs its packets the lookup it would have cost without the filter).
#[inline(always)]
pub fn addr_filter(addr: &[u32; 4], kind: u32) -> (u32, u64) {
    let x = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];
    let bit = x.wrapping_mul(0x9E37_79B1) >> (32 - ADDR_FILTER_BITS_LOG2);
    let half = (1u32 << ADDR_FILTER_BITS_LOG2) / 64;
    (kind * half + (bit >> 6), 1u64 << (bit & 63))
}

/// Capacity of [`map_names::RESOURCES`] (number of (VIP, protocol, port) keys).
pub const MAX_RESOURCE_KEYS: u32 = 262_144;
/// Resource ids are `0..MAX_RESOURCES` (index of the per-resource counters).
pub const MAX_RESOURCES: u32 = 131_072;
/// Server ids are `0..MAX_SERVERS` (index of [`map_names::SERVERS`] and its counters).
pub const MAX_SERVERS: u32 = 16_384;
/// Capacity of [`map_names::RETURN`] ((server, port, protocol) keys).
pub const MAX_RETURN_KEYS: u32 = 262_144;
/// Default capacity of the flow table (the controller may change it at load).
pub const DEFAULT_FLOW_CAPACITY: u32 = 262_144;
/// Default capacity of the pending table (the controller may change it at load).
pub const DEFAULT_PENDING_CAPACITY: u32 = 65_536;
/// `BPF_F_NO_COMMON_LRU`: an LRU map with one LRU list per CPU.
pub const BPF_F_NO_COMMON_LRU: u32 = 1 << 1;
/// Capacity of the devmap (interfaces the program may redirect to).
pub const MAX_INTERFACES: u32 = 64;

/// `family` values (the kernel's `AF_INET`/`AF_INET6`, as `bpf_fib_lookup` wants them).
pub const FAMILY_V4: u8 = 2;
pub const FAMILY_V6: u8 = 10;

/// IP protocol numbers used in keys.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// `ResourceValue::server_id` when the resource has no live server.
pub const NO_SERVER: u32 = u32::MAX;

/// `ResourceValue::flags`: answer packets of a resource with no live server with a TCP RST or
/// an ICMP unreachable instead of dropping them silently.
pub const RES_FLAG_REJECT: u32 = 1;
/// `ResourceValue::flags` of a fragment entry: the key (VIP, protocol, port 0) of a tcp or udp
/// resource alone on its VIP and protocol, through which fragments to the VIP (later ones carry
/// no port) reach the resource's current server. Its `server_id` is [`NO_SERVER`] and its
/// `generation` holds the port ([`ResourceValue::fragment_port`]) of the resource's entry whose
/// server they go to: the entry is written once per configuration, failovers rewrite only the
/// port entries.
pub const RES_FLAG_FRAGMENTS: u32 = 2;

/// `ServerValue::state`.
pub const SERVER_DOWN: u8 = 0;
pub const SERVER_UP: u8 = 1;

/// `FlowValue::flags`: a FIN was seen; the entry ends after `DataplaneConfig::tcp_closing_ns`
/// and a new SYN on the same 5-tuple starts a new flow.
pub const FLOW_FLAG_CLOSING: u32 = 1;

/// Key of [`map_names::RESOURCES`]. ICMP echo resources use port 0; TCP and UDP ones their
/// port (1..65535: the configuration has no every-port resource).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ResourceKey {
    /// VIP, network byte order (see crate docs).
    pub vip: [u32; 4],
    /// Destination port, network byte order; 0 for ICMP echo.
    pub port: u16,
    /// IP protocol number (6, 17, 1 or 58).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}
const _: () = assert!(size_of::<ResourceKey>() == 20);

/// Value of [`map_names::RESOURCES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ResourceValue {
    /// Index into the per-resource counters, `< MAX_RESOURCES`.
    pub resource_id: u32,
    /// Current server for new flows, or [`NO_SERVER`].
    pub server_id: u32,
    /// Directory generation of this assignment (increases on every change).
    pub generation: u32,
    /// `RES_FLAG_*` bits.
    pub flags: u32,
}
const _: () = assert!(size_of::<ResourceValue>() == 16);

impl ResourceValue {
    /// A fragment entry ([`RES_FLAG_FRAGMENTS`]) of resource `resource_id`, following its entry
    /// for `port` (network byte order, as in [`ResourceKey`]).
    pub const fn fragments(resource_id: u32, port: u16) -> ResourceValue {
        ResourceValue {
            resource_id,
            server_id: NO_SERVER,
            generation: port as u32,
            flags: RES_FLAG_FRAGMENTS,
        }
    }

    /// The port (network byte order) a fragment entry follows.
    pub const fn fragment_port(&self) -> u16 {
        self.generation as u16
    }
}

/// Value of [`map_names::SERVERS`] (index = server id).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServerValue {
    /// Server address, network byte order.
    pub addr: [u32; 4],
    /// [`FAMILY_V4`], [`FAMILY_V6`], or 0 for an unused slot.
    pub family: u8,
    /// [`SERVER_UP`] or [`SERVER_DOWN`]. Flows on a down server move to the resource's current
    /// server on their next packet.
    pub state: u8,
    pub _pad: [u8; 2],
    /// Directory generation of this state.
    pub generation: u32,
}
const _: () = assert!(size_of::<ServerValue>() == 24);

/// Key of [`map_names::FLOWS`]: the 5-tuple as the client sends it (client -> VIP).
/// For ICMP echo both ports hold the echo identifier.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    /// Client address, network byte order.
    pub client: [u32; 4],
    /// VIP, network byte order.
    pub vip: [u32; 4],
    /// Client's source port, network byte order.
    pub client_port: u16,
    /// VIP's port, network byte order.
    pub vip_port: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
}
const _: () = assert!(size_of::<FlowKey>() == 40);

/// Value of [`map_names::FLOWS`] (and of [`map_names::PENDING`]).
///
/// One cache line: everything the fast path needs for an established flow's packet (its
/// server, and the next hop to it: egress interface, MACs, path MTU) is in the entry, so such a
/// packet costs one hash lookup. The next hop is copied from the next-hop cache and reused for
/// `DataplaneConfig::nexthop_ttl_ns`; `epoch` ties the entry to the maps' layout it was checked
/// against (see `DataplaneConfig::epoch`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowValue {
    /// `bpf_ktime_get_coarse_ns()` of the client's last packet; the fast path refreshes it at
    /// most every [`LAST_SEEN_STEP_NS`].
    pub last_seen_ns: u64,
    pub server_id: u32,
    pub resource_id: u32,
    /// `FLOW_FLAG_*` bits.
    pub flags: u32,
    /// TCP: the sequence number of the client's last segment, host order (a client's RST is
    /// honoured only within [`RST_WINDOW`] bytes ahead of it; the fast path refreshes it when
    /// the client moved [`SEQ_STEP`] past it). 0 for other protocols.
    pub client_seq: u32,
    /// `DataplaneConfig::epoch` when the slow path last checked this flow against the resource
    /// map; the fast path takes the flow only while the two are equal.
    pub epoch: u32,
    /// The interface the client's packets arrive on, when the next hop below was learned.
    pub hop_ingress: u32,
    /// Next hop to the flow's server (valid while `hop_learned_ns` is younger than
    /// `nexthop_ttl_ns`, the ingress is `hop_ingress` and `epoch` is current).
    pub hop_egress: u32,
    pub hop_mtu: u32,
    /// When the next hop was learned (`NexthopValue::learned_ns`); 0: none.
    pub hop_learned_ns: u64,
    pub hop_dmac: [u8; 6],
    pub hop_smac: [u8; 6],
    pub _pad: u32,
}
const _: () = assert!(size_of::<FlowValue>() == 64);

/// The fast path writes a flow's `last_seen_ns` only when it is at least this old, so that a
/// busy flow's entry is not written on every packet. Idle times are therefore counted from a
/// `last_seen_ns` up to this late: a flow expires between its idle time and its idle time plus
/// this step (the program adds the step to every idle limit, so a flow never expires early).
pub const LAST_SEEN_STEP_NS: u64 = 1_000_000_000;

/// The fast path writes a flow's `client_seq` only when the client's sequence number moved at
/// least this far past it (a quarter of [`RST_WINDOW`]: the client's own RST stays inside the
/// window).
pub const SEQ_STEP: u32 = RST_WINDOW / 4;

/// How far ahead of the client's last seen sequence number a client RST may be and still end
/// its flow (move it to closing). A blind attacker must guess the sequence number within this
/// window (1 in 4,096 per try) and the client's port; an RST outside it is forwarded to the
/// server (whose own stack judges it) and leaves the flow as it was.
pub const RST_WINDOW: u32 = 1 << 20;

/// Key of [`map_names::RETURN`]: where a server's replies come from. Same layout as
/// [`ResourceKey`]; ICMP echo always uses port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct ReturnKey {
    /// Server address, network byte order.
    pub server: [u32; 4],
    /// Server's source port (= the VIP port), network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}
const _: () = assert!(size_of::<ReturnKey>() == 20);

/// Value of [`map_names::RETURN`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ReturnValue {
    /// The VIP whose resource lists this server: the source address of SNATed replies.
    pub vip: [u32; 4],
    pub resource_id: u32,
    pub server_id: u32,
}
const _: () = assert!(size_of::<ReturnValue>() == 24);

/// The single element of [`map_names::CONFIG`]. A zero field means "use the default": the
/// writer resolves it ([`DataplaneConfig::resolved`]) before the map is written, so the program
/// reads the entry as it is, with no check per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Idle time after which a TCP flow is forgotten.
    pub tcp_idle_ns: u64,
    /// Idle time after which a TCP flow that saw a FIN is forgotten.
    pub tcp_closing_ns: u64,
    /// Idle time after which a UDP flow is forgotten.
    pub udp_idle_ns: u64,
    /// Idle time after which an ICMP echo flow is forgotten.
    pub icmp_idle_ns: u64,
    /// Passive health: a server whose oldest unanswered new-connection SYN is at least this
    /// old, with at least `passive_min` SYNs unanswered, is reported to the controller.
    pub passive_window_ns: u64,
    /// Passive health: at most one report per server per this time.
    pub passive_rearm_ns: u64,
    /// Passive health: SYNs unanswered (or RSTs in a row) before a report; `u32::MAX`: off.
    pub passive_min: u32,
    /// Changed by the controller's map writer whenever a resource key is removed or given to
    /// another resource id, or a server slot changes address: a flow entry checked under an
    /// older epoch takes the slow path once (resource lookup) and is re-stamped. Not a setting:
    /// the writer keeps the value in the map across configuration writes.
    pub epoch: u32,
    /// How long a FIB answer (egress interface and MACs for a destination) is reused before the
    /// program asks the FIB again; `u64::MAX`: never cache.
    pub nexthop_ttl_ns: u64,
}
const _: () = assert!(size_of::<DataplaneConfig>() == 64);

pub const DEFAULT_TCP_IDLE_NS: u64 = 900 * 1_000_000_000;
pub const DEFAULT_TCP_CLOSING_NS: u64 = 10 * 1_000_000_000;
pub const DEFAULT_UDP_IDLE_NS: u64 = 60 * 1_000_000_000;
pub const DEFAULT_ICMP_IDLE_NS: u64 = 30 * 1_000_000_000;
pub const DEFAULT_PASSIVE_WINDOW_NS: u64 = 20 * 1_000_000;
pub const DEFAULT_PASSIVE_REARM_NS: u64 = 250 * 1_000_000;
pub const DEFAULT_PASSIVE_MIN: u32 = 3;
pub const DEFAULT_NEXTHOP_TTL_NS: u64 = 1_000_000_000;
/// `nexthop_ttl_ns` value that turns the next-hop cache off.
pub const NEXTHOP_CACHE_OFF: u64 = u64::MAX;
/// Entries of the next-hop cache.
pub const NEXTHOP_CAPACITY: u32 = 65_536;
/// `passive_min` value that turns passive reports off.
pub const PASSIVE_OFF: u32 = u32::MAX;

impl Default for DataplaneConfig {
    fn default() -> Self {
        Self {
            tcp_idle_ns: DEFAULT_TCP_IDLE_NS,
            tcp_closing_ns: DEFAULT_TCP_CLOSING_NS,
            udp_idle_ns: DEFAULT_UDP_IDLE_NS,
            icmp_idle_ns: DEFAULT_ICMP_IDLE_NS,
            passive_window_ns: DEFAULT_PASSIVE_WINDOW_NS,
            passive_rearm_ns: DEFAULT_PASSIVE_REARM_NS,
            passive_min: DEFAULT_PASSIVE_MIN,
            epoch: 0,
            nexthop_ttl_ns: DEFAULT_NEXTHOP_TTL_NS,
        }
    }
}

impl DataplaneConfig {
    /// This configuration with every zero field replaced by its default.
    pub fn resolved(self) -> Self {
        let d = Self::default();
        let or = |v: u64, def: u64| if v == 0 { def } else { v };
        Self {
            tcp_idle_ns: or(self.tcp_idle_ns, d.tcp_idle_ns),
            tcp_closing_ns: or(self.tcp_closing_ns, d.tcp_closing_ns),
            udp_idle_ns: or(self.udp_idle_ns, d.udp_idle_ns),
            icmp_idle_ns: or(self.icmp_idle_ns, d.icmp_idle_ns),
            passive_window_ns: or(self.passive_window_ns, d.passive_window_ns),
            passive_rearm_ns: or(self.passive_rearm_ns, d.passive_rearm_ns),
            passive_min: if self.passive_min == 0 {
                d.passive_min
            } else {
                self.passive_min
            },
            epoch: self.epoch,
            nexthop_ttl_ns: or(self.nexthop_ttl_ns, d.nexthop_ttl_ns),
        }
    }
}

/// Key of [`map_names::NEXTHOP`]: where a packet to `dst` that came in on `ingress` goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct NexthopKey {
    /// Destination address, network byte order.
    pub dst: [u32; 4],
    pub ingress: u32,
    pub family: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(size_of::<NexthopKey>() == 24);

/// Value of [`map_names::NEXTHOP`]: a FIB answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NexthopValue {
    /// `bpf_ktime_get_coarse_ns()` when the FIB answered.
    pub learned_ns: u64,
    pub egress: u32,
    /// The path MTU the FIB gave for this destination (route metrics and learned PMTU
    /// included): a larger packet gets "fragmentation needed" / "packet too big", or is left
    /// to the kernel to fragment.
    pub mtu: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub _pad: [u8; 4],
}
const _: () = assert!(size_of::<NexthopValue>() == 32);

/// Passive health of one server (element of [`map_names::PASSIVE`]). Updated by every CPU
/// without atomics: a lost update only delays or advances a report by a packet, and a report
/// only makes the controller probe the server at once; it never marks a server down.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PassiveState {
    /// `bpf_ktime_get_ns()` of the oldest SYN not answered yet (valid when `unanswered > 0`).
    pub unanswered_since_ns: u64,
    /// Last report about this server.
    pub last_report_ns: u64,
    /// New-connection SYNs forwarded since the server last answered anything but a RST.
    pub unanswered: u32,
    /// RSTs from the server in a row.
    pub rsts: u32,
}
const _: () = assert!(size_of::<PassiveState>() == 24);

/// The server stopped answering new connections: SYNs left unanswered.
pub const PASSIVE_UNANSWERED: u32 = 1;
/// The server refuses new connections: RSTs in a row.
pub const PASSIVE_RST: u32 = 2;
/// Size of the events ring buffer.
pub const EVENTS_BYTES: u32 = 64 * 1024;

/// A passive health report (record of [`map_names::EVENTS`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct PassiveEvent {
    pub server_id: u32,
    /// `PASSIVE_UNANSWERED` or `PASSIVE_RST`.
    pub kind: u32,
    /// SYNs unanswered or RSTs in a row.
    pub count: u32,
    /// How long the oldest SYN has been unanswered, in microseconds (0 for RSTs).
    pub age_us: u32,
}
const _: () = assert!(size_of::<PassiveEvent>() == 16);

/// Per-resource counters (element of [`map_names::RESOURCE_STATS`], per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ResourceStats {
    /// Client -> server packets and bytes (frame length) forwarded.
    pub packets: u64,
    pub bytes: u64,
    /// Flows created (first packet, or after idle/close).
    pub new_flows: u64,
    /// Server -> client packets and bytes SNATed back to the VIP.
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Flows moved because their server was marked down.
    pub flows_moved: u64,
    /// Packets dropped because the resource had no live server (drop policy).
    pub drop_no_server: u64,
    /// Packets answered with a TCP RST or ICMP unreachable (reject policy).
    pub reject_no_server: u64,
}
const _: () = assert!(size_of::<ResourceStats>() == 64);

/// Per-server counters (element of [`map_names::SERVER_STATS`], per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct ServerStats {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    /// Flows that left this server because it was marked down.
    pub flows_moved_away: u64,
    /// ICMP errors about flows of this server translated (either direction).
    pub icmp_errors: u64,
    pub _reserved: u64,
}
const _: () = assert!(size_of::<ServerStats>() == 64);

/// Indices of [`map_names::GLOBAL_STATS`]: what happened to every packet the program saw.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalCounter {
    /// Every packet the program saw.
    Packets = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, VLAN-tagged, ...): passed.
    PassNotIp,
    /// Truncated or malformed headers: passed untouched.
    PassMalformed,
    /// IPv4 fragment or IPv6 fragment header neither to a VIP with one resource for its
    /// protocol nor from a server with a fragment entry: passed untouched.
    PassFragment,
    /// IPv6 extension header before the transport header: passed untouched.
    PassIpv6Ext,
    /// Not addressed to a resource nor a reply of a known flow: passed.
    PassNoMatch,
    /// TTL / hop limit would expire at the gateway: passed for the kernel to answer.
    PassTtl,
    /// NATed, neighbour not resolved yet: passed (rewritten) for the kernel to resolve.
    PassNoNeigh,
    /// NATed, FIB lookup failed otherwise (no route, forwarding off): passed rewritten.
    PassFibOther,
    /// ICMP error not about a known flow: passed.
    PassIcmpUnmatched,
    /// NATed and sent back out of the ingress interface.
    Tx,
    /// NATed and redirected through the devmap.
    Redirect,
    /// NATed, egress interface is not in the devmap: passed rewritten for the kernel to forward.
    PassNotInDevmap,
    /// Resource without live server, drop policy.
    DropNoServer,
    /// Resource without live server, answered with a TCP RST.
    RejectTcpRst,
    /// Resource without live server, answered with an ICMP unreachable.
    RejectIcmp,
    /// Resource without live server and reject policy, but the packet could not be answered
    /// (IPv4 options, unsupported ICMP type): dropped.
    DropRejectFailed,
    /// ICMP errors translated (client->server and server->client).
    IcmpErrorTranslated,
    /// Flows moved because their server was marked down.
    FlowsMoved,
    /// Flows ended by a TCP RST.
    FlowsReset,
    /// A server's packet to an address of the gateway itself (its health checks): passed
    /// untouched, not SNATed.
    PassLocal,
    /// Larger than the egress path's MTU with DF set (IPv4) or IPv6: answered with ICMP
    /// "fragmentation needed" / ICMPv6 "packet too big" quoting the packet as it was sent.
    IcmpTooBig,
    /// Larger than the egress path's MTU, IPv4 without DF: rewritten and passed for the kernel
    /// to fragment.
    PassFragmentable,
    /// Flows moved from the pending table to the flow table (their second packet).
    FlowsPromoted,
    /// Client packets of established flows forwarded by the one-lookup fast path (also counted
    /// in `Tx` or `Redirect`).
    FastForward,
    /// Fragments to a VIP DNATed to its resource's current server (the VIP has one resource
    /// for the protocol; also counted in `Tx` or `Redirect`).
    FragmentForward,
}

/// Number of [`GlobalCounter`] slots.
pub const GLOBAL_COUNTERS: u32 = GlobalCounter::FragmentForward as u32 + 1;

impl GlobalCounter {
    /// Every counter, in index order (for the controller's exporters and the tests).
    pub const ALL: [GlobalCounter; GLOBAL_COUNTERS as usize] = [
        Self::Packets,
        Self::PassNotIp,
        Self::PassMalformed,
        Self::PassFragment,
        Self::PassIpv6Ext,
        Self::PassNoMatch,
        Self::PassTtl,
        Self::PassNoNeigh,
        Self::PassFibOther,
        Self::PassIcmpUnmatched,
        Self::Tx,
        Self::Redirect,
        Self::PassNotInDevmap,
        Self::DropNoServer,
        Self::RejectTcpRst,
        Self::RejectIcmp,
        Self::DropRejectFailed,
        Self::IcmpErrorTranslated,
        Self::FlowsMoved,
        Self::FlowsReset,
        Self::PassLocal,
        Self::IcmpTooBig,
        Self::PassFragmentable,
        Self::FlowsPromoted,
        Self::FastForward,
        Self::FragmentForward,
    ];

    /// Stable snake_case name (metrics label).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Packets => "packets",
            Self::PassNotIp => "pass_not_ip",
            Self::PassMalformed => "pass_malformed",
            Self::PassFragment => "pass_fragment",
            Self::PassIpv6Ext => "pass_ipv6_ext",
            Self::PassNoMatch => "pass_no_match",
            Self::PassTtl => "pass_ttl",
            Self::PassNoNeigh => "pass_no_neigh",
            Self::PassFibOther => "pass_fib_other",
            Self::PassIcmpUnmatched => "pass_icmp_unmatched",
            Self::Tx => "tx",
            Self::Redirect => "redirect",
            Self::PassNotInDevmap => "pass_not_in_devmap",
            Self::DropNoServer => "drop_no_server",
            Self::RejectTcpRst => "reject_tcp_rst",
            Self::RejectIcmp => "reject_icmp",
            Self::DropRejectFailed => "drop_reject_failed",
            Self::IcmpErrorTranslated => "icmp_error_translated",
            Self::FlowsMoved => "flows_moved",
            Self::FlowsReset => "flows_reset",
            Self::PassLocal => "pass_local",
            Self::IcmpTooBig => "icmp_too_big",
            Self::PassFragmentable => "pass_fragmentable",
            Self::FlowsPromoted => "flows_promoted",
            Self::FastForward => "fast_forward",
            Self::FragmentForward => "fragment_forward",
        }
    }
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY (all impls): `#[repr(C)]`, only integer fields and arrays of them, padding explicit,
    // every bit pattern valid.
    unsafe impl aya::Pod for ResourceKey {}
    unsafe impl aya::Pod for ResourceValue {}
    unsafe impl aya::Pod for ServerValue {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowValue {}
    unsafe impl aya::Pod for ReturnKey {}
    unsafe impl aya::Pod for ReturnValue {}
    unsafe impl aya::Pod for DataplaneConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for PassiveState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NexthopKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NexthopValue {}
    unsafe impl aya::Pod for ResourceStats {}
    unsafe impl aya::Pod for ServerStats {}
}

/// Address helpers shared by both sides (pure, `no_std`).
pub mod addr {
    /// The `[u32; 4]` form of an IPv4 address given as its 4 octets.
    pub const fn v4(octets: [u8; 4]) -> [u32; 4] {
        [u32::from_ne_bytes(octets), 0, 0, 0]
    }

    /// The `[u32; 4]` form of an IPv6 address given as its 16 octets.
    pub const fn v6(o: [u8; 16]) -> [u32; 4] {
        [
            u32::from_ne_bytes([o[0], o[1], o[2], o[3]]),
            u32::from_ne_bytes([o[4], o[5], o[6], o[7]]),
            u32::from_ne_bytes([o[8], o[9], o[10], o[11]]),
            u32::from_ne_bytes([o[12], o[13], o[14], o[15]]),
        ]
    }

    /// Octets of an address stored by [`v6`] (or [`v4`]: the first 4 octets).
    pub const fn octets(a: [u32; 4]) -> [u8; 16] {
        let w0 = a[0].to_ne_bytes();
        let w1 = a[1].to_ne_bytes();
        let w2 = a[2].to_ne_bytes();
        let w3 = a[3].to_ne_bytes();
        [
            w0[0], w0[1], w0[2], w0[3], w1[0], w1[1], w1[2], w1[3], w2[0], w2[1], w2[2], w2[3],
            w3[0], w3[1], w3[2], w3[3],
        ]
    }
}

#[cfg(test)]
extern crate std;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_names_fit_the_kernel_limit() {
        for name in map_names::ALL {
            assert!(name.len() <= 15, "{name} is longer than 15 characters");
        }
        assert!(PROGRAM_NAME.len() <= 15);
    }

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, c) in GlobalCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{}", c.name());
        }
    }

    #[test]
    fn zero_settings_resolve_to_their_defaults_and_others_stay() {
        let zero = DataplaneConfig {
            tcp_idle_ns: 0,
            tcp_closing_ns: 0,
            udp_idle_ns: 0,
            icmp_idle_ns: 0,
            passive_window_ns: 0,
            passive_rearm_ns: 0,
            passive_min: 0,
            epoch: 0,
            nexthop_ttl_ns: 0,
        };
        assert_eq!(zero.resolved(), DataplaneConfig::default());
        let set = DataplaneConfig {
            tcp_idle_ns: 7,
            passive_min: PASSIVE_OFF,
            nexthop_ttl_ns: NEXTHOP_CACHE_OFF,
            ..zero
        };
        let r = set.resolved();
        assert_eq!(
            (r.tcp_idle_ns, r.passive_min, r.nexthop_ttl_ns),
            (7, PASSIVE_OFF, NEXTHOP_CACHE_OFF)
        );
        assert_eq!(r.udp_idle_ns, DEFAULT_UDP_IDLE_NS);
    }

    #[test]
    fn the_address_filter_maps_each_half_to_its_own_words_and_spreads_addresses() {
        let half = ADDR_FILTER_WORDS / 2;
        let mut bits = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            let a = addr::v4([198, 18, (i >> 8) as u8, i as u8]);
            let (w, m) = addr_filter(&a, ADDR_VIP);
            let (ws, ms) = addr_filter(&a, ADDR_SERVER);
            assert!(w < half && (half..ADDR_FILTER_WORDS).contains(&ws), "{i}");
            assert_eq!((ws - half, ms), (w, m), "{i}: both halves use the same bit");
            assert_eq!(m.count_ones(), 1);
            bits.insert((w, m));
        }
        // 10,000 consecutive addresses on 2^20 bits: almost no two share one.
        assert!(bits.len() > 9_900, "{} distinct bits", bits.len());
    }

    #[test]
    fn address_round_trip() {
        let o = [0x20, 0x01, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert_eq!(addr::octets(addr::v6(o)), o);
        assert_eq!(
            &addr::octets(addr::v4([198, 18, 0, 1]))[..4],
            &[198, 18, 0, 1]
        );
    }
}

// =============================================================================================
// Bench-only items (`cargo xtask bench`, tests/src/bench/xdp/ and ftn-ebpf/src/bench.rs).
// The dataplane never uses them: the bench programs are an object of their own
// (`ftn-bench-ebpf`), whose wrapper tail-calls `ftn_xdp` of the dataplane's object.
// =============================================================================================

/// Bench-only programs and maps.
pub mod bench {
    use core::mem::size_of;

    /// Wrapper: restores the frame from [`FRAME_MAP`] over the packet (optionally with a new
    /// client port every run), then tail-calls slot 0 of [`JUMP_MAP`].
    pub const PROG_WRAP: &str = "ftn_bench_wrap";
    /// MAC swap + `XDP_TX`: the floor of the per-packet cost.
    pub const PROG_FLOOR: &str = "ftn_bench_floor";
    /// `XDP_TX` and nothing else: with the wrapper, measures the wrapper's own cost.
    pub const PROG_NOP: &str = "ftn_bench_nop";
    /// Traffic generator for `BPF_F_TEST_XDP_LIVE_FRAMES`: restores the frame, `XDP_TX`.
    pub const PROG_GEN: &str = "ftn_bench_gen";
    /// Receiver: counts the frames that match [`SINK_MAP`] (slot 0 of [`COUNT_MAP`]) and the
    /// others (slot 1), drops everything.
    pub const PROG_SINK: &str = "ftn_bench_sink";

    /// `Array<BenchFrame>` with one element.
    pub const FRAME_MAP: &str = "FTN_BENCH_FRAME";
    /// `ProgramArray` with one slot: the program under test.
    pub const JUMP_MAP: &str = "FTN_BENCH_JMP";
    /// `PerCpuArray<u64>` with [`COUNT_SLOTS`] slots: frames the sink matched / did not match.
    pub const COUNT_MAP: &str = "FTN_BENCH_CNT";
    /// `Array<BenchSink>` with one element: what the sink counts.
    pub const SINK_MAP: &str = "FTN_BENCH_SINK";

    pub const COUNT_SLOTS: u32 = 2;
    /// Largest frame the wrapper and the generator restore.
    pub const FRAME_MAX: usize = 128;

    /// The frame the wrapper / generator writes over the packet before every run.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct BenchFrame {
        /// Bytes of `data` to restore, 14..=FRAME_MAX (the packet must be exactly this long).
        pub len: u32,
        /// When not 0: offset of a 16-bit port (network order) in the frame to which `seq` is
        /// added every run, and ...
        pub port_at: u32,
        /// ... offset of the checksum that covers it, fixed incrementally (RFC 1624).
        pub csum_at: u32,
        /// Runs so far while `port_at` is set (the program increments it).
        pub seq: u32,
        pub data: [u8; FRAME_MAX],
    }
    const _: () = assert!(size_of::<BenchFrame>() == 16 + FRAME_MAX);

    impl Default for BenchFrame {
        fn default() -> Self {
            Self {
                len: 0,
                port_at: 0,
                csum_at: 0,
                seq: 0,
                data: [0; FRAME_MAX],
            }
        }
    }

    /// What the sink counts as delivered: IPv4 (no options), protocol, destination address and
    /// port.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
    pub struct BenchSink {
        /// Destination IPv4 address, network byte order (as in the packet).
        pub addr: u32,
        /// Destination port, network byte order.
        pub port: u16,
        pub proto: u8,
        pub _pad: u8,
    }
    const _: () = assert!(size_of::<BenchSink>() == 8);

    #[cfg(feature = "user")]
    mod user {
        // SAFETY (both): `#[repr(C)]`, integer fields and arrays only, padding explicit.
        unsafe impl aya::Pod for super::BenchFrame {}
        unsafe impl aya::Pod for super::BenchSink {}
    }
}
