//! The aya dataplane writes a run of resource entries (a failover's) with one
//! `BPF_MAP_UPDATE_BATCH`: every entry lands as one write each would have written it, and a bad
//! entry in the middle stops the batch there, with that entry's index, as one write at a time
//! would have (the entries before it written, none after).

use ftn_controller::dataplane::{
    AyaDataplane, AyaOptions, Change, Dataplane, DataplaneError, ResourceAssignment, ServerEntry,
};
use ftn_controller::model::{NoServerAction, Protocol, ResourceMatch};
use ftn_tests::require_root;

fn set(port: u16, resource_id: u32, server: u32) -> Change {
    Change::SetResource {
        matcher: ResourceMatch {
            vip: "198.18.100.1".parse().unwrap(),
            protocol: Protocol::Tcp,
            port,
        },
        assignment: ResourceAssignment {
            resource_id,
            server: Some(server),
            generation: 7,
            on_no_server: NoServerAction::Drop,
        },
    }
}

#[test]
fn a_run_of_resource_entries_is_written_in_one_batch_and_stops_at_a_bad_entry() {
    require_root();
    // Loaded without interfaces or pins: nothing to clean up but the handle.
    let mut dp = AyaDataplane::load(&AyaOptions::default()).expect("load");
    let v4 = ServerEntry {
        addr: "198.18.2.10".parse().unwrap(),
        up: true,
        generation: 1,
    };
    let v6 = ServerEntry {
        addr: "2001:2:2::10".parse().unwrap(),
        up: true,
        generation: 1,
    };
    dp.set_server(1, &v4).unwrap();
    dp.set_server(2, &v6).unwrap();

    // 5,000 entries in one run.
    let run: Vec<Change> = (1..=5000).map(|p| set(p, u32::from(p), 1)).collect();
    dp.apply(&run).expect("batch");
    for p in [1u16, 2, 2500, 4999, 5000] {
        let Change::SetResource {
            matcher,
            assignment,
        } = set(p, u32::from(p), 1)
        else {
            unreachable!()
        };
        assert_eq!(
            dp.resource(&matcher).unwrap(),
            Some(assignment.to_value()),
            "port {p}"
        );
    }

    // Entry 3 of the next run points an IPv4 VIP to an IPv6 server: entries 0-2 are written,
    // 3 and after are not, and the error names index 3.
    let mut bad: Vec<Change> = (6001..=6006).map(|p| set(p, 9, 1)).collect();
    bad[3] = set(6004, 9, 2);
    let (at, e) = dp.apply(&bad).expect_err("the family mismatch must fail");
    println!("error at {at}: {e}");
    assert_eq!(at, 3);
    assert!(
        matches!(e, DataplaneError::FamilyMismatch { server: 2, .. }),
        "{e:?}"
    );
    for (k, c) in bad.iter().enumerate() {
        let Change::SetResource { matcher, .. } = c else {
            unreachable!()
        };
        let held = dp.resource(matcher).unwrap();
        assert_eq!(held.is_some(), k < 3, "entry {k} (port {})", matcher.port);
    }

    // A resource id out of range is refused the same way, inside a run.
    let mut bad = vec![set(7001, 1, 1), set(7002, u32::MAX, 1)];
    bad.push(set(7003, 1, 1));
    let (at, e) = dp.apply(&bad).expect_err("an id out of range must fail");
    assert_eq!(at, 1, "{e}");
    assert!(
        matches!(e, DataplaneError::ResourceIdOutOfRange { .. }),
        "{e:?}"
    );
}
