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
    collections::{HashMap, HashSet},
    fmt,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

use ftn_common::{DataplaneConfig, MAX_INTERFACES, MAX_RESOURCES, MAX_RESOURCE_KEYS, MAX_SERVERS};
use serde::{ser::SerializeStruct, Serialize, Serializer};

use crate::dataplane::{NoServerAction, Protocol, ResourceMatch, XdpAttachMode, DEFAULT_PIN_DIR};

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
/// Default `hold` of `failback = "hold"`.
pub const DEFAULT_HOLD: Duration = Duration::from_secs(10);
/// Default `drain` of a resource.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Upper bounds of the other durations: a value beyond them is a typo (`5000000000h`), and one
/// that large would overflow the dataplane's nanosecond clocks or never come.
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
}

impl ResourceConfig {
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

/// When a resource goes back to a more preferred server (e.g. the primary) that came back up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    /// As soon as it is up.
    Immediate,
    /// Once it has stayed up for this long.
    Hold(Duration),
    /// Only when an operator says so.
    Manual,
}

impl Default for Failback {
    fn default() -> Self {
        Failback::Hold(DEFAULT_HOLD)
    }
}

impl fmt::Display for Failback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failback::Immediate => f.write_str("immediate"),
            Failback::Hold(d) => write!(f, "hold {}", humantime::format_duration(*d)),
            Failback::Manual => f.write_str("manual"),
        }
    }
}

/// `{"policy": "hold", "hold": "10s"}`, `{"policy": "immediate"}`, `{"policy": "manual"}`.
impl Serialize for Failback {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Failback::Hold(d) => {
                let mut st = s.serialize_struct("Failback", 2)?;
                st.serialize_field("policy", "hold")?;
                st.serialize_field("hold", &humantime::format_duration(*d).to_string())?;
                st.end()
            }
            Failback::Immediate | Failback::Manual => {
                let mut st = s.serialize_struct("Failback", 1)?;
                let policy = if *self == Failback::Immediate {
                    "immediate"
                } else {
                    "manual"
                };
                st.serialize_field("policy", policy)?;
                st.end()
            }
        }
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
        text,
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

// ------------------------------------------------------------------------------------------
// A TOML tree that remembers where everything was
// ------------------------------------------------------------------------------------------

// `toml`'s public parse tree (`toml::de::DeTable`, with `preserve_order`) gives every key and
// value its byte span, in file order; [`tree`] turns it into the `Item`s the readers below walk.
/// Byte range in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Span {
    start: usize,
    #[allow(dead_code)]
    end: usize,
}

/// A key of a table, with its span.
#[derive(Debug)]
struct Key {
    name: String,
    span: Option<Span>,
}

/// A value, with its span.
#[derive(Debug)]
struct Item {
    span: Option<Span>,
    node: Node,
}

#[derive(Debug)]
enum Node {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Datetime(String),
    Array(Vec<Item>),
    /// In file order.
    Table(Vec<(Key, Item)>),
}

impl Node {
    fn kind(&self) -> &'static str {
        match self {
            Node::Str(_) => "a string",
            Node::Int(_) => "an integer",
            Node::Float(_) => "a float",
            Node::Bool(_) => "a boolean",
            Node::Datetime(_) => "a datetime",
            Node::Array(_) => "an array",
            Node::Table(_) => "a table",
        }
    }

    /// The kind, with the value for a scalar: `an integer (80)`.
    fn describe(&self) -> String {
        let kind = self.kind();
        match self {
            Node::Str(v) => format!("{kind} ({v:?})"),
            Node::Int(v) => format!("{kind} ({v})"),
            Node::Float(v) => format!("{kind} ({v})"),
            Node::Bool(v) => format!("{kind} ({v})"),
            Node::Datetime(v) => format!("{kind} ({v})"),
            Node::Array(_) | Node::Table(_) => kind.to_owned(),
        }
    }
}

fn span(range: std::ops::Range<usize>) -> Option<Span> {
    Some(Span {
        start: range.start,
        end: range.end,
    })
}

/// The `Item` tree of a parsed value.
fn tree(v: &toml::Spanned<toml::de::DeValue<'_>>) -> Item {
    use toml::de::DeValue;
    let node = match v.get_ref() {
        DeValue::String(s) => Node::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Node::Int(n),
            // Beyond i64 (TOML's integers): shown as the float it is closest to, which every
            // reader refuses with the value in the message.
            Err(_) => Node::Float(
                u128::from_str_radix(i.as_str(), i.radix()).map_or(f64::NAN, |n| n as f64),
            ),
        },
        DeValue::Float(f) => Node::Float(f.as_str().parse().unwrap_or(f64::NAN)),
        DeValue::Boolean(b) => Node::Bool(*b),
        DeValue::Datetime(d) => Node::Datetime(d.to_string()),
        DeValue::Array(a) => Node::Array(a.iter().map(tree).collect()),
        DeValue::Table(t) => Node::Table(table_entries(t)),
    };
    Item {
        span: span(v.span()),
        node,
    }
}

fn table_entries(t: &toml::de::DeTable<'_>) -> Vec<(Key, Item)> {
    t.iter()
        .map(|(k, v)| {
            (
                Key {
                    name: k.get_ref().to_string(),
                    span: span(k.span()),
                },
                tree(v),
            )
        })
        .collect()
}

/// 1-based line and column (in characters) of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

// ------------------------------------------------------------------------------------------
// Reading the tree
// ------------------------------------------------------------------------------------------

struct Ctx<'a> {
    text: &'a str,
    /// Directory of the file (relative `token_file`s are relative to it).
    base_dir: PathBuf,
    problems: Vec<Problem>,
}

impl Ctx<'_> {
    fn report(&mut self, at: Option<Span>, field: &str, message: impl Into<String>) {
        let (line, column) = match at {
            Some(s) => {
                let (l, c) = line_col(self.text, s.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        self.problems.push(Problem {
            line,
            column,
            field: field.to_owned(),
            message: message.into(),
        });
    }

    fn line_of(&self, at: Option<Span>) -> String {
        match at {
            Some(s) => format!(" (line {})", line_col(self.text, s.start).0),
            None => String::new(),
        }
    }
}

/// A table being read: its entries, its span and its field path (`""` for the document).
struct Table<'a> {
    entries: &'a [(Key, Item)],
    span: Option<Span>,
    path: String,
}

impl<'a> Table<'a> {
    fn get(&self, name: &str) -> Option<&'a Item> {
        self.entries
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(_, v)| v)
    }

    fn field(&self, name: &str) -> String {
        if self.path.is_empty() {
            name.to_owned()
        } else {
            format!("{}.{name}", self.path)
        }
    }

    /// Reports every key not in `allowed`.
    fn deny_unknown(&self, ctx: &mut Ctx, allowed: &[&str]) {
        for (k, _) in self.entries {
            if !allowed.contains(&k.name.as_str()) {
                ctx.report(
                    k.span,
                    &self.field(&k.name),
                    unknown_field(&k.name, allowed),
                );
            }
        }
    }

    /// The value of a required key; reports it when missing.
    fn required(&self, ctx: &mut Ctx, name: &str) -> Option<&'a Item> {
        let item = self.get(name);
        if item.is_none() {
            let at = if self.path.is_empty() {
                String::new()
            } else {
                format!(" in {}", self.path)
            };
            ctx.report(
                self.span,
                &self.field(name),
                format!("missing field `{name}`{at}"),
            );
        }
        item
    }
}

/// serde's wording, plus a suggestion for a near miss.
fn unknown_field(name: &str, allowed: &[&str]) -> String {
    let list = allowed.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>();
    let expected = match list.len() {
        0 => "there are no fields".to_owned(),
        1 => format!("expected {}", list[0]),
        2 => format!("expected {} or {}", list[0], list[1]),
        _ => format!("expected one of {}", list.join(", ")),
    };
    let mut msg = format!("unknown field `{name}`, {expected}");
    if let Some(s) = suggestion(name, allowed.iter().copied()) {
        msg.push_str(&format!(" (did you mean `{s}`?)"));
    }
    msg
}

/// The candidate closest to `name`, if it is a likely typo (edit distance <= 2, or a plural).
fn suggestion<'c>(name: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    candidates
        .map(|c| {
            let d = if name.strip_suffix('s') == Some(c) {
                1
            } else {
                edit_distance(name, c)
            };
            (d, c)
        })
        .filter(|&(d, c)| d <= 2 && d < c.len().max(name.len()))
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn wrong_type(ctx: &mut Ctx, item: &Item, field: &str, expected: &str) {
    ctx.report(
        item.span,
        field,
        format!("expected {expected}, found {}", item.node.describe()),
    );
}

/// The required `name` of a server or resource, checked, with its span.
fn read_name(ctx: &mut Ctx, t: &Table) -> (Option<String>, Option<Span>) {
    let Some(item) = t.required(ctx, "name") else {
        return (None, None);
    };
    let field = t.field("name");
    let Some(name) = want_str(ctx, item, &field) else {
        return (None, None);
    };
    match check_name(name) {
        Ok(()) => (Some(name.to_owned()), item.span),
        Err(why) => {
            ctx.report(item.span, &field, why);
            (None, item.span)
        }
    }
}

fn want_str<'a>(ctx: &mut Ctx, item: &'a Item, field: &str) -> Option<&'a str> {
    match &item.node {
        Node::Str(s) => Some(s),
        _ => {
            wrong_type(ctx, item, field, "a string");
            None
        }
    }
}

