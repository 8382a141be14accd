//! Attaching the program to interfaces and following them: the XDP links (pinned as
//! `<dir>/link_<ifname>`), the devmap, [`detach`], and [`AyaDataplane::follow_interfaces`],
//! which keeps the attachments on the interfaces that have the configured names now.

use super::*;

/// The ifindex the XDP link pinned at `path` is attached to now (0: defunct, its interface is
/// gone), read with `BPF_OBJ_GET` and `BPF_OBJ_GET_INFO_BY_FD` (aya's `LinkInfo` does not expose
/// it, nor the link's descriptor).
pub(super) fn link_ifindex(path: &Path) -> Result<u32, String> {
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

pub(super) fn ifindex(name: &str) -> Result<u32, DataplaneError> {
    lookup_ifindex(name)
        .ok()
        .flatten()
        .ok_or_else(|| DataplaneError::UnknownInterface(name.to_string()))
}

/// The ifindex of `name` now: `Ok(None)` when no interface has that name (ENODEV), an error
/// when the lookup itself failed (if_nametoindex opens a socket: EMFILE, ENOBUFS...).
pub(super) fn lookup_ifindex(name: &str) -> std::io::Result<Option<u32>> {
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

pub(super) fn link_pin_path(dir: &Path, interface: &str) -> PathBuf {
    dir.join(format!("link_{interface}"))
}

pub(super) fn pinned_links(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
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

impl AyaDataplane {
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
}
