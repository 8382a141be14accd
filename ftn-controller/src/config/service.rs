//! The sections about the gateway itself: `[gateway]`, `[api]`, `[directory]` (embedded or
//! etcd), `[dataplane]`, and the document's top level.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use ftn_common::{DataplaneConfig, MAX_INTERFACES};

use super::*;
use crate::model::{XdpAttachMode, DEFAULT_PIN_DIR};

// ------------------------------------------------------------------------------------------
// Sections
// ------------------------------------------------------------------------------------------

pub(super) const ROOT_FIELDS: &[&str] = &[
    "gateway",
    "api",
    "directory",
    "dataplane",
    "check_defaults",
    "announce",
    "server",
    "resource",
];

pub(super) fn read_config(ctx: &mut Ctx, root: &Item, path: &Path) -> Option<Config> {
    let root = want_table(ctx, root, String::new())?;
    root.deny_unknown(ctx, ROOT_FIELDS);

    let gateway = match root.get("gateway") {
        Some(item) => want_table(ctx, item, "gateway".into()).map(|t| read_gateway(ctx, &t)),
        None => {
            ctx.report(
                None,
                "gateway",
                "missing table [gateway] (it needs at least `interfaces`)",
            );
            None
        }
    };
    let api = match root.get("api") {
        Some(item) => want_table(ctx, item, "api".into()).map(|t| read_api(ctx, &t)),
        None => Some(ApiConfig::default()),
    };
    let directory = match root.get("directory") {
        Some(item) => want_table(ctx, item, "directory".into()).map(|t| read_directory(ctx, &t)),
        None => Some(DirectoryConfig::default()),
    };
    let dataplane = match root.get("dataplane") {
        Some(item) => want_table(ctx, item, "dataplane".into()).map(|t| read_dataplane(ctx, &t)),
        None => Some(DataplaneConfig::default()),
    };
    // `Some(None)`: no `[announce]`; `None`: one with problems.
    let announce = match root.get("announce") {
        Some(item) => want_table(ctx, item, "announce".into()).map(|t| read_announce(ctx, &t)),
        None => Some(None),
    };
    let check_defaults = match root.get("check_defaults") {
        Some(item) => match want_table(ctx, item, "check_defaults".into()) {
            Some(t) => {
                t.deny_unknown(ctx, TIMING_FIELDS);
                read_timing(ctx, &t, Timing::BUILTIN)
            }
            None => Timing::BUILTIN,
        },
        None => Timing::BUILTIN,
    };

    let servers = read_array_of_tables(ctx, &root, "server")
        .iter()
        .enumerate()
        .filter_map(|(i, item)| read_server(ctx, item, i, check_defaults))
        .collect::<Vec<_>>();
    let resources = read_array_of_tables(ctx, &root, "resource")
        .iter()
        .enumerate()
        .filter_map(|(i, item)| read_resource(ctx, item, i))
        .collect::<Vec<_>>();

    check_servers(ctx, &servers);
    check_resources(ctx, &resources, &servers);

    if !ctx.problems.is_empty() {
        return None;
    }
    let mut resources = resources
        .into_iter()
        .map(RawResource::build)
        .collect::<Option<Vec<_>>>()?;
    mark_fragment_owners(&mut resources);
    let servers = servers
        .into_iter()
        .map(|s| s.build(&resources, check_defaults))
        .collect::<Option<Vec<_>>>()?;
    Some(Config {
        gateway: gateway?,
        api: api?,
        directory: directory?,
        dataplane: dataplane?,
        servers,
        resources,
        announce: announce?,
        source: path.to_path_buf(),
    })
}

/// Sets [`ResourceConfig::fragments`] on every tcp or udp resource that is alone on its (VIP,
/// protocol).
fn mark_fragment_owners(resources: &mut [ResourceConfig]) {
    let alone = fragment_owners(resources.iter().map(|r| (r.vip, r.protocol)));
    for r in resources.iter_mut() {
        r.fragments = alone[&(r.vip, r.protocol)];
    }
}

