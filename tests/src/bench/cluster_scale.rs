//! The cluster lab at 100,000 resources (issue 15): the 3 gateways, the 3-member etcd cluster
//! and real `ftn` processes of the cluster lab, with 99,999 more resources declared beside
//! `web`: 10,000 resources list `primary` first, 90,000 list `backup` first.
//!
//! - **`etcd_resources`**: the resources the cluster runs with: 100,000 when all three gateways
//!   started on the shared directory, every one reports 100,000 resources, and the remap below
//!   reached every gateway's maps; null (NOT MET) with the reason otherwise.
//! - **`etcd_remap_10k_ms`**: `ftn drain primary` on the leader (a decision that moves the
//!   10,000 resources whose primary it is, the same records and events a failure of `primary`
//!   writes, without the detection time): from just before the command starts (this process's
//!   clock) to the last gateway publishing that its maps hold the new revision
//!   (`applied_at_ms`, same machine clock). Includes the CLI's start and its API call, the
//!   leader's plan and etcd commit, the watch, each follower's reading of the entry and its map
//!   writes. One run (each needs a fresh directory: the drain is not undone).
//! - **`etcd_propagation_100k_ms`**: [`super::cluster`]'s propagation (switchovers of `web`:
//!   the leader's write to the last gateway's maps) with the 100,000 resources.

use std::time::{Duration, Instant};

use crate::{
    bench::{attempt, median, Figure, Size},
    cluster::{self, Cluster, GATEWAYS},
};

/// The resources of the full run (quick mode: [`QUICK_RESOURCES`]).
const RESOURCES: u32 = 100_000;
/// Of which this many list `primary` first (the remap moves them).
const ON_PRIMARY: u32 = 10_000;
/// Quick mode (CI): the same steps at 2,000 resources, 200 on `primary`.
const QUICK_RESOURCES: u32 = 2_000;
/// Resources per VIP; VIPs from 198.19.0.1 (no lab address there).
const PER_VIP: u32 = 1_000;
/// Ports of the extra resources: 1024 up. The stateless return path needs every (server,
/// protocol, port) to serve one VIP only, and every resource lists both servers: resource i
/// takes tcp port 1024 + i below [`TCP_PORTS`], then udp ports from 1024.
const TCP_PORTS: u32 = 64_000;
/// A gateway's start-up at 100,000 resources: 4.2 s alone in `rss_mb_100k`'s run; three at
/// once on two cores, and the first one's commit of every record, with a wide margin.
const START_LIMIT: Duration = Duration::from_secs(90);

/// The `resources - 1` resources besides `web` (which is on `primary`): the first
/// `on_primary - 1` list `primary` first, the others `backup`.
fn extra(resources: u32, on_primary: u32) -> String {
    let mut s = String::with_capacity(130 * resources as usize);
    for i in 1..resources {
        let servers = if i < on_primary {
            "\"primary\", \"backup\""
        } else {
            "\"backup\", \"primary\""
        };
        let (protocol, port) = if i < TCP_PORTS {
            ("tcp", 1024 + i)
        } else {
            ("udp", 1024 + i - TCP_PORTS)
        };
        s.push_str(&format!(
            "\n[[resource]]\nname = \"r{i}\"\nvip = \"198.19.{}.{}\"\nprotocol = \"{protocol}\"\nports = [{port}]\nservers = [{servers}]\n",
            (i / PER_VIP) / 250,
            (i / PER_VIP) % 250 + 1,
        ));
    }
    s
}

/// gateway k's own record in its cluster status.
fn own(c: &Cluster, k: usize) -> Result<serde_json::Value, String> {
    c.cluster_status(k)?["gateways"]
        .as_array()
        .and_then(|g| g.iter().find(|g| g["name"] == cluster::gw_name(k)).cloned())
        .ok_or_else(|| format!("gateway {k}: no record of its own"))
}

fn now_ms() -> u64 {
    ftn_controller::directory::now_ms()
}

