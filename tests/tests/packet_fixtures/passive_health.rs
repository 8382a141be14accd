//! Passive health: SYNs left unanswered and RSTs in a row are reported through the ring
//! buffer; any other answer from the server clears the record.

use ftn_common::DataplaneConfig;
use ftn_controller::dataplane::{AyaDataplane, Dataplane, ServerEntry};
use ftn_tests::frames::{frame, tcp, ACK, CM, G0, G1, PM, RST, SYN, XDP_REDIRECT};
use ftn_tests::hex;

use super::{run_prog, Addrs, Lab, P4};

/// The scenario, on a provisioned gateway in the lab.
pub fn run(a: &Addrs, lab: &Lab, mut dp: AyaDataplane) {
    dp.set_config(&DataplaneConfig {
        passive_window_ns: 20_000_000,
        passive_rearm_ns: 1_000,
        passive_min: 3,
        ..DataplaneConfig::default()
    })
    .unwrap();
    let mut ring = dp.take_events().expect("events ring");
    let drain = |ring: &mut aya::maps::RingBuf<aya::maps::MapData>| {
        let mut v = Vec::new();
        while let Some(item) = ring.next() {
            assert_eq!(item.len(), std::mem::size_of::<ftn_common::PassiveEvent>());
            // SAFETY: the program writes whole PassiveEvents.
            v.push(unsafe {
                std::ptr::read_unaligned(item.as_ptr().cast::<ftn_common::PassiveEvent>())
            });
        }
        v
    };
    let syn = |port: u16| frame(CM, G0, a.c4, a.vip4, 64, tcp(port, 80, 1, 0, SYN), b"");
    let from_p4 =
        |port: u16, flags: u8| frame(PM, G1, a.p4, a.c4, 64, tcp(80, port, 9, 2, flags), b"");
    let prog_run = |dp: &mut AyaDataplane, ingress: u32, f: &[u8]| {
        let (action, _) = run_prog(dp.program_mut().unwrap(), ingress, f);
        assert_eq!(action, XDP_REDIRECT, "{}", hex(f));
    };

    // Three SYNs to P4 within the window: not reported yet (the oldest is too young).
    for p in 41000..41003 {
        prog_run(&mut dp, lab.fx0, &syn(p));
    }
    assert!(
        drain(&mut ring).is_empty(),
        "reported before the window passed"
    );
    assert_eq!(dp.passive_state(P4).unwrap().unanswered, 3);
    std::thread::sleep(std::time::Duration::from_millis(25));
    prog_run(&mut dp, lab.fx0, &syn(41003));
    let ev = drain(&mut ring);
    println!("after 4 unanswered SYNs over 25 ms: {ev:?}");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].server_id, ev[0].kind, ev[0].count),
        (P4, ftn_common::PASSIVE_UNANSWERED, 4)
    );
    assert!(ev[0].age_us >= 20_000, "{:?}", ev[0]);

    // A SYN-ACK from P4 clears the record.
    prog_run(&mut dp, lab.fx1, &from_p4(41000, SYN | ACK));
    let st = dp.passive_state(P4).unwrap();
    assert_eq!((st.unanswered, st.rsts), (0, 0), "{st:?}");

    // RSTs in a row: reported at the third.
    for p in 41001..41003 {
        prog_run(&mut dp, lab.fx1, &from_p4(p, RST | ACK));
    }
    assert_eq!(dp.passive_state(P4).unwrap().rsts, 2);
    assert!(drain(&mut ring).is_empty());
    // The program's clock is coarse (a few ms): let the re-arm time pass visibly.
    std::thread::sleep(std::time::Duration::from_millis(10));
    prog_run(&mut dp, lab.fx0, &syn(41010));
    prog_run(&mut dp, lab.fx1, &from_p4(41010, RST | ACK));
    let ev = drain(&mut ring);
    println!("after 3 RSTs in a row: {ev:?}");
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!(
        (ev[0].server_id, ev[0].kind, ev[0].count),
        (P4, ftn_common::PASSIVE_RST, 3)
    );

    // Off: nothing is recorded.
    dp.set_config(&DataplaneConfig {
        passive_min: ftn_common::PASSIVE_OFF,
        ..DataplaneConfig::default()
    })
    .unwrap();
    dp.set_server(
        P4,
        &ServerEntry {
            addr: a.p4,
            up: true,
            generation: 9,
        },
    )
    .unwrap();
    for p in 41020..41030 {
        prog_run(&mut dp, lab.fx0, &syn(p));
    }
    assert_eq!(
        dp.passive_state(P4).unwrap(),
        ftn_common::PassiveState::default()
    );
    assert!(drain(&mut ring).is_empty());
}
