//! ftn's configuration file (`/etc/ftn/ftn.toml`); docs/CONFIG.md is the reference.
//!
//! [`load`] and [`parse`] turn a file into a validated [`Config`], or into a [`ConfigError`]
//! that lists **every** problem of the file with its line, column and field, never a partially
//! read configuration.
//!
//! How: `toml` parses the text into a tree of values that keeps the byte span of every key and
//! value ([`Item`]); the readers below walk that tree section by section. Walking the tree
//! ourselves rather than `#[derive(Deserialize)]` with `deny_unknown_fields` is what lets one
//! run report an unknown field, a wrong type and a bad reference together: serde stops at the
//! first error. Syntax errors are the exception: the file cannot be read past them, so they come
//! alone (with the position `toml::de::Error::span` gives).
//!
//! Serialization (`serde::Serialize`, for the API's view of the running configuration):
//! durations are humantime strings (`"50ms"`, `"15m"`), UDP payloads are strings, the API token
//! is never written out (only `token_set: bool`).

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ftn_common::DataplaneConfig;
use serde::Serialize;

use crate::model::{Failback, NoServerAction, Protocol, ResourceMatch, XdpAttachMode};

/// Where `ftn run` and `ftn check-config` look for the file by default.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/ftn/ftn.toml";
/// Default `api.listen`.
pub const DEFAULT_API_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 7480);
/// Default `directory.path` of the embedded directory.
pub const DEFAULT_DIRECTORY_PATH: &str = "/var/lib/ftn";
/// Built-in check defaults (overridden by `[check_defaults]`).
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_millis(50);
pub const DEFAULT_RISE: u32 = 3;
pub const DEFAULT_FALL: u32 = 2;
/// Shortest check interval accepted.
pub const MIN_CHECK_INTERVAL: Duration = Duration::from_millis(5);
/// Longest check interval accepted: a server checked less often than this is, in effect, never
/// checked again (a typo such as `5000000000h` would silence it for good).
pub const MAX_CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// Default `path` of an http check.
pub const DEFAULT_HTTP_PATH: &str = "/";
/// Default `expect_status` of an http check.
pub const DEFAULT_EXPECT_STATUS: u16 = 200;
/// Default `send` of a udp check.
pub const DEFAULT_UDP_SEND: &[u8] = b"ping";
/// Default `drain` of a resource.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Upper bounds of the other durations: a value beyond them is a typo (`5000000000h`), and one
/// that large would overflow the dataplane's nanosecond clocks or never come.
/// `[gateway] flow_table` and `pending_table`: the smallest table worth having, and the
/// largest (16 Mi entries: 2 GiB of kernel memory at the measured 128 bytes per entry,
/// CONFIG.md).
pub const MIN_FLOW_TABLE: u32 = 1024;
pub const MAX_FLOW_TABLE: u32 = 16 * 1024 * 1024;
/// `failback = "hold"`'s `hold` and a resource's `drain`: one week.
pub const MAX_HOLD_OR_DRAIN: Duration = Duration::from_secs(7 * 86_400);
/// `[dataplane]` flow idle timeouts: 30 days (conntrack's established default is 5 days).
pub const MAX_FLOW_IDLE: Duration = Duration::from_secs(30 * 86_400);
/// `[dataplane] passive_window`: a minute.
pub const MAX_PASSIVE_WINDOW: Duration = Duration::from_secs(60);
/// `[dataplane] passive_rearm` and `nexthop_ttl`: an hour.
pub const MAX_DATAPLANE_PERIOD: Duration = Duration::from_secs(3600);

// ------------------------------------------------------------------------------------------
// The configuration
// ------------------------------------------------------------------------------------------

/// A validated configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub api: ApiConfig,
    pub directory: DirectoryConfig,
    /// Idle timeouts of the flow table (`[dataplane]`, all optional).
    #[serde(serialize_with = "ser::dataplane")]
    pub dataplane: DataplaneConfig,
    /// In file order. Every server has at least one check (see [`CheckConfig`]).
    pub servers: Vec<ServerConfig>,
    /// In file order.
    pub resources: Vec<ResourceConfig>,
    /// `[announce]`: the VIP routes for the gateway's routing daemon; `None`: ftn announces
    /// nothing.
    pub announce: Option<AnnounceConfig>,
    /// The file this configuration was read from.
    pub source: PathBuf,
}

