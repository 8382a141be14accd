//! `BPF_MAP_UPDATE_BATCH` (Linux 5.6): many entries of one map in one syscall. aya 0.14 has
//! no batch API, so this is the one raw `bpf(2)` call of the controller. The kernel applies
//! the entries in order with the same semantics as one update each (`BPF_ANY`), and says how
//! many it applied when it stops at an error.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use aya::Pod;

/// `union bpf_attr`'s `batch` member (include/uapi/linux/bpf.h).
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

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
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size passed; `keys` and `values` are
    // `count` initialised `Pod` elements each, of the map's key and value sizes (checked by
    // aya when the typed map was opened), alive for the call; the kernel writes back `count`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_UPDATE_BATCH,
            &mut attr as *mut BatchAttr,
            size_of::<BatchAttr>(),
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(((attr.count as usize).min(keys.len()), e));
    }
    Ok(())
}
