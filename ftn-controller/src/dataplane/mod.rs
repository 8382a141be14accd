//! The dataplane interface: what the controller writes into the XDP program's maps and reads
//! back from them.
//!
//! Two implementations: [`AyaDataplane`] (the real XDP program, loaded and attached through aya,
//! maps and links pinned under `/sys/fs/bpf/ftn/`) and [`MemoryDataplane`] (plain hash maps, for
//! unit tests of the controller's logic without root). Only the map-sync task owns a
//! `Dataplane`; everything else sends it changes.

mod ebpf;
mod memory;
pub mod sync;

use std::net::IpAddr;

pub use ebpf::{
    detach, pinned_dataplane_exists, Attached, AyaCounters, AyaDataplane, AyaOptions,
    InterfaceState,
};
pub use ftn_common::{DataplaneConfig, GlobalCounter, ResourceStats, ServerStats};
pub use memory::MemoryDataplane;

use crate::model::{family, ip_words, NoServerAction, ResourceMatch, ReturnMatch, XdpAttachMode};

use ftn_common::{
    ResourceValue, ReturnValue, ServerValue, MAX_RESOURCES, MAX_SERVERS, NO_SERVER,
    RES_FLAG_REJECT, SERVER_DOWN, SERVER_UP,
};

/// The eBPF object built by build.rs (ftn-ebpf for bpfel-unknown-none), or an empty stub when
/// this binary was built without the eBPF toolchain: read it through [`ebpf_object`].
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ftn-ebpf"));

/// The bench-only programs (`ftn-bench-ebpf`, `cargo xtask bench`), built beside the dataplane's
/// object. Nothing in ftn loads them, and a binary that does not call [`bench_object`] does not
/// carry them (the linker drops the unused static).
static EBPF_BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ftn-bench-ebpf"));

/// Why this binary embeds no eBPF object (build.rs stubbed it), or `None` for a real one.
pub const EBPF_STUB_REASON: Option<&str> = option_env!("FTN_EBPF_STUB");

/// The embedded eBPF object, or [`DataplaneError::NoEbpfObject`] with the reason the build
/// left it out.
pub fn ebpf_object() -> Result<&'static [u8], DataplaneError> {
    match EBPF_STUB_REASON {
        Some(reason) => Err(DataplaneError::NoEbpfObject { reason }),
        None => Ok(EBPF_OBJECT),
    }
}

/// The bench programs' object (see [`EBPF_BENCH_OBJECT`]), or why the build left it out.
pub fn bench_object() -> Result<&'static [u8], DataplaneError> {
    ebpf_object().map(|_| EBPF_BENCH_OBJECT)
}

/// Where a resource's new flows go now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResourceAssignment {
    /// Index of the per-resource counters, `< MAX_RESOURCES`.
    pub resource_id: u32,
    /// Server id of the current server, or `None` when no server is live.
    pub server: Option<u32>,
    pub generation: u32,
    pub on_no_server: NoServerAction,
}

impl ResourceAssignment {
    pub fn to_value(&self) -> ResourceValue {
        ResourceValue {
            resource_id: self.resource_id,
            server_id: self.server.unwrap_or(NO_SERVER),
            generation: self.generation,
            flags: match self.on_no_server {
                NoServerAction::Drop => 0,
                NoServerAction::Reject => RES_FLAG_REJECT,
            },
        }
    }
}

/// What a fragment entry (VIP, protocol, port 0) holds: the resource alone on that VIP and
/// protocol, and the port of its entry whose current server fragments go to
/// (`ftn_common::RES_FLAG_FRAGMENTS`). It does not change on failover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragmentTarget {
    pub resource_id: u32,
    /// Host byte order.
    pub port: u16,
}

impl FragmentTarget {
    pub fn to_value(&self) -> ResourceValue {
        ResourceValue::fragments(self.resource_id, self.port.to_be())
    }
}

/// The VIP a server's (address, protocol, port) replies are SNATed to, and whose counters
/// they count in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReturnTarget {
    pub vip: IpAddr,
    pub resource_id: u32,
    pub server_id: u32,
}

