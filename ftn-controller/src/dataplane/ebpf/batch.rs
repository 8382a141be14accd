//! `BPF_MAP_UPDATE_BATCH` (Linux 5.6): many entries of one map in one syscall, and the aya
//! dataplane's batched write of a run of resource entries ([`AyaDataplane::set_resources`]).
//! aya 0.14 has no batch API, so this is the one raw `bpf(2)` call of the controller. The
//! kernel applies the entries in order with the same semantics as one update each
//! (`BPF_ANY`), and says how many it applied when it stops at an error.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{IterableMap as _, MapData};
use aya::Pod;
use ftn_common::{map_names, ADDR_VIP};

use super::{map_err, AyaDataplane};
use crate::dataplane::{check_resource_id, check_server_id, DataplaneError, ResourceAssignment};
use crate::model::{family, ResourceMatch};

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
pub(super) struct BatchAttr {
    pub(super) in_batch: u64,
    pub(super) out_batch: u64,
    pub(super) keys: u64,
    pub(super) values: u64,
    pub(super) count: u32,
    pub(super) map_fd: u32,
    pub(super) elem_flags: u64,
    pub(super) flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
pub(super) const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// One batch command of `bpf(2)` on `attr`; the kernel writes back `attr.count` (and, for a
/// lookup, the out key).
///
/// # Safety
/// Every pointer in `attr` must point to buffers of the sizes the command and `attr.count`
/// imply for the map's key and value sizes, alive for the call.
pub(super) unsafe fn bpf_batch(cmd: libc::c_long, attr: &mut BatchAttr) -> io::Result<()> {
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; the caller vouches for
    // the buffers it points to.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Writes `keys[i] -> values[i]` for every `i`, in order, in one syscall. `Err((n, e))`: the
/// first `n` entries were written, entry `n` failed with `e` (later ones were not written).
pub fn update<K: Pod, V: Pod>(
    map: &MapData,
    keys: &[K],
    values: &[V],
) -> Result<(), (usize, io::Error)> {
    assert_eq!(keys.len(), values.len(), "one value per key");
    if keys.is_empty() {
        return Ok(());
    }
    let count = u32::try_from(keys.len()).map_err(|_| {
        (
            0,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "more than 2^32 entries in one batch",
            ),
        )
    })?;
    let fd = map.fd().as_fd().as_raw_fd();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count,
        map_fd: fd as u32,
        ..BatchAttr::default()
    };
    // SAFETY: `keys` and `values` are `count` initialised `Pod` elements each, of the map's
    // key and value sizes (checked by aya when the typed map was opened), alive for the call.
    unsafe { bpf_batch(BPF_MAP_UPDATE_BATCH, &mut attr) }
        .map_err(|e| ((attr.count as usize).min(keys.len()), e))
}

impl AyaDataplane {
    /// The checks of a resource entry: ids in range, the server of the VIP's family (its
    /// family read from the map once per server id and batch: `families`).
    pub(super) fn check_assignment(
        &self,
        m: &ResourceMatch,
        a: &ResourceAssignment,
        families: &mut std::collections::HashMap<u32, u8>,
    ) -> Result<(), DataplaneError> {
        check_resource_id(a.resource_id)?;
        let Some(id) = a.server else {
            return Ok(());
        };
        check_server_id(id)?;
        let fam = match families.get(&id) {
            Some(f) => *f,
            None => {
                let s = self
                    .servers
                    .get(&id, 0)
                    .map_err(map_err(map_names::SERVERS, "get"))?;
                families.insert(id, s.family);
                s.family
            }
        };
        if fam != family(m.vip) {
            return Err(DataplaneError::FamilyMismatch {
                matcher: *m,
                server: id,
            });
        }
        Ok(())
    }

    /// The resource entries `run` in one batch: every entry is checked first; the valid
    /// prefix is written, then the first invalid entry's error is returned (as one change at a
    /// time would have done).
    pub(super) fn set_resources(
        &mut self,
        run: &[(&ResourceMatch, &ResourceAssignment)],
    ) -> Result<(), (usize, DataplaneError)> {
        let mut families = std::collections::HashMap::new();
        let mut keys = Vec::with_capacity(run.len());
        let mut values = Vec::with_capacity(run.len());
        let mut invalid = None;
        for (k, &(matcher, assignment)) in run.iter().enumerate() {
            let checked = self
                .check_assignment(matcher, assignment, &mut families)
                .and_then(|()| self.set_addr_bit(&matcher.to_key().vip, ADDR_VIP));
            if let Err(e) = checked {
                invalid = Some((k, e));
                break;
            }
            keys.push(matcher.to_key());
            values.push(assignment.to_value());
        }
        update(self.resources.map(), &keys, &values).map_err(|(at, source)| {
            (
                at,
                DataplaneError::Batch {
                    map: map_names::RESOURCES,
                    at,
                    count: keys.len(),
                    source,
                },
            )
        })?;
        match invalid {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
