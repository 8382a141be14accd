//! A SYN flood cannot empty the flow table (issue 13): twenty quiet long-lived connections, ten
//! of them pinned to the backup by a failback, are all answered by their own server after spoofed
//! SYNs many times the flow table's size. The scenario and its waits are the benchmark's
//! (`ftn_tests::bench::xdp::flood`, key `flood_established_survived`).

use ftn_tests::{bench::xdp::flood, require_root};

#[test]
fn quiet_established_connections_survive_a_syn_flood() {
    require_root();
    let r = flood::flood_once().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{} of 20 survived {} SYNs in {:.1} s; new legitimate connections during the flood: {} of {} answered",
        r.survived, r.syns, r.flood_secs, r.legit_ok, r.legit_tried
    );
    assert_eq!(r.survived, 20, "broken: {:?}", r.broken);
}
