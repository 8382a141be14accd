//! The real dataplane: ftn's XDP program loaded and attached through aya.
//!
//! Lifecycle:
//! - [`AyaDataplane::load`] loads the embedded object, attaches `ftn_xdp` to every interface
//!   (native XDP, falling back to generic in `auto` mode), fills the devmap and, with a pin
//!   directory, pins every map (`<dir>/<MAP_NAME>`) and every link (`<dir>/link_<ifname>`), so
//!   the dataplane keeps forwarding while the controller is stopped or restarting.
//! - [`AyaDataplane::adopt`] opens the pinned maps of a running dataplane without touching the
//!   program, its links or a single flow.
//! - [`AyaDataplane::open`] adopts when a complete pinned dataplane exists, else loads.
//! - [`detach`] unpins the links (which detaches XDP) and removes the pinned maps.
//! - [`AyaDataplane::follow_interfaces`] keeps the attachments on the interfaces that have the
//!   configured names now. An interface deleted and created again (a driver reload, a re-created
//!   bond or VLAN) gets a new ifindex; the kernel has detached the old link (it stays pinned,
//!   defunct) and removed the old devmap entry. Following attaches the program to the new
//!   interface, pins the new link in place of the old one and fills the devmap again. The
//!   program itself is pinned (`<dir>/prog_ftn_xdp`) so that an adopted dataplane can do it too.

mod attach;
mod batch;
mod counters;

pub use counters::AyaCounters;

pub use attach::{detach, InterfaceState};
use attach::{ifindex, pinned_links};

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{
        Array, DevMapHash, HashMap, IterableMap as _, Map, MapData, PerCpuArray, PerCpuValues,
        RingBuf,
    },
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use ftn_common::{
    addr_filter, map_names, FlowKey, FlowValue, NexthopKey, NexthopValue, PassiveState,
    ResourceKey, ResourceValue, ReturnKey, ReturnValue, ServerValue, ADDR_FILTER_WORDS,
    ADDR_SERVER, ADDR_VIP, DEFAULT_FLOW_CAPACITY, DEFAULT_PENDING_CAPACITY, PROGRAM_NAME,
};

use super::{
    apply_one, check_resource_id, check_server_id, Change, Dataplane, DataplaneConfig,
    DataplaneError, FragmentTarget, GlobalCounter, ResourceAssignment, ResourceStats, ReturnTarget,
    ServerEntry, ServerStats,
};
use crate::model::{ResourceMatch, ReturnMatch, XdpAttachMode};

/// Options of [`AyaDataplane::load`].
#[derive(Clone, Debug)]
pub struct AyaOptions {
    /// Interfaces to attach to (may be empty: load only, e.g. for packet tests).
    pub interfaces: Vec<String>,
    pub mode: XdpAttachMode,
    /// Pin maps and links here; `None`: nothing pinned, everything goes away on drop.
    pub pin_dir: Option<PathBuf>,
    /// Capacity of the flow table.
    pub flow_capacity: u32,
    /// Capacity of the pending table (flows that sent one packet).
    pub pending_capacity: u32,
}

impl Default for AyaOptions {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: XdpAttachMode::Auto,
            pin_dir: None,
            flow_capacity: DEFAULT_FLOW_CAPACITY,
            pending_capacity: DEFAULT_PENDING_CAPACITY,
        }
    }
}

/// An interface the program is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attached {
    pub interface: String,
    pub ifindex: u32,
    /// The mode that worked (`Native` or `Generic`).
    pub mode: XdpAttachMode,
}

