//! The admin API's wire types: what `/v1/status` answers and what the changes take. A leaf:
//! the server, the CLI and the controller use them; they name nothing above them.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::model::Health;

#[derive(Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

#[derive(Serialize, Deserialize)]
pub struct Done {
    pub result: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverBody {
    pub resource: String,
    pub to: String,
}

#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerBody {
    pub server: String,
}

/// A resource as `ftn status` shows it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ResourceStatus {
    pub name: String,
    pub id: u32,
    pub vip: String,
    pub protocol: String,
    pub ports: Vec<u16>,
    pub servers: Vec<String>,
    pub current: Option<String>,
    pub pinned: Option<String>,
    /// on-primary | failed-over | no-server | pinned
    pub state: String,
    pub since_ms: u64,
    pub reason: String,
    pub generation: u32,
    pub failback: String,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CheckStatus {
    pub check: String,
    pub up: bool,
    pub last_latency_us: u64,
    pub probes_ok: u64,
    pub probes_failed: u64,
    pub last_failure: Option<String>,
    /// Probes that could not run for a local reason (not counted as failures).
    #[serde(default)]
    pub local_errors: u64,
    /// Set while the check cannot run (the latest probes hit a local error): the reason.
    #[serde(default)]
    pub unable_to_run: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ServerStatus {
    pub name: String,
    pub id: u32,
    pub address: String,
    pub health: Health,
    pub drained: bool,
    pub since_ms: u64,
    pub evidence: String,
    pub checks: Vec<CheckStatus>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Status {
    pub gateway: String,
    pub config: String,
    pub directory: String,
    pub revision: u64,
    pub interfaces: Vec<String>,
    pub adopted: bool,
    pub resources: Vec<ResourceStatus>,
    pub servers: Vec<ServerStatus>,
    pub failovers: HashMap<String, u64>,
    pub commit_errors: u64,
    pub dataplane_errors: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// Passive health reports from the dataplane, by server, since the controller started.
    pub passive_signals: HashMap<String, u64>,
    /// The shared directory's gateways (None with the embedded directory).
    #[serde(default)]
    pub cluster: Option<ClusterStatus>,
    /// Faults of this gateway itself that the operator must see (checks that cannot run, a
    /// dataplane that loses the packets it forwards, a missing interface), newest state only.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// The configured interfaces as the dataplane last followed them (ifindex, attached).
    #[serde(default)]
    pub interface_states: Vec<crate::dataplane::InterfaceState>,
    /// See [`dataplane_fault`].
    #[serde(default)]
    pub dataplane_fault_suspected: bool,
    /// Decisions timed from their verdict (or operator request) to the maps, and the last one's
    /// time in µs (`ftn_verdict_to_maps_seconds` in /metrics).
    #[serde(default)]
    pub verdicts_applied: u64,
    #[serde(default)]
    pub last_verdict_to_maps_us: Option<u64>,
    /// The VIP routes for the routing daemon (`[announce]`; None without it).
    #[serde(default)]
    pub announce: Option<crate::announce::AnnounceStatus>,
}

/// `ftn status`: the gateways sharing the directory, as this gateway sees them.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub gateway: String,
    /// "leader" or "follower".
    pub role: String,
    pub leader: Option<String>,
    /// "connected" or "unreachable".
    pub etcd: String,
    pub etcd_error: Option<String>,
    /// Since when (unix ms) etcd is as `etcd` says.
    pub etcd_since_ms: u64,
    /// The directory revision this gateway's maps hold.
    pub applied_revision: u64,
    /// Times this gateway became the leader since it started.
    pub leaderships: u64,
    pub gateways: Vec<GatewayStatus>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct GatewayStatus {
    pub name: String,
    pub live: bool,
    pub applied_revision: u64,
    pub applied_at_ms: u64,
    /// server -> "up" | "down"
    pub observations: BTreeMap<String, String>,
}
