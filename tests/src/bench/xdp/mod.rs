//! The dataplane's per-packet cost and forwarding rate.
//!
//! - [`per_packet`]: per-packet cost (`xdp_*_ns`, `xdp_ratio_*`), `BPF_PROG_TEST_RUN` on ftn's
//!   program behind a frame-restoring wrapper.
//! - [`forwarding`]: forwarding rate (`pps_*`, `ratio_ftn_nftables`) through a gateway
//!   namespace, ftn beside nftables and plain routing.

mod per_packet;
mod forwarding;
pub mod flood;

use std::error::Error;

use aya::{programs::Xdp, Ebpf};
use ftn_common::bench::{BenchFrame, FRAME_MAX};

use super::{Figure, Size};

pub fn run(size: Size) -> Vec<Figure> {
    let mut out = per_packet::run(size);
    out.extend(forwarding::run(size));
    out
}

/// An error with its chain of sources, on one line.
pub(super) fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The first line and the last three lines of a long error (a verifier log).
fn short(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= 4 {
        return lines.join(" / ");
    }
    format!(
        "{} / ... / {}",
        lines[0],
        lines[lines.len() - 3..].join(" / ")
    )
}
pub(super) fn bench_frame(
    frame: &[u8],
    vary_port: Option<(u32, u32)>,
) -> Result<BenchFrame, String> {
    if frame.len() < 14 || frame.len() > FRAME_MAX {
        return Err(format!("frame of {} bytes (14..={FRAME_MAX})", frame.len()));
    }
    let mut f = BenchFrame {
        len: frame.len() as u32,
        ..BenchFrame::default()
    };
    f.data[..frame.len()].copy_from_slice(frame);
    if let Some((port_at, csum_at)) = vary_port {
        f.port_at = port_at;
        f.csum_at = csum_at;
    }
    Ok(f)
}
/// Loads the bench programs' own object (`ftn-bench-ebpf`: wrapper, nop, floor, generator,
/// sink and their small maps); the dataplane's object is loaded by `AyaDataplane` as a gateway
/// loads it.
pub(super) fn load_bench_object() -> Result<Ebpf, String> {
    let object = ftn_controller::dataplane::bench_object().map_err(|e| e.to_string())?;
    aya::EbpfLoader::new()
        .load(object)
        .map_err(|e| format!("load the bench eBPF object: {}", chain(&e)))
}

pub(super) fn load_prog<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut Xdp, String> {
    let prog: &mut Xdp = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program {name} is not in the object"))?
        .try_into()
        .map_err(|e| format!("{name} is not XDP: {e}"))?;
    if let Err(e) = prog.load() {
        // The whole verifier log to stderr; its last lines (the verdict) in the note.
        eprintln!("xdp bench: loading {name} failed: {e:?}");
        return Err(format!("load {name}: {}", short(&chain(&e))));
    }
    Ok(prog)
}

pub(super) fn prog_ref<'a>(ebpf: &'a Ebpf, name: &str) -> Result<&'a Xdp, String> {
    ebpf.program(name)
        .ok_or_else(|| format!("program {name} is not in the object"))?
        .try_into()
        .map_err(|e| format!("{name} is not XDP: {e}"))
}
pub(super) fn take_map<T>(ebpf: &mut Ebpf, name: &str) -> Result<T, String>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let m = ebpf
        .take_map(name)
        .ok_or_else(|| format!("map {name} is not in the object"))?;
    T::try_from(m).map_err(|e| format!("map {name}: {}", chain(&e)))
}
fn list(v: &[f64]) -> String {
    let parts: Vec<String> = v.iter().map(|x| format!("{x:.0}")).collect();
    format!("[{}]", parts.join(", "))
}
