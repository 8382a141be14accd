//! The eBPF object must be rebuilt when bpf-linker changes (a new LLVM can change the object).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
