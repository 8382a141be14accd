//! The counters `/metrics` reads, through handles of their own: duplicates of the per-CPU
//! stats arrays' descriptors, so that a scrape never queues on the map-sync thread (which
//! applies failovers), and each array read with `BPF_MAP_LOOKUP_BATCH` (Linux 5.6): a few
//! syscalls per scrape instead of one per resource and server.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{IterableMap as _, MapData};
use aya::Pod;
use ftn_common::{map_names, MAX_RESOURCES, MAX_SERVERS};

use super::batch::{bpf_batch, BatchAttr, BPF_MAP_LOOKUP_BATCH};
use super::{map_err, sum_res, sum_srv, AyaDataplane};
use crate::dataplane::sync::{Counters, ReadCounters};
use crate::dataplane::{DataplaneError, GlobalCounter, ResourceStats, ServerStats};

/// Entries read per syscall: bounds the buffer (16,384 × CPUs × the value's size).
const CHUNK: u32 = 16_384;

/// Entries `0..n` of the per-CPU array `map` of `V`, as `n × cpus` values (entry-major).
/// The kernel lays each entry's values out per possible CPU, each rounded up to 8 bytes; every
/// stats value is made of u64s, so that is `V`'s own size.
fn per_cpu_range<V: Pod + Default>(map: &MapData, n: u32, cpus: usize) -> io::Result<Vec<V>> {
    const { assert!(size_of::<V>() % 8 == 0, "per-CPU values are 8-byte aligned") };
    let fd = map.fd().as_fd().as_raw_fd();
    let mut out: Vec<V> = Vec::with_capacity(n as usize * cpus);
    let mut keys = vec![0u32; CHUNK.min(n.max(1)) as usize];
    let mut values = vec![V::default(); keys.len() * cpus];
    let mut next = 0u32;
    let mut started = false;
    while (out.len() / cpus) < n as usize {
        let want = (n - (out.len() / cpus) as u32).min(CHUNK);
        let mut attr = BatchAttr {
            in_batch: if started {
                &next as *const u32 as u64
            } else {
                0
            },
            out_batch: &mut next as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: want,
            map_fd: fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `keys` holds at least `want` u32 keys and `values` `want × cpus` values of
        // the map's value size (the typed map checked it when the dataplane was opened);
        // `next` is a u32 key read and written by the kernel; all alive for the call.
        let r = unsafe { bpf_batch(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        let got = attr.count.min(want) as usize;
        if let Err(e) = r {
            // ENOENT: the end of the array (the entries read so far are in `values`).
            if e.raw_os_error() != Some(libc::ENOENT) {
                return Err(e);
            }
            out.extend_from_slice(&values[..got * cpus]);
            break;
        }
        out.extend_from_slice(&values[..got * cpus]);
        started = true;
        if got == 0 {
            break;
        }
    }
    Ok(out)
}

/// The stats arrays, opened apart from the dataplane the map-sync thread owns.
pub struct AyaCounters {
    resources: MapData,
    servers: MapData,
    global: MapData,
    cpus: usize,
}

impl AyaDataplane {
    /// Handles to the stats arrays for [`AyaCounters`] (duplicated descriptors of the same
    /// maps).
    pub fn counter_reader(&self) -> Result<AyaCounters, DataplaneError> {
        let dup = |m: &MapData, name: &'static str| -> Result<MapData, DataplaneError> {
            let fd = m.fd().as_fd().try_clone_to_owned()?;
            MapData::from_fd(fd).map_err(map_err(name, "duplicate"))
        };
        let cpus = aya::util::nr_cpus()
            .map_err(|(what, e)| io::Error::new(e.kind(), format!("{what}: {e}")))?;
        Ok(AyaCounters {
            resources: dup(self.res_stats.map(), map_names::RESOURCE_STATS)?,
            servers: dup(self.srv_stats.map(), map_names::SERVER_STATS)?,
            global: dup(self.global.map(), map_names::GLOBAL_STATS)?,
            cpus,
        })
    }
}

/// Per-id sums of a per-CPU range read by [`per_cpu_range`].
fn sums<V: Pod + Default>(
    all: &[V],
    cpus: usize,
    ids: &[(String, u32)],
    sum: impl Fn(&[V]) -> V,
) -> Vec<(String, V)> {
    ids.iter()
        .map(|(name, id)| {
            let at = *id as usize * cpus;
            let v = all.get(at..at + cpus).map(&sum).unwrap_or_default();
            (name.clone(), v)
        })
        .collect()
}

impl ReadCounters for AyaCounters {
    fn read(
        &mut self,
        resources: &[(String, u32)],
        servers: &[(String, u32)],
    ) -> Result<Counters, String> {
        let cpus = self.cpus;
        // Only the ids in use are summed; the range read ends at the highest.
        let end = |ids: &[(String, u32)], cap: u32| {
            ids.iter().map(|(_, id)| id + 1).max().unwrap_or(0).min(cap)
        };
        let res: Vec<ResourceStats> =
            per_cpu_range(&self.resources, end(resources, MAX_RESOURCES), cpus)
                .map_err(|e| format!("reading {}: {e}", map_names::RESOURCE_STATS))?;
        let srv: Vec<ServerStats> =
            per_cpu_range(&self.servers, end(servers, MAX_SERVERS), cpus)
                .map_err(|e| format!("reading {}: {e}", map_names::SERVER_STATS))?;
        let n = GlobalCounter::ALL
            .iter()
            .map(|c| *c as u32 + 1)
            .max()
            .unwrap_or(0);
        let global: Vec<u64> = per_cpu_range(&self.global, n, cpus)
            .map_err(|e| format!("reading {}: {e}", map_names::GLOBAL_STATS))?;
        Ok(Counters {
            resources: sums(&res, cpus, resources, sum_res),
            servers: sums(&srv, cpus, servers, sum_srv),
            global: GlobalCounter::ALL
                .iter()
                .map(|c| {
                    let at = *c as usize * cpus;
                    let v = global.get(at..at + cpus).map_or(0, |v| v.iter().sum());
                    (*c, v)
                })
                .collect(),
        })
    }
}
