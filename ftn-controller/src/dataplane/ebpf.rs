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

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, DevMapHash, HashMap, Map, MapData, PerCpuArray, PerCpuValues, RingBuf},
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader,
};
use ftn_common::{
    map_names, FlowKey, FlowValue, NexthopKey, NexthopValue, PassiveState, ResourceKey,
    ResourceValue, ReverseKey, ReverseValue, ServerValue, DEFAULT_FLOW_CAPACITY, PROGRAM_NAME,
};

use super::{
    check_resource_id, check_server_id, Dataplane, DataplaneConfig, DataplaneError, GlobalCounter,
    ResourceAssignment, ResourceStats, ServerEntry, ServerStats,
};
use crate::model::{family, ResourceMatch, XdpAttachMode};

/// Options of [`AyaDataplane::load`].
#[derive(Clone, Debug)]
pub struct AyaOptions {
    /// Interfaces to attach to (may be empty: load only, e.g. for packet tests).
    pub interfaces: Vec<String>,
    pub mode: XdpAttachMode,
    /// Pin maps and links here; `None`: nothing pinned, everything goes away on drop.
    pub pin_dir: Option<PathBuf>,
    /// Capacity of the flow and reverse tables.
    pub flow_capacity: u32,
}

impl Default for AyaOptions {
    fn default() -> Self {
        Self {
            interfaces: Vec::new(),
            mode: XdpAttachMode::Auto,
            pin_dir: None,
            flow_capacity: DEFAULT_FLOW_CAPACITY,
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
    reverse: HashMap<MapData, ReverseKey, ReverseValue>,
    passive: Array<MapData, PassiveState>,
    /// The FIB answers the program caches; flushed when an interface is replaced (a cached
    /// answer names the old ifindex and MACs).
    nexthop: HashMap<MapData, NexthopKey, NexthopValue>,
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

/// The ifindex the XDP link pinned at `path` is attached to now (0: defunct, its interface is
/// gone), read with `BPF_OBJ_GET` and `BPF_OBJ_GET_INFO_BY_FD` (aya's `LinkInfo` does not expose
/// it, nor the link's descriptor).
fn link_ifindex(path: &Path) -> Result<u32, String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_XDP: u32 = 6;
    #[repr(C, align(8))]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    // struct bpf_link_info: type, id, prog_id, then an 8-aligned union whose `xdp` member is
    // `{ __u32 ifindex; }`.
    #[repr(C, align(8))]
    #[derive(Default)]
    struct LinkInfo {
        kind: u32,
        id: u32,
        prog_id: u32,
        _pad: u32,
        ifindex: u32,
        _rest: [u32; 15],
    }
    #[repr(C, align(8))]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    let mut attr = ObjAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the attribute points at a NUL-terminated path that outlives the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            &mut attr as *mut ObjAttr,
            std::mem::size_of::<ObjAttr>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut info = LinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    // SAFETY: the attribute points at a live, correctly sized buffer for the kernel to fill.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    if info.kind != BPF_LINK_TYPE_XDP {
        return Err(format!("not an XDP link (link type {})", info.kind));
    }
    Ok(info.ifindex)
}

impl InterfaceState {
    fn new(name: &str, ifindex: Option<u32>, attached: bool, note: Option<String>) -> Self {
        InterfaceState {
            name: name.to_string(),
            ifindex,
            attached,
            note,
        }
    }
}

/// What became of one configured interface when the dataplane followed it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InterfaceState {
    pub name: String,
    /// Its ifindex now (None: no interface has that name).
    pub ifindex: Option<u32>,
    /// The program is attached to it (to this ifindex).
    pub attached: bool,
    /// What is wrong, or what was just done ("attached again: ifindex 7 -> 12").
    pub note: Option<String>,
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

fn ifindex(name: &str) -> Result<u32, DataplaneError> {
    lookup_ifindex(name)
        .ok()
        .flatten()
        .ok_or_else(|| DataplaneError::UnknownInterface(name.to_string()))
}

/// The ifindex of `name` now: `Ok(None)` when no interface has that name (ENODEV), an error
/// when the lookup itself failed (if_nametoindex opens a socket: EMFILE, ENOBUFS...).
fn lookup_ifindex(name: &str) -> std::io::Result<Option<u32>> {
    let c =
        CString::new(name).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx != 0 {
        return Ok(Some(idx));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENODEV) | Some(libc::ENXIO) => Ok(None),
        _ => Err(e),
    }
}