/// The elements of `[[name]]` (absent: none).
pub(super) fn read_array_of_tables<'a>(ctx: &mut Ctx, root: &Table<'a>, name: &str) -> &'a [Item] {
    let Some(item) = root.get(name) else {
        return &[];
    };
    match &item.node {
        Node::Array(items) => items,
        Node::Table(_) => {
            ctx.report(
                item.span,
                name,
                format!("`{name}` is a list of tables: write [[{name}]], not [{name}]"),
            );
            &[]
        }
        _ => {
            wrong_type(ctx, item, name, "an array of tables ([[...]])");
            &[]
        }
    }
}

pub(super) fn read_gateway(ctx: &mut Ctx, t: &Table) -> GatewayConfig {
    t.deny_unknown(
        ctx,
        &[
            "name",
            "interfaces",
            "xdp_mode",
            "pin_dir",
            "flow_table",
            "pending_table",
        ],
    );
    let mut name = default_gateway_name();
    if let Some(item) = t.get("name") {
        let field = t.field("name");
        if let Some(s) = want_str(ctx, item, &field) {
            match check_name(s) {
                Ok(()) => name = s.to_owned(),
                Err(why) => ctx.report(item.span, &field, why),
            }
        }
    }
    let mut interfaces: Vec<String> = Vec::new();
    if let Some(item) = t.required(ctx, "interfaces") {
        let field = t.field("interfaces");
        if let Some(list) = want_array(ctx, item, &field) {
            if list.is_empty() {
                ctx.report(item.span, &field, "must list at least one interface");
            }
            if list.len() > MAX_INTERFACES as usize {
                ctx.report(
                    item.span,
                    &field,
                    format!(
                        "{} interfaces, the dataplane handles at most {MAX_INTERFACES}",
                        list.len()
                    ),
                );
            }
            for (i, it) in list.iter().enumerate() {
                let f = format!("{field}[{i}]");
                let Some(name) = want_str(ctx, it, &f) else {
                    continue;
                };
                if let Err(why) = check_ifname(name) {
                    ctx.report(
                        it.span,
                        &f,
                        format!("invalid interface name {name:?}: {why}"),
                    );
                } else if interfaces.iter().any(|n| n == name) {
                    ctx.report(it.span, &f, format!("interface {name:?} is listed twice"));
                } else {
                    interfaces.push(name.to_owned());
                }
            }
        }
    }
    let xdp_mode = t
        .get("xdp_mode")
        .and_then(|item| {
            want_choice(
                ctx,
                item,
                &t.field("xdp_mode"),
                &[
                    ("auto", XdpAttachMode::Auto),
                    ("native", XdpAttachMode::Native),
                    ("generic", XdpAttachMode::Generic),
                ],
            )
        })
        .unwrap_or_default();
    let pin_dir = t
        .get("pin_dir")
        .and_then(|item| want_abs_path(ctx, item, &t.field("pin_dir")))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_DIR));
    let table = |ctx: &mut Ctx, key: &str, default: u32| {
        t.get(key)
            .and_then(|item| {
                want_range(
                    ctx,
                    item,
                    &t.field(key),
                    i64::from(MIN_FLOW_TABLE),
                    i64::from(MAX_FLOW_TABLE),
                )
            })
            .map_or(default, |n| n as u32)
    };
    let flow_table = table(ctx, "flow_table", ftn_common::DEFAULT_FLOW_CAPACITY);
    let pending_table = table(ctx, "pending_table", ftn_common::DEFAULT_PENDING_CAPACITY);
    GatewayConfig {
        name,
        interfaces,
        xdp_mode,
        pin_dir,
        flow_table,
        pending_table,
    }
}