pub struct AyaDataplane {
    /// The loaded object (None when adopted from pins: the program is the pinned one).
    ebpf: Option<Ebpf>,
    resources: HashMap<MapData, ResourceKey, ResourceValue>,
    servers: Array<MapData, ServerValue>,
    config: Array<MapData, DataplaneConfig>,
    res_stats: PerCpuArray<MapData, ResourceStats>,
    srv_stats: PerCpuArray<MapData, ServerStats>,
    global: PerCpuArray<MapData, u64>,
    devmap: DevMapHash<MapData>,
    flows: HashMap<MapData, FlowKey, FlowValue>,
    returns: HashMap<MapData, ReturnKey, ReturnValue>,
    pending: HashMap<MapData, FlowKey, FlowValue>,
    passive: Array<MapData, PassiveState>,
    /// The FIB answers the program caches; flushed when an interface is replaced (a cached
    /// answer names the old ifindex and MACs).
    nexthop: HashMap<MapData, NexthopKey, NexthopValue>,
    /// The address filter (`map_names::ADDRS`) and this process's copy of it: a bit is written
    /// only when it is not set yet, so rewriting a key costs no extra syscall.
    addrs: Array<MapData, u64>,
    addr_bits: Vec<u64>,
    /// Passive health reports; taken by the controller's reader task.
    events: Option<RingBuf<MapData>>,
    attached: Vec<Attached>,
    /// Links pinned by this process (kept so they are not detached on drop).
    _pinned_links: Vec<PinnedLink>,
    adopted: bool,
    /// The pinned program of an adopted dataplane (None when loaded here, or when the pins
    /// predate the program's pin): what re-attaching uses.
    pinned_program: Option<Xdp>,
    /// What to follow: the configured interfaces, their mode, the pin directory.
    follow: AyaOptions,
}

/// The pinned program's file in the pin directory.
fn program_pin_path(dir: &Path) -> PathBuf {
    dir.join(format!("prog_{PROGRAM_NAME}"))
}

fn map_err(
    map: &'static str,
    op: &'static str,
) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map {
        map,
        op,
        source: Box::new(source),
    }
}

fn pin_err(path: &Path, e: impl std::fmt::Display) -> DataplaneError {
    DataplaneError::Pin {
        path: path.display().to_string(),
        detail: e.to_string(),
    }
}

/// True when `dir` holds every pinned map and at least one pinned link.
pub fn pinned_dataplane_exists(dir: &Path) -> bool {
    map_names::ALL.iter().all(|n| dir.join(n).exists())
        && pinned_links(dir).map(|l| !l.is_empty()).unwrap_or(false)
}

fn typed<T>(map: Map, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    T::try_from(map).map_err(map_err(name, "open"))
}

impl AyaDataplane {
    /// Adopts a pinned dataplane if `opts.pin_dir` holds one, else loads and attaches.
    pub fn open(opts: &AyaOptions) -> Result<Self, DataplaneError> {
        if let Some(dir) = &opts.pin_dir {
            if pinned_dataplane_exists(dir) {
                let mut dp = Self::adopt(dir)?;
                dp.follow = opts.clone();
                return Ok(dp);
            }
        }
        Self::load(opts)
    }

