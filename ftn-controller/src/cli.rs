//! The operator commands' side of the `ftn` binary: finding the API (address and token, also
//! from a configuration file that does not validate), calling it, and printing what it answers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use ftn_controller::api::{self, Done, ErrorBody};
use ftn_controller::directory::now_ms;
use ftn_controller::model::Health;
use ftn_controller::wire::{ClusterStatus, Status};
use ftn_controller::{config, files};

use crate::{ApiArgs, DEFAULT_API};

pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    pub(crate) token: Option<String>,
}

/// The `[api]` settings of a configuration file that does not validate as a whole (e.g. an
/// edited file about to be reloaded): read leniently, so that `ftn reload` can still reach the
/// daemon and show the file's problems. Only `listen` and the token are taken.
pub(crate) fn lenient_api(path: &Path) -> (Option<SocketAddr>, Option<String>) {
    let Ok(text) = files::read_regular(path, files::MAX_CONFIG_BYTES) else {
        return (None, None);
    };
    let Ok(v) = text.parse::<toml::Table>() else {
        return (None, None);
    };
    let s = api_settings(&v, path);
    (s.listen.and_then(Result::ok), s.token.and_then(Result::ok))
}

/// What a parsed document's `[api]` table says: each field absent, or its value (an error
/// when it is not usable: a listen address that does not parse, a token file that cannot be
/// read).
struct ApiSettings {
    listen: Option<Result<SocketAddr, ()>>,
    token: Option<Result<String, ()>>,
}

fn api_settings(v: &toml::Table, path: &Path) -> ApiSettings {
    let api = v.get("api").and_then(|a| a.as_table());
    let listen = api.and_then(|a| a.get("listen")).map(|l| {
        l.as_str()
            .and_then(|l| l.parse::<SocketAddr>().ok())
            .ok_or(())
    });
    let token = api.and_then(|a| {
        if let Some(t) = a.get("token") {
            return Some(t.as_str().map(str::to_string).ok_or(()));
        }
        let file = a.get("token_file")?;
        Some(file.as_str().ok_or(()).and_then(|file| {
            let file = path.parent().unwrap_or(Path::new("/")).join(file);
            files::read_regular(&file, files::MAX_SECRET_BYTES)
                .map(|t| t.trim().to_string())
                .map_err(|_| ())
        }))
    });
    ApiSettings { listen, token }
}

/// The `[api]` section of a configuration's text, parsed alone: from its `[api]` header line
/// to the next table header. An operator command needs only the address and the token, and a
/// gateway's file may declare 100,000 resources (validating them all took 1.5 s per command).
/// None when the file has no such header line, or that section does not parse alone (then the
/// whole file is read and validated).
fn api_section(text: &str) -> Option<toml::Table> {
    let mut start = None;
    let mut end = text.len();
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let h = line.split('#').next().unwrap_or("").trim();
        match start {
            None if h == "[api]" => start = Some(at),
            Some(_) if h.starts_with('[') => {
                end = at;
                break;
            }
            _ => {}
        }
        at += line.len();
    }
    text[start?..end].parse::<toml::Table>().ok()
}

/// The address and token from the `[api]` section alone, when it is there and every field of
/// it that is set is usable.
fn quick_api(path: &Path) -> Option<(Option<SocketAddr>, Option<String>)> {
    let text = files::read_regular(path, files::MAX_CONFIG_BYTES).ok()?;
    let s = api_settings(&api_section(&text)?, path);
    let listen = s.listen.transpose().ok()?;
    let token = s.token.transpose().ok()?;
    Some((listen, token))
}

pub(crate) fn target(a: &ApiArgs) -> anyhow::Result<Target> {
    let full = || match config::load(&a.config) {
        Ok(c) => (Some(c.api.listen), c.api.token.clone()),
        Err(e) => {
            let (listen, token) = lenient_api(&a.config);
            if a.api.is_none() || a.token_file.is_none() {
                eprintln!(
                    "note: {} does not validate ({} problem(s), first: {}); its [api] settings were read as they are{}",
                    a.config.display(),
                    e.problems.len(),
                    e.problems.first().map(|p| p.message.as_str()).unwrap_or(""),
                    if token.is_none() && a.token_file.is_none() {
                        "; no token found (use --token-file for changes)"
                    } else {
                        ""
                    }
                );
            }
            (listen, token)
        }
    };
    let (listen, cfg_token) = quick_api(&a.config).unwrap_or_else(full);
    let addr = match (a.api, listen) {
        (Some(addr), _) => addr,
        (None, Some(l)) => l,
        (None, None) => DEFAULT_API.parse()?,
    };
    let token = match &a.token_file {
        Some(p) => Some(
            files::read_regular(p, files::MAX_SECRET_BYTES)
                .with_context(|| format!("reading the API token from {}", p.display()))?
                .trim()
                .to_string(),
        ),
        None => cfg_token,
    };
    Ok(Target { addr, token })
}

pub(crate) async fn get<T: serde::de::DeserializeOwned>(
    t: &Target,
    path: &str,
) -> anyhow::Result<T> {
    let (code, body) = api::call(t.addr, "GET", path, None, None).await?;
    decode(code, &body)
}