impl Config {
    /// The server named `name`.
    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|s| s.name == name)
    }

    /// The resource named `name`.
    pub fn resource(&self, name: &str) -> Option<&ResourceConfig> {
        self.resources.iter().find(|r| r.name == name)
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GatewayConfig {
    /// This gateway's name among the gateways sharing a directory (default: the host name).
    pub name: String,
    /// Interfaces the XDP program is attached to (non-empty, no duplicates).
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpAttachMode,
    /// Where maps and links are pinned (default [`DEFAULT_PIN_DIR`]).
    pub pin_dir: PathBuf,
    /// Entries of the flow table (fixed when the dataplane is loaded).
    pub flow_table: u32,
    /// Entries of the pending table: flows that sent one packet (fixed when loaded).
    pub pending_table: u32,
}

/// `[api]`.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Bearer token that changes through the API need; `None`: changes are refused. Read from
    /// `token_file` (trimmed) or given inline as `token`. Never serialized nor printed.
    #[serde(rename = "token_set", serialize_with = "ser::token_set")]
    pub token: Option<String>,
    /// Connections served at once (the listener pauses at the cap).
    pub max_connections: usize,
    /// Connections from one client address at once.
    pub max_connections_per_client: usize,
    /// Longest wait for a whole request head, and for the next request on an idle connection.
    #[serde(serialize_with = "ser::duration")]
    pub header_timeout: Duration,
    /// Longest time from a request head to its answer, the body included.
    #[serde(serialize_with = "ser::duration")]
    pub request_timeout: Duration,
}

/// `api.max_connections` by default: the CLI, a Prometheus or two and a few dashboards.
pub const DEFAULT_API_MAX_CONNECTIONS: usize = 64;
/// `api.max_connections_per_client` by default.
pub const DEFAULT_API_MAX_PER_CLIENT: usize = 16;
/// `api.header_timeout` by default.
pub const DEFAULT_API_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// `api.request_timeout` by default (a status of 100,000 resources takes well under a second).
pub const DEFAULT_API_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_API_LISTEN,
            token: None,
            max_connections: DEFAULT_API_MAX_CONNECTIONS,
            max_connections_per_client: DEFAULT_API_MAX_PER_CLIENT,
            header_timeout: DEFAULT_API_HEADER_TIMEOUT,
            request_timeout: DEFAULT_API_REQUEST_TIMEOUT,
        }
    }
}

impl fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_connections", &self.max_connections)
            .field(
                "max_connections_per_client",
                &self.max_connections_per_client,
            )
            .field("header_timeout", &self.header_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// `[directory]`: where the directory (servers' states, resources' assignments) lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum DirectoryConfig {
    /// On this gateway's disk.
    Embedded { path: PathBuf },
    /// Shared by several gateways on an etcd cluster.
    Etcd(EtcdConfig),
}

/// `[directory]` with `backend = "etcd"`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EtcdConfig {
    /// `http://host:port` or `https://host:port`, at least one.
    pub endpoints: Vec<String>,
    /// Key prefix, starts with `/`, no trailing `/` (default [`DEFAULT_ETCD_PREFIX`]).
    pub prefix: String,
    /// Time to connect at start (default 2 s).
    #[serde(serialize_with = "ser::duration")]
    pub dial_timeout: Duration,
    /// Time limit of one etcd request (default 1 s).
    #[serde(serialize_with = "ser::duration")]
    pub request_timeout: Duration,
    /// The gateway's lease: how long a gateway (and a leader) that stopped answering is still
    /// counted live (default 3 s; etcd's minimum is 2 s).
    #[serde(serialize_with = "ser::duration")]
    pub lease_ttl: Duration,
    /// CA certificate (PEM) that signs the etcd servers' certificates; needs https endpoints.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM), both or neither.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub user: Option<String>,
    /// From `password_file` (trimmed) or `password`; never serialized nor printed.
    #[serde(rename = "password_set", serialize_with = "ser::token_set")]
    pub password: Option<String>,
}

pub const DEFAULT_ETCD_PREFIX: &str = "/ftn";
/// Default `[directory] dial_timeout` of the etcd backend.
pub const DEFAULT_ETCD_DIAL_TIMEOUT: Duration = Duration::from_secs(2);
/// Default `[directory] request_timeout` of the etcd backend.
pub const DEFAULT_ETCD_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// `[directory] lease_ttl` by default.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(3);

impl Default for DirectoryConfig {
    fn default() -> Self {
        DirectoryConfig::Embedded {
            path: PathBuf::from(DEFAULT_DIRECTORY_PATH),
        }
    }
}

/// One `[[server]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerConfig {
    pub name: String,
    pub address: IpAddr,
    /// Never empty: a server without `checks` gets one derived check (docs/CONFIG.md).
    pub checks: Vec<CheckConfig>,
}

