//! `[gateway] flow_table`: the flow table gets the configured size, and what it
//! costs in kernel memory (the figure CONFIG.md quotes) is measured here, not guessed.

use ftn_controller::dataplane::{AyaDataplane, AyaOptions};
use ftn_tests::require_root;

#[test]
fn the_flow_table_has_the_configured_size_and_its_memory_grows_with_it() {
    require_root();
    let mut per_entry = Vec::new();
    let mut sizes = Vec::new();
    for entries in [65_536u32, 262_144] {
        let dp = AyaDataplane::load(&AyaOptions {
            flow_capacity: entries,
            ..AyaOptions::default()
        })
        .expect("load the dataplane");
        assert_eq!(dp.flow_table_entries().unwrap(), entries);
        let bytes = dp.flow_table_memory().expect("the tables' memlock");
        println!(
            "flow_table = {entries}: flow table {bytes} bytes ({:.0} bytes per entry)",
            bytes as f64 / f64::from(entries)
        );
        per_entry.push(bytes as f64 / f64::from(entries));
        sizes.push(bytes);
    }
    // Four times the entries, about four times the memory (preallocated tables).
    let ratio = sizes[1] as f64 / sizes[0] as f64;
    assert!(
        (3.5..=4.5).contains(&ratio),
        "memory ratio {ratio:.2} for 4x the entries"
    );
    assert!(
        per_entry.iter().all(|b| (50.0..2000.0).contains(b)),
        "{per_entry:?}"
    );
}