pub(crate) async fn post(
    t: &Target,
    path: &str,
    body: serde_json::Value,
) -> anyhow::Result<String> {
    let (code, body) = api::call(t.addr, "POST", path, t.token.as_deref(), Some(&body)).await?;
    let done: Done = decode(code, &body)?;
    Ok(done.result)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(code: u16, body: &str) -> anyhow::Result<T> {
    if !(200..300).contains(&code) {
        let msg = serde_json::from_str::<ErrorBody>(body)
            .map(|e| e.error)
            .unwrap_or_else(|_| body.to_string());
        anyhow::bail!("the daemon refused ({code}): {msg}");
    }
    serde_json::from_str(body).with_context(|| format!("unexpected answer from the daemon: {body}"))
}

pub(crate) fn ago(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let d = now_ms().saturating_sub(ms) / 1000;
    match d {
        0..=119 => format!("{d}s ago"),
        120..=7199 => format!("{}m ago", d / 60),
        7200..=172_799 => format!("{}h ago", d / 3600),
        _ => format!("{}d ago", d / 86400),
    }
}

pub(crate) fn print_status(st: &Status) {
    println!(
        "gateway {}  directory {} (revision {})  interfaces {}{}",
        st.gateway,
        st.directory,
        st.revision,
        st.interfaces.join(","),
        if st.adopted {
            "  (adopted a pinned dataplane)"
        } else {
            ""
        }
    );
    for w in &st.warnings {
        println!("WARNING: {w}");
    }
    if let Some(us) = st.last_verdict_to_maps_us {
        println!(
            "last decision: {:.1} ms from its verdict to the maps ({} decisions timed)",
            us as f64 / 1000.0,
            st.verdicts_applied
        );
    }
    println!();
    print_resources(st);
    println!();
    print_servers(st);
    if let Some(a) = &st.announce {
        print_announce(a);
    }
    if let Some(c) = &st.cluster {
        print_cluster(c);
    }
}

fn print_announce(a: &ftn_controller::announce::AnnounceStatus) {
    println!();
    let n = a.vips.iter().filter(|v| v.announced).count();
    println!(
        "announce (kernel table {}): {n} of {} VIPs announced{}",
        a.table,
        a.vips.len(),
        match (&a.withheld, a.pending) {
            (Some(why), true) => format!("; routes left as they were: {why}"),
            (Some(why), false) => format!("; NOTHING announced: {why}"),
            (None, _) => String::new(),
        }
    );
    let mut rows = vec![["VIP".to_string(), "ANNOUNCED".into(), "WHY".into()]];
    for v in &a.vips {
        rows.push([
            v.vip.to_string(),
            if v.announced { "yes" } else { "no" }.into(),
            v.why.clone(),
        ]);
    }
    table(&rows);
    for (p, on) in &a.return_routes {
        println!(
            "return route {p}: {}",
            if *on { "announced" } else { "not announced" }
        );
    }
}

fn print_resources(st: &Status) {
    let mut rows = vec![[
        "RESOURCE".to_string(),
        "VIP".into(),
        "SERVICE".into(),
        "CURRENT".into(),
        "STATE".into(),
        "SINCE".into(),
        "WHY".into(),
    ]];
    for r in &st.resources {
        let ports = if r.ports.is_empty() {
            r.protocol.clone()
        } else {
            format!(
                "{}/{}",
                r.protocol,
                r.ports
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        };
        rows.push([
            r.name.clone(),
            r.vip.clone(),
            ports,
            r.current.clone().unwrap_or_else(|| "-".into()),
            r.state.clone(),
            ago(r.since_ms),
            r.reason.clone(),
        ]);
    }
    table(&rows);
}

fn print_servers(st: &Status) {
    let mut rows = vec![[
        "SERVER".to_string(),
        "ADDRESS".into(),
        "HEALTH".into(),
        "SINCE".into(),
        "CHECKS".into(),
        "EVIDENCE".into(),
    ]];
    for s in &st.servers {
        let checks = s
            .checks
            .iter()
            .map(|c| match &c.unable_to_run {
                Some(why) => format!(
                    "{} {} CANNOT RUN ({why})",
                    c.check,
                    if c.up { "up" } else { "down" },
                ),
                None => format!(
                    "{} {} {:.1}ms",
                    c.check,
                    if c.up { "up" } else { "down" },
                    c.last_latency_us as f64 / 1000.0
                ),
            })
            .collect::<Vec<_>>()
            .join("; ");
        let health = match (s.health, s.drained) {
            (Health::Up, false) => "up",
            (Health::Up, true) => "up, drained",
            (Health::Down, false) => "down",
            (Health::Down, true) => "down, drained",
        };
        rows.push([
            s.name.clone(),
            s.address.clone(),
            health.into(),
            ago(s.since_ms),
            if checks.is_empty() {
                "-".into()
            } else {
                checks
            },
            s.evidence.clone(),
        ]);
    }
    table(&rows);
}

fn print_cluster(c: &ClusterStatus) {
    println!();
    println!(
        "shared directory: this gateway {} is the {}; leader {}; etcd {}{} ({}); maps at revision {}",
        c.gateway,
        c.role,
        c.leader.as_deref().unwrap_or("none"),
        c.etcd,
        c.etcd_error
            .as_deref()
            .map(|e| format!(": {e}"))
            .unwrap_or_default(),
        ago(c.etcd_since_ms),
        c.applied_revision
    );
    let mut rows = vec![[
        "GATEWAY".to_string(),
        "LIVE".into(),
        "ROLE".into(),
        "MAPS AT".into(),
        "SINCE".into(),
        "SEES".into(),
    ]];
    for g in &c.gateways {
        rows.push([
            g.name.clone(),
            if g.live { "yes" } else { "no" }.into(),
            if c.leader.as_deref() == Some(g.name.as_str()) {
                "leader"
            } else {
                "follower"
            }
            .into(),
            format!("revision {}", g.applied_revision),
            ago(g.applied_at_ms),
            g.observations
                .iter()
                .map(|(s, h)| format!("{s} {h}"))
                .collect::<Vec<_>>()
                .join(", "),
        ]);
    }
    table(&rows);
}

pub(crate) fn table<const N: usize>(rows: &[[String; N]]) {
    let mut w = [0usize; N];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| {
                if i + 1 == N {
                    c.clone()
                } else {
                    format!("{c:<width$}", width = w[i])
                }
            })
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

/// `ftn detach`'s configuration: the one named, or the default file when it exists.
pub(crate) fn detach_config(
    named: Option<PathBuf>,
) -> anyhow::Result<Option<ftn_controller::config::Config>> {
    let default = Path::new(ftn_controller::config::DEFAULT_CONFIG_PATH);
    let path = match named {
        Some(p) => p,
        None if default.exists() => default.to_path_buf(),
        None => return Ok(None),
    };
    let c = ftn_controller::config::load(&path)
        .with_context(|| format!("ftn detach reads {} for [announce] and pin_dir; fix it, or name another file with --config", path.display()))?;
    Ok(Some(c))
}

/// `ftn detach` with `[announce]`: refuses while `ftn run` answers on its API (it would announce
/// again), withdraws every VIP route of the table, then waits `withdraw_wait`.
pub(crate) async fn withdraw_for_detach(c: &ftn_controller::config::Config) -> anyhow::Result<()> {
    let Some(a) = &c.announce else { return Ok(()) };
    let probe = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        tokio::net::TcpStream::connect(c.api.listen),
    )
    .await;
    if matches!(probe, Ok(Ok(_))) {
        anyhow::bail!(
            "ftn run is running (its API answers at {}): stop it first (systemctl stop ftn), or it would announce the VIPs again; nothing was withdrawn or detached",
            c.api.listen
        );
    }
    let n = ftn_controller::announce::withdraw_all(a.table)
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "withdrawing the VIP routes of kernel table {}: {e}; nothing was detached",
                a.table
            )
        })?;
    println!(
        "withdrew {n} route(s) from kernel table {}; waiting {} (withdraw_wait) for the routing daemon to pass it on",
        a.table,
        humantime::format_duration(a.withdraw_wait)
    );
    tokio::time::sleep(a.withdraw_wait).await;
    Ok(())
}