pub(super) fn read_api(ctx: &mut Ctx, t: &Table) -> ApiConfig {
    t.deny_unknown(
        ctx,
        &[
            "listen",
            "token",
            "token_file",
            "max_connections",
            "max_connections_per_client",
            "header_timeout",
            "request_timeout",
        ],
    );
    let mut api = ApiConfig::default();
    for (name, slot) in [
        ("max_connections", &mut api.max_connections),
        (
            "max_connections_per_client",
            &mut api.max_connections_per_client,
        ),
    ] {
        if let Some(item) = t.get(name) {
            if let Some(n) = want_range(ctx, item, &t.field(name), 1, 100_000) {
                *slot = n as usize;
            }
        }
    }
    for (name, slot) in [
        ("header_timeout", &mut api.header_timeout),
        ("request_timeout", &mut api.request_timeout),
    ] {
        if let Some(item) = t.get(name) {
            let field = t.field(name);
            if let Some(d) = want_duration(ctx, item, &field) {
                if d < Duration::from_millis(100) || d > Duration::from_secs(300) {
                    ctx.report(item.span, &field, "must be between 100ms and 5m");
                } else {
                    *slot = d;
                }
            }
        }
    }
    if let Some(item) = t.get("listen") {
        let field = t.field("listen");
        if let Some(s) = want_str(ctx, item, &field) {
            match s.parse::<SocketAddr>() {
                Ok(a) if a.port() == 0 => {
                    ctx.report(item.span, &field, format!("{s:?}: the port must not be 0"))
                }
                Ok(a) => api.listen = a,
                Err(_) => ctx.report(
                    item.span,
                    &field,
                    format!(
                        "invalid listen address {s:?}: expected IP:PORT, e.g. \"127.0.0.1:7480\" or \"[::1]:7480\""
                    ),
                ),
            }
        }
    }
    match (t.get("token"), t.get("token_file")) {
        (Some(_), Some(file)) => ctx.report(
            file.span,
            &t.field("token_file"),
            "`token` and `token_file` are both set: set only one of them",
        ),
        (Some(item), None) => {
            let field = t.field("token");
            if let Some(token) = want_str(ctx, item, &field) {
                match check_token(token) {
                    Ok(()) => api.token = Some(token.to_owned()),
                    Err(why) => ctx.report(item.span, &field, why),
                }
            }
        }
        (None, Some(item)) => {
            let field = t.field("token_file");
            if let Some(s) = want_str(ctx, item, &field) {
                let file = ctx.base_dir.join(s);
                match crate::files::read_regular(&file, crate::files::MAX_SECRET_BYTES) {
                    Err(e) => ctx.report(
                        item.span,
                        &field,
                        format!("cannot read the token file {}: {e}", file.display()),
                    ),
                    Ok(contents) => match check_token(contents.trim()) {
                        Ok(()) => api.token = Some(contents.trim().to_owned()),
                        Err(why) => ctx.report(
                            item.span,
                            &field,
                            format!("token file {}: {why}", file.display()),
                        ),
                    },
                }
            }
        }
        (None, None) => {}
    }
    api
}

/// The host name, or "gateway" when it cannot be read or is not a valid name.
pub fn default_gateway_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| check_name(s).is_ok())
        .unwrap_or_else(|| "gateway".into())
}

pub(super) const EMBEDDED_FIELDS: &[&str] = &["backend", "path"];
pub(super) const ETCD_FIELDS: &[&str] = &[
    "backend",
    "endpoints",
    "prefix",
    "dial_timeout",
    "request_timeout",
    "lease_ttl",
    "ca_file",
    "cert_file",
    "key_file",
    "user",
    "password",
    "password_file",
];

pub(super) fn read_directory(ctx: &mut Ctx, t: &Table) -> DirectoryConfig {
    #[derive(Clone, Copy, PartialEq)]
    enum Backend {
        Embedded,
        Etcd,
    }
    let backend = t
        .get("backend")
        .and_then(|item| {
            want_choice(
                ctx,
                item,
                &t.field("backend"),
                &[("embedded", Backend::Embedded), ("etcd", Backend::Etcd)],
            )
        })
        .unwrap_or(Backend::Embedded);
    if backend == Backend::Etcd {
        t.deny_unknown(ctx, ETCD_FIELDS);
        return DirectoryConfig::Etcd(read_etcd(ctx, t));
    }
    t.deny_unknown(ctx, EMBEDDED_FIELDS);
    let path = t
        .get("path")
        .and_then(|item| want_abs_path(ctx, item, &t.field("path")))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIRECTORY_PATH));
    DirectoryConfig::Embedded { path }
}