fn link_pin_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link_{interface}"))
}

/// True when `dir` holds every pinned map and at least one pinned link.
pub fn pinned_dataplane_exists(dir: &Path) -> bool {
    map_names::ALL.iter().all(|n| dir.join(n).exists())
        && pinned_links(dir).map(|l| !l.is_empty()).unwrap_or(false)
}

fn pinned_links(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut v = Vec::new();
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_name().to_string_lossy().starts_with("link_") {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

/// Detaches a pinned dataplane: unpins (and so detaches) every link, removes the pinned maps
/// and the directory. Returns the interfaces that were detached.
pub fn detach(dir: &Path) -> Result<Vec<String>, DataplaneError> {
    let mut detached = Vec::new();
    if !dir.exists() {
        return Ok(detached);
    }
    for path in pinned_links(dir).map_err(|e| pin_err(dir, e))? {
        let link = PinnedLink::from_pin(&path).map_err(|e| pin_err(&path, e))?;
        let fd: FdLink = link.unpin().map_err(|e| pin_err(&path, e))?;
        drop(fd);
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        detached.push(name.trim_start_matches("link_").to_string());
    }
    for name in map_names::ALL {
        let p = dir.join(name);
        if p.exists() {
            fs::remove_file(&p).map_err(|e| pin_err(&p, e))?;
        }
    }
    // Other files (e.g. aya-log's map) are ours too.
    for e in fs::read_dir(dir).map_err(|e| pin_err(dir, e))? {
        let p = e.map_err(|e| pin_err(dir, e))?.path();
        fs::remove_file(&p).map_err(|e| pin_err(&p, e))?;
    }
    fs::remove_dir(dir).map_err(|e| pin_err(dir, e))?;
    Ok(detached)
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
            .map_max_entries(map_names::REVERSE, opts.flow_capacity);
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
        let reverse = typed(take(map_names::REVERSE)?, map_names::REVERSE)?;
        let passive = typed(take(map_names::PASSIVE)?, map_names::PASSIVE)?;
        let events = Some(typed(take(map_names::EVENTS)?, map_names::EVENTS)?);
        // Pinned with the rest (an adopted dataplane keeps its cache); only flushed here.
        let nexthop = typed(take(map_names::NEXTHOP)?, map_names::NEXTHOP)?;
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
            reverse,
            passive,
            nexthop,
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
        Ok(AyaDataplane {
            ebpf: None,
            resources: typed(open(map_names::RESOURCES)?, map_names::RESOURCES)?,
            servers: typed(open(map_names::SERVERS)?, map_names::SERVERS)?,
            config: typed(open(map_names::CONFIG)?, map_names::CONFIG)?,
            res_stats: typed(open(map_names::RESOURCE_STATS)?, map_names::RESOURCE_STATS)?,
            srv_stats: typed(open(map_names::SERVER_STATS)?, map_names::SERVER_STATS)?,
            global: typed(open(map_names::GLOBAL_STATS)?, map_names::GLOBAL_STATS)?,
            devmap: typed(open(map_names::DEVMAP)?, map_names::DEVMAP)?,
            flows: typed(open(map_names::FLOWS)?, map_names::FLOWS)?,
            reverse: typed(open(map_names::REVERSE)?, map_names::REVERSE)?,
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

    /// Keeps the program attached to the interfaces that have the configured names now (see the
    /// module docs); returns each configured interface's state. Called at start (an adopted
    /// dataplane may be attached to an interface that has since been replaced) and whenever
    /// the links change.
    pub fn follow_interfaces(&mut self) -> Vec<InterfaceState> {
        let names = self.follow.interfaces.clone();
        names.iter().map(|name| self.follow_one(name)).collect()
    }

    fn follow_one(&mut self, name: &str) -> InterfaceState {
        let now = match lookup_ifindex(name) {
            Ok(now) => now,
            Err(e) => {
                // Not an answer about the interface (e.g. EMFILE: if_nametoindex needs a
                // socket): nothing is changed, the last state stands.
                tracing::warn!(interface = name, "cannot look up the interface: {e}");
                return self.last_state(name, format!("cannot look it up now: {e}"));
            }
        };
        let pin_dir = self.follow.pin_dir.clone();
        // Where the program is attached for this name: the pinned link's ifindex (0 when
        // defunct), or what we attached without pins.
        let linked = match &pin_dir {
            Some(dir) => {
                let p = link_pin_path(dir, name);
                if p.exists() {
                    match link_ifindex(&p) {
                        Ok(idx) => idx,
                        // Not an answer about the link (e.g. EMFILE): removing its pin on a
                        // guess would detach a working dataplane. Nothing is changed.
                        Err(e) => {
                            tracing::warn!(interface = name, link = %p.display(), "cannot read the pinned link: {e}");
                            return self
                                .last_state(name, format!("cannot read its pinned link now: {e}"));
                        }
                    }
                } else {
                    0
                }
            }
            None => self
                .attached
                .iter()
                .find(|a| a.interface == name)
                .map_or(0, |a| a.ifindex),
        };
        let Some(idx) = now else {
            return InterfaceState::new(name, None, false, Some("no interface has this name now: nothing arrives or leaves through it; ftn attaches again when it is back".into()));
        };
        if linked == idx {
            return InterfaceState::new(name, Some(idx), true, None);
        }
        // Replaced (or never attached): drop the stale link and devmap entry, attach again.
        let old = self
            .attached
            .iter()
            .find(|a| a.interface == name)
            .map_or(linked, |a| a.ifindex);
        if let Some(dir) = &pin_dir {
            let p = link_pin_path(dir, name);
            if p.exists() {
                if let Err(e) = fs::remove_file(&p) {
                    return self.follow_failed(
                        name,
                        idx,
                        format!("removing the stale link {}: {e}", p.display()),
                    );
                }
            }
        }
        if old != 0 && old != idx {
            // Usually gone already: the kernel removes a vanished device from the devmap.
            let _ = self.devmap.remove(old);
        }
        self.attached.retain(|a| a.interface != name);
        let mode = self.follow.mode;
        match self.attach(name, mode, pin_dir.as_deref()) {
            Ok(()) => {
                self.flush_nexthops();
                let note = if old == 0 {
                    format!("attached again (ifindex {idx})")
                } else {
                    format!("attached again: ifindex {old} -> {idx}")
                };
                tracing::info!(
                    interface = name,
                    ifindex = idx,
                    old_ifindex = old,
                    "the interface was replaced: XDP attached to the new one"
                );
                InterfaceState::new(name, Some(idx), true, Some(note))
            }
            Err(e) => self.follow_failed(name, idx, e.to_string()),
        }
    }

    /// Empties the next-hop cache: every packet asks the FIB again (and caches the new answer).
    fn flush_nexthops(&mut self) {
        let keys: Vec<NexthopKey> = self.nexthop.keys().filter_map(Result::ok).collect();
        for k in &keys {
            let _ = self.nexthop.remove(k);
        }
        tracing::debug!(entries = keys.len(), "next-hop cache flushed");
    }

    /// The state as last attached, when the interface cannot be looked up now.
    fn last_state(&self, name: &str, why: String) -> InterfaceState {
        let a = self.attached.iter().find(|a| a.interface == name);
        InterfaceState::new(name, a.map(|a| a.ifindex), a.is_some(), Some(why))
    }

    fn follow_failed(&self, name: &str, idx: u32, why: String) -> InterfaceState {
        tracing::error!(
            interface = name,
            ifindex = idx,
            "cannot attach XDP to the interface that has this name now: {why}"
        );
        InterfaceState::new(name, Some(idx), false, Some(format!("not attached: {why}")))
    }

    /// Attaches the program to one more interface and adds it to the devmap.
    pub fn attach(
        &mut self,
        interface: &str,
        mode: XdpAttachMode,
        pin_dir: Option<&Path>,
    ) -> Result<(), DataplaneError> {
        let idx = ifindex(interface)?;
        let prog = match (self.ebpf.as_mut(), self.pinned_program.as_mut()) {
            (Some(ebpf), _) => xdp_program(ebpf)?,
            (None, Some(prog)) => prog,
            (None, None) => {
                return Err(DataplaneError::Pin {
                    path: String::new(),
                    detail: format!(
                        "cannot attach {interface}: this dataplane was adopted from pins of an older ftn, which did not pin its program; run `ftn detach` and start again"
                    ),
                })
            }
        };
        let attempts: &[(XdpMode, XdpAttachMode)] = match mode {
            XdpAttachMode::Auto => &[
                (XdpMode::Driver, XdpAttachMode::Native),
                (XdpMode::Skb, XdpAttachMode::Generic),
            ],
            XdpAttachMode::Native => &[(XdpMode::Driver, XdpAttachMode::Native)],
            XdpAttachMode::Generic => &[(XdpMode::Skb, XdpAttachMode::Generic)],
        };
        let mut last_err = None;
        let mut done = None;
        for (m, label) in attempts {
            match prog.attach_to_if_index(idx, *m) {
                Ok(id) => {
                    done = Some((id, *label));
                    break;
                }
                Err(e) => {
                    if mode == XdpAttachMode::Auto && *label == XdpAttachMode::Native {
                        tracing::warn!(interface, error = %e, "native XDP refused; falling back to generic XDP");
                    }
                    last_err = Some(DataplaneError::Attach {
                        interface: interface.to_string(),
                        mode: *label,
                        source: Box::new(e),
                    });
                }
            }
        }
        let Some((link_id, used)) = done else {
            return Err(last_err.unwrap_or(DataplaneError::UnknownInterface(interface.to_string())));
        };
        if let Some(dir) = pin_dir {
            let link = prog
                .take_link(link_id)
                .map_err(|e| DataplaneError::Program(Box::new(e)))?;
            let fd: FdLink = link.try_into().map_err(|e| pin_err(dir, format!("link of {interface} cannot be pinned (netlink attach; kernel without bpf_link for XDP?): {e}")))?;
            let p = link_pin_path(dir, interface);
            let pinned = fd.pin(&p).map_err(|e| pin_err(&p, e))?;
            self._pinned_links.push(pinned);
        }
        self.devmap
            .insert(idx, idx, None, 0)
            .map_err(|e| pin_err(Path::new(map_names::DEVMAP), e))?;
        self.attached.push(Attached {
            interface: interface.to_string(),
            ifindex: idx,
            mode: used,
        });
        Ok(())
    }

    /// Adds an interface the program may redirect to without attaching to it.
    pub fn add_egress(&mut self, interface: &str) -> Result<(), DataplaneError> {
        let idx = ifindex(interface)?;
        self.devmap
            .insert(idx, idx, None, 0)
            .map_err(|e| pin_err(Path::new(map_names::DEVMAP), e))
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

    /// Every entry of the reverse table.
    pub fn reverse_entries(&self) -> Result<Vec<(ReverseKey, ReverseValue)>, DataplaneError> {
        self.reverse
            .iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(map_err(map_names::REVERSE, "iterate"))
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
        let keys: Vec<ReverseKey> = self
            .reverse
            .keys()
            .collect::<Result<_, _>>()
            .map_err(map_err(map_names::REVERSE, "iterate"))?;
        for k in keys {
            let _ = self.reverse.remove(&k);
        }
        Ok(())
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

fn xdp_program(ebpf: &mut Ebpf) -> Result<&mut Xdp, DataplaneError> {
    let missing = || DataplaneError::MissingInObject {
        what: "XDP program",
        name: PROGRAM_NAME.to_string(),
    };
    let prog = ebpf.program_mut(PROGRAM_NAME).ok_or_else(missing)?;
    prog.try_into().map_err(|_| missing())
}

fn sum_res(v: &PerCpuValues<ResourceStats>) -> ResourceStats {
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

fn sum_srv(v: &PerCpuValues<ServerStats>) -> ServerStats {
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
        check_resource_id(a.resource_id)?;
        if let Some(id) = a.server {
            check_server_id(id)?;
            let s = self
                .servers
                .get(&id, 0)
                .map_err(map_err(map_names::SERVERS, "get"))?;
            if s.family != family(m.vip) {
                return Err(DataplaneError::FamilyMismatch {
                    matcher: *m,
                    server: id,
                });
            }
        }
        self.resources
            .insert(m.to_key(), a.to_value(), 0)
            .map_err(map_err(map_names::RESOURCES, "insert"))
    }

    fn remove_resource(&mut self, m: &ResourceMatch) -> Result<(), DataplaneError> {
        match self.resources.remove(&m.to_key()) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(map_names::RESOURCES, "remove")(e)),
        }
    }

    fn set_config(&mut self, config: &DataplaneConfig) -> Result<(), DataplaneError> {
        self.config
            .set(0, *config, 0)
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