/// One health check of a server. The server is up after `rise` consecutive successes and down
/// after `fall` consecutive failures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckConfig {
    #[serde(flatten)]
    pub kind: CheckKind,
    #[serde(serialize_with = "ser::duration")]
    pub interval: Duration,
    /// `<= interval`.
    #[serde(serialize_with = "ser::duration")]
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckKind {
    /// A TCP connection to `port` is accepted.
    Tcp { port: u16 },
    /// `GET path` on `port` answers `expect_status`.
    Http {
        port: u16,
        path: String,
        host: Option<String>,
        expect_status: u16,
    },
    /// A datagram `send` to `port` is answered (by a reply containing `expect`, if set).
    Udp {
        port: u16,
        #[serde(serialize_with = "ser::bytes")]
        send: Vec<u8>,
        #[serde(serialize_with = "ser::opt_bytes")]
        expect: Option<Vec<u8>>,
    },
    /// An ICMP (ICMPv6) echo is answered.
    Icmp,
}

impl CheckKind {
    /// The `type` of the check as written in the file.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Http { .. } => "http",
            CheckKind::Udp { .. } => "udp",
            CheckKind::Icmp => "icmp",
        }
    }

    /// The port checked (`None` for icmp).
    pub fn port(&self) -> Option<u16> {
        match self {
            CheckKind::Tcp { port }
            | CheckKind::Http { port, .. }
            | CheckKind::Udp { port, .. } => Some(*port),
            CheckKind::Icmp => None,
        }
    }
}

/// One `[[resource]]`: a service on a VIP, served by the first live server of `servers`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceConfig {
    pub name: String,
    pub vip: IpAddr,
    pub protocol: Protocol,
    /// Non-empty for tcp/udp, empty for icmp.
    pub ports: Vec<u16>,
    /// Ordered: the primary first, then the backups. Each names a [`ServerConfig`] whose address
    /// family is the VIP's.
    pub servers: Vec<String>,
    pub failback: Failback,
    /// How long established flows may stay on a server the resource moved away from.
    #[serde(serialize_with = "ser::duration")]
    pub drain: Duration,
    pub on_no_server: NoServerAction,
    /// With `[announce]`: withdraw the VIP while this resource has no live server (true), or
    /// keep announcing it and let `on_no_server` answer (false). A VIP is announced while any
    /// of its resources wants it.
    pub withdraw_without_server: bool,
    /// Set (tcp and udp only) when this is the only resource on its (VIP, protocol): it also
    /// takes the fragments sent to the VIP on that protocol ([`Self::fragment_matcher`]).
    /// Derived from the whole configuration; not a field of the file.
    pub fragments: bool,
}

impl ResourceConfig {
    /// The dataplane entry (VIP, protocol, port 0) through which fragments to the VIP reach
    /// this resource's current server (later fragments carry no port), when
    /// [`Self::fragments`].
    pub fn fragment_matcher(&self) -> Option<ResourceMatch> {
        self.fragments.then_some(ResourceMatch {
            vip: self.vip,
            protocol: self.protocol,
            port: 0,
        })
    }

    /// [`Self::matchers`] and the [`Self::fragment_matcher`]: every dataplane resource key
    /// this resource owns.
    pub fn keys(&self) -> Vec<ResourceMatch> {
        let mut out = self.matchers();
        out.extend(self.fragment_matcher());
        out
    }

    /// The dataplane's (VIP, protocol, port) entries of this resource (port 0 for icmp).
    pub fn matchers(&self) -> Vec<ResourceMatch> {
        if self.protocol == Protocol::Icmp {
            return vec![ResourceMatch {
                vip: self.vip,
                protocol: self.protocol,
                port: 0,
            }];
        }
        self.ports
            .iter()
            .map(|&port| ResourceMatch {
                vip: self.vip,
                protocol: self.protocol,
                port,
            })
            .collect()
    }
}

mod ser {
    use std::time::Duration;

    use ftn_common::DataplaneConfig;
    use serde::{ser::SerializeStruct, Serializer};

    fn human(d: Duration) -> String {
        humantime::format_duration(d).to_string()
    }

