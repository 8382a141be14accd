//! What the gateway serves: check timings and checks, `[[server]]`, `[[resource]]`.

use std::{collections::HashSet, net::IpAddr, time::Duration};

use super::*;
use crate::model::{Failback, NoServerAction, Protocol, DEFAULT_HOLD};

pub(super) const TIMING_FIELDS: &[&str] = &["interval", "timeout", "rise", "fall"];

/// Interval, timeout, rise and fall of a check (or of `[check_defaults]`).
#[derive(Clone, Copy, Debug)]
pub(super) struct Timing {
    pub(super) interval: Duration,
    pub(super) timeout: Duration,
    pub(super) rise: u32,
    pub(super) fall: u32,
}

impl Timing {
    pub(super) const BUILTIN: Timing = Timing {
        interval: DEFAULT_CHECK_INTERVAL,
        timeout: DEFAULT_CHECK_TIMEOUT,
        rise: DEFAULT_RISE,
        fall: DEFAULT_FALL,
    };
}

/// Reads the timing fields of `t` over `base`. A value in error keeps `base`'s, so one bad
/// `[check_defaults]` is reported once, not once per check.
pub(super) fn read_timing(ctx: &mut Ctx, t: &Table, base: Timing) -> Timing {
    let mut out = base;
    let interval_item = t.get("interval");
    let timeout_item = t.get("timeout");
    let mut ok = true;
    if let Some(item) = interval_item {
        let field = t.field("interval");
        match want_duration(ctx, item, &field) {
            Some(d) if d < MIN_CHECK_INTERVAL => {
                ctx.report(
                    item.span,
                    &field,
                    format!(
                        "interval {} is too short: at least {}",
                        human(d),
                        human(MIN_CHECK_INTERVAL)
                    ),
                );
                ok = false;
            }
            Some(d) if d > MAX_CHECK_INTERVAL => {
                ctx.report(
                    item.span,
                    &field,
                    format!(
                        "interval {} is too long: at most {} (a server checked less often is in effect never checked)",
                        human(d),
                        human(MAX_CHECK_INTERVAL)
                    ),
                );
                ok = false;
            }
            Some(d) => out.interval = d,
            None => ok = false,
        }
    }
    if let Some(item) = timeout_item {
        let field = t.field("timeout");
        match want_duration(ctx, item, &field) {
            Some(d) if d.is_zero() => {
                ctx.report(item.span, &field, "the timeout must be longer than 0");
                ok = false;
            }
            Some(d) => out.timeout = d,
            None => ok = false,
        }
    }
    if ok && (interval_item.is_some() || timeout_item.is_some()) && out.timeout > out.interval {
        let (item, name) = match timeout_item {
            Some(item) => (item, "timeout"),
            None => (interval_item.expect("one of them is set"), "interval"),
        };
        ctx.report(
            item.span,
            &t.field(name),
            format!(
                "timeout {} is longer than the interval {}: a check must finish before the next one starts",
                human(out.timeout),
                human(out.interval)
            ),
        );
        out.timeout = base.timeout.min(out.interval);
    }
    for (name, slot) in [("rise", &mut out.rise), ("fall", &mut out.fall)] {
        if let Some(item) = t.get(name) {
            if let Some(v) = want_range(ctx, item, &t.field(name), 1, i64::from(u32::MAX)) {
                *slot = v as u32;
            }
        }
    }
    out
}

pub(super) const CHECK_TYPES: &[&str] = &["tcp", "http", "udp", "icmp"];
pub(super) const CHECK_FIELDS: &[&str] = &[
    "type",
    "port",
    "path",
    "host",
    "expect_status",
    "send",
    "expect",
    "interval",
    "timeout",
    "rise",
    "fall",
];

/// Fields of a check of this type besides `type` and the timing.
pub(super) fn check_type_fields(ty: &str) -> &'static [&'static str] {
    match ty {
        "tcp" => &["port"],
        "http" => &["port", "path", "host", "expect_status"],
        "udp" => &["port", "send", "expect"],
        _ => &[],
    }
}

