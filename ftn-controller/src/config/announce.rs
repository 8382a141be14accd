//! `[announce]`: the VIP routes this gateway keeps in a kernel routing table for the gateway's
//! routing daemon (BIRD 2's kernel protocol, FRR's `ip import-table`) to export over BGP.

use std::time::Duration;

use super::*;
use crate::model::Prefix;

/// `[announce] etcd_grace` by default: how long a gateway cut off from the shared directory
/// keeps announcing.
pub const DEFAULT_ETCD_GRACE: Duration = Duration::from_secs(30);
/// `[announce] withdraw_wait` by default: between withdrawing the routes and detaching.
pub const DEFAULT_WITHDRAW_WAIT: Duration = Duration::from_secs(2);
/// Longest `etcd_grace` and `withdraw_wait`: an hour.
pub const MAX_ANNOUNCE_PERIOD: Duration = Duration::from_secs(3600);
/// Kernel routing tables that are never ftn's: 0 (unspecified), 253 (default), 254 (main),
/// 255 (local).
pub const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];

/// `[announce]`, when present.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AnnounceConfig {
    /// The kernel routing table that holds this gateway's VIP routes (ftn owns every route of
    /// its protocol in it).
    pub table: u32,
    /// With a shared directory: how long a gateway that lost etcd keeps announcing; `None`:
    /// forever (`"never"` in the file).
    #[serde(serialize_with = "ser_grace")]
    pub etcd_grace: Option<Duration>,
    /// Prefixes announced towards the servers while this gateway can translate their replies
    /// (the clients' networks, or a default route), for the daemon to export to the servers'
    /// side: replies then come back only through gateways that serve.
    pub return_routes: Vec<Prefix>,
    /// `ftn detach`: how long the routes are withdrawn before the dataplane goes.
    #[serde(serialize_with = "ser_duration")]
    pub withdraw_wait: Duration,
}

fn ser_grace<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_str(&human(*d)),
        None => s.serialize_str("never"),
    }
}

fn ser_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&human(*d))
}

pub(super) const ANNOUNCE_FIELDS: &[&str] = &[
    "mechanism",
    "table",
    "etcd_grace",
    "withdraw_wait",
    "return_routes",
];

pub(super) fn read_announce(ctx: &mut Ctx, t: &Table) -> Option<AnnounceConfig> {
    t.deny_unknown(ctx, ANNOUNCE_FIELDS);
    if let Some(item) = t.required(ctx, "mechanism") {
        want_choice(ctx, item, &t.field("mechanism"), &[("kernel-table", ())])?;
    }
    let mut table = None;
    if let Some(item) = t.required(ctx, "table") {
        let field = t.field("table");
        if let Some(v) = want_range(ctx, item, &field, 1, i64::from(u32::MAX)) {
            let v = v as u32;
            if RESERVED_TABLES.contains(&v) {
                ctx.report(
                    item.span,
                    &field,
                    format!("table {v} is one of the kernel's own (253 default, 254 main, 255 local): give ftn a table of its own, e.g. 100"),
                );
            } else {
                table = Some(v);
            }
        }
    }
    let mut etcd_grace = Some(DEFAULT_ETCD_GRACE);
    if let Some(item) = t.get("etcd_grace") {
        let field = t.field("etcd_grace");
        if matches!(&item.node, Node::Str(s) if s == "never") {
            etcd_grace = None;
        } else {
            etcd_grace = want_period(ctx, item, &field).or(etcd_grace);
        }
    }
    let mut withdraw_wait = DEFAULT_WITHDRAW_WAIT;
    if let Some(item) = t.get("withdraw_wait") {
        if let Some(d) = want_period(ctx, item, &t.field("withdraw_wait")) {
            withdraw_wait = d;
        }
    }
    let mut return_routes = Vec::new();
    if let Some(item) = t.get("return_routes") {
        let field = t.field("return_routes");
        for (i, p) in want_array(ctx, item, &field)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let field = format!("{field}[{i}]");
            let Some(s) = want_str(ctx, p, &field) else {
                continue;
            };
            match s.parse::<Prefix>() {
                Ok(r) if r.is_host() => ctx.report(
                    p.span,
                    &field,
                    format!("{s} is a host route: return routes are the clients' networks (e.g. 198.18.20.0/24, or 0.0.0.0/0); the VIPs are announced by themselves"),
                ),
                Ok(r) if return_routes.contains(&r) => {
                    ctx.report(p.span, &field, format!("{s} is listed twice"))
                }
                Ok(r) => return_routes.push(r),
                Err(e) => ctx.report(p.span, &field, e),
            }
        }
    }
    Some(AnnounceConfig {
        table: table?,
        etcd_grace,
        withdraw_wait,
        return_routes,
    })
}

/// A duration of at most [`MAX_ANNOUNCE_PERIOD`].
fn want_period(ctx: &mut Ctx, item: &Item, field: &str) -> Option<Duration> {
    let d = want_duration(ctx, item, field)?;
    if d > MAX_ANNOUNCE_PERIOD {
        ctx.report(
            item.span,
            field,
            format!("must be at most {}", human(MAX_ANNOUNCE_PERIOD)),
        );
        return None;
    }
    Some(d)
}
