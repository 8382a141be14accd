//! `/metrics` reads the per-CPU stats arrays through duplicated descriptors with
//! `BPF_MAP_LOOKUP_BATCH` (`AyaCounters`), not one lookup per entry on the map-sync thread:
//! every resource's, server's and global counter it returns equals the per-entry read of the
//! same map, across the reader's 16,384-entry chunks and at the arrays' last entries, and ids
//! never written read as zero.

use aya::maps::{Map, MapData, PerCpuArray, PerCpuValues};
use ftn_common::{map_names, MAX_RESOURCES, MAX_SERVERS};
use ftn_controller::dataplane::sync::ReadCounters;
use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Dataplane, GlobalCounter, ResourceStats, ServerStats,
};
use ftn_tests::{require_root, PinDir};

fn res(id: u32, cpu: usize) -> ResourceStats {
    let b = u64::from(id) * 100 + cpu as u64;
    ResourceStats {
        packets: b,
        bytes: b * 64,
        new_flows: b + 1,
        reply_packets: b + 2,
        reply_bytes: b + 3,
        flows_moved: b + 4,
        drop_no_server: b + 5,
        reject_no_server: b + 6,
    }
}

fn srv(id: u32, cpu: usize) -> ServerStats {
    let b = u64::from(id) * 1000 + cpu as u64;
    ServerStats {
        packets: b,
        bytes: b * 2,
        new_flows: b + 1,
        reply_packets: b + 2,
        reply_bytes: b + 3,
        flows_moved_away: b + 4,
        icmp_errors: b + 5,
        ..ServerStats::default()
    }
}

#[test]
fn batched_counter_reads_equal_the_per_entry_reads() {
    require_root();
    // Pinned (no interfaces), so that the test writes the stats arrays through handles of its
    // own; the guard unpins everything, also when the test fails.
    let pins = PinDir::new();
    let dp = AyaDataplane::load(&AyaOptions {
        pin_dir: Some(pins.path.clone()),
        ..AyaOptions::default()
    })
    .expect("load");
    let cpus = aya::util::nr_cpus().expect("possible CPUs");
    let res_ids = [
        0u32,
        1,
        777,
        16_383,
        16_384,
        16_385,
        40_000,
        MAX_RESOURCES - 1,
    ];
    let srv_ids = [0u32, 5, 16_383.min(MAX_SERVERS - 1), MAX_SERVERS - 1];
    let open = |name: &str| {
        Map::PerCpuArray(MapData::from_pin(pins.path.join(name)).expect("pinned stats map"))
    };
    {
        let mut r: PerCpuArray<_, ResourceStats> =
            PerCpuArray::try_from(open(map_names::RESOURCE_STATS)).expect("typed");
        for id in res_ids {
            let v = PerCpuValues::try_from((0..cpus).map(|c| res(id, c)).collect::<Vec<_>>())
                .expect("per-CPU values");
            r.set(id, v, 0).expect("set");
        }
        let mut s: PerCpuArray<_, ServerStats> =
            PerCpuArray::try_from(open(map_names::SERVER_STATS)).expect("typed");
        for id in srv_ids {
            let v = PerCpuValues::try_from((0..cpus).map(|c| srv(id, c)).collect::<Vec<_>>())
                .expect("per-CPU values");
            s.set(id, v, 0).expect("set");
        }
        let mut g: PerCpuArray<_, u64> =
            PerCpuArray::try_from(open(map_names::GLOBAL_STATS)).expect("typed");
        for c in GlobalCounter::ALL {
            let v = PerCpuValues::try_from(
                (0..cpus)
                    .map(|k| (c as u64 + 1) * 7 + k as u64)
                    .collect::<Vec<_>>(),
            )
            .expect("per-CPU values");
            g.set(c as u32, v, 0).expect("set");
        }
    }
    // Named ids: the written ones and some never written (zero).
    let named = |ids: &[u32], extra: &[u32]| -> Vec<(String, u32)> {
        ids.iter()
            .chain(extra)
            .map(|id| (format!("n{id}"), *id))
            .collect()
    };
    let resources = named(&res_ids, &[2, 20_000, 100_000]);
    let servers = named(&srv_ids, &[3, 9_000]);
    let mut reader = dp.counter_reader().expect("counter reader");
    let got = reader.read(&resources, &servers).expect("batched read");
    assert_eq!(got.resources.len(), resources.len());
    for ((name, id), (got_name, v)) in resources.iter().zip(&got.resources) {
        assert_eq!(name, got_name);
        assert_eq!(*v, dp.resource_stats(*id).unwrap(), "resource id {id}");
        if res_ids.contains(id) {
            assert_ne!(*v, ResourceStats::default(), "resource id {id} was written");
        } else {
            assert_eq!(
                *v,
                ResourceStats::default(),
                "resource id {id} was not written"
            );
        }
    }
    for ((name, id), (got_name, v)) in servers.iter().zip(&got.servers) {
        assert_eq!(name, got_name);
        assert_eq!(*v, dp.server_stats(*id).unwrap(), "server id {id}");
    }
    assert_eq!(got.global, dp.global_stats().unwrap());
    assert!(got.global.iter().all(|(_, n)| *n > 0));
    // Only low ids: the range read stops at the highest asked for.
    let got = reader
        .read(&named(&[0, 1], &[]), &named(&[0], &[]))
        .expect("short read");
    assert_eq!(got.resources[1].1, dp.resource_stats(1).unwrap());
    drop(dp);
    drop(pins);
}