pub(super) fn read_check(
    ctx: &mut Ctx,
    item: &Item,
    path: String,
    defaults: Timing,
) -> Option<CheckConfig> {
    let t = want_table(ctx, item, path)?;
    let before = ctx.problems.len();
    let ty = match t.required(ctx, "type") {
        Some(item) => want_choice(
            ctx,
            item,
            &t.field("type"),
            &[
                ("tcp", "tcp"),
                ("http", "http"),
                ("udp", "udp"),
                ("icmp", "icmp"),
            ],
        ),
        None => None,
    };
    deny_fields_of_other_types(ctx, &t, ty);
    let port = match ty {
        Some("tcp" | "http" | "udp") => t
            .required(ctx, "port")
            .and_then(|item| want_port(ctx, item, &t.field("port"))),
        _ => None,
    };
    let kind = match ty {
        Some("http") => read_http(ctx, &t, port),
        Some("udp") => {
            let send = non_empty_text(ctx, &t, "send")
                .map_or_else(|| DEFAULT_UDP_SEND.to_vec(), String::into_bytes);
            let expect = non_empty_text(ctx, &t, "expect").map(String::into_bytes);
            port.map(|port| CheckKind::Udp { port, send, expect })
        }
        Some("tcp") => port.map(|port| CheckKind::Tcp { port }),
        Some(_) => Some(CheckKind::Icmp),
        None => None,
    };
    let timing = read_timing(ctx, &t, defaults);
    if ctx.problems.len() != before {
        return None;
    }
    Some(CheckConfig {
        kind: kind?,
        interval: timing.interval,
        timeout: timing.timeout,
        rise: timing.rise,
        fall: timing.fall,
    })
}

/// Fields of another check type are named as such ("only of http checks"), others as unknown.
fn deny_fields_of_other_types(ctx: &mut Ctx, t: &Table, ty: Option<&str>) {
    match ty {
        None => t.deny_unknown(ctx, CHECK_FIELDS),
        Some(ty) => {
            let mut allowed = vec!["type"];
            allowed.extend_from_slice(check_type_fields(ty));
            allowed.extend_from_slice(TIMING_FIELDS);
            for (k, _) in t.entries {
                let k_name = k.name.as_str();
                if allowed.contains(&k_name) {
                    continue;
                }
                if CHECK_FIELDS.contains(&k_name) {
                    let owners = CHECK_TYPES
                        .iter()
                        .filter(|c| check_type_fields(c).contains(&k_name))
                        .copied()
                        .collect::<Vec<_>>();
                    let owners = match owners.split_last() {
                        Some((last, rest)) if !rest.is_empty() => {
                            format!("{} and {last}", rest.join(", "))
                        }
                        _ => owners.join(""),
                    };
                    let article = if ty == "icmp" { "an" } else { "a" };
                    ctx.report(
                        k.span,
                        &t.field(k_name),
                        format!(
                            "`{k_name}` is not a field of {article} {ty} check (only of {owners} checks)"
                        ),
                    );
                } else {
                    ctx.report(k.span, &t.field(k_name), unknown_field(k_name, &allowed));
                }
            }
        }
    }
}

/// An optional text field that, when given, is not empty.
fn non_empty_text(ctx: &mut Ctx, t: &Table, name: &str) -> Option<String> {
    let item = t.get(name)?;
    let field = t.field(name);
    let s = want_str(ctx, item, &field)?;
    if s.is_empty() {
        ctx.report(
            item.span,
            &field,
            "must not be empty (omit it for the default)",
        );
        return None;
    }
    Some(s.to_owned())
}

/// False (and reported) when a field that goes into a request line holds whitespace.
fn no_space(ctx: &mut Ctx, t: &Table, name: &str, s: &str) -> bool {
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        let item = t.get(name).expect("read above");
        ctx.report(
            item.span,
            &t.field(name),
            format!("{s:?} must not contain whitespace or control characters"),
        );
        return false;
    }
    true
}

/// An http check's `path`, `host` and `expect_status`.
fn read_http(ctx: &mut Ctx, t: &Table, port: Option<u16>) -> Option<CheckKind> {
    let path = non_empty_text(ctx, t, "path");
    if let Some(p) = &path {
        if !p.starts_with('/') {
            ctx.report(
                t.get("path").and_then(|i| i.span),
                &t.field("path"),
                format!("{p:?} must start with '/'"),
            );
        } else {
            no_space(ctx, t, "path", p);
        }
    }
    let host = non_empty_text(ctx, t, "host");
    if let Some(h) = &host {
        no_space(ctx, t, "host", h);
    }
    let expect_status = t
        .get("expect_status")
        .and_then(|item| want_range(ctx, item, &t.field("expect_status"), 100, 599))
        .map_or(DEFAULT_EXPECT_STATUS, |v| v as u16);
    port.map(|port| CheckKind::Http {
        port,
        path: path.unwrap_or_else(|| DEFAULT_HTTP_PATH.to_owned()),
        host,
        expect_status,
    })
}