/// The drain on the leader; (ms from the command to the last gateway's maps, the revision,
/// per gateway), checked to be one commit that put every resource on `backup`.
fn remap(c: &Cluster, resources: u32) -> Result<(f64, u64, Vec<u64>), String> {
    let leader = c.leader().ok_or("no leader")?;
    let lk = c.index_of(&leader);
    let applied = |k: usize| -> Result<u64, String> {
        c.cluster_status(k)?["applied_revision"]
            .as_u64()
            .ok_or_else(|| format!("gateway {k}: no applied_revision"))
    };
    let before = applied(lk)?;
    // Every gateway: the entry, 10,000 map entries; 30 s is two orders above the target.
    let deadline = Instant::now() + Duration::from_secs(30);
    let t0 = now_ms();
    c.gw(lk).cli_ok(&["drain", "primary"]);
    // The drain's revision: the first the leader applies after it (the full status, 100,000
    // resources, is read only after the timing: building and parsing it competes with the
    // gateways for the two cores).
    let rev = loop {
        let r = applied(lk)?;
        if r > before {
            break r;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the leader applied no revision after {before} within 30 s of the drain"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut at = Vec::new();
    for k in 1..=GATEWAYS {
        loop {
            let r = own(c, k)?;
            if r["applied_revision"].as_u64().unwrap_or(0) >= rev {
                at.push(r["applied_at_ms"].as_u64().unwrap_or(0).saturating_sub(t0));
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "gateway {k} did not apply revision {rev} (the drain) within 30 s"
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    // The revision measured is the drain's only one, and it moved the resources.
    let st = c.status(lk)?;
    let last = st["revision"].as_u64().unwrap_or(0);
    if last != rev {
        return Err(format!(
            "the directory is at revision {last}, the first after the drain was {rev}: the drain took more than one commit (the figure would miss the later ones)"
        ));
    }
    let moved = st["resources"]
        .as_array()
        .map_or(0, |r| r.iter().filter(|r| r["current"] == "backup").count());
    if moved != resources as usize {
        return Err(format!(
            "after the drain {moved} of {resources} resources are on backup"
        ));
    }
    let worst = at.iter().copied().max().unwrap_or(0);
    Ok((worst as f64, rev, at))
}

pub fn run(size: Size) -> Vec<Figure> {
    let (n_prop, resources, on_primary) = match size {
        Size::Quick => (3, QUICK_RESOURCES, QUICK_RESOURCES / 10),
        Size::Full => (10, RESOURCES, ON_PRIMARY),
    };
    let got = attempt(|| {
        let t = Instant::now();
        let mut c = Cluster::new(&extra(resources, on_primary));
        for k in 1..=GATEWAYS {
            c.gws[k - 1]
                .start_within_on(START_LIMIT, cluster::API_LISTEN.parse().unwrap())
                .map_err(|e| format!("gateway {k}: {e}"))?;
        }
        c.wait_leader(START_LIMIT);
        c.wait_all_current("web", Some("primary"), START_LIMIT);
        let started = t.elapsed();
        for k in 1..=GATEWAYS {
            let n = c.status(k)?["resources"].as_array().map_or(0, |r| r.len());
            if n != resources as usize {
                return Err(format!(
                    "gateway {k} reports {n} resources, not {resources}"
                ));
            }
        }
        let (prop, _) = super::cluster::propagation_ms(&c, n_prop)?;
        let (remap_ms, rev, per_gw) = remap(&c, resources)?;
        let rss: Vec<String> = (1..=GATEWAYS)
            .map(|k| {
                c.gw(k)
                    .pid()
                    .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
                    .and_then(|s| {
                        s.lines()
                            .find(|l| l.starts_with("VmRSS:"))
                            .map(|l| l.trim_start_matches("VmRSS:").trim().to_owned())
                    })
                    .unwrap_or_else(|| "?".into())
            })
            .collect();
        Ok((started, prop, remap_ms, rev, per_gw, rss))
    });
    match got {
        Ok((started, prop, remap_ms, rev, per_gw, rss)) => vec![
            Figure::new(
                "etcd_resources",
                f64::from(resources),
                "resources",
                format!(
                    "3 gateways on one etcd directory (3 members, default request limit) started with {resources} resources in {:.1} s, each reports them all, and a {on_primary}-resource remap reached every gateway's maps; RSS per gateway {rss:?}",
                    started.as_secs_f64()
                ),
            ),
            Figure::new(
                "etcd_remap_10k_ms",
                remap_ms,
                "ms",
                format!(
                    "`ftn drain primary` on the leader at {resources} resources (moves the {on_primary} whose primary it is; the records and events of a failure, without its detection): command start to the last of 3 gateways' maps holding revision {rev}; per gateway {per_gw:?} ms; ONE run (ms resolution); includes the CLI's start and API call"
                ),
            ),
            Figure::new(
                "etcd_propagation_100k_ms",
                median(&prop),
                "ms",
                format!(
                    "etcd_propagation_ms with {resources} resources declared: median of {} switchovers of one resource, the leader's write to the last of 3 gateways' maps (runs {:?})",
                    prop.len(),
                    prop.iter().map(|v| *v as u64).collect::<Vec<_>>()
                ),
            ),
        ],
        Err(e) => ["etcd_resources", "etcd_remap_10k_ms", "etcd_propagation_100k_ms"]
            .into_iter()
            .map(|k| {
                Figure::missing(
                    k,
                    if k == "etcd_resources" { "resources" } else { "ms" },
                    format!("the {resources}-resource cluster failed: {e}"),
                )
            })
            .collect(),
    }
}