    pub fn duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&human(*d))
    }

    pub fn bytes<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&String::from_utf8_lossy(b))
    }

    pub fn opt_bytes<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_some(&*String::from_utf8_lossy(b)),
            None => s.serialize_none(),
        }
    }

    pub fn token_set<S: Serializer>(t: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bool(t.is_some())
    }

    pub fn dataplane<S: Serializer>(d: &DataplaneConfig, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("DataplaneConfig", 10)?;
        st.serialize_field("tcp_idle", &human(Duration::from_nanos(d.tcp_idle_ns)))?;
        st.serialize_field(
            "tcp_closing_idle",
            &human(Duration::from_nanos(d.tcp_closing_ns)),
        )?;
        st.serialize_field("udp_idle", &human(Duration::from_nanos(d.udp_idle_ns)))?;
        st.serialize_field("icmp_idle", &human(Duration::from_nanos(d.icmp_idle_ns)))?;
        st.serialize_field("passive", &(d.passive_min != ftn_common::PASSIVE_OFF))?;
        st.serialize_field(
            "passive_window",
            &human(Duration::from_nanos(d.passive_window_ns)),
        )?;
        st.serialize_field(
            "passive_rearm",
            &human(Duration::from_nanos(d.passive_rearm_ns)),
        )?;
        if d.passive_min != ftn_common::PASSIVE_OFF {
            st.serialize_field("passive_min", &d.passive_min)?;
        }
        st.serialize_field(
            "nexthop_cache",
            &(d.nexthop_ttl_ns != ftn_common::NEXTHOP_CACHE_OFF),
        )?;
        if d.nexthop_ttl_ns != ftn_common::NEXTHOP_CACHE_OFF {
            st.serialize_field(
                "nexthop_ttl",
                &human(Duration::from_nanos(d.nexthop_ttl_ns)),
            )?;
        }
        st.end()
    }
}

// ------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------

/// Everything wrong with a configuration file. Displayed one line per problem:
/// `{path}:{line}:{column}: {field}: {message}` (line and column omitted when unknown, field
/// omitted for syntax and I/O errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// Sorted by position; never empty.
    pub problems: Vec<Problem>,
}

/// One problem of a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based.
    pub line: Option<usize>,
    /// 1-based, in characters.
    pub column: Option<usize>,
    /// Where in the configuration, e.g. `resource "web".servers[2]`; empty for syntax errors.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", self.path.display())?;
            if let Some(line) = p.line {
                write!(f, ":{line}")?;
                if let Some(column) = p.column {
                    write!(f, ":{column}")?;
                }
            }
            f.write_str(": ")?;
            if !p.field.is_empty() {
                write!(f, "{}: ", p.field)?;
            }
            f.write_str(&p.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

// ------------------------------------------------------------------------------------------
// Entry points
// ------------------------------------------------------------------------------------------

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    match crate::files::read_regular(path, crate::files::MAX_CONFIG_BYTES) {
        Ok(text) => parse(&text, path),
        Err(e) => Err(ConfigError {
            path: path.to_path_buf(),
            problems: vec![Problem {
                line: None,
                column: None,
                field: String::new(),
                message: format!("cannot read the configuration file: {e}"),
            }],
        }),
    }
}

/// Validates `text`, the contents of the file at `path` (`path` is used in messages, as the
/// resulting [`Config::source`], and to resolve a relative `api.token_file`, which is read).
pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let root = match toml::de::DeTable::parse(text) {
        Ok(doc) => Item {
            span: None,
            node: Node::Table(table_entries(doc.get_ref())),
        },
        Err(e) => {
            let (line, column) = match e.span() {
                Some(span) => {
                    let (l, c) = line_col(text, span.start);
                    (Some(l), Some(c))
                }
                None => (None, None),
            };
            let mut message = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("; ");
            // toml's message does not name the key; its span does.
            if message == "duplicate key" {
                if let Some(key) = e.span().and_then(|s| text.get(s)) {
                    message = format!("duplicate key `{}`", key.trim());
                }
            }
            return Err(ConfigError {
                path: path.to_path_buf(),
                problems: vec![Problem {
                    line,
                    column,
                    field: String::new(),
                    message,
                }],
            });
        }
    };
    let mut ctx = Ctx {
        lines: tree::Lines::new(text),
        base_dir: path.parent().map(Path::to_path_buf).unwrap_or_default(),
        problems: Vec::new(),
    };
    let config = read_config(&mut ctx, &root, path);
    match config {
        Some(config) if ctx.problems.is_empty() => Ok(config),
        _ => {
            if ctx.problems.is_empty() {
                // Cannot happen (every `None` above comes with a problem); never return a
                // half-read configuration anyway.
                ctx.report(None, "", "the configuration could not be read");
            }
            let mut problems = ctx.problems;
            problems.sort_by_key(|p| (p.line, p.column));
            Err(ConfigError {
                path: path.to_path_buf(),
                problems,
            })
        }
    }
}

mod announce;
mod inventory;
mod service;
#[cfg(test)]
mod tests;
mod tree;
mod validate;

use announce::*;
use inventory::*;
use service::*;
use tree::*;
use validate::*;

pub use announce::{AnnounceConfig, DEFAULT_ETCD_GRACE, DEFAULT_WITHDRAW_WAIT};
pub use service::default_gateway_name;