/// A `[[server]]` as read, before the checks across servers and resources.
pub(super) struct RawServer {
    pub(super) label: String,
    /// Set when the name is valid.
    pub(super) name: Option<String>,
    pub(super) name_span: Option<Span>,
    pub(super) address: Option<IpAddr>,
    pub(super) address_span: Option<Span>,
    /// `None`: no `checks` key (a default check is derived).
    pub(super) checks: Option<Vec<CheckConfig>>,
    pub(super) table_span: Option<Span>,
}

impl RawServer {
    pub(super) fn build(
        self,
        resources: &[ResourceConfig],
        defaults: Timing,
    ) -> Option<ServerConfig> {
        let name = self.name?;
        let checks = match self.checks {
            Some(checks) => checks,
            None => vec![default_check(&name, resources, defaults)],
        };
        Some(ServerConfig {
            name,
            address: self.address?,
            checks,
        })
    }
}

/// The check of a server without `checks`: a TCP connect when every resource using it is tcp on
/// one same port, an ICMP echo otherwise (including when no resource uses it).
pub(super) fn default_check(server: &str, resources: &[ResourceConfig], t: Timing) -> CheckConfig {
    let users = resources
        .iter()
        .filter(|r| r.servers.iter().any(|s| s == server))
        .collect::<Vec<_>>();
    let ports = users
        .iter()
        .flat_map(|r| r.ports.iter().copied())
        .collect::<HashSet<u16>>();
    let all_tcp = !users.is_empty() && users.iter().all(|r| r.protocol == Protocol::Tcp);
    let kind = match (all_tcp, ports.len()) {
        (true, 1) => CheckKind::Tcp {
            port: *ports.iter().next().expect("one port"),
        },
        _ => CheckKind::Icmp,
    };
    CheckConfig {
        kind,
        interval: t.interval,
        timeout: t.timeout,
        rise: t.rise,
        fall: t.fall,
    }
}

/// `server "p1"` when the server has a string name, `server[3]` otherwise.
pub(super) fn label(section: &str, t: &[(Key, Item)], index: usize) -> String {
    match t
        .iter()
        .find(|(k, _)| k.name == "name")
        .map(|(_, v)| &v.node)
    {
        Some(Node::Str(name)) => format!("{section} {name:?}"),
        _ => format!("{section}[{index}]"),
    }
}

pub(super) fn read_server(
    ctx: &mut Ctx,
    item: &Item,
    index: usize,
    defaults: Timing,
) -> Option<RawServer> {
    let Node::Table(entries) = &item.node else {
        wrong_type(ctx, item, &format!("server[{index}]"), "a table");
        return None;
    };
    let t = Table {
        entries,
        span: item.span,
        path: label("server", entries, index),
    };
    t.deny_unknown(ctx, &["name", "address", "checks"]);
    let mut raw = RawServer {
        label: t.path.clone(),
        name: None,
        name_span: None,
        address: None,
        address_span: None,
        checks: None,
        table_span: item.span,
    };
    (raw.name, raw.name_span) = read_name(ctx, &t);
    if let Some(item) = t.required(ctx, "address") {
        raw.address = want_ip(ctx, item, &t.field("address"), "server address");
        raw.address_span = item.span;
    }
    if let Some(item) = t.get("checks") {
        let field = t.field("checks");
        if let Some(list) = want_array(ctx, item, &field) {
            if list.is_empty() {
                ctx.report(
                    item.span,
                    &field,
                    "must not be empty (omit `checks` for the default check)",
                );
            }
            let checks = list
                .iter()
                .enumerate()
                .filter_map(|(i, c)| read_check(ctx, c, format!("{field}[{i}]"), defaults))
                .collect::<Vec<_>>();
            raw.checks = Some(checks);
        }
    }
    Some(raw)
}

