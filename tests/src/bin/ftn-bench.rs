//! `cargo xtask bench`: measures the dataplane, failover and the controller's scale, each beside
//! a baseline measured in the same run, prints a table and optionally writes a flat JSON object.
//!
//! Usage: `ftn-bench [--quick] [--json PATH] [--only xdp,flood,failover,remap,scale,scrape,cluster,cluster-scale,ha]` (as root).

use std::{collections::BTreeMap, time::Instant};

use ftn_tests::bench::{self, Figure, Size};

/// The daemon's allocator (ftn-controller/src/main.rs): the in-process figures (remap) run on it.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Every key the JSON must hold, in print order, with the target (None: no target).
const KEYS: &[(&str, Option<Target>)] = &[
    ("xdp_floor_ns", None),
    ("xdp_established_ns", None),
    ("xdp_new_flow_ns", None),
    ("xdp_new_flow_empty_ns", None),
    ("xdp_reply_ns", None),
    ("xdp_ipv6_established_ns", None),
    ("xdp_pass_ns", None),
    // Issue 13's targets. xdp_ratio_new_flow: the tables at 90 % of capacity; _empty: empty.
    ("xdp_ratio_established", Some(Target::AtMost(2.5))),
    ("xdp_ratio_new_flow", Some(Target::AtMost(8.0))),
    ("xdp_ratio_new_flow_empty", Some(Target::AtMost(8.0))),
    ("xdp_ratio_reply", Some(Target::AtMost(2.5))),
    ("xdp_ratio_pass", Some(Target::AtMost(2.0))),
    ("xdp_ratio_ipv6", Some(Target::AtMost(1.15))),
    ("flood_established_survived", Some(Target::AtLeast(20.0))),
    ("pps_ftn", None),
    ("pps_nftables", None),
    ("pps_routing", None),
    ("ratio_ftn_nftables", Some(Target::AtLeast(3.0))),
    ("failover_crash_gap_ms", Some(Target::AtMost(150.0))),
    ("failover_service_gap_ms", Some(Target::AtMost(150.0))),
    ("failover_tuned_gap_ms", Some(Target::AtMost(30.0))),
    // A quiet resource (one client connection per second): measured, targets in issue 15.
    ("failover_crash_idle_ms", None),
    ("failover_service_idle_ms", None),
    ("failback_failed_probes", Some(Target::AtMost(0.0))),
    ("failback_broken_connections", Some(Target::AtMost(0.0))),
    ("restart_failed_probes", Some(Target::AtMost(0.0))),
    ("remap_10k_ms", Some(Target::AtMost(20.0))),
    ("heartbeat_cpu_1000", Some(Target::AtMost(0.1))),
    ("rss_mb_100k", Some(Target::AtMost(150.0))),
    ("etcd_propagation_ms", Some(Target::AtMost(50.0))),
    ("failover_3gw_gap_ms", Some(Target::AtMost(300.0))),
    // Issue 15: the shared directory at 100,000 resources.
    ("etcd_resources", Some(Target::AtLeast(100_000.0))),
    ("etcd_remap_10k_ms", Some(Target::AtMost(100.0))),
    ("etcd_propagation_100k_ms", Some(Target::AtMost(10.0))),
    ("scrape_failover_delay_ms", Some(Target::AtMost(5.0))),
    ("leader_death_failover_ms", Some(Target::AtMost(1000.0))),
    // Issue 14: gateway high availability (BGP through BIRD 2, ECMP, BFD), and the reference
    // deployment measured beside it (keepalived VRRP moving the VIP between two gateways).
    ("gateway_crash_gap_ms", Some(Target::AtMost(300.0))),
    (
        "gateway_crash_broken_connections",
        Some(Target::AtMost(0.0)),
    ),
    ("gateway_detach_failed_probes", Some(Target::AtMost(0.0))),
    ("gateway_join_failed_probes", Some(Target::AtMost(0.0))),
    ("vrrp_crash_gap_ms", None),
    ("vrrp_crash_broken_connections", None),
];

#[derive(Clone, Copy)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    fn met(self, v: f64) -> bool {
        match self {
            Target::AtMost(t) => v <= t,
            Target::AtLeast(t) => v >= t,
        }
    }
    fn text(self) -> String {
        match self {
            Target::AtMost(t) => format!("<= {t}"),
            Target::AtLeast(t) => format!(">= {t}"),
        }
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: ftn-bench [--quick] [--json PATH] [--only xdp,flood,failover,remap,scale,scrape,cluster,cluster-scale,ha]"
    );
    std::process::exit(2);
}