    /// Loads the embedded program and its maps, attaches, and pins (see module docs).
    pub fn load(opts: &AyaOptions) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        loader
            .map_max_entries(map_names::FLOWS, opts.flow_capacity)
            .map_max_entries(map_names::PENDING, opts.pending_capacity);
        let mut ebpf = loader
            .load(super::ebpf_object()?)
            .map_err(|e| DataplaneError::Load(Box::new(e)))?;
        {
            let prog = xdp_program(&mut ebpf)?;
            prog.load()
                .map_err(|e| DataplaneError::Program(Box::new(e)))?;
        }
        if let Some(dir) = &opts.pin_dir {
            // A fresh load replaces whatever half-state an earlier run left (no links: nothing
            // is forwarding with it).
            if dir.exists() {
                detach(dir)?;
            }
            fs::create_dir_all(dir).map_err(|e| pin_err(dir, e))?;
            let p = program_pin_path(dir);
            xdp_program(&mut ebpf)?
                .pin(&p)
                .map_err(|e| pin_err(&p, e))?;
        }
        let mut take = |name: &'static str| -> Result<Map, DataplaneError> {
            let map = ebpf.take_map(name).ok_or(DataplaneError::MissingInObject {
                what: "map",
                name: name.to_string(),
            })?;
            if let Some(dir) = &opts.pin_dir {
                let p = dir.join(name);
                map.pin(&p).map_err(|e| pin_err(&p, e))?;
            }
            Ok(map)
        };
        let resources = typed(take(map_names::RESOURCES)?, map_names::RESOURCES)?;
        let servers = typed(take(map_names::SERVERS)?, map_names::SERVERS)?;
        let config = typed(take(map_names::CONFIG)?, map_names::CONFIG)?;
        let res_stats = typed(take(map_names::RESOURCE_STATS)?, map_names::RESOURCE_STATS)?;
        let srv_stats = typed(take(map_names::SERVER_STATS)?, map_names::SERVER_STATS)?;
        let global = typed(take(map_names::GLOBAL_STATS)?, map_names::GLOBAL_STATS)?;
        let devmap = typed(take(map_names::DEVMAP)?, map_names::DEVMAP)?;
        let flows = typed(take(map_names::FLOWS)?, map_names::FLOWS)?;
        let returns = typed(take(map_names::RETURN)?, map_names::RETURN)?;
        let pending = typed(take(map_names::PENDING)?, map_names::PENDING)?;
        let passive = typed(take(map_names::PASSIVE)?, map_names::PASSIVE)?;
        let events = Some(typed(take(map_names::EVENTS)?, map_names::EVENTS)?);
        // Pinned with the rest (an adopted dataplane keeps its cache); only flushed here.
        let nexthop = typed(take(map_names::NEXTHOP)?, map_names::NEXTHOP)?;
        let addrs = typed(take(map_names::ADDRS)?, map_names::ADDRS)?;
        let mut dp = AyaDataplane {
            ebpf: Some(ebpf),
            resources,
            servers,
            config,
            res_stats,
            srv_stats,
            global,
            devmap,
            flows,
            returns,
            pending,
            passive,
            nexthop,
            addrs,
            addr_bits: vec![0; ADDR_FILTER_WORDS as usize],
            events,
            attached: Vec::new(),
            _pinned_links: Vec::new(),
            adopted: false,
            pinned_program: None,
            follow: opts.clone(),
        };
        dp.set_config(&DataplaneConfig::default())?;
        for interface in &opts.interfaces {
            if let Err(e) = dp.attach(interface, opts.mode, opts.pin_dir.as_deref()) {
                // Nothing half-applied: unpin what this load pinned (links already attached
                // are detached with it) before reporting the error.
                drop(dp);
                if let Some(dir) = &opts.pin_dir {
                    if let Err(clean) = detach(dir) {
                        tracing::warn!(error = %clean, "clean-up after a failed load");
                    }
                }
                return Err(e);
            }
        }
        Ok(dp)
    }

    /// Opens the maps of a dataplane pinned under `dir`; the program and links stay as they are.
    pub fn adopt(dir: &Path) -> Result<Self, DataplaneError> {
        let open = |name: &'static str| -> Result<Map, DataplaneError> {
            let p = dir.join(name);
            let data = MapData::from_pin(&p).map_err(|e| pin_err(&p, e))?;
            Map::from_map_data(data).map_err(map_err(name, "open pinned"))
        };
        let mut attached = Vec::new();
        for path in pinned_links(dir).map_err(|e| pin_err(dir, e))? {
            // Opening checks the link is real; the pin keeps it alive.
            PinnedLink::from_pin(&path).map_err(|e| pin_err(&path, e))?;
            let name = path
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .to_string();
            let interface = name.trim_start_matches("link_").to_string();
            let ifindex = ifindex(&interface).unwrap_or(0);
            attached.push(Attached {
                interface,
                ifindex,
                mode: XdpAttachMode::Auto,
            });
        }
        let addrs: Array<MapData, u64> = typed(open(map_names::ADDRS)?, map_names::ADDRS)?;
        let addr_bits = (0..ADDR_FILTER_WORDS)
            .map(|i| addrs.get(&i, 0))
            .collect::<Result<Vec<u64>, _>>()
            .map_err(map_err(map_names::ADDRS, "read"))?;
        Ok(AyaDataplane {
            ebpf: None,
            addrs,
            addr_bits,
            resources: typed(open(map_names::RESOURCES)?, map_names::RESOURCES)?,
            servers: typed(open(map_names::SERVERS)?, map_names::SERVERS)?,
            config: typed(open(map_names::CONFIG)?, map_names::CONFIG)?,
            res_stats: typed(open(map_names::RESOURCE_STATS)?, map_names::RESOURCE_STATS)?,
            srv_stats: typed(open(map_names::SERVER_STATS)?, map_names::SERVER_STATS)?,
            global: typed(open(map_names::GLOBAL_STATS)?, map_names::GLOBAL_STATS)?,
            devmap: typed(open(map_names::DEVMAP)?, map_names::DEVMAP)?,
            flows: typed(open(map_names::FLOWS)?, map_names::FLOWS)?,
            returns: typed(open(map_names::RETURN)?, map_names::RETURN)?,
            pending: typed(open(map_names::PENDING)?, map_names::PENDING)?,
            passive: typed(open(map_names::PASSIVE)?, map_names::PASSIVE)?,
            nexthop: typed(open(map_names::NEXTHOP)?, map_names::NEXTHOP)?,
            events: Some(typed(open(map_names::EVENTS)?, map_names::EVENTS)?),
            attached,
            _pinned_links: Vec::new(),
            adopted: true,
            pinned_program: Xdp::from_pin(
                program_pin_path(dir),
                aya_obj::programs::XdpAttachType::Interface,
            )
            .ok(),
            follow: AyaOptions {
                pin_dir: Some(dir.to_path_buf()),
                ..AyaOptions::default()
            },
        })
    }

    pub fn attached(&self) -> &[Attached] {
        &self.attached
    }

    /// True when this dataplane was adopted from pinned objects.
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The XDP program (loaded dataplanes only): for `BPF_PROG_TEST_RUN` in tests and benches.
    pub fn program_mut(&mut self) -> Option<&mut Xdp> {
        self.ebpf.as_mut().and_then(|e| xdp_program(e).ok())
    }

    /// The loaded object (for aya-log): None when adopted.
    pub fn ebpf_mut(&mut self) -> Option<&mut Ebpf> {
        self.ebpf.as_mut()
    }

    /// The value stored for a resource match, if any.
    pub fn resource(&self, m: &ResourceMatch) -> Result<Option<ResourceValue>, DataplaneError> {
        match self.resources.get(&m.to_key(), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(map_names::RESOURCES, "get")(e)),
        }
    }

    /// The passive-health report ring (once; the reader task owns it afterwards).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Passive-health state of a server (tests, status).
    pub fn passive_state(&self, id: u32) -> Result<PassiveState, DataplaneError> {
        self.passive
            .get(&id, 0)
            .map_err(map_err(map_names::PASSIVE, "get"))
    }

    /// Every resource match in the resource table.
    pub fn resource_matches(&self) -> Result<Vec<ResourceMatch>, DataplaneError> {
        let keys: Vec<ResourceKey> = self
            .resources
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::RESOURCES, "iterate"))?;
        Ok(keys.iter().filter_map(ResourceMatch::from_key).collect())
    }

    /// Ids of the server slots that hold a server.
    pub fn configured_server_ids(&self) -> Result<Vec<u32>, DataplaneError> {
        let mut out = Vec::new();
        for (id, v) in self.servers.iter().enumerate() {
            let v = v.map_err(map_err(map_names::SERVERS, "iterate"))?;
            if v.family != 0 {
                out.push(id as u32);
            }
        }
        Ok(out)
    }

    /// Every entry of the flow table.
    pub fn flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
        self.flows
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(map_names::FLOWS, "iterate"))
    }

    /// Every entry of the pending table (flows that sent one packet).
    pub fn pending_flows(&self) -> Result<Vec<(FlowKey, FlowValue)>, DataplaneError> {
        self.pending
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(map_names::PENDING, "iterate"))
    }

    /// Entries the flow table holds at most (its `max_entries`).
    pub fn flow_table_entries(&self) -> Result<u32, DataplaneError> {
        let info = self
            .flows
            .map()
            .info()
            .map_err(map_err(map_names::FLOWS, "info"))?;
        Ok(info.max_entries())
    }

    /// Kernel memory of the flow table, in bytes, as the kernel accounts it
    /// (`memlock` in the maps' fdinfo).
    pub fn flow_table_memory(&self) -> Result<u64, DataplaneError> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        let memlock = |m: &MapData| -> Result<u64, DataplaneError> {
            let fd = m.fd().as_fd().as_raw_fd();
            let text = fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
            text.lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| {
                    DataplaneError::Io(std::io::Error::other("no memlock line in the map's fdinfo"))
                })
        };
        memlock(self.flows.map())
    }

    /// Every entry of the next-hop cache (tests, diagnostics).
    pub fn nexthops(&self) -> Result<Vec<(NexthopKey, NexthopValue)>, DataplaneError> {
        self.nexthop
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(map_names::NEXTHOP, "iterate"))
    }

    /// Every (server address, protocol, port) in the return table.
    pub fn return_matches(&self) -> Result<Vec<ReturnMatch>, DataplaneError> {
        let keys: Vec<ReturnKey> = self
            .returns
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::RETURN, "iterate"))?;
        Ok(keys.iter().filter_map(ReturnMatch::from_key).collect())
    }

    /// The return table's entry for a match, if any.
    pub fn return_entry(&self, m: &ReturnMatch) -> Result<Option<ReturnValue>, DataplaneError> {
        match self.returns.get(&m.to_key(), 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(map_names::RETURN, "get")(e)),
        }
    }

    /// Removes every flow (tests; an operator's "forget all flows").
    pub fn clear_flows(&mut self) -> Result<(), DataplaneError> {
        let keys: Vec<FlowKey> = self
            .flows
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::FLOWS, "iterate"))?;
        for k in keys {
            let _ = self.flows.remove(&k);
        }
        let keys: Vec<FlowKey> = self
            .pending
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::PENDING, "iterate"))?;
        for k in keys {
            let _ = self.pending.remove(&k);
        }
        Ok(())
    }

    /// Writes a pending-table entry directly (benches: a table filled to a given share).
    pub fn insert_pending(
        &mut self,
        key: &FlowKey,
        value: &FlowValue,
    ) -> Result<(), DataplaneError> {
        self.pending
            .insert(key, value, 0)
            .map_err(map_err(map_names::PENDING, "insert"))
    }

    /// Entries the pending table holds at most.
    pub fn pending_table_entries(&self) -> Result<u32, DataplaneError> {
        let info = self
            .pending
            .map()
            .info()
            .map_err(map_err(map_names::PENDING, "info"))?;
        Ok(info.max_entries())
    }

    /// Writes a flow entry directly (tests: e.g. an aged flow).
    pub fn insert_flow(&mut self, key: &FlowKey, value: &FlowValue) -> Result<(), DataplaneError> {
        self.flows
            .insert(key, value, 0)
            .map_err(map_err(map_names::FLOWS, "insert"))
    }

    /// Zeroes every counter (tests and benches).
    pub fn reset_stats(&mut self) -> Result<(), DataplaneError> {
        let ncpu = aya::util::nr_cpus().map_err(|(_, e)| DataplaneError::Io(e))?;
        for i in 0..ftn_common::GLOBAL_COUNTERS {
            let v = PerCpuValues::try_from(vec![0u64; ncpu]).map_err(DataplaneError::Io)?;
            self.global
                .set(i, v, 0)
                .map_err(map_err(map_names::GLOBAL_STATS, "set"))?;
        }
        Ok(())
    }
}