/// A `[[resource]]` as read, before the checks across servers and resources.
pub(super) struct RawResource {
    pub(super) label: String,
    pub(super) name: Option<String>,
    pub(super) name_span: Option<Span>,
    pub(super) vip: Option<IpAddr>,
    pub(super) vip_span: Option<Span>,
    pub(super) protocol: Option<Protocol>,
    /// With the span of each port.
    pub(super) ports: Vec<(u16, Option<Span>)>,
    pub(super) servers: Vec<(String, Option<Span>)>,
    pub(super) failback: Failback,
    pub(super) drain: Duration,
    pub(super) on_no_server: NoServerAction,
    pub(super) withdraw_without_server: bool,
    pub(super) table_span: Option<Span>,
}

impl RawResource {
    pub(super) fn build(self) -> Option<ResourceConfig> {
        Some(ResourceConfig {
            name: self.name?,
            vip: self.vip?,
            protocol: self.protocol?,
            ports: self.ports.into_iter().map(|(p, _)| p).collect(),
            servers: self.servers.into_iter().map(|(s, _)| s).collect(),
            failback: self.failback,
            drain: self.drain,
            on_no_server: self.on_no_server,
            withdraw_without_server: self.withdraw_without_server,
            fragments: false,
        })
    }
}

pub(super) const RESOURCE_FIELDS: &[&str] = &[
    "name",
    "vip",
    "protocol",
    "ports",
    "servers",
    "failback",
    "hold",
    "drain",
    "on_no_server",
    "withdraw_without_server",
];

pub(super) fn read_resource(ctx: &mut Ctx, item: &Item, index: usize) -> Option<RawResource> {
    let Node::Table(entries) = &item.node else {
        wrong_type(ctx, item, &format!("resource[{index}]"), "a table");
        return None;
    };
    let t = Table {
        entries,
        span: item.span,
        path: label("resource", entries, index),
    };
    t.deny_unknown(ctx, RESOURCE_FIELDS);
    let mut raw = RawResource {
        label: t.path.clone(),
        name: None,
        name_span: None,
        vip: None,
        vip_span: None,
        protocol: None,
        ports: Vec::new(),
        servers: Vec::new(),
        failback: Failback::default(),
        drain: DEFAULT_DRAIN,
        on_no_server: NoServerAction::default(),
        withdraw_without_server: true,
        table_span: item.span,
    };
    (raw.name, raw.name_span) = read_name(ctx, &t);
    if let Some(item) = t.required(ctx, "vip") {
        raw.vip = want_ip(ctx, item, &t.field("vip"), "VIP");
        raw.vip_span = item.span;
    }
    if let Some(item) = t.required(ctx, "protocol") {
        raw.protocol = want_choice(
            ctx,
            item,
            &t.field("protocol"),
            &[
                ("tcp", Protocol::Tcp),
                ("udp", Protocol::Udp),
                ("icmp", Protocol::Icmp),
            ],
        );
    }

    raw.ports = read_ports(ctx, &t, raw.protocol);
    raw.servers = read_server_list(ctx, &t);
    raw.failback = read_failback(ctx, &t);
    if let Some(item) = t.get("drain") {
        if let Some(d) = want_duration(ctx, item, &t.field("drain")) {
            if d > MAX_HOLD_OR_DRAIN {
                ctx.report(
                    item.span,
                    &t.field("drain"),
                    format!(
                        "{} is too long: at most {}",
                        human(d),
                        human(MAX_HOLD_OR_DRAIN)
                    ),
                );
            } else {
                raw.drain = d;
            }
        }
    }
    if let Some(item) = t.get("on_no_server") {
        if let Some(a) = want_choice(
            ctx,
            item,
            &t.field("on_no_server"),
            &[
                ("drop", NoServerAction::Drop),
                ("reject", NoServerAction::Reject),
            ],
        ) {
            raw.on_no_server = a;
        }
    }
    if let Some(item) = t.get("withdraw_without_server") {
        if let Some(b) = want_bool(ctx, item, &t.field("withdraw_without_server")) {
            raw.withdraw_without_server = b;
        }
    }
    Some(raw)
}