impl ReturnTarget {
    pub fn to_value(&self) -> ReturnValue {
        ReturnValue {
            vip: ip_words(self.vip),
            resource_id: self.resource_id,
            server_id: self.server_id,
        }
    }
}

/// A server as the dataplane sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerEntry {
    pub addr: IpAddr,
    /// Down: flows on it move to their resource's current server on their next packet.
    pub up: bool,
    pub generation: u32,
}

impl ServerEntry {
    pub fn to_value(&self) -> ServerValue {
        ServerValue {
            addr: ip_words(self.addr),
            family: family(self.addr),
            state: if self.up { SERVER_UP } else { SERVER_DOWN },
            _pad: [0; 2],
            generation: self.generation,
        }
    }
}

/// One change to the dataplane's maps.
#[derive(Clone, Debug, PartialEq)]
pub enum Change {
    SetServer {
        id: u32,
        server: ServerEntry,
    },
    RemoveServer {
        id: u32,
    },
    SetResource {
        matcher: ResourceMatch,
        assignment: ResourceAssignment,
    },
    /// Removes a resource key, a fragment entry's too.
    RemoveResource {
        matcher: ResourceMatch,
    },
    /// A fragment entry; `matcher` has port 0.
    SetFragments {
        matcher: ResourceMatch,
        target: FragmentTarget,
    },
    SetReturn {
        matcher: ReturnMatch,
        target: ReturnTarget,
    },
    RemoveReturn {
        matcher: ReturnMatch,
    },
    SetConfig(DataplaneConfig),
    /// After changes that removed a resource key or a server, or gave a key to another
    /// resource (a configuration change): every established flow's next packet takes the slow
    /// path once and is checked against the maps again (`DataplaneConfig::epoch`). Failovers
    /// never need it (the fast path reads each server's state).
    RevalidateFlows,
}