impl AyaDataplane {
    /// The flow epoch the program holds now (`DataplaneConfig::epoch`).
    pub fn epoch(&self) -> Result<u32, DataplaneError> {
        Ok(self
            .config
            .get(&0, 0)
            .map_err(map_err(map_names::CONFIG, "get"))?
            .epoch)
    }

    /// Sets `addr`'s bit in the address filter's half `kind`, unless it is set already.
    fn set_addr_bit(&mut self, addr: &[u32; 4], kind: u32) -> Result<(), DataplaneError> {
        let (word, mask) = addr_filter(addr, kind);
        let w = &mut self.addr_bits[word as usize];
        if *w & mask != 0 {
            return Ok(());
        }
        self.addrs
            .set(word, *w | mask, 0)
            .map_err(map_err(map_names::ADDRS, "set"))?;
        *w |= mask;
        Ok(())
    }
}

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let missing = || DataplaneError::MissingInObject {
        what: "XDP program",
        name: PROGRAM_NAME.to_string(),
    };
    let prog = ebpf.program_mut(PROGRAM_NAME).ok_or_else(missing)?;
    prog.try_into().map_err(|_| missing())
}

fn sum_res(v: &[ResourceStats]) -> ResourceStats {
    v.iter().fold(ResourceStats::default(), |mut a, s| {
        a.packets += s.packets;
        a.bytes += s.bytes;
        a.new_flows += s.new_flows;
        a.reply_packets += s.reply_packets;
        a.reply_bytes += s.reply_bytes;
        a.flows_moved += s.flows_moved;
        a.drop_no_server += s.drop_no_server;
        a.reject_no_server += s.reject_no_server;
        a
    })
}