/// `ports`: at least one for tcp and udp, none for icmp; each once.
fn read_ports(ctx: &mut Ctx, t: &Table, protocol: Option<Protocol>) -> Vec<(u16, Option<Span>)> {
    let mut ports: Vec<(u16, Option<Span>)> = Vec::new();
    let ports_field = t.field("ports");
    match (protocol, t.get("ports")) {
        (Some(Protocol::Icmp), Some(item)) => {
            if !matches!(&item.node, Node::Array(a) if a.is_empty()) {
                ctx.report(
                    item.span,
                    &ports_field,
                    "an icmp resource has no ports (ICMP echo covers the whole VIP): remove `ports`",
                );
            }
        }
        (Some(p), None) if p != Protocol::Icmp => {
            ctx.report(
                t.span,
                &ports_field,
                format!("missing field `ports`: a {p} resource needs at least one port"),
            );
        }
        (_, Some(item)) => {
            if let Some(list) = want_array(ctx, item, &ports_field) {
                if list.is_empty() {
                    ctx.report(item.span, &ports_field, "must list at least one port");
                }
                // One bit per port: a list of all 65,535 ports is checked in linear time.
                let mut seen = vec![false; usize::from(u16::MAX) + 1];
                for (i, it) in list.iter().enumerate() {
                    let f = format!("{ports_field}[{i}]");
                    let Some(port) = want_port(ctx, it, &f) else {
                        continue;
                    };
                    if std::mem::replace(&mut seen[usize::from(port)], true) {
                        ctx.report(it.span, &f, format!("port {port} is listed twice"));
                    } else {
                        ports.push((port, it.span));
                    }
                }
            }
        }
        (_, None) => {}
    }

    ports
}

/// `servers`: the primary first, then the backups; each once.
fn read_server_list(ctx: &mut Ctx, t: &Table) -> Vec<(String, Option<Span>)> {
    let mut servers: Vec<(String, Option<Span>)> = Vec::new();
    if let Some(item) = t.required(ctx, "servers") {
        let field = t.field("servers");
        if let Some(list) = want_array(ctx, item, &field) {
            if list.is_empty() {
                ctx.report(
                    item.span,
                    &field,
                    "must list at least one server (the primary first, then the backups)",
                );
            }
            let mut seen: Vec<(&str, usize)> = Vec::new();
            for (i, it) in list.iter().enumerate() {
                let f = format!("{field}[{i}]");
                let Some(name) = want_str(ctx, it, &f) else {
                    continue;
                };
                if let Some((_, first)) = seen.iter().find(|(n, _)| *n == name) {
                    let role = if *first == 0 { " (the primary)" } else { "" };
                    ctx.report(
                        it.span,
                        &f,
                        format!(
                            "server {name:?} is listed twice: servers[{first}]{role} and servers[{i}]; a server may appear once"
                        ),
                    );
                } else {
                    seen.push((name, i));
                    servers.push((name.to_owned(), it.span));
                }
            }
        }
    }

    servers
}

/// `failback` and `hold` (only with failback = "hold").
fn read_failback(ctx: &mut Ctx, t: &Table) -> Failback {
    let failback_item = t.get("failback");
    #[derive(Clone, Copy, PartialEq)]
    enum Policy {
        Immediate,
        Hold,
        Manual,
    }
    let policy = failback_item.map(|item| {
        want_choice(
            ctx,
            item,
            &t.field("failback"),
            &[
                ("immediate", Policy::Immediate),
                ("hold", Policy::Hold),
                ("manual", Policy::Manual),
            ],
        )
    });
    let hold = match t.get("hold") {
        Some(item) => match policy {
            Some(Some(Policy::Immediate | Policy::Manual)) => {
                let written = match &failback_item.map(|i| &i.node) {
                    Some(Node::Str(s)) => s.clone(),
                    _ => String::new(),
                };
                ctx.report(
                    item.span,
                    &t.field("hold"),
                    format!(
                        "`hold` is only allowed with failback = \"hold\" (failback is {written:?})"
                    ),
                );
                None
            }
            _ => match want_duration(ctx, item, &t.field("hold")) {
                Some(d) if d > MAX_HOLD_OR_DRAIN => {
                    ctx.report(
                        item.span,
                        &t.field("hold"),
                        format!(
                            "{} is too long: at most {} (for a longer hold use failback = \"manual\")",
                            human(d),
                            human(MAX_HOLD_OR_DRAIN)
                        ),
                    );
                    None
                }
                d => d,
            },
        },
        None => None,
    };
    match policy {
        Some(Some(Policy::Immediate)) => Failback::Immediate,
        Some(Some(Policy::Manual)) => Failback::Manual,
        _ => Failback::Hold(hold.unwrap_or(DEFAULT_HOLD)),
    }
}
