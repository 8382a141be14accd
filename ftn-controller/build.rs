//! Builds the eBPF object (ftn-ebpf, nightly + build-std, through bpf-linker) into OUT_DIR,
//! where `ftn_controller::dataplane` embeds it with `include_bytes_aligned!`.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("ftn-controller has no parent directory"))?
        .join("ftn-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/Cargo.toml");
    let common = std::path::Path::new(&manifest_dir)
        .parent()
        .unwrap()
        .join("ftn-common/src");
    println!("cargo:rerun-if-changed={}", common.display());
    if which_bpf_linker().is_none() {
        return Err(anyhow!(
            "bpf-linker is not installed (or not on PATH): run `cargo xtask setup` first"
        ));
    }
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "ftn-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the eBPF object (ftn-ebpf); `cargo xtask setup` installs what it needs")
}

fn which_bpf_linker() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