fn sum_srv(v: &[ServerStats]) -> ServerStats {
    v.iter().fold(ServerStats::default(), |mut a, s| {
        a.packets += s.packets;
        a.bytes += s.bytes;
        a.new_flows += s.new_flows;
        a.reply_packets += s.reply_packets;
        a.reply_bytes += s.reply_bytes;
        a.flows_moved_away += s.flows_moved_away;
        a.icmp_errors += s.icmp_errors;
        a
    })
}

impl Dataplane for AyaDataplane {
    fn follow_interfaces(&mut self) -> Vec<InterfaceState> {
        AyaDataplane::follow_interfaces(self)
    }

    fn set_server(&mut self, id: u32, server: &ServerEntry) -> Result<(), DataplaneError> {
        check_server_id(id)?;
        // A server whose state changes starts its passive-health record afresh.
        self.passive
            .set(id, PassiveState::default(), 0)
            .map_err(map_err(map_names::PASSIVE, "reset"))?;
        self.servers
            .set(id, server.to_value(), 0)
            .map_err(map_err(map_names::SERVERS, "set"))
    }

    fn remove_server(&mut self, id: u32) -> Result<(), DataplaneError> {
        check_server_id(id)?;
        self.servers
            .set(id, ServerValue::default(), 0)
            .map_err(map_err(map_names::SERVERS, "clear"))?;
        self.passive
            .set(id, PassiveState::default(), 0)
            .map_err(map_err(map_names::PASSIVE, "reset"))
    }