fn main() {
    let mut size = Size::Full;
    let mut json: Option<String> = None;
    let mut only: Option<Vec<String>> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => size = Size::Quick,
            "--json" => json = Some(args.next().unwrap_or_else(|| usage())),
            "--only" => {
                only = Some(
                    args.next()
                        .unwrap_or_else(|| usage())
                        .split(',')
                        .map(String::from)
                        .collect(),
                )
            }
            _ => usage(),
        }
    }
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!(
            "the benchmark needs root (BPF, network namespaces): run `cargo xtask bench` as root"
        );
        std::process::exit(2);
    }
    let wants = |part: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == part));
    println!(
        "== ftn benchmark ({}) ==",
        if size == Size::Quick {
            "quick: small counts, figures NOT meaningful"
        } else {
            "full"
        }
    );
    println!("machine: {}", machine());
    let t0 = Instant::now();
    let mut figures: Vec<Figure> = Vec::new();
    type Part = (&'static str, fn(Size) -> Vec<Figure>);
    let parts: [Part; 9] = [
        ("xdp", bench::xdp::run),
        ("flood", bench::xdp::flood::run),
        ("failover", bench::failover::run),
        ("remap", bench::scale::run_remap),
        ("scale", bench::scale::run),
        ("scrape", bench::scrape::run_scrape),
        ("cluster", bench::cluster::run),
        ("cluster-scale", bench::cluster_scale::run),
        ("ha", bench::ha::run),
    ];
    for (name, run) in parts {
        if !wants(name) {
            continue;
        }
        let t = Instant::now();
        println!("-- {name} ...");
        let got = run(size);
        println!(
            "   {name}: {} figure(s) in {:.1} s",
            got.len(),
            t.elapsed().as_secs_f64()
        );
        figures.extend(got);
    }
    let by_key: BTreeMap<&str, &Figure> = figures.iter().map(|f| (f.key, f)).collect();
    println!();
    println!(
        "{:<28} {:>14} {:<8} {:<9} {:<8} note",
        "figure", "value", "unit", "target", "status"
    );
    let mut missing_keys = Vec::new();
    let mut unmet = Vec::new();
    let mut failed = Vec::new();
    for (key, target) in KEYS {
        let f = by_key.get(key);
        let (value, unit, note) = match f {
            Some(f) => (f.value, f.unit, f.note.clone()),
            None => (None, "", "not run (--only)".to_string()),
        };
        if f.is_none() && only.is_none() {
            missing_keys.push(*key);
        }
        let status = match (value, target) {
            // No value (a failed repetition, a part that failed): the note says why.
            (None, Some(_)) if f.is_some() => {
                unmet.push(*key);
                "NOT MET"
            }
            (None, None) if f.is_some() => {
                failed.push(*key);
                "FAILED"
            }
            (None, _) => "n/a",
            (Some(_), None) => "",
            (Some(v), Some(t)) if t.met(v) => "met",
            (Some(_), Some(_)) => {
                unmet.push(*key);
                "NOT MET"
            }
        };
        println!(
            "{:<28} {:>14} {:<8} {:<9} {:<8} {}",
            key,
            value.map(fmt).unwrap_or_else(|| "null".into()),
            unit,
            target.map(|t| t.text()).unwrap_or_default(),
            status,
            note
        );
    }
    for f in &figures {
        if !KEYS.iter().any(|(k, _)| *k == f.key) {
            println!("(extra) {:<20} {:?} {} {}", f.key, f.value, f.unit, f.note);
        }
    }
    if !failed.is_empty() {
        println!(
            "\nfigures FAILED (no value; the notes say why): {}",
            failed.join(", ")
        );
    }
    if size == Size::Quick {
        println!("\nquick mode: the figures above come from tiny counts; they show the benchmark runs, not how fast ftn is.");
    } else if !unmet.is_empty() {
        println!(
            "\ntargets NOT met: {} (see the notes: what limits each)",
            unmet.join(", ")
        );
    }
    println!("benchmark took {:.1} s", t0.elapsed().as_secs_f64());
    if let Some(path) = json {
        let mut obj = serde_json::Map::new();
        for (key, _) in KEYS {
            let v = by_key
                .get(key)
                .and_then(|f| f.value)
                .and_then(serde_json::Number::from_f64)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null);
            obj.insert((*key).to_string(), v);
        }
        let text = serde_json::to_string_pretty(&serde_json::Value::Object(obj)).unwrap();
        if let Err(e) = std::fs::write(&path, text + "\n") {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(1);
        }
        println!("wrote {path} ({} keys)", KEYS.len());
    }
    if !missing_keys.is_empty() {
        eprintln!("a part returned no figure for: {}", missing_keys.join(", "));
        std::process::exit(1);
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, kernel {kernel}")
}