fn want_int(ctx: &mut Ctx, item: &Item, field: &str) -> Option<i64> {
    match item.node {
        Node::Int(v) => Some(v),
        _ => {
            wrong_type(ctx, item, field, "an integer");
            None
        }
    }
}

fn want_array<'a>(ctx: &mut Ctx, item: &'a Item, field: &str) -> Option<&'a [Item]> {
    match &item.node {
        Node::Array(a) => Some(a),
        _ => {
            wrong_type(ctx, item, field, "an array");
            None
        }
    }
}

fn want_table<'a>(ctx: &mut Ctx, item: &'a Item, path: String) -> Option<Table<'a>> {
    match &item.node {
        Node::Table(entries) => Some(Table {
            entries,
            span: item.span,
            path,
        }),
        _ => {
            wrong_type(ctx, item, &path, "a table");
            None
        }
    }
}

/// An integer in `min..=max`.
fn want_range(ctx: &mut Ctx, item: &Item, field: &str, min: i64, max: i64) -> Option<i64> {
    let v = want_int(ctx, item, field)?;
    if v < min || v > max {
        let msg = if max == i64::from(u32::MAX) {
            format!("must be at least {min}, got {v}")
        } else {
            format!("must be between {min} and {max}, got {v}")
        };
        ctx.report(item.span, field, msg);
        return None;
    }
    Some(v)
}

fn want_port(ctx: &mut Ctx, item: &Item, field: &str) -> Option<u16> {
    let v = want_int(ctx, item, field)?;
    match u16::try_from(v) {
        Ok(p) if p != 0 => Some(p),
        _ => {
            ctx.report(
                item.span,
                field,
                format!("invalid port {v}: a port is between 1 and 65535"),
            );
            None
        }
    }
}

fn want_duration(ctx: &mut Ctx, item: &Item, field: &str) -> Option<Duration> {
    let s = match &item.node {
        Node::Str(s) => s,
        _ => {
            ctx.report(
                item.span,
                field,
                format!(
                    "expected a duration string such as \"50ms\", \"2s\" or \"1m\", found {}",
                    item.node.describe()
                ),
            );
            return None;
        }
    };
    match humantime::parse_duration(s) {
        Ok(d) => Some(d),
        Err(e) => {
            ctx.report(
                item.span,
                field,
                format!("invalid duration {s:?}: {e} (write e.g. \"50ms\", \"2s\", \"1m\")"),
            );
            None
        }
    }
}

/// One of the strings of `choices`.
fn want_choice<T: Copy>(
    ctx: &mut Ctx,
    item: &Item,
    field: &str,
    choices: &[(&str, T)],
) -> Option<T> {
    let s = want_str(ctx, item, field)?;
    if let Some((_, v)) = choices.iter().find(|(name, _)| *name == s) {
        return Some(*v);
    }
    let list = choices
        .iter()
        .map(|(n, _)| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    ctx.report(
        item.span,
        field,
        format!("unknown value {s:?}, expected one of {list}"),
    );
    None
}

/// A non-empty absolute path.
fn want_abs_path(ctx: &mut Ctx, item: &Item, field: &str) -> Option<PathBuf> {
    let s = want_str(ctx, item, field)?;
    if !s.starts_with('/') {
        ctx.report(
            item.span,
            field,
            format!("{s:?} is not an absolute path (it must start with '/')"),
        );
        return None;
    }
    Some(PathBuf::from(s))
}

/// Parses an IP address; `role` is "server address" or "VIP".
fn want_ip(ctx: &mut Ctx, item: &Item, field: &str, role: &str) -> Option<IpAddr> {
    let s = want_str(ctx, item, field)?;
    let ip = match s.trim().parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => {
            let hint = if s.parse::<SocketAddr>().is_ok() {
                " (write the address alone: ports belong to checks and resources)"
            } else if s.contains('/') {
                " (write one address, not a prefix)"
            } else {
                ""
            };
            ctx.report(
                item.span,
                field,
                format!("invalid IP address {s:?}: expected an IPv4 or IPv6 address{hint}"),
            );
            return None;
        }
    };
    let refused = match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        ip if ip.is_multicast() => Some("a multicast address"),
        ip if ip.is_loopback() => Some("a loopback address"),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some("an IPv4-mapped IPv6 address"),
        _ => None,
    };
    if let Some(what) = refused {
        let hint = match ip {
            IpAddr::V6(a) => a
                .to_ipv4_mapped()
                .filter(|v4| !v4.is_unspecified())
                .map(|v4| format!(" (write {v4})"))
                .unwrap_or_default(),
            IpAddr::V4(_) => String::new(),
        };
        ctx.report(
            item.span,
            field,
            format!("{ip} is {what}; it cannot be a {role}{hint}"),
        );
        return None;
    }
    Some(ip)
}

/// `[A-Za-z0-9][A-Za-z0-9._-]{0,62}`.
fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a name must not be empty".into());
    }
    if name.len() > 63 {
        return Err(format!(
            "name {name:?} is too long ({} characters, at most 63)",
            name.chars().count()
        ));
    }
    let first = name.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(format!(
            "invalid name {name:?}: a name starts with a letter or a digit"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "invalid name {name:?}: {c:?} is not allowed (letters, digits, '.', '_' and '-' only)"
        ));
    }
    Ok(())
}

/// The kernel's `dev_valid_name`.
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an interface name must not be empty".into());
    }
    if name.len() > 15 {
        return Err(format!("longer than 15 bytes ({})", name.len()));
    }
    if name == "." || name == ".." {
        return Err("\".\" and \"..\" are not interface names".into());
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err("'/', ':', whitespace and control characters are not allowed".into());
    }
    Ok(())
}

/// A bearer token: non-empty, no whitespace or control characters.
fn check_token(token: &str) -> Result<(), &'static str> {
    if token.is_empty() {
        return Err("the token is empty");
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("the token must not contain whitespace or control characters");
    }
    Ok(())
}

fn human(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

// ------------------------------------------------------------------------------------------
// Sections
// ------------------------------------------------------------------------------------------

const ROOT_FIELDS: &[&str] = &[
    "gateway",
    "api",
    "directory",
    "dataplane",
    "check_defaults",
    "server",
    "resource",
];

fn read_config(ctx: &mut Ctx, root: &Item, path: &Path) -> Option<Config> {
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
    let resources = resources
        .into_iter()
        .map(RawResource::build)
        .collect::<Option<Vec<_>>>()?;
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
        source: path.to_path_buf(),
    })
}

/// The elements of `[[name]]` (absent: none).
fn read_array_of_tables<'a>(ctx: &mut Ctx, root: &Table<'a>, name: &str) -> &'a [Item] {
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

fn read_gateway(ctx: &mut Ctx, t: &Table) -> GatewayConfig {
    t.deny_unknown(ctx, &["name", "interfaces", "xdp_mode", "pin_dir"]);
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
    GatewayConfig {
        name,
        interfaces,
        xdp_mode,
        pin_dir,
    }
}