    fn set_resource(
        &mut self,
        m: &ResourceMatch,
        a: &ResourceAssignment,
    ) -> Result<(), DataplaneError> {
        self.check_assignment(m, a, &mut std::collections::HashMap::new())?;
        // The filter bit before the key: the program looks the key up only when it is set.
        self.set_addr_bit(&m.to_key().vip, ADDR_VIP)?;
        self.resources
            .insert(m.to_key(), a.to_value(), 0)
            .map_err(map_err(map_names::RESOURCES, "insert"))
    }

    /// Runs of two or more resource entries (a failover's) are written with one
    /// `BPF_MAP_UPDATE_BATCH` each; everything else one change at a time, in order.
    fn apply(&mut self, changes: &[Change]) -> Result<(), (usize, DataplaneError)> {
        let mut i = 0;
        while i < changes.len() {
            let run: Vec<_> = changes[i..]
                .iter()
                .map_while(|c| match c {
                    Change::SetResource {
                        matcher,
                        assignment,
                    } => Some((matcher, assignment)),
                    _ => None,
                })
                .collect();
            if run.len() >= 2 {
                self.set_resources(&run).map_err(|(k, e)| (i + k, e))?;
                i += run.len();
            } else {
                apply_one(self, &changes[i]).map_err(|e| (i, e))?;
                i += 1;
            }
        }
        Ok(())
    }

