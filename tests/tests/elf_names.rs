//! The built eBPF object holds every map and program that ftn-common names, in the right
//! sections: the two sides of the contract cannot drift apart.

use object::{Object, ObjectSection, ObjectSymbol};

#[test]
fn every_name_from_ftn_common_is_in_the_object() {
    let data = ftn_controller::dataplane::ebpf_object()
        .unwrap_or_else(|e| panic!("the tests need the real eBPF object: {e}"));
    let obj = object::File::parse(data).expect("the embedded eBPF object is a valid ELF file");
    let mut found: Vec<(String, String)> = Vec::new();
    for sym in obj.symbols() {
        let Ok(name) = sym.name() else { continue };
        let section = sym
            .section_index()
            .and_then(|i| obj.section_by_index(i).ok())
            .and_then(|s| s.name().ok().map(str::to_string))
            .unwrap_or_default();
        found.push((name.to_string(), section));
    }
    let mut missing = Vec::new();
    for map in ftn_common::map_names::ALL {
        match found.iter().find(|(n, _)| n == map) {
            Some((_, section)) if section == "maps" => {
                println!("map {map:<14} in section {section}")
            }
            Some((_, section)) => {
                missing.push(format!("map {map} is in section {section:?}, not \"maps\""))
            }
            None => missing.push(format!("map {map} is not in the object")),
        }
    }
    for prog in [ftn_common::PROGRAM_NAME, "ftn_pass"] {
        match found.iter().find(|(n, _)| n == prog) {
            Some((_, section)) if section.starts_with("xdp") => {
                println!("program {prog:<10} in section {section}")
            }
            Some((_, section)) => {
                missing.push(format!("program {prog} is in section {section:?}, not xdp"))
            }
            None => missing.push(format!("program {prog} is not in the object")),
        }
    }
    assert!(
        obj.section_by_name("license").is_some(),
        "no license section"
    );
    // The bench programs are an object of their own: no gateway loads them or their maps.
    for (n, _) in &found {
        if n.starts_with("ftn_bench") || n.starts_with("FTN_BENCH") {
            missing.push(format!("{n} (bench only) is in the dataplane's object"));
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn the_bench_object_holds_the_bench_programs_and_maps() {
    use ftn_common::bench::*;
    let data = ftn_controller::dataplane::bench_object()
        .unwrap_or_else(|e| panic!("the tests need the real eBPF objects: {e}"));
    let obj = object::File::parse(data).expect("the bench eBPF object is a valid ELF file");
    let section_of = |name: &str| {
        obj.symbols()
            .find(|s| s.name() == Ok(name))
            .and_then(|s| s.section_index())
            .and_then(|i| obj.section_by_index(i).ok())
            .and_then(|s| s.name().ok().map(str::to_string))
    };
    let mut wrong = Vec::new();
    for prog in [PROG_WRAP, PROG_FLOOR, PROG_NOP, PROG_GEN, PROG_SINK] {
        match section_of(prog) {
            Some(s) if s.starts_with("xdp") => println!("bench program {prog:<16} in section {s}"),
            other => wrong.push(format!("program {prog}: section {other:?}, not xdp")),
        }
    }
    for map in [FRAME_MAP, JUMP_MAP, COUNT_MAP, SINK_MAP] {
        match section_of(map) {
            Some(s) if s == "maps" => println!("bench map {map:<16} in section {s}"),
            other => wrong.push(format!("map {map}: section {other:?}, not maps")),
        }
    }
    assert!(
        section_of(ftn_common::PROGRAM_NAME).is_none(),
        "ftn_xdp is in the bench object"
    );
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
