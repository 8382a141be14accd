//! tools/protoc runs the protoc of the `protoc-bin-vendored` version that ftn-controller pins:
//! the two must name the same version, or plain builds would look for a crate cargo never
//! unpacked.

#[test]
fn tools_protoc_names_the_pinned_protoc_bin_vendored() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let script = std::fs::read_to_string(dir.join("../tools/protoc")).unwrap();
    let pinned = manifest
        .lines()
        .find_map(|l| l.strip_prefix("protoc-bin-vendored = \"="))
        .and_then(|v| v.strip_suffix('"'))
        .expect("ftn-controller/Cargo.toml pins protoc-bin-vendored = \"=X.Y.Z\"");
    let named = script
        .lines()
        .find_map(|l| l.strip_prefix("version="))
        .expect("tools/protoc sets version=X.Y.Z");
    assert_eq!(
        named, pinned,
        "tools/protoc and ftn-controller/Cargo.toml disagree"
    );
}