    fn remove_resource(&mut self, m: &ResourceMatch) -> Result<(), DataplaneError> {
        match self.resources.remove(&m.to_key()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map_names::RESOURCES, "remove")(e)),
        }
    }

    fn set_fragments(
        &mut self,
        m: &ResourceMatch,
        t: &FragmentTarget,
    ) -> Result<(), DataplaneError> {
        check_resource_id(t.resource_id)?;
        self.set_addr_bit(&m.to_key().vip, ADDR_VIP)?;
        self.resources
            .insert(m.to_key(), t.to_value(), 0)
            .map_err(map_err(map_names::RESOURCES, "insert"))
    }

    fn set_return(&mut self, m: &ReturnMatch, t: &ReturnTarget) -> Result<(), DataplaneError> {
        check_resource_id(t.resource_id)?;
        check_server_id(t.server_id)?;
        self.set_addr_bit(&m.to_key().server, ADDR_SERVER)?;
        self.returns
            .insert(m.to_key(), t.to_value(), 0)
            .map_err(map_err(map_names::RETURN, "insert"))
    }

    fn remove_return(&mut self, m: &ReturnMatch) -> Result<(), DataplaneError> {
        match self.returns.remove(&m.to_key()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map_names::RETURN, "remove")(e)),
        }
    }

    fn set_config(&mut self, config: &DataplaneConfig) -> Result<(), DataplaneError> {
        // The program reads the entry as it is: zero fields become their defaults here. The
        // epoch is the map's, not a setting: kept.
        let epoch = self.epoch()?;
        self.config
            .set(
                0,
                DataplaneConfig {
                    epoch,
                    ..config.resolved()
                },
                0,
            )
            .map_err(map_err(map_names::CONFIG, "set"))
    }

    fn revalidate_flows(&mut self) -> Result<(), DataplaneError> {
        let mut c = self
            .config
            .get(&0, 0)
            .map_err(map_err(map_names::CONFIG, "get"))?;
        c.epoch = c.epoch.wrapping_add(1);
        self.config
            .set(0, c, 0)
            .map_err(map_err(map_names::CONFIG, "set"))
    }

    fn resource_stats(&self, id: u32) -> Result<ResourceStats, DataplaneError> {
        check_resource_id(id)?;
        let v = self
            .res_stats
            .get(&id, 0)
            .map_err(map_err(map_names::RESOURCE_STATS, "get"))?;
        Ok(sum_res(&v))
    }

    fn server_stats(&self, id: u32) -> Result<ServerStats, DataplaneError> {
        check_server_id(id)?;
        let v = self
            .srv_stats
            .get(&id, 0)
            .map_err(map_err(map_names::SERVER_STATS, "get"))?;
        Ok(sum_srv(&v))
    }

    fn global_stats(&self) -> Result<Vec<(GlobalCounter, u64)>, DataplaneError> {
        GlobalCounter::ALL
            .iter()
            .map(|c| {
                let v = self
                    .global
                    .get(&(*c as u32), 0)
                    .map_err(map_err(map_names::GLOBAL_STATS, "get"))?;
                Ok((*c, v.iter().sum()))
            })
            .collect()
    }
}