/// Errors of a dataplane operation.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("server id {id} is out of range (the dataplane holds ids 0..{max})")]
    ServerIdOutOfRange { id: u32, max: u32 },
    #[error("resource id {id} is out of range (the dataplane holds ids 0..{max})")]
    ResourceIdOutOfRange { id: u32, max: u32 },
    #[error("resource {matcher:?} points to server {server} whose address family differs from the VIP's")]
    FamilyMismatch { matcher: ResourceMatch, server: u32 },
    #[error("the eBPF object has no {what} named {name:?} (was it built from this source?)")]
    MissingInObject { what: &'static str, name: String },
    #[error(
        "this ftn binary embeds no XDP program: {reason}; build it with `cargo xtask build` \
         (which installs bpf-linker and the nightly toolchain it needs)"
    )]
    NoEbpfObject { reason: &'static str },
    #[error("loading the eBPF object failed")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("loading the XDP program into the kernel failed (BPF permission? verifier?)")]
    Program(#[source] Box<aya::programs::ProgramError>),
    #[error("attaching XDP to interface {interface:?} in {mode} mode failed")]
    Attach {
        interface: String,
        mode: XdpAttachMode,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    #[error("interface {0:?} does not exist")]
    UnknownInterface(String),
    #[error("map {map} operation {op} failed")]
    Map {
        map: &'static str,
        op: &'static str,
        #[source]
        source: Box<aya::maps::MapError>,
    },
    #[error("map {map}: batch update failed at entry {at} of {count}")]
    Batch {
        map: &'static str,
        at: usize,
        count: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("pinning or opening pinned objects under {path} failed: {detail}")]
    Pin { path: String, detail: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The controller's view of the dataplane.
pub trait Dataplane: Send {
    fn set_server(&mut self, id: u32, server: &ServerEntry) -> Result<(), DataplaneError>;
    fn remove_server(&mut self, id: u32) -> Result<(), DataplaneError>;
    fn set_resource(
        &mut self,
        matcher: &ResourceMatch,
        assignment: &ResourceAssignment,
    ) -> Result<(), DataplaneError>;
    fn remove_resource(&mut self, matcher: &ResourceMatch) -> Result<(), DataplaneError>;
    fn set_fragments(
        &mut self,
        matcher: &ResourceMatch,
        target: &FragmentTarget,
    ) -> Result<(), DataplaneError>;
    fn set_return(
        &mut self,
        matcher: &ReturnMatch,
        target: &ReturnTarget,
    ) -> Result<(), DataplaneError>;
    fn remove_return(&mut self, matcher: &ReturnMatch) -> Result<(), DataplaneError>;
    fn set_config(&mut self, config: &DataplaneConfig) -> Result<(), DataplaneError>;
    /// See [`Change::RevalidateFlows`].
    fn revalidate_flows(&mut self) -> Result<(), DataplaneError>;

    /// Counters of a resource, summed over CPUs.
    fn resource_stats(&self, id: u32) -> Result<ResourceStats, DataplaneError>;
    /// Counters of a server, summed over CPUs.
    fn server_stats(&self, id: u32) -> Result<ServerStats, DataplaneError>;
    /// Global counters, summed over CPUs, in `GlobalCounter::ALL` order.
    fn global_stats(&self) -> Result<Vec<(GlobalCounter, u64)>, DataplaneError>;

    /// Keeps the program on the interfaces that have the configured names now (re-attaching to
    /// a re-created one) and says how each is; a dataplane without interfaces says nothing.
    fn follow_interfaces(&mut self) -> Vec<InterfaceState> {
        Vec::new()
    }

    /// Applies a batch in order; stops at the first error and says which change failed.
    /// (The real dataplane writes runs of resource entries in one syscall each.)
    fn apply(&mut self, changes: &[Change]) -> Result<(), (usize, DataplaneError)> {
        for (i, c) in changes.iter().enumerate() {
            apply_one(self, c).map_err(|e| (i, e))?;
        }
        Ok(())
    }
}

/// One change, through the trait's methods.
pub(crate) fn apply_one<D: Dataplane + ?Sized>(
    dp: &mut D,
    c: &Change,
) -> Result<(), DataplaneError> {
    match c {
        Change::SetServer { id, server } => dp.set_server(*id, server),
        Change::RemoveServer { id } => dp.remove_server(*id),
        Change::SetResource {
            matcher,
            assignment,
        } => dp.set_resource(matcher, assignment),
        Change::RemoveResource { matcher } => dp.remove_resource(matcher),
        Change::SetFragments { matcher, target } => dp.set_fragments(matcher, target),
        Change::SetReturn { matcher, target } => dp.set_return(matcher, target),
        Change::RemoveReturn { matcher } => dp.remove_return(matcher),
        Change::SetConfig(c) => dp.set_config(c),
        Change::RevalidateFlows => dp.revalidate_flows(),
    }
}

pub(crate) fn check_server_id(id: u32) -> Result<(), DataplaneError> {
    if id >= MAX_SERVERS {
        return Err(DataplaneError::ServerIdOutOfRange {
            id,
            max: MAX_SERVERS,
        });
    }
    Ok(())
}

pub(crate) fn check_resource_id(id: u32) -> Result<(), DataplaneError> {
    if id >= MAX_RESOURCES {
        return Err(DataplaneError::ResourceIdOutOfRange {
            id,
            max: MAX_RESOURCES,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Built with bpf-linker: the real ELF object; built without (or FTN_EBPF=stub): an error
    /// that names the reason, never an empty object handed to the loader.
    #[test]
    fn the_embedded_object_is_real_or_refused_with_the_reason() {
        match (EBPF_STUB_REASON, ebpf_object()) {
            (None, Ok(obj)) => assert!(obj.starts_with(b"\x7fELF"), "not an ELF object"),
            (Some(reason), Err(e)) => {
                let text = e.to_string();
                assert!(
                    text.contains("embeds no XDP program") && text.contains(reason),
                    "{text}"
                );
            }
            (reason, got) => panic!(
                "stub reason {reason:?} but ebpf_object() gave {:?}",
                got.map(<[u8]>::len)
            ),
        }
    }

    #[test]
    fn no_server_is_encoded() {
        let a = ResourceAssignment {
            resource_id: 3,
            server: None,
            generation: 9,
            on_no_server: NoServerAction::Reject,
        };
        let v = a.to_value();
        assert_eq!(
            (v.server_id, v.flags, v.generation),
            (NO_SERVER, RES_FLAG_REJECT, 9)
        );
    }
}