/// `http://HOST:PORT` or `https://HOST:PORT` (HOST a name, an IPv4 address or `[IPv6]`).
pub(super) fn check_endpoint(e: &str) -> Result<bool, String> {
    let (tls, rest) = if let Some(r) = e.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = e.strip_prefix("http://") {
        (false, r)
    } else {
        return Err(format!(
            "invalid etcd endpoint {e:?}: expected http://HOST:PORT or https://HOST:PORT"
        ));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = rest.rsplit_once(':').ok_or_else(|| {
        format!("invalid etcd endpoint {e:?}: no port (etcd's client port is usually 2379)")
    })?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("invalid etcd endpoint {e:?}: no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(tls),
        _ => Err(format!(
            "invalid etcd endpoint {e:?}: port {port:?} is not 1-65535"
        )),
    }
}

pub(super) fn read_etcd(ctx: &mut Ctx, t: &Table) -> EtcdConfig {
    let mut c = EtcdConfig {
        endpoints: Vec::new(),
        prefix: DEFAULT_ETCD_PREFIX.into(),
        dial_timeout: DEFAULT_ETCD_DIAL_TIMEOUT,
        request_timeout: DEFAULT_ETCD_REQUEST_TIMEOUT,
        lease_ttl: super::DEFAULT_LEASE_TTL,
        ca_file: None,
        cert_file: None,
        key_file: None,
        user: None,
        password: None,
    };
    let tls_endpoints = read_endpoints(ctx, t, &mut c);
    read_prefix(ctx, t, &mut c);
    read_etcd_timeouts(ctx, t, &mut c);
    read_tls_files(ctx, t, &mut c, &tls_endpoints);
    read_credentials(ctx, t, &mut c);
    c
}

/// `endpoints`: each valid and once, one scheme for all. Returns which ones are https://.
fn read_endpoints(ctx: &mut Ctx, t: &Table, c: &mut EtcdConfig) -> Vec<bool> {
    let mut tls_endpoints = Vec::new();
    if let Some(item) = t.required(ctx, "endpoints") {
        let field = t.field("endpoints");
        if let Some(list) = want_array(ctx, item, &field) {
            if list.is_empty() {
                ctx.report(item.span, &field, "must list at least one etcd endpoint");
            }
            for (i, it) in list.iter().enumerate() {
                let f = format!("{field}[{i}]");
                let Some(e) = want_str(ctx, it, &f) else {
                    continue;
                };
                match check_endpoint(e) {
                    Err(why) => ctx.report(it.span, &f, why),
                    Ok(_) if c.endpoints.iter().any(|x| x == e) => {
                        ctx.report(it.span, &f, format!("endpoint {e:?} is listed twice"))
                    }
                    Ok(tls) => {
                        tls_endpoints.push(tls);
                        c.endpoints.push(e.to_owned());
                    }
                }
            }
            if tls_endpoints.iter().any(|t| *t) && tls_endpoints.iter().any(|t| !*t) {
                ctx.report(
                    item.span,
                    &field,
                    "mixes http:// and https:// endpoints: use one scheme for the whole cluster",
                );
            }
        }
    }
    tls_endpoints
}

/// `prefix`: an absolute key prefix, kept without its trailing '/'.
fn read_prefix(ctx: &mut Ctx, t: &Table, c: &mut EtcdConfig) {
    if let Some(item) = t.get("prefix") {
        let field = t.field("prefix");
        if let Some(p) = want_str(ctx, item, &field) {
            let trimmed = p.trim_end_matches('/');
            if !p.starts_with('/') || trimmed.is_empty() {
                ctx.report(
                    item.span,
                    &field,
                    format!("invalid key prefix {p:?}: it starts with '/' and names something, e.g. \"/ftn\""),
                );
            } else if p.chars().any(|ch| ch.is_control() || ch.is_whitespace()) {
                ctx.report(
                    item.span,
                    &field,
                    format!("invalid key prefix {p:?}: no spaces or control characters"),
                );
            } else {
                c.prefix = trimmed.to_owned();
            }
        }
    }
}

/// `dial_timeout`, `request_timeout` and `lease_ttl`, each within its bounds.
fn read_etcd_timeouts(ctx: &mut Ctx, t: &Table, c: &mut EtcdConfig) {
    for (name, slot) in [
        ("dial_timeout", &mut c.dial_timeout),
        ("request_timeout", &mut c.request_timeout),
    ] {
        if let Some(item) = t.get(name) {
            let field = t.field(name);
            if let Some(d) = want_duration(ctx, item, &field) {
                if d < Duration::from_millis(10) || d > Duration::from_secs(60) {
                    ctx.report(item.span, &field, "must be between 10ms and 60s");
                } else {
                    *slot = d;
                }
            }
        }
    }
    if let Some(item) = t.get("lease_ttl") {
        let field = t.field("lease_ttl");
        if let Some(d) = want_duration(ctx, item, &field) {
            if d < Duration::from_secs(2) || d > Duration::from_secs(60) || d.subsec_nanos() != 0 {
                ctx.report(
                    item.span,
                    &field,
                    "must be whole seconds between 2s and 60s (etcd leases count whole seconds; etcd refuses less than about 2 s)",
                );
            } else {
                c.lease_ttl = d;
            }
        }
    }
}

/// `ca_file`, `cert_file` and `key_file`: files that exist, a certificate with its key, and
/// only with https:// endpoints.
fn read_tls_files(ctx: &mut Ctx, t: &Table, c: &mut EtcdConfig, tls_endpoints: &[bool]) {
    for (name, slot) in [
        ("ca_file", &mut c.ca_file),
        ("cert_file", &mut c.cert_file),
        ("key_file", &mut c.key_file),
    ] {
        if let Some(item) = t.get(name) {
            let field = t.field(name);
            if let Some(s) = want_str(ctx, item, &field) {
                let file = ctx.base_dir.join(s);
                match std::fs::metadata(&file) {
                    Ok(m) if m.is_file() => *slot = Some(file),
                    Ok(_) => ctx.report(
                        item.span,
                        &field,
                        format!("{} is not a file", file.display()),
                    ),
                    Err(e) => ctx.report(
                        item.span,
                        &field,
                        format!("cannot read {}: {e}", file.display()),
                    ),
                }
            }
        }
    }
    match (t.get("cert_file"), t.get("key_file")) {
        (Some(item), None) => ctx.report(
            item.span,
            &t.field("cert_file"),
            "`cert_file` needs `key_file` too",
        ),
        (None, Some(item)) => ctx.report(
            item.span,
            &t.field("key_file"),
            "`key_file` needs `cert_file` too",
        ),
        _ => {}
    }
    let tls_files = ["ca_file", "cert_file", "key_file"]
        .into_iter()
        .find_map(|n| t.get(n).map(|item| (n, item)));
    if let Some((n, item)) = tls_files {
        if tls_endpoints.iter().any(|tls| !*tls) {
            ctx.report(
                item.span,
                &t.field(n),
                "TLS files are set but the endpoints are http://: use https:// endpoints",
            );
        }
    }
}

/// `user` with `password` or `password_file` (one of them, not both).
fn read_credentials(ctx: &mut Ctx, t: &Table, c: &mut EtcdConfig) {
    if let Some(item) = t.get("user") {
        let field = t.field("user");
        if let Some(u) = want_str(ctx, item, &field) {
            if u.is_empty() || u.chars().any(|ch| ch.is_control()) {
                ctx.report(item.span, &field, "must be a non-empty user name");
            } else {
                c.user = Some(u.to_owned());
            }
        }
    }
    match (t.get("password"), t.get("password_file")) {
        (Some(_), Some(file)) => ctx.report(
            file.span,
            &t.field("password_file"),
            "`password` and `password_file` are both set: set only one of them",
        ),
        (Some(item), None) => {
            if let Some(p) = want_str(ctx, item, &t.field("password")) {
                c.password = Some(p.to_owned());
            }
        }
        (None, Some(item)) => {
            let field = t.field("password_file");
            if let Some(s) = want_str(ctx, item, &field) {
                let file = ctx.base_dir.join(s);
                match crate::files::read_regular(&file, crate::files::MAX_SECRET_BYTES) {
                    Ok(p) => c.password = Some(p.trim().to_owned()),
                    Err(e) => ctx.report(
                        item.span,
                        &field,
                        format!("cannot read the password file {}: {e}", file.display()),
                    ),
                }
            }
        }
        (None, None) => {}
    }
    match (t.get("user"), c.password.is_some()) {
        (Some(item), false) => ctx.report(
            item.span,
            &t.field("user"),
            "`user` needs `password` or `password_file`",
        ),
        (None, true) => {
            let n = if t.get("password").is_some() {
                "password"
            } else {
                "password_file"
            };
            if let Some(item) = t.get(n) {
                ctx.report(item.span, &t.field(n), "a password needs `user` too");
            }
        }
        _ => {}
    }
}

pub(super) fn read_dataplane(ctx: &mut Ctx, t: &Table) -> DataplaneConfig {
    t.deny_unknown(
        ctx,
        &[
            "tcp_idle",
            "tcp_closing_idle",
            "udp_idle",
            "icmp_idle",
            "passive",
            "passive_window",
            "passive_rearm",
            "passive_min",
            "nexthop_ttl",
            "nexthop_cache",
        ],
    );
    let mut dp = DataplaneConfig::default();
    for (name, slot, max) in [
        ("tcp_idle", &mut dp.tcp_idle_ns, MAX_FLOW_IDLE),
        ("tcp_closing_idle", &mut dp.tcp_closing_ns, MAX_FLOW_IDLE),
        ("udp_idle", &mut dp.udp_idle_ns, MAX_FLOW_IDLE),
        ("icmp_idle", &mut dp.icmp_idle_ns, MAX_FLOW_IDLE),
        (
            "passive_window",
            &mut dp.passive_window_ns,
            MAX_PASSIVE_WINDOW,
        ),
        (
            "passive_rearm",
            &mut dp.passive_rearm_ns,
            MAX_DATAPLANE_PERIOD,
        ),
        ("nexthop_ttl", &mut dp.nexthop_ttl_ns, MAX_DATAPLANE_PERIOD),
    ] {
        let Some(item) = t.get(name) else { continue };
        let field = t.field(name);
        let Some(d) = want_duration(ctx, item, &field) else {
            continue;
        };
        if d.is_zero() {
            ctx.report(item.span, &field, "must be longer than 0");
        } else if d > max {
            ctx.report(
                item.span,
                &field,
                format!("{} is too long: at most {}", human(d), human(max)),
            );
        } else {
            // `max` is far below u64 nanoseconds (584 years).
            *slot = d.as_nanos() as u64;
        }
    }
    if let Some(item) = t.get("passive_min") {
        if let Some(n) = want_range(ctx, item, &t.field("passive_min"), 1, 1_000_000) {
            dp.passive_min = n as u32;
        }
    }
    if let Some(item) = t.get("nexthop_cache") {
        match item.node {
            Node::Bool(true) => {}
            Node::Bool(false) => dp.nexthop_ttl_ns = ftn_common::NEXTHOP_CACHE_OFF,
            _ => wrong_type(ctx, item, &t.field("nexthop_cache"), "true or false"),
        }
    }
    if let Some(item) = t.get("passive") {
        match item.node {
            Node::Bool(true) => {}
            Node::Bool(false) => dp.passive_min = ftn_common::PASSIVE_OFF,
            _ => wrong_type(ctx, item, &t.field("passive"), "true or false"),
        }
    }
    dp
}
