//! Builds the eBPF object (ftn-ebpf, nightly + build-std, through bpf-linker) into OUT_DIR,
//! where `ftn_controller::dataplane` embeds it with `include_bytes_aligned!`.
//!
//! The environment variable `FTN_EBPF` chooses (the way aya's own integration tests stub their
//! artefacts, so that `cargo check`, clippy, rust-analyzer and a contributor's first
//! `cargo test` work on a machine without the eBPF toolchain):
//!
//! - unset or `auto`: build the real object when `bpf-linker` is on PATH; otherwise embed an
//!   empty stub, print a cargo warning, and record the reason. The daemon then fails loudly,
//!   with that reason, at the point where it would load the program
//!   (`dataplane::ebpf_object()`); everything else (config checks, the CLI, unit tests) works.
//! - `require`: build the real object or fail the build. `cargo xtask …` always sets this.
//! - `stub`: embed the stub without trying (fast checks, IDEs).
use anyhow::{anyhow, bail, Context as _};
use std::path::{Path, PathBuf};

fn main() -> anyhow::Result<()> {
    let manifest_dir =
        PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let workspace = manifest_dir
        .parent()
        .ok_or_else(|| anyhow!("ftn-controller has no parent directory"))?;
    let root = workspace.join("ftn-ebpf");
    let root = root
        .to_str()
        .ok_or_else(|| anyhow!("non-UTF-8 path {}", root.display()))?;
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/Cargo.toml");
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("ftn-common/src").display()
    );
    println!("cargo:rerun-if-env-changed=FTN_EBPF");

    let mode = std::env::var("FTN_EBPF").unwrap_or_default();
    let stub_reason = match mode.as_str() {
        "stub" => Some("it was built with FTN_EBPF=stub".to_string()),
        "" | "auto" => which_bpf_linker()
            .is_none()
            .then(|| "bpf-linker was not on PATH when it was built".to_string()),
        "require" => {
            if which_bpf_linker().is_none() {
                bail!(
                    "FTN_EBPF=require but bpf-linker is not on PATH: run `cargo xtask setup` \
                     (it installs bpf-linker into cargo's bin folder, which must be on PATH)"
                );
            }
            None
        }
        other => bail!("FTN_EBPF={other:?}: expected `auto` (or unset), `require` or `stub`"),
    };
    if let Some(reason) = stub_reason {
        if mode != "stub" {
            // Build the real object once bpf-linker appears in one of these folders (or PATH
            // changes).
            println!("cargo:rerun-if-env-changed=PATH");
            for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
                if dir.is_dir() {
                    println!("cargo:rerun-if-changed={}", dir.display());
                }
            }
        }
        let out = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR")?);
        write_stub(&out.join("ftn-ebpf"))?;
        write_stub(&out.join("ftn-bench-ebpf"))?;
        println!(
            "cargo:warning=ftn-ebpf not built ({reason}): the `ftn` binary embeds no XDP program \
             and `ftn run` will refuse to start; `cargo xtask build` builds the real one"
        );
        println!("cargo:rustc-env=FTN_EBPF_STUB={reason}");
        return Ok(());
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

/// An empty file where the object would be (`include_bytes_aligned!` needs a file).
fn write_stub(path: &Path) -> anyhow::Result<()> {
    std::fs::write(path, []).with_context(|| format!("writing the stub {}", path.display()))
}

fn which_bpf_linker() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("bpf-linker"))
        .find(|p| p.is_file())
}
