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
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}