fn read_api(ctx: &mut Ctx, t: &Table) -> ApiConfig {
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

const EMBEDDED_FIELDS: &[&str] = &["backend", "path"];
const ETCD_FIELDS: &[&str] = &[
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

fn read_directory(ctx: &mut Ctx, t: &Table) -> DirectoryConfig {
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
fn check_endpoint(e: &str) -> Result<bool, String> {
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

fn read_etcd(ctx: &mut Ctx, t: &Table) -> EtcdConfig {
    let mut c = EtcdConfig {
        endpoints: Vec::new(),
        prefix: DEFAULT_ETCD_PREFIX.into(),
        dial_timeout: DEFAULT_ETCD_DIAL_TIMEOUT,
        request_timeout: DEFAULT_ETCD_REQUEST_TIMEOUT,
        lease_ttl: Duration::from_secs(3),
        ca_file: None,
        cert_file: None,
        key_file: None,
        user: None,
        password: None,
    };
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
    c
}

fn read_dataplane(ctx: &mut Ctx, t: &Table) -> DataplaneConfig {
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

const TIMING_FIELDS: &[&str] = &["interval", "timeout", "rise", "fall"];

/// Interval, timeout, rise and fall of a check (or of `[check_defaults]`).
#[derive(Clone, Copy, Debug)]
struct Timing {
    interval: Duration,
    timeout: Duration,
    rise: u32,
    fall: u32,
}

impl Timing {
    const BUILTIN: Timing = Timing {
        interval: DEFAULT_CHECK_INTERVAL,
        timeout: DEFAULT_CHECK_TIMEOUT,
        rise: DEFAULT_RISE,
        fall: DEFAULT_FALL,
    };
}

/// Reads the timing fields of `t` over `base`. A value in error keeps `base`'s, so one bad
/// `[check_defaults]` is reported once, not once per check.
fn read_timing(ctx: &mut Ctx, t: &Table, base: Timing) -> Timing {
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

const CHECK_TYPES: &[&str] = &["tcp", "http", "udp", "icmp"];
const CHECK_FIELDS: &[&str] = &[
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
fn check_type_fields(ty: &str) -> &'static [&'static str] {
    match ty {
        "tcp" => &["port"],
        "http" => &["port", "path", "host", "expect_status"],
        "udp" => &["port", "send", "expect"],
        _ => &[],
    }
}

fn read_check(ctx: &mut Ctx, item: &Item, path: String, defaults: Timing) -> Option<CheckConfig> {
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
    let port = match ty {
        Some("tcp" | "http" | "udp") => t
            .required(ctx, "port")
            .and_then(|item| want_port(ctx, item, &t.field("port"))),
        _ => None,
    };
    let non_empty_text = |ctx: &mut Ctx, name: &str| -> Option<String> {
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
    };
    let no_space = |ctx: &mut Ctx, name: &str, s: &str| -> bool {
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
    };
    let kind = match ty {
        Some("http") => {
            let path = non_empty_text(ctx, "path");
            if let Some(p) = &path {
                if !p.starts_with('/') {
                    ctx.report(
                        t.get("path").and_then(|i| i.span),
                        &t.field("path"),
                        format!("{p:?} must start with '/'"),
                    );
                } else {
                    no_space(ctx, "path", p);
                }
            }
            let host = non_empty_text(ctx, "host");
            if let Some(h) = &host {
                no_space(ctx, "host", h);
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
        Some("udp") => {
            let send = non_empty_text(ctx, "send")
                .map_or_else(|| DEFAULT_UDP_SEND.to_vec(), String::into_bytes);
            let expect = non_empty_text(ctx, "expect").map(String::into_bytes);
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

/// A `[[server]]` as read, before the checks across servers and resources.
struct RawServer {
    label: String,
    /// Set when the name is valid.
    name: Option<String>,
    name_span: Option<Span>,
    address: Option<IpAddr>,
    address_span: Option<Span>,
    /// `None`: no `checks` key (a default check is derived).
    checks: Option<Vec<CheckConfig>>,
    table_span: Option<Span>,
}

impl RawServer {
    fn build(self, resources: &[ResourceConfig], defaults: Timing) -> Option<ServerConfig> {
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
fn default_check(server: &str, resources: &[ResourceConfig], t: Timing) -> CheckConfig {
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
fn label(section: &str, t: &[(Key, Item)], index: usize) -> String {
    match t
        .iter()
        .find(|(k, _)| k.name == "name")
        .map(|(_, v)| &v.node)
    {
        Some(Node::Str(name)) => format!("{section} {name:?}"),
        _ => format!("{section}[{index}]"),
    }
}

fn read_server(ctx: &mut Ctx, item: &Item, index: usize, defaults: Timing) -> Option<RawServer> {
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
struct RawResource {
    label: String,
    name: Option<String>,
    name_span: Option<Span>,
    vip: Option<IpAddr>,
    vip_span: Option<Span>,
    protocol: Option<Protocol>,
    /// With the span of each port.
    ports: Vec<(u16, Option<Span>)>,
    servers: Vec<(String, Option<Span>)>,
    failback: Failback,
    drain: Duration,
    on_no_server: NoServerAction,
    table_span: Option<Span>,
}

impl RawResource {
    fn build(self) -> Option<ResourceConfig> {
        Some(ResourceConfig {
            name: self.name?,
            vip: self.vip?,
            protocol: self.protocol?,
            ports: self.ports.into_iter().map(|(p, _)| p).collect(),
            servers: self.servers.into_iter().map(|(s, _)| s).collect(),
            failback: self.failback,
            drain: self.drain,
            on_no_server: self.on_no_server,
        })
    }
}

const RESOURCE_FIELDS: &[&str] = &[
    "name",
    "vip",
    "protocol",
    "ports",
    "servers",
    "failback",
    "hold",
    "drain",
    "on_no_server",
];

fn read_resource(ctx: &mut Ctx, item: &Item, index: usize) -> Option<RawResource> {
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

    // ports
    let ports_field = t.field("ports");
    match (raw.protocol, t.get("ports")) {
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
                for (i, it) in list.iter().enumerate() {
                    let f = format!("{ports_field}[{i}]");
                    let Some(port) = want_port(ctx, it, &f) else {
                        continue;
                    };
                    if raw.ports.iter().any(|(p, _)| *p == port) {
                        ctx.report(it.span, &f, format!("port {port} is listed twice"));
                    } else {
                        raw.ports.push((port, it.span));
                    }
                }
            }
        }
        (_, None) => {}
    }

    // servers
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
                    raw.servers.push((name.to_owned(), it.span));
                }
            }
        }
    }

    // failback
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
    raw.failback = match policy {
        Some(Some(Policy::Immediate)) => Failback::Immediate,
        Some(Some(Policy::Manual)) => Failback::Manual,
        _ => Failback::Hold(hold.unwrap_or(DEFAULT_HOLD)),
    };
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
    Some(raw)
}

// ------------------------------------------------------------------------------------------
// Checks across entries
// ------------------------------------------------------------------------------------------

fn check_servers(ctx: &mut Ctx, servers: &[RawServer]) {
    if servers.len() > MAX_SERVERS as usize {
        let first_extra = &servers[MAX_SERVERS as usize];
        ctx.report(
            first_extra.table_span,
            &first_extra.label,
            format!(
                "too many servers: {} (the dataplane holds at most {MAX_SERVERS})",
                servers.len()
            ),
        );
    }
    let mut names: HashMap<&str, Option<Span>> = HashMap::new();
    let mut addresses: HashMap<IpAddr, (&str, Option<Span>)> = HashMap::new();
    for s in servers {
        if let Some(name) = &s.name {
            if let Some(first) = names.get(name.as_str()) {
                let at = ctx.line_of(*first);
                ctx.report(
                    s.name_span,
                    &format!("{}.name", s.label),
                    format!("duplicate server name {name:?}: already defined{at}"),
                );
            } else {
                names.insert(name, s.name_span);
            }
        }
        if let Some(address) = s.address {
            if let Some((other, at)) = addresses.get(&address) {
                let at = ctx.line_of(*at);
                let other = other.to_string();
                ctx.report(
                    s.address_span,
                    &format!("{}.address", s.label),
                    format!("address {address} is already the address of {other}{at}"),
                );
            } else {
                addresses.insert(address, (&s.label, s.address_span));
            }
        }
    }
}

fn check_resources(ctx: &mut Ctx, resources: &[RawResource], servers: &[RawServer]) {
    if resources.len() > MAX_RESOURCES as usize {
        let first_extra = &resources[MAX_RESOURCES as usize];
        ctx.report(
            first_extra.table_span,
            &first_extra.label,
            format!(
                "too many resources: {} (the dataplane holds at most {MAX_RESOURCES})",
                resources.len()
            ),
        );
    }
    let keys: usize = resources.iter().map(|r| r.ports.len().max(1)).sum();
    if keys > MAX_RESOURCE_KEYS as usize {
        ctx.report(
            None,
            "resource",
            format!(
                "too many (VIP, protocol, port) entries: {keys} (the dataplane holds at most {MAX_RESOURCE_KEYS})"
            ),
        );
    }

    // Servers by name (first definition wins; duplicates are reported by check_servers).
    let mut by_name: HashMap<&str, &RawServer> = HashMap::new();
    for s in servers {
        if let Some(name) = &s.name {
            by_name.entry(name).or_insert(s);
        }
    }
    let known: Vec<&str> = servers.iter().filter_map(|s| s.name.as_deref()).collect();
    // Server addresses (first definition wins): a VIP must be none of them.
    let mut by_address: HashMap<IpAddr, &RawServer> = HashMap::new();
    for s in servers {
        if let Some(a) = s.address {
            by_address.entry(a).or_insert(s);
        }
    }

    let mut names: HashMap<&str, Option<Span>> = HashMap::new();
    let mut owners: HashMap<(IpAddr, Protocol, u16), (&str, Option<Span>)> = HashMap::new();
    for r in resources {
        if let Some(name) = &r.name {
            if let Some(first) = names.get(name.as_str()) {
                let at = ctx.line_of(*first);
                ctx.report(
                    r.name_span,
                    &format!("{}.name", r.label),
                    format!("duplicate resource name {name:?}: already defined{at}"),
                );
            } else {
                names.insert(name, r.name_span);
            }
        }

        if let Some(vip) = r.vip {
            if let Some(s) = by_address.get(&vip) {
                let at = ctx.line_of(s.address_span.or(s.table_span));
                let who = s
                    .name
                    .as_deref()
                    .map(|n| format!("server {n:?}"))
                    .unwrap_or_else(|| s.label.clone());
                ctx.report(
                    r.vip_span,
                    &format!("{}.vip", r.label),
                    format!(
                        "VIP {vip} is also the address of {who}{at}: a VIP must not be a server's address (the gateway would rewrite that server's own traffic)"
                    ),
                );
            }
        }

        for (i, (server, span)) in r.servers.iter().enumerate() {
            let field = format!("{}.servers[{i}]", r.label);
            match by_name.get(server.as_str()) {
                None => {
                    let hint = if known.is_empty() {
                        " (no [[server]] is defined)".to_owned()
                    } else if known.len() <= 10 {
                        format!(" (known: {})", known.join(", "))
                    } else if let Some(s) = suggestion(server, known.iter().copied()) {
                        format!(" (did you mean {s:?}?)")
                    } else {
                        format!(" ({} servers are defined)", known.len())
                    };
                    ctx.report(*span, &field, format!("unknown server {server:?}{hint}"));
                }
                Some(s) => {
                    if let (Some(vip), Some(addr)) = (r.vip, s.address) {
                        if vip.is_ipv4() != addr.is_ipv4() {
                            let fam = |ip: IpAddr| if ip.is_ipv4() { "IPv4" } else { "IPv6" };
                            ctx.report(
                                *span,
                                &field,
                                format!(
                                    "server {server:?} has an {} address ({addr}) but the VIP {vip} is {}: a resource's servers must be of the VIP's address family",
                                    fam(addr),
                                    fam(vip)
                                ),
                            );
                        }
                    }
                }
            }
        }

        // One (VIP, protocol, port) belongs to one resource.
        let (Some(vip), Some(protocol)) = (r.vip, r.protocol) else {
            continue;
        };
        let entries: Vec<(u16, Option<Span>, String)> = if protocol == Protocol::Icmp {
            vec![(0, r.vip_span, format!("{}.vip", r.label))]
        } else {
            r.ports
                .iter()
                .enumerate()
                .map(|(i, (p, span))| (*p, *span, format!("{}.ports[{i}]", r.label)))
                .collect()
        };
        for (port, span, field) in entries {
            match owners.get(&(vip, protocol, port)) {
                Some((other, other_span)) => {
                    let at = ctx.line_of(*other_span);
                    let what = if protocol == Protocol::Icmp {
                        format!("icmp on VIP {vip}")
                    } else {
                        format!("{protocol} port {port} of VIP {vip}")
                    };
                    let other = other.to_string();
                    ctx.report(
                        span,
                        &field,
                        format!(
                            "duplicate VIP: {what} already belongs to {other}{at}; a VIP, protocol and port may belong to one resource only"
                        ),
                    );
                }
                None => {
                    owners.insert((vip, protocol, port), (&r.label, r.table_span));
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// Tests
// ------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "ftn.toml";

    fn ok(text: &str) -> Config {
        match parse(text, Path::new(PATH)) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid configuration, got:\n{e}"),
        }
    }

    fn err(text: &str) -> ConfigError {
        match parse(text, Path::new(PATH)) {
            Ok(c) => panic!("expected an error, got {c:#?}"),
            Err(e) => e,
        }
    }

    /// 1-based line of the first occurrence of `needle` in `text`.
    fn line_of(text: &str, needle: &str) -> usize {
        let off = text
            .find(needle)
            .unwrap_or_else(|| panic!("{needle:?} not in text"));
        line_col(text, off).0
    }

    /// The only problem of `text`, checked to mention `message` at the line of `at`.
    fn single(text: &str, field: &str, message: &str, at: &str) -> Problem {
        let e = err(text);
        assert_eq!(e.problems.len(), 1, "expected one problem, got:\n{e}");
        let p = e.problems[0].clone();
        assert_eq!(p.field, field, "{e}");
        assert!(
            p.message.contains(message),
            "{:?} lacks {message:?}",
            p.message
        );
        assert_eq!(p.line, Some(line_of(text, at)), "{e}");
        p
    }

    const GATEWAY: &str = "[gateway]\ninterfaces = [\"eth0\"]\n";

    fn with_gateway(rest: &str) -> String {
        format!("{GATEWAY}{rest}")
    }

    const FULL: &str = r#"
[gateway]
interfaces = ["eth0", "eth1"]
xdp_mode = "native"
pin_dir = "/sys/fs/bpf/ftn-test"

[api]
listen = "[::1]:9000"
token = "s3cret"

[directory]
backend = "embedded"
path = "/var/lib/ftn-test"

[dataplane]
tcp_idle = "10m"
udp_idle = "2m"

[check_defaults]
interval = "100ms"
timeout = "80ms"
rise = 4

[[server]]
name = "p1"
address = "198.18.2.10"
checks = [
  { type = "tcp", port = 80 },
  { type = "http", port = 8080, path = "/health", host = "web.example", expect_status = 204, interval = "200ms", timeout = "150ms", fall = 5 },
]

[[server]]
name = "b1"
address = "198.18.3.10"

[[server]]
name = "dns1"
address = "198.18.2.53"
checks = [{ type = "udp", port = 53, send = "hello", expect = "olleh" }]

[[server]]
name = "dns2"
address = "198.18.3.53"

[[server]]
name = "spare"
address = "198.18.3.99"

[[server]]
name = "v6a"
address = "2001:2::10"
checks = [{ type = "icmp", rise = 1 }]

[[resource]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80]
servers = ["p1", "b1"]
failback = "immediate"
drain = "5s"
on_no_server = "reject"

[[resource]]
name = "dns"
vip = "198.18.100.1"
protocol = "udp"
ports = [53]
servers = ["dns1", "dns2"]

[[resource]]
name = "ping6"
vip = "2001:2::100"
protocol = "icmp"
servers = ["v6a"]
failback = "hold"
hold = "1m"

[[resource]]
name = "web-manual"
vip = "198.18.100.2"
protocol = "tcp"
ports = [443, 80]
servers = ["p1"]
failback = "manual"
"#;

    #[test]
    fn full_example_parses_with_values_and_defaults() {
        let c = ok(FULL);
        assert_eq!(c.source, PathBuf::from(PATH));
        assert_eq!(
            c.gateway,
            GatewayConfig {
                name: default_gateway_name(),
                interfaces: vec!["eth0".into(), "eth1".into()],
                xdp_mode: XdpAttachMode::Native,
                pin_dir: "/sys/fs/bpf/ftn-test".into(),
            }
        );
        assert_eq!(c.api.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(c.api.token.as_deref(), Some("s3cret"));
        assert_eq!(
            c.directory,
            DirectoryConfig::Embedded {
                path: "/var/lib/ftn-test".into()
            }
        );
        assert_eq!(c.dataplane.tcp_idle_ns, 600_000_000_000);
        assert_eq!(c.dataplane.udp_idle_ns, 120_000_000_000);
        assert_eq!(
            c.dataplane.tcp_closing_ns,
            ftn_common::DEFAULT_TCP_CLOSING_NS
        );
        assert_eq!(c.dataplane.icmp_idle_ns, ftn_common::DEFAULT_ICMP_IDLE_NS);

        let names = c
            .servers
            .iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>();
        assert_eq!(names, ["p1", "b1", "dns1", "dns2", "spare", "v6a"]);
        let ms = Duration::from_millis;
        let p1 = c.server("p1").unwrap();
        assert_eq!(p1.address, "198.18.2.10".parse::<IpAddr>().unwrap());
        assert_eq!(
            p1.checks,
            vec![
                CheckConfig {
                    kind: CheckKind::Tcp { port: 80 },
                    interval: ms(100),
                    timeout: ms(80),
                    rise: 4,
                    fall: 2,
                },
                CheckConfig {
                    kind: CheckKind::Http {
                        port: 8080,
                        path: "/health".into(),
                        host: Some("web.example".into()),
                        expect_status: 204,
                    },
                    interval: ms(200),
                    timeout: ms(150),
                    rise: 4,
                    fall: 5,
                },
            ]
        );
        // Derived checks: b1 serves only tcp/80 -> tcp 80; dns2 serves udp -> icmp; spare serves
        // nothing -> icmp. They use [check_defaults].
        let derived = |kind| CheckConfig {
            kind,
            interval: ms(100),
            timeout: ms(80),
            rise: 4,
            fall: 2,
        };
        assert_eq!(
            c.server("b1").unwrap().checks,
            vec![derived(CheckKind::Tcp { port: 80 })]
        );
        assert_eq!(
            c.server("dns2").unwrap().checks,
            vec![derived(CheckKind::Icmp)]
        );
        assert_eq!(
            c.server("spare").unwrap().checks,
            vec![derived(CheckKind::Icmp)]
        );
        assert_eq!(
            c.server("dns1").unwrap().checks[0].kind,
            CheckKind::Udp {
                port: 53,
                send: b"hello".to_vec(),
                expect: Some(b"olleh".to_vec())
            }
        );
        assert_eq!(c.server("v6a").unwrap().checks[0].kind, CheckKind::Icmp);
        assert_eq!(c.server("v6a").unwrap().checks[0].rise, 1);

        let names = c
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>();
        assert_eq!(names, ["web", "dns", "ping6", "web-manual"]);
        assert_eq!(
            *c.resource("web").unwrap(),
            ResourceConfig {
                name: "web".into(),
                vip: "198.18.100.1".parse().unwrap(),
                protocol: Protocol::Tcp,
                ports: vec![80],
                servers: vec!["p1".into(), "b1".into()],
                failback: Failback::Immediate,
                drain: Duration::from_secs(5),
                on_no_server: NoServerAction::Reject,
            }
        );
        let dns = c.resource("dns").unwrap();
        assert_eq!(dns.failback, Failback::Hold(Duration::from_secs(10)));
        assert_eq!(dns.drain, Duration::from_secs(30));
        assert_eq!(dns.on_no_server, NoServerAction::Drop);
        let ping6 = c.resource("ping6").unwrap();
        assert_eq!(ping6.failback, Failback::Hold(Duration::from_secs(60)));
        assert!(ping6.ports.is_empty());
        assert_eq!(
            ping6.matchers(),
            vec![ResourceMatch {
                vip: "2001:2::100".parse().unwrap(),
                protocol: Protocol::Icmp,
                port: 0
            }]
        );
        let manual = c.resource("web-manual").unwrap();
        assert_eq!(manual.failback, Failback::Manual);
        assert_eq!(manual.ports, vec![443, 80]);
        assert_eq!(manual.matchers().len(), 2);
        assert!(c.resource("nope").is_none() && c.server("nope").is_none());
    }

    #[test]
    fn minimal_file_gets_builtin_defaults() {
        let c = ok(&with_gateway(
            "[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [{ type = \"tcp\", port = 22 }]\n",
        ));
        assert_eq!(c.gateway.xdp_mode, XdpAttachMode::Auto);
        assert_eq!(c.gateway.pin_dir, PathBuf::from(DEFAULT_PIN_DIR));
        assert_eq!(c.api, ApiConfig::default());
        assert_eq!(c.api.listen, "127.0.0.1:7480".parse().unwrap());
        assert_eq!(c.api.token, None);
        assert_eq!(
            c.directory,
            DirectoryConfig::Embedded {
                path: "/var/lib/ftn".into()
            }
        );
        assert_eq!(c.dataplane, DataplaneConfig::default());
        assert!(c.resources.is_empty());
        let check = &c.servers[0].checks[0];
        assert_eq!(
            (check.interval, check.timeout, check.rise, check.fall),
            (Duration::from_secs(1), Duration::from_millis(50), 3, 2)
        );
    }

    #[test]
    fn passive_settings() {
        let c = ok(&with_gateway(
            "[dataplane]\npassive_window = \"5ms\"\npassive_min = 2\npassive_rearm = \"1s\"\n",
        ));
        assert_eq!(c.dataplane.passive_window_ns, 5_000_000);
        assert_eq!(c.dataplane.passive_min, 2);
        assert_eq!(c.dataplane.passive_rearm_ns, 1_000_000_000);
        let c = ok(&with_gateway(
            "[dataplane]\npassive = false\nnexthop_cache = false\n",
        ));
        assert_eq!(c.dataplane.passive_min, ftn_common::PASSIVE_OFF);
        assert_eq!(c.dataplane.nexthop_ttl_ns, ftn_common::NEXTHOP_CACHE_OFF);
        let c = ok(&with_gateway("[dataplane]\nnexthop_ttl = \"250ms\"\n"));
        assert_eq!(c.dataplane.nexthop_ttl_ns, 250_000_000);
        let text = with_gateway("[dataplane]\npassive_min = 0\npassive = \"yes\"\n");
        let e = err(&text).to_string();
        assert!(
            e.contains("[dataplane].passive_min: must be between 1 and 1000000, got 0")
                || e.contains("passive_min: must be between 1 and 1000000, got 0"),
            "{e}"
        );
        assert!(e.contains("passive") && e.contains("true or false"), "{e}");
    }

    #[test]
    fn default_check_derivation() {
        let text = with_gateway(
            r#"
[[server]]
name = "a"
address = "198.18.2.1"
[[server]]
name = "b"
address = "198.18.2.2"
[[server]]
name = "c"
address = "198.18.2.3"
[[resource]]
name = "r1"
vip = "198.18.100.1"
protocol = "tcp"
ports = [8443]
servers = ["a", "b", "c"]
[[resource]]
name = "r2"
vip = "198.18.100.2"
protocol = "tcp"
ports = [8443]
servers = ["a"]
[[resource]]
name = "r3"
vip = "198.18.100.3"
protocol = "tcp"
ports = [80]
servers = ["b"]
[[resource]]
name = "r4"
vip = "198.18.100.4"
protocol = "udp"
ports = [8443]
servers = ["c"]
"#,
        );
        let c = ok(&text);
        let kind = |s: &str| c.server(s).unwrap().checks[0].kind.clone();
        // a: tcp 8443 twice -> tcp 8443; b: tcp on two ports -> icmp; c: tcp + udp -> icmp.
        assert_eq!(kind("a"), CheckKind::Tcp { port: 8443 });
        assert_eq!(kind("b"), CheckKind::Icmp);
        assert_eq!(kind("c"), CheckKind::Icmp);
        assert!(c.servers.iter().all(|s| s.checks.len() == 1));
    }

    #[test]
    fn unknown_field_is_reported_with_line_and_expected_fields() {
        let text = with_gateway("[[server]]\nname = \"p1\"\nadress = \"198.18.2.10\"\n");
        let e = err(&text);
        let unknown = e
            .problems
            .iter()
            .find(|p| p.field == "server \"p1\".adress")
            .unwrap_or_else(|| panic!("{e}"));
        assert_eq!(unknown.line, Some(5));
        assert_eq!(unknown.column, Some(1));
        assert_eq!(
            unknown.message,
            "unknown field `adress`, expected one of `name`, `address`, `checks` (did you mean `address`?)"
        );
        // The required field is missing too: both are reported.
        assert!(e
            .problems
            .iter()
            .any(|p| p.message == "missing field `address` in server \"p1\""));

        let p = single(
            "[gateway]\ninterfaces = [\"eth0\"]\nmode = \"native\"\n",
            "gateway.mode",
            "unknown field `mode`, expected one of `name`, `interfaces`, `xdp_mode`, `pin_dir`",
            "mode =",
        );
        assert_eq!(p.column, Some(1));
        single(
            &with_gateway("[servers]\nname = \"x\"\n"),
            "servers",
            "unknown field `servers`, expected one of `gateway`, `api`, `directory`, `dataplane`, `check_defaults`, `server`, `resource` (did you mean `server`?)",
            "[servers]",
        );
        single(
            &with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [{ type = \"tcp\", port = 80, path = \"/\" }]\n"),
            "server \"a\".checks[0].path",
            "`path` is not a field of a tcp check (only of http checks)",
            "checks =",
        );
    }

    #[test]
    fn wrong_types_are_reported() {
        single(
            "[gateway]\ninterfaces = \"eth0\"\n",
            "gateway.interfaces",
            "expected an array, found a string (\"eth0\")",
            "interfaces",
        );
        single(
            &with_gateway("[server]\nname = \"a\"\n"),
            "server",
            "`server` is a list of tables: write [[server]], not [server]",
            "[server]",
        );
        single(
            &with_gateway("[[server]]\nname = \"a\"\naddress = 1979-05-27\n"),
            "server \"a\".address",
            "expected a string, found a datetime (1979-05-27)",
            "address",
        );
        single(
            &with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [{ type = \"tcp\", port = \"80\" }]\n"),
            "server \"a\".checks[0].port",
            "expected an integer, found a string (\"80\")",
            "checks",
        );
    }

    #[test]
    fn dotted_keys_and_inline_tables_are_read() {
        // Tables made implicitly by dotted keys have no span of their own.
        let c = ok("gateway.interfaces = [\"eth0\"]\napi = { listen = \"127.0.0.1:9999\" }\n");
        assert_eq!(c.gateway.interfaces, ["eth0"]);
        assert_eq!(c.api.listen.port(), 9999);
        let e = err("gateway.interfaces = [\"eth0\"]\ngateway.bogus = 1\n");
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].line, Some(2));
        assert_eq!(e.problems[0].field, "gateway.bogus");
    }

    const TWO_SERVERS: &str = r#"
[[server]]
name = "p1"
address = "198.18.2.10"
[[server]]
name = "b1"
address = "198.18.3.10"
"#;

    fn resource(name: &str, vip: &str, proto: &str, ports: &str, servers: &str) -> String {
        format!(
            "[[resource]]\nname = \"{name}\"\nvip = \"{vip}\"\nprotocol = \"{proto}\"\n{ports}servers = {servers}\n"
        )
    }

    #[test]
    fn a_vip_that_is_a_servers_address_is_refused() {
        // Another resource's server.
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}",
            resource("web", "198.18.3.10", "tcp", "ports = [80]\n", "[\"p1\"]"),
        ));
        let e = single(
            &text,
            "resource \"web\".vip",
            "VIP 198.18.3.10 is also the address of server \"b1\"",
            "vip = \"198.18.3.10\"",
        );
        assert!(
            e.message.contains(&format!(
                "(line {})",
                line_of(&text, "address = \"198.18.3.10\"")
            )),
            "{e:?}"
        );
        // Its own server.
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}",
            resource(
                "web",
                "198.18.2.10",
                "tcp",
                "ports = [80]\n",
                "[\"p1\", \"b1\"]"
            ),
        ));
        single(
            &text,
            "resource \"web\".vip",
            "VIP 198.18.2.10 is also the address of server \"p1\"",
            "vip = \"198.18.2.10\"",
        );
    }

    #[test]
    fn a_check_interval_beyond_an_hour_is_refused() {
        let text = with_gateway(
            "[[server]]\nname = \"a\"\naddress = \"198.18.2.10\"\nchecks = [{ type = \"tcp\", port = 80, interval = \"5000000000h\" }]\n",
        );
        let e = err(&text);
        assert!(
            e.problems
                .iter()
                .any(|p| p.field == "server \"a\".checks[0].interval"
                    && p.message.starts_with("interval ")
                    && p.message.contains("is too long: at most 1h")),
            "{e}"
        );
        let text_ok = with_gateway(
            "[[server]]\nname = \"a\"\naddress = \"198.18.2.10\"\nchecks = [{ type = \"tcp\", port = 80, interval = \"1h\" }]\n",
        );
        let c = ok(&text_ok);
        assert_eq!(c.servers[0].checks[0].interval, Duration::from_secs(3600));
    }

    /// Every duration has an upper bound; each refusal names its field.
    #[test]
    fn every_duration_is_bounded() {
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}[dataplane]\ntcp_idle = \"31days\"\npassive_window = \"2m\"\nnexthop_ttl = \"5000000000h\"\n",
            resource(
                "web",
                "198.18.1.1",
                "tcp",
                "ports = [80]\nfailback = \"hold\"\nhold = \"8days\"\ndrain = \"5000000000h\"\n",
                "[\"p1\", \"b1\"]"
            ),
        ));
        let e = err(&text);
        for (field, max) in [
            ("dataplane.tcp_idle", "at most 30days"),
            ("dataplane.passive_window", "at most 1m"),
            ("dataplane.nexthop_ttl", "at most 1h"),
            ("resource \"web\".hold", "at most 7days"),
            ("resource \"web\".drain", "at most 7days"),
        ] {
            assert!(
                e.problems
                    .iter()
                    .any(|p| p.field == field && p.message.contains(max)),
                "{field}: {e}"
            );
        }
        assert_eq!(e.problems.len(), 5, "{e}");
        let ok_text = with_gateway(&format!(
            "{TWO_SERVERS}{}[dataplane]\ntcp_idle = \"30days\"\n",
            resource(
                "web",
                "198.18.1.1",
                "tcp",
                "ports = [80]\nfailback = \"hold\"\nhold = \"7days\"\ndrain = \"7days\"\n",
                "[\"p1\", \"b1\"]"
            ),
        ));
        ok(&ok_text);
    }

    #[test]
    fn duplicate_vip_names_both_resources() {
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}{}",
            resource(
                "web",
                "198.18.100.1",
                "tcp",
                "ports = [80, 443]\n",
                "[\"p1\"]"
            ),
            resource(
                "web2",
                "198.18.100.1",
                "tcp",
                "ports = [8080, 443]\n",
                "[\"b1\"]"
            ),
        ));
        let e = single(
            &text,
            "resource \"web2\".ports[1]",
            "duplicate VIP: tcp port 443 of VIP 198.18.100.1 already belongs to resource \"web\"",
            "ports = [8080",
        );
        assert!(e
            .message
            .contains(&format!("(line {})", line_of(&text, "[[resource]]"))));
        assert_eq!(
            e.column,
            Some(line_col(&text, text.find("443]\nservers = [\"b1").unwrap()).1)
        );
    }

    #[test]
    fn same_vip_with_other_protocol_or_port_is_fine() {
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}{}{}{}",
            resource("a", "198.18.100.1", "tcp", "ports = [80]\n", "[\"p1\"]"),
            resource("b", "198.18.100.1", "udp", "ports = [80]\n", "[\"p1\"]"),
            resource("c", "198.18.100.1", "tcp", "ports = [81]\n", "[\"b1\"]"),
            resource("d", "198.18.100.1", "icmp", "", "[\"b1\"]"),
        ));
        assert_eq!(ok(&text).resources.len(), 4);
    }

    #[test]
    fn icmp_twice_on_one_vip_is_a_duplicate() {
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}{}",
            resource("ping", "198.18.100.1", "icmp", "", "[\"p1\"]"),
            resource("ping2", "198.18.100.1", "icmp", "ports = []\n", "[\"b1\"]"),
        ));
        single(
            &text,
            "resource \"ping2\".vip",
            "duplicate VIP: icmp on VIP 198.18.100.1 already belongs to resource \"ping\"",
            "vip = \"198.18.100.1\"\nprotocol = \"icmp\"\nports",
        );
    }

    #[test]
    fn unknown_server_is_named_with_the_known_ones() {
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}",
            resource(
                "web",
                "198.18.100.1",
                "tcp",
                "ports = [80]\n",
                "[\"p1\", \"b1\", \"p9\"]"
            )
        ));
        let e = err(&text);
        let line = line_of(&text, "\"p9\"");
        let col = line_col(&text, text.find("\"p9\"").unwrap()).1;
        assert_eq!(
            e.to_string(),
            format!("ftn.toml:{line}:{col}: resource \"web\".servers[2]: unknown server \"p9\" (known: p1, b1)")
        );
        let e = err(&with_gateway(&resource(
            "web",
            "198.18.100.1",
            "tcp",
            "ports = [80]\n",
            "[\"x\"]",
        )));
        assert_eq!(
            e.problems[0].message,
            "unknown server \"x\" (no [[server]] is defined)"
        );
    }

    #[test]
    fn bad_address_says_what_was_given() {
        let text = with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.300\"\n");
        let p = single(
            &text,
            "server \"a\".address",
            "invalid IP address \"198.18.2.300\": expected an IPv4 or IPv6 address",
            "address",
        );
        assert_eq!(p.column, Some(11));
        single(
            &with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.3:80\"\n"),
            "server \"a\".address",
            "(write the address alone: ports belong to checks and resources)",
            "address",
        );
    }

    #[test]
    fn special_addresses_are_refused() {
        for (addr, what) in [
            ("0.0.0.0", "the unspecified address"),
            ("::", "the unspecified address"),
            ("127.0.0.1", "a loopback address"),
            ("::1", "a loopback address"),
            ("224.0.0.5", "a multicast address"),
            ("ff02::1", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
            ("::ffff:198.18.2.1", "an IPv4-mapped IPv6 address"),
        ] {
            single(
                &with_gateway(&format!("[[server]]\nname = \"a\"\naddress = \"{addr}\"\n")),
                "server \"a\".address",
                &format!("is {what}; it cannot be a server address"),
                "address",
            );
            single(
                &with_gateway(&format!(
                    "{TWO_SERVERS}{}",
                    resource("r", addr, "icmp", "", "[\"p1\"]")
                )),
                "resource \"r\".vip",
                &format!("is {what}; it cannot be a VIP"),
                "vip",
            );
        }
    }

    #[test]
    fn duplicate_server_names_and_addresses() {
        let text = with_gateway(
            "[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\n[[server]]\nname = \"a\"\naddress = \"198.18.2.2\"\n[[server]]\nname = \"b\"\naddress = \"198.18.2.1\"\n",
        );
        let e = err(&text);
        assert_eq!(e.problems.len(), 2, "{e}");
        assert_eq!(e.problems[0].field, "server \"a\".name");
        assert_eq!(
            e.problems[0].message,
            "duplicate server name \"a\": already defined (line 4)"
        );
        assert_eq!(e.problems[0].line, Some(7));
        assert_eq!(e.problems[1].field, "server \"b\".address");
        assert_eq!(
            e.problems[1].message,
            "address 198.18.2.1 is already the address of server \"a\" (line 5)"
        );
        assert_eq!(e.problems[1].line, Some(11));
    }

    #[test]
    fn primary_listed_twice_is_refused() {
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}",
            resource(
                "web",
                "198.18.100.1",
                "tcp",
                "ports = [80]\n",
                "[\"p1\", \"b1\", \"p1\"]"
            )
        ));
        let p = single(
            &text,
            "resource \"web\".servers[2]",
            "server \"p1\" is listed twice: servers[0] (the primary) and servers[2]; a server may appear once",
            "servers = [",
        );
        assert_eq!(
            p.column,
            Some(line_col(&text, text.rfind("\"p1\"").unwrap()).1)
        );
    }

    #[test]
    fn address_family_must_match_the_vip() {
        let text = with_gateway(&format!(
            "{TWO_SERVERS}[[server]]\nname = \"v6\"\naddress = \"2001:2::10\"\n{}",
            resource(
                "web",
                "198.18.100.1",
                "tcp",
                "ports = [80]\n",
                "[\"p1\", \"v6\"]"
            )
        ));
        single(
            &text,
            "resource \"web\".servers[1]",
            "server \"v6\" has an IPv6 address (2001:2::10) but the VIP 198.18.100.1 is IPv4",
            "servers = [",
        );
    }

    #[test]
    fn timeout_longer_than_interval_is_refused() {
        let text = with_gateway(
            "[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [\n  { type = \"tcp\", port = 80, interval = \"100ms\", timeout = \"200ms\" },\n]\n",
        );
        single(
            &text,
            "server \"a\".checks[0].timeout",
            "timeout 200ms is longer than the interval 100ms: a check must finish before the next one starts",
            "{ type",
        );
        // An interval shorter than the default timeout is caught too, on `interval`.
        single(
            &with_gateway("[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\nchecks = [{ type = \"icmp\", interval = \"20ms\" }]\n"),
            "server \"a\".checks[0].interval",
            "timeout 50ms is longer than the interval 20ms",
            "checks",
        );
        // In [check_defaults]: reported once, not again for each check that inherits it.
        let text = with_gateway(
            "[check_defaults]\ninterval = \"1s\"\ntimeout = \"2s\"\n[[server]]\nname = \"a\"\naddress = \"198.18.2.1\"\n[[server]]\nname = \"b\"\naddress = \"198.18.2.2\"\nchecks = [{ type = \"icmp\" }]\n",
        );
        single(
            &text,
            "check_defaults.timeout",
            "timeout 2s is longer than the interval 1s",
            "timeout",
        );
    }

    #[test]
    fn check_values_are_validated() {
        let text = with_gateway(
            r#"[[server]]
name = "a"
address = "198.18.2.1"
checks = [
  { type = "tcp", port = 0 },
  { type = "icmp", interval = "2ms", timeout = "1ms" },
  { type = "icmp", rise = 0, fall = -1 },
  { type = "http", port = 80, path = "health" },
  { type = "http", port = 80, expect_status = 600 },
  { type = "udp", port = 53, send = "" },
  { type = "ftp", port = 21 },
  { port = 21 },
  { type = "icmp", port = 7 },
]
"#,
        );
        let e = err(&text);
        let got = e
            .problems
            .iter()
            .map(|p| (p.line.unwrap() - 7, p.field.as_str(), p.message.as_str()))
            .collect::<Vec<_>>();
        let f = |i: usize, name: &str| format!("server \"a\".checks[{i}].{name}");
        let want = [
            (
                0,
                f(0, "port"),
                "invalid port 0: a port is between 1 and 65535".to_owned(),
            ),
            (
                1,
                f(1, "interval"),
                "interval 2ms is too short: at least 5ms".into(),
            ),
            (2, f(2, "rise"), "must be at least 1, got 0".into()),
            (2, f(2, "fall"), "must be at least 1, got -1".into()),
            (3, f(3, "path"), "\"health\" must start with '/'".into()),
            (
                4,
                f(4, "expect_status"),
                "must be between 100 and 599, got 600".into(),
            ),
            (
                5,
                f(5, "send"),
                "must not be empty (omit it for the default)".into(),
            ),
            (
                6,
                f(6, "type"),
                "unknown value \"ftp\", expected one of \"tcp\", \"http\", \"udp\", \"icmp\""
                    .into(),
            ),
            (
                7,
                f(7, "type"),
                "missing field `type` in server \"a\".checks[7]".into(),
            ),
            (
                8,
                f(8, "port"),
                "`port` is not a field of an icmp check (only of tcp, http and udp checks)".into(),
            ),
        ];
        assert_eq!(got.len(), want.len(), "{e}");
        for (g, w) in got.iter().zip(want.iter()) {
            assert_eq!((g.0, g.1, g.2), (w.0, w.1.as_str(), w.2.as_str()), "{e}");
        }
    }

    #[test]
    fn bad_duration_names_the_field() {
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}drain = \"30 parsecs\"\n",
            resource("web", "198.18.100.1", "tcp", "ports = [80]\n", "[\"p1\"]")
        ));
        single(
            &text,
            "resource \"web\".drain",
            "invalid duration \"30 parsecs\": unknown time unit \"parsecs\"",
            "drain",
        );
        single(
            &with_gateway("[dataplane]\nudp_idle = 60\n"),
            "dataplane.udp_idle",
            "expected a duration string such as \"50ms\", \"2s\" or \"1m\", found an integer (60)",
            "udp_idle",
        );
        single(
            &with_gateway("[dataplane]\ntcp_idle = \"0s\"\n"),
            "dataplane.tcp_idle",
            "must be longer than 0",
            "tcp_idle",
        );
    }

    #[test]
    fn etcd_backend_settings_and_errors() {
        let c = ok(&with_gateway(
            "[directory]\nbackend = \"etcd\"\nendpoints = [\"http://198.18.200.1:2379\", \"http://etcd-2:2379\"]\nprefix = \"/ftn/lab/\"\nlease_ttl = \"5s\"\nrequest_timeout = \"300ms\"\nuser = \"ftn\"\npassword = \"pw\"\n",
        ));
        let DirectoryConfig::Etcd(e) = &c.directory else {
            panic!("expected the etcd backend, got {:?}", c.directory)
        };
        assert_eq!(
            e.endpoints,
            ["http://198.18.200.1:2379", "http://etcd-2:2379"]
        );
        assert_eq!(e.prefix, "/ftn/lab");
        assert_eq!(e.lease_ttl, Duration::from_secs(5));
        assert_eq!(e.request_timeout, Duration::from_millis(300));
        assert_eq!(e.dial_timeout, Duration::from_secs(2));
        assert_eq!(
            (e.user.as_deref(), e.password.as_deref()),
            (Some("ftn"), Some("pw"))
        );
        // The password is never shown.
        let shown = serde_json::to_string(&c).unwrap();
        assert!(!shown.contains("\"pw\""), "{shown}");
        assert!(shown.contains("\"password_set\":true"), "{shown}");

        single(
            &with_gateway("[directory]\nbackend = \"etcd\"\n"),
            "directory.endpoints",
            "missing field `endpoints` in directory",
            "[directory]",
        );
        single(
            &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"198.18.200.1:2379\"]\n"),
            "directory.endpoints[0]",
            "invalid etcd endpoint \"198.18.200.1:2379\": expected http://HOST:PORT or https://HOST:PORT",
            "\"198.18",
        );
        single(
            &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:0\"]\n"),
            "directory.endpoints[0]",
            "port \"0\" is not 1-65535",
            "\"http",
        );
        single(
            &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nlease_ttl = \"1s\"\n"),
            "directory.lease_ttl",
            "must be whole seconds between 2s and 60s",
            "\"1s\"",
        );
        single(
            &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\npath = \"/var/lib/ftn\"\n"),
            "directory.path",
            "unknown field `path`",
            "path",
        );
        single(
            &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nuser = \"ftn\"\n"),
            "directory.user",
            "`user` needs `password` or `password_file`",
            "\"ftn\"",
        );
        single(
            &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\", \"https://f:2379\"]\n"),
            "directory.endpoints",
            "mixes http:// and https:// endpoints",
            "[\"http",
        );
        single(
            &with_gateway("[directory]\nbackend = \"etcd\"\nendpoints = [\"http://e:2379\"]\nprefix = \"ftn\"\n"),
            "directory.prefix",
            "invalid key prefix \"ftn\"",
            "\"ftn\"",
        );
        single(
            &with_gateway("[directory]\nbackend = \"zookeeper\"\n"),
            "directory.backend",
            "unknown value \"zookeeper\", expected one of \"embedded\", \"etcd\"",
            "backend",
        );
    }

    #[test]
    fn api_token_inline_or_from_file() {
        single(
            &with_gateway("[api]\ntoken = \"abc\"\ntoken_file = \"/etc/ftn/token\"\n"),
            "api.token_file",
            "`token` and `token_file` are both set: set only one of them",
            "token_file",
        );
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("ftn.toml");
        std::fs::write(dir.path().join("token"), "  t0ken-123\n").unwrap();
        // Relative to the file's directory.
        let c = parse(&with_gateway("[api]\ntoken_file = \"token\"\n"), &cfg).unwrap();
        assert_eq!(c.api.token.as_deref(), Some("t0ken-123"));
        assert!(
            !format!("{c:?}").contains("t0ken-123"),
            "Debug must not show the token"
        );

        std::fs::write(dir.path().join("empty"), "\n \n").unwrap();
        let e = parse(&with_gateway("[api]\ntoken_file = \"empty\"\n"), &cfg).unwrap_err();
        assert_eq!(e.problems.len(), 1);
        assert_eq!(
            e.problems[0].message,
            format!(
                "token file {}: the token is empty",
                dir.path().join("empty").display()
            )
        );
        assert_eq!(e.problems[0].line, Some(4));
        let e = parse(&with_gateway("[api]\ntoken_file = \"missing\"\n"), &cfg).unwrap_err();
        assert!(
            e.problems[0].message.starts_with(&format!(
                "cannot read the token file {}: ",
                dir.path().join("missing").display()
            )),
            "{e}"
        );
        single(
            &with_gateway("[api]\ntoken = \"a b\"\n"),
            "api.token",
            "the token must not contain whitespace or control characters",
            "token",
        );
        single(
            &with_gateway("[api]\nlisten = \"localhost\"\n"),
            "api.listen",
            "invalid listen address \"localhost\": expected IP:PORT",
            "listen",
        );
    }

    #[test]
    fn syntax_error_has_a_line() {
        let text = "[gateway]\ninterfaces = [\"eth0\"\n\n[api]\n";
        let e = err(text);
        assert_eq!(e.problems.len(), 1);
        assert_eq!(e.problems[0].field, "");
        assert!(e.problems[0].line.is_some(), "{e}");
        assert!(!e.problems[0].message.contains('\n'));
        let e =
            err("[gateway]\ninterfaces = [\"eth0\"]\nxdp_mode = \"auto\"\nxdp_mode = \"native\"\n");
        assert_eq!(e.problems[0].line, Some(4), "{e}");
        assert!(
            e.problems[0].message.contains("duplicate key `xdp_mode`"),
            "{e}"
        );
        assert!(e.to_string().starts_with("ftn.toml:4:"), "{e}");
    }

    #[test]
    fn several_problems_are_all_reported_in_file_order() {
        let text = r#"[gateway]
interfaces = ["eth0", "eth0", "a/b", "a-very-long-interface-name"]
xdp_mode = "fast"

[[server]]
name = "-bad"
address = "198.18.2.1"

[[server]]
name = "p1"
address = "2001:2::1"

[[resource]]
name = "web"
vip = "198.18.100.1"
protocol = "tcp"
ports = [80, 80]
servers = []
hold = "10s"
colour = "blue"

[[resource]]
name = "ping"
vip = "198.18.100.1"
protocol = "icmp"
ports = [1]
servers = ["p1", "nope"]
failback = "manual"
hold = "5s"
"#;
        let e = err(text);
        let got = e
            .problems
            .iter()
            .map(|p| (p.line.unwrap(), p.field.as_str()))
            .collect::<Vec<_>>();
        assert_eq!(
            got,
            [
                (2, "gateway.interfaces[1]"),
                (2, "gateway.interfaces[2]"),
                (2, "gateway.interfaces[3]"),
                (3, "gateway.xdp_mode"),
                (6, "server \"-bad\".name"),
                (17, "resource \"web\".ports[1]"),
                (18, "resource \"web\".servers"),
                (20, "resource \"web\".colour"),
                (26, "resource \"ping\".ports"),
                (27, "resource \"ping\".servers[0]"),
                (27, "resource \"ping\".servers[1]"),
                (29, "resource \"ping\".hold"),
            ],
            "{e}"
        );
        let lines = e.to_string().lines().map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(lines.len(), 12);
        assert_eq!(
            lines[0],
            "ftn.toml:2:23: gateway.interfaces[1]: interface \"eth0\" is listed twice"
        );
        assert_eq!(
            lines[4],
            "ftn.toml:6:8: server \"-bad\".name: invalid name \"-bad\": a name starts with a letter or a digit"
        );
        assert_eq!(
            lines[11],
            "ftn.toml:29:8: resource \"ping\".hold: `hold` is only allowed with failback = \"hold\" (failback is \"manual\")"
        );
        assert!(
            lines[9].contains("has an IPv6 address (2001:2::1) but the VIP 198.18.100.1 is IPv4")
        );
        assert!(
            lines[10].contains("unknown server \"nope\" (known: p1)"),
            "{}",
            lines[10]
        );
    }

    #[test]
    fn resource_rules() {
        let base = |extra: &str| {
            with_gateway(&format!(
                "{TWO_SERVERS}[[resource]]\nname = \"r\"\nvip = \"198.18.100.1\"\n{extra}"
            ))
        };
        single(
            &base("protocol = \"tcp\"\nservers = [\"p1\"]\n"),
            "resource \"r\".ports",
            "missing field `ports`: a tcp resource needs at least one port",
            "[[resource]]",
        );
        single(
            &base("protocol = \"udp\"\nports = []\nservers = [\"p1\"]\n"),
            "resource \"r\".ports",
            "must list at least one port",
            "ports",
        );
        single(
            &base("protocol = \"icmp\"\nports = [7]\nservers = [\"p1\"]\n"),
            "resource \"r\".ports",
            "an icmp resource has no ports",
            "ports",
        );
        single(
            &base("protocol = \"tcp\"\nports = [65536]\nservers = [\"p1\"]\n"),
            "resource \"r\".ports[0]",
            "invalid port 65536",
            "ports",
        );
        single(
            &base("protocol = \"tcp\"\nports = [80]\nservers = []\n"),
            "resource \"r\".servers",
            "must list at least one server (the primary first, then the backups)",
            "servers",
        );
        single(
            &base("protocol = \"sctp\"\nports = [80]\nservers = [\"p1\"]\n"),
            "resource \"r\".protocol",
            "unknown value \"sctp\", expected one of \"tcp\", \"udp\", \"icmp\"",
            "protocol",
        );
        single(
            &base("protocol = \"tcp\"\nports = [80]\nservers = [\"p1\"]\nfailback = \"immediate\"\nhold = \"5s\"\n"),
            "resource \"r\".hold",
            "`hold` is only allowed with failback = \"hold\" (failback is \"immediate\")",
            "hold =",
        );
        // `hold` without `failback`: failback defaults to hold, so it is accepted.
        let c = ok(&base(
            "protocol = \"tcp\"\nports = [80]\nservers = [\"p1\"]\nhold = \"3s\"\n",
        ));
        assert_eq!(
            c.resources[0].failback,
            Failback::Hold(Duration::from_secs(3))
        );
        // Same name rules as servers, and names are unique.
        single(
            &with_gateway(&format!(
                "{TWO_SERVERS}{}",
                resource("a b", "198.18.100.1", "icmp", "", "[\"p1\"]")
            )),
            "resource \"a b\".name",
            "invalid name \"a b\": ' ' is not allowed",
            "name = \"a b\"",
        );
        let text = with_gateway(&format!(
            "{TWO_SERVERS}{}{}",
            resource("r", "198.18.100.1", "icmp", "", "[\"p1\"]"),
            resource("r", "198.18.100.2", "icmp", "", "[\"p1\"]")
        ));
        let e = err(&text);
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(
            e.problems[0].message,
            format!(
                "duplicate resource name \"r\": already defined (line {})",
                line_of(&text, "name = \"r\"")
            )
        );
        // Name too long.
        let long = "x".repeat(64);
        single(
            &with_gateway(&format!(
                "[[server]]\nname = \"{long}\"\naddress = \"198.18.2.1\"\n"
            )),
            &format!("server \"{long}\".name"),
            "is too long (64 characters, at most 63)",
            "name",
        );
    }

    #[test]
    fn gateway_rules() {
        single(
            "[gateway]\ninterfaces = []\n",
            "gateway.interfaces",
            "must list at least one interface",
            "interfaces",
        );
        single(
            "[gateway]\ninterfaces = [\"eth0:1\"]\n",
            "gateway.interfaces[0]",
            "invalid interface name \"eth0:1\": '/', ':', whitespace and control characters are not allowed",
            "interfaces",
        );
        single(
            "[gateway]\ninterfaces = [\"eth0\"]\npin_dir = \"bpf/ftn\"\n",
            "gateway.pin_dir",
            "\"bpf/ftn\" is not an absolute path",
            "pin_dir",
        );
        let e = err("[api]\nlisten = \"127.0.0.1:7480\"\n");
        assert_eq!(
            e.to_string(),
            "ftn.toml: gateway: missing table [gateway] (it needs at least `interfaces`)"
        );
        single(
            "[gateway]\nxdp_mode = \"native\"\n",
            "gateway.interfaces",
            "missing field `interfaces` in gateway",
            "[gateway]",
        );
    }

    #[test]
    fn limits_are_enforced() {
        let n = MAX_SERVERS as usize + 1;
        let mut text = with_gateway("");
        for i in 0..n {
            text.push_str(&format!(
                "[[server]]\nname = \"s{i}\"\naddress = \"198.18.{}.{}\"\nchecks = [{{ type = \"icmp\" }}]\n",
                i / 250,
                i % 250 + 1
            ));
        }
        let e = err(&text);
        assert_eq!(e.problems.len(), 1, "{}", e.problems[0].message);
        assert_eq!(e.problems[0].field, format!("server \"s{}\"", n - 1));
        assert_eq!(
            e.problems[0].message,
            format!("too many servers: {n} (the dataplane holds at most {MAX_SERVERS})")
        );
    }

    #[test]
    fn display_and_load_name_the_file() {
        let e = ConfigError {
            path: "/etc/ftn/ftn.toml".into(),
            problems: vec![
                Problem {
                    line: Some(23),
                    column: Some(11),
                    field: "resource \"web\".servers[2]".into(),
                    message: "unknown server \"p9\" (known: p1, b1)".into(),
                },
                Problem {
                    line: None,
                    column: None,
                    field: "gateway".into(),
                    message: "missing".into(),
                },
            ],
        };
        assert_eq!(
            e.to_string(),
            "/etc/ftn/ftn.toml:23:11: resource \"web\".servers[2]: unknown server \"p9\" (known: p1, b1)\n/etc/ftn/ftn.toml: gateway: missing"
        );
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let e = load(&missing).unwrap_err();
        assert_eq!(e.path, missing);
        assert!(
            e.to_string().starts_with(&format!(
                "{}: cannot read the configuration file: ",
                missing.display()
            )),
            "{e}"
        );
        let file = dir.path().join("ftn.toml");
        std::fs::write(&file, FULL).unwrap();
        let c = load(&file).unwrap();
        assert_eq!(c.source, file);
        assert_eq!(c.resources.len(), 4);
    }

    #[test]
    fn running_config_serializes_without_the_token() {
        let c = ok(FULL);
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["api"]["token_set"], true);
        assert!(!v.to_string().contains("s3cret"));
        assert_eq!(v["api"]["listen"], "[::1]:9000");
        assert_eq!(v["gateway"]["xdp_mode"], "native");
        assert_eq!(v["directory"]["backend"], "embedded");
        assert_eq!(v["dataplane"]["tcp_idle"], "10m");
        assert_eq!(v["dataplane"]["tcp_closing_idle"], "10s");
        let p1 = &v["servers"][0];
        assert_eq!(p1["checks"][0]["type"], "tcp");
        assert_eq!(p1["checks"][0]["interval"], "100ms");
        assert_eq!(p1["checks"][1]["path"], "/health");
        assert_eq!(v["servers"][2]["checks"][0]["send"], "hello");
        let web = &v["resources"][0];
        assert_eq!(web["failback"]["policy"], "immediate");
        assert_eq!(web["drain"], "5s");
        assert_eq!(web["on_no_server"], "reject");
        assert_eq!(v["resources"][2]["failback"]["hold"], "1m");
    }

    #[test]
    fn dist_etcd_example_parses() {
        let text = include_str!("../../dist/ftn-etcd.toml");
        let dir = tempfile::tempdir().unwrap();
        let mut text = text.to_string();
        for f in [
            "token",
            "etcd-ca.pem",
            "etcd-client.pem",
            "etcd-client-key.pem",
        ] {
            let p = dir.path().join(f);
            std::fs::write(&p, "x\n").unwrap();
            let from = format!("/etc/ftn/{f}\"");
            assert!(text.contains(&from), "{from}");
            text = text.replace(&from, &format!("{}\"", p.display()));
        }
        let c = ok(&text);
        let DirectoryConfig::Etcd(e) = &c.directory else {
            panic!("the etcd example must use the etcd backend")
        };
        assert_eq!(e.endpoints.len(), 3);
        assert_eq!(c.gateway.name, "gw1");
        assert!(e.ca_file.is_some() && e.cert_file.is_some() && e.key_file.is_some());
    }

    #[test]
    fn dist_example_parses() {
        let text = include_str!("../../dist/ftn.toml");
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "example-token\n").unwrap();
        assert!(text.contains("token_file = \"/etc/ftn/token\""));
        let text = text.replace("/etc/ftn/token", token.to_str().unwrap());
        let c = ok(&text);
        assert_eq!(c.api.token.as_deref(), Some("example-token"));
        assert!(!c.servers.is_empty() && !c.resources.is_empty());
        // Example addresses are documentation/benchmark ranges only.
        for ip in c
            .servers
            .iter()
            .map(|s| s.address)
            .chain(c.resources.iter().map(|r| r.vip))
        {
            let ok = match ip {
                IpAddr::V4(a) => a.octets()[0] == 198 && (a.octets()[1] & 0xfe) == 18,
                IpAddr::V6(a) => a.segments()[..3] == [0x2001, 2, 0],
            };
            assert!(ok, "{ip} is outside 198.18.0.0/15 and 2001:2::/48");
        }
    }
}