pub(crate) fn check_config(file: &Path) -> anyhow::Result<()> {
    match config::load(file) {
        Ok(c) => {
            println!(
                "{}: valid ({} server(s), {} resource(s), interfaces {})",
                file.display(),
                c.servers.len(),
                c.resources.len(),
                c.gateway.interfaces.join(",")
            );
            Ok(())
        }
        Err(e) => {
            eprintln!("{e}");
            anyhow::bail!(
                "{}: invalid, {} problem(s)",
                file.display(),
                e.problems.len()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_section_is_read_alone() {
        let text = "[gateway]\ninterfaces = [\"eth0\"]\n\n[api] # admin\nlisten = \"127.0.0.1:9180\"\ntoken = \"t\"\n\n[[server]]\nname = \"a\"\n[api2]\n";
        let t = api_section(text).expect("an [api] section");
        let s = api_settings(&t, Path::new("/etc/ftn/ftn.toml"));
        assert_eq!(s.listen, Some(Ok("127.0.0.1:9180".parse().unwrap())));
        assert_eq!(s.token, Some(Ok("t".to_string())));
        // Nothing of the other tables.
        assert!(
            t.get("server").is_none() && t.get("gateway").is_none(),
            "{t:?}"
        );
    }

    #[test]
    fn no_api_header_or_an_unusable_field_means_the_whole_file() {
        assert!(api_section("[gateway]\napi.listen = \"127.0.0.1:1\"\n").is_none());
        assert!(api_section("[api]\nlisten = \n").is_none());
        let t = api_section("[api]\nlisten = \"nowhere\"\n").unwrap();
        assert_eq!(api_settings(&t, Path::new("x")).listen, Some(Err(())));
        let t = api_section("[api]\ntoken_file = \"/nonexistent/ftn-token\"\n").unwrap();
        assert_eq!(api_settings(&t, Path::new("x")).token, Some(Err(())));
    }
}
