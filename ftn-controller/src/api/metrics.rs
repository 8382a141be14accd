//! `/metrics`: the controller's status and the dataplane's counters in the OpenMetrics text
//! format, through `prometheus-client` (the Prometheus project's Rust client: names, types,
//! escaping and the exposition are its own).
//!
//! The values live elsewhere (the engine's status, the map-sync task's counters, the
//! dataplane's per-CPU maps), so each scrape builds a registry from one consistent snapshot
//! of them and encodes it. A counter is registered without its `_total` suffix: the encoder
//! adds it, as OpenMetrics requires.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::TypedMetric;
use prometheus_client::registry::{Metric, Registry};

use super::server::ListenerStats;
use crate::dataplane::sync::{Counters, SyncStats, VerdictToMaps, VERDICT_TO_MAPS_BOUNDS_US};
use crate::model::Health;
use crate::wire::Status;

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

/// A registry being filled from a snapshot.
struct Exposition(Registry);

impl Exposition {
    /// A family of `M` (one sample per label set, each set by `set`); a counter's `name` ends
    /// with `_total`, which the encoder writes back.
    fn family<M, V>(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, V)>,
        set: impl Fn(&M, V),
    ) where
        M: Metric + TypedMetric + Default,
    {
        let family = Family::<Labels, M>::default();
        for (labels, v) in samples {
            set(&family.get_or_create(&labels), v);
        }
        self.0.register(base_name(name), help_text(help), family);
    }

    fn gauge(&mut self, name: &str, help: &str, samples: impl IntoIterator<Item = (Labels, i64)>) {
        self.family(name, help, samples, |g: &Gauge<i64, AtomicI64>, v| {
            g.set(v);
        });
    }

    fn gauge_f64(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, f64)>,
    ) {
        self.family(name, help, samples, |g: &Gauge<f64, AtomicU64>, v| {
            g.set(v);
        });
    }

    fn counter(
        &mut self,
        name: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels, u64)>,
    ) {
        self.family(name, help, samples, |c: &Counter<u64, AtomicU64>, v| {
            c.inc_by(v);
        });
    }

    /// A gauge without labels.
    fn gauge1(&mut self, name: &str, help: &str, v: i64) {
        let g = Gauge::<i64, AtomicI64>::default();
        g.set(v);
        self.0.register(name, help_text(help), g);
    }

    /// A counter without labels; `name` ends with `_total`.
    fn counter1(&mut self, name: &str, help: &str, v: u64) {
        let c = Counter::<u64, AtomicU64>::default();
        c.inc_by(v);
        self.0.register(base_name(name), help_text(help), c);
    }
}

/// A counter is registered without `_total`: the encoder appends it.
fn base_name(name: &str) -> &str {
    name.strip_suffix("_total").unwrap_or(name)
}

/// The registry ends every help text with a period.
fn help_text(help: &str) -> &str {
    help.strip_suffix('.').unwrap_or(help)
}

fn one(v: bool) -> i64 {
    i64::from(v)
}

fn label(key: &'static str, value: &str) -> Labels {
    vec![(key, value.to_string())]
}

/// A histogram whose buckets are counted elsewhere (the map-sync thread's atomics).
#[derive(Debug)]
struct ConstHistogram {
    sum: f64,
    count: u64,
    /// (upper bound, count in this bucket alone); the encoder makes them cumulative.
    buckets: Vec<(f64, u64)>,
}

impl TypedMetric for ConstHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ConstHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_histogram::<NoLabelSet>(self.sum, self.count, &self.buckets, None)
    }
    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

fn verdict_histogram(x: &mut Exposition, v: &VerdictToMaps) {
    let buckets: Vec<(f64, u64)> = VERDICT_TO_MAPS_BOUNDS_US
        .iter()
        .map(|b| *b as f64 / 1e6)
        .chain([f64::INFINITY])
        .zip(v.buckets.iter().map(|n| n.load(Relaxed)))
        .collect();
    // The count is the buckets' sum, read once, so that the two always agree.
    let count = buckets.iter().map(|(_, n)| n).sum();
    x.0.register(
        "ftn_verdict_to_maps_seconds",
        "From a verdict of a server's checks (or the API's receipt of an operator action) to the maps holding what it decided: plan, durable directory commit, map-sync queue and map writes",
        ConstHistogram {
            sum: v.sum_us.load(Relaxed) as f64 / 1e6,
            count,
            buckets,
        },
    );
}

/// The exposition of the controller's status `st`, the dataplane's counters `c` (None when its
/// maps could not be read), the map-sync task's and the API listener's counters.
pub fn render(st: &Status, c: Option<&Counters>, sync: &SyncStats, api: &ListenerStats) -> String {
    let mut x = Exposition(Registry::default());
    status_metrics(&mut x, st);
    checks_metrics(&mut x, st);
    x.gauge1(
        "ftn_dataplane_fault_suspected",
        "1 while new connections to every server in use go unanswered although their checks pass: this gateway loses what it forwards (see the status warning)",
        one(st.dataplane_fault_suspected),
    );
    x.gauge(
        "ftn_interface_attached",
        "1 while the XDP program is attached to the interface that has this configured name",
        st.interface_states
            .iter()
            .map(|i| (label("interface", &i.name), one(i.attached))),
    );
    x.gauge1(
        "ftn_api_connections_open",
        "Admin API connections open now",
        api.open.load(Relaxed) as i64,
    );
    x.counter(
        "ftn_api_connections_total",
        "Admin API connections, by outcome: served; refused (closed at once: too many from that client); capacity (the listener paused at api.max_connections); accept_error",
        [
            ("served", &api.accepted),
            ("refused", &api.refused_per_client),
            ("capacity", &api.at_capacity),
            ("accept_error", &api.accept_errors),
        ]
        .map(|(outcome, n)| (label("outcome", outcome), n.load(Relaxed))),
    );
    x.counter1(
        "ftn_map_sync_batches_total",
        "Batches of map writes applied by the map-sync task",
        sync.batches.load(Relaxed),
    );
    x.counter1(
        "ftn_map_sync_writes_total",
        "Map entries written by the map-sync task",
        sync.writes.load(Relaxed),
    );
    x.counter1(
        "ftn_map_sync_errors_total",
        "Map writes that failed (followed by a full resync)",
        sync.errors.load(Relaxed),
    );
    verdict_histogram(&mut x, &sync.verdict_to_maps);
    x.gauge1(
        "ftn_dataplane_up",
        "1 when the dataplane's maps could be read (it says nothing about the XDP attachment)",
        one(c.is_some()),
    );
    if let Some(c) = c {
        dataplane_metrics(&mut x, c);
    }
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = encode(&mut out, &x.0);
    out
}

/// Resources, servers, the directory, reloads and the cluster.
fn status_metrics(x: &mut Exposition, st: &Status) {
    x.gauge(
        "ftn_resource_server",
        "1 for the server a resource's new flows go to now",
        st.resources.iter().flat_map(|r| {
            r.servers.iter().map(move |s| {
                (
                    vec![("resource", r.name.clone()), ("server", s.clone())],
                    one(r.current.as_deref() == Some(s)),
                )
            })
        }),
    );
    x.gauge(
        "ftn_resource_on_primary",
        "1 when the resource is served by the first server of its list",
        st.resources.iter().map(|r| {
            (
                label("resource", &r.name),
                one(r.current.is_some() && r.current.as_ref() == r.servers.first()),
            )
        }),
    );
    x.gauge(
        "ftn_resource_no_server",
        "1 when no server of the resource is up",
        st.resources
            .iter()
            .map(|r| (label("resource", &r.name), one(r.current.is_none()))),
    );
    x.counter(
        "ftn_resource_moves_total",
        "Changes of a resource's current server since the controller started (failover, failback, switchover)",
        st.resources.iter().map(|r| {
            (
                label("resource", &r.name),
                st.failovers.get(&r.name).copied().unwrap_or(0),
            )
        }),
    );
    x.gauge(
        "ftn_server_up",
        "1 when the server's checks say it is up",
        st.servers
            .iter()
            .map(|s| (label("server", &s.name), one(s.health == Health::Up))),
    );
    x.gauge(
        "ftn_server_drained",
        "1 while the server is drained for maintenance",
        st.servers
            .iter()
            .map(|s| (label("server", &s.name), one(s.drained))),
    );
    x.counter(
        "ftn_server_passive_reports_total",
        "Passive health reports from the dataplane (SYNs unanswered or refused), each followed by immediate checks",
        st.servers.iter().map(|s| {
            (
                label("server", &s.name),
                st.passive_signals.get(&s.name).copied().unwrap_or(0),
            )
        }),
    );
    x.gauge(
        "ftn_directory_revision",
        "Revision of the directory the controller decided from",
        [(label("backend", &st.directory), st.revision as i64)],
    );
    x.counter1(
        "ftn_directory_commit_errors_total",
        "Directory commits that failed (nothing was applied)",
        st.commit_errors,
    );
    x.counter(
        "ftn_config_reloads_total",
        "Configuration reloads, by result",
        [
            (label("result", "ok"), st.reloads_ok),
            (label("result", "refused"), st.reloads_failed),
        ],
    );
    if let Some(a) = &st.announce {
        announce_metrics(x, a);
    }
    if let Some(c) = &st.cluster {
        x.gauge1(
            "ftn_cluster_leader",
            "1 while this gateway leads the shared directory (only the leader decides)",
            one(c.role == "leader"),
        );
        x.gauge1(
            "ftn_cluster_has_leader",
            "1 when this gateway knows a leader of the shared directory",
            one(c.leader.is_some()),
        );
        x.gauge1(
            "ftn_etcd_connected",
            "1 while etcd answers this gateway; 0: the dataplane keeps its last state and this gateway decides nothing",
            one(c.etcd == "connected"),
        );
        x.gauge1(
            "ftn_cluster_gateways_live",
            "Gateways whose lease is live, as this gateway sees them",
            c.gateways.iter().filter(|g| g.live).count() as i64,
        );
        x.gauge(
            "ftn_cluster_applied_revision",
            "Directory revision each gateway's maps hold, as published in etcd",
            c.gateways
                .iter()
                .map(|g| (label("gateway", &g.name), g.applied_revision as i64)),
        );
        x.counter1(
            "ftn_cluster_leaderships_total",
            "Times this gateway became the leader since it started",
            c.leaderships,
        );
    }
}

/// The VIP routes for the routing daemon.
fn announce_metrics(x: &mut Exposition, a: &crate::announce::AnnounceStatus) {
    x.gauge(
        "ftn_vip_announced",
        "1 while the VIP's route is in the announce table (the routing daemon exports it)",
        a.vips
            .iter()
            .map(|v| (label("vip", &v.vip.to_string()), one(v.announced))),
    );
    x.gauge(
        "ftn_return_route_announced",
        "1 while the return route (announce.return_routes) is in the announce table",
        a.return_routes
            .iter()
            .map(|(p, on)| (label("prefix", &p.to_string()), one(*on))),
    );
    x.gauge1(
        "ftn_announce_withheld",
        "1 while this gateway announces nothing (starting, an interface without XDP, etcd lost past etcd_grace)",
        one(a.withheld.is_some()),
    );
    x.counter(
        "ftn_announce_routes_total",
        "VIP routes added to and removed from the announce table since start",
        [
            (label("change", "added"), a.routes_added),
            (label("change", "removed"), a.routes_removed),
        ],
    );
    x.counter1(
        "ftn_announce_errors_total",
        "Failed reads and writes of the announce table (retried every 500 ms)",
        a.errors,
    );
}

/// The health checks.
fn checks_metrics(x: &mut Exposition, st: &Status) {
    let checks = || {
        st.servers.iter().flat_map(|s| {
            s.checks.iter().map(move |ch| {
                (
                    vec![("server", s.name.clone()), ("check", ch.check.clone())],
                    ch,
                )
            })
        })
    };
    x.gauge_f64(
        "ftn_check_latency_seconds",
        "Latency of the last successful probe of a check",
        checks().map(|(l, ch)| (l, ch.last_latency_us as f64 / 1e6)),
    );
    x.counter(
        "ftn_check_probes_total",
        "Probes run by a check, by result (local_error: it could not run on this gateway, not counted against the server)",
        checks().flat_map(|(l, ch)| {
            [
                ("ok", ch.probes_ok),
                ("failed", ch.probes_failed),
                ("local_error", ch.local_errors),
            ]
            .map(|(result, n)| {
                let mut l = l.clone();
                l.push(("result", result.to_string()));
                (l, n)
            })
        }),
    );
    x.gauge(
        "ftn_check_unable_to_run",
        "1 while a check cannot run for a local reason on this gateway (no file descriptor, a refused socket): its server's verdict is frozen",
        checks().map(|(l, ch)| (l, one(ch.unable_to_run.is_some()))),
    );
}

/// The XDP program's counters.
fn dataplane_metrics(x: &mut Exposition, c: &Counters) {
    type ResField = (
        &'static str,
        &'static str,
        fn(&ftn_common::ResourceStats) -> u64,
    );
    let res_fields: [ResField; 8] = [
        (
            "ftn_resource_packets_total",
            "Client to server packets forwarded",
            |s| s.packets,
        ),
        (
            "ftn_resource_bytes_total",
            "Client to server bytes forwarded",
            |s| s.bytes,
        ),
        (
            "ftn_resource_reply_packets_total",
            "Server to client packets translated back",
            |s| s.reply_packets,
        ),
        (
            "ftn_resource_reply_bytes_total",
            "Server to client bytes translated back",
            |s| s.reply_bytes,
        ),
        ("ftn_resource_new_flows_total", "Flows created", |s| {
            s.new_flows
        }),
        (
            "ftn_resource_flows_moved_total",
            "Flows moved because their server was marked down",
            |s| s.flows_moved,
        ),
        (
            "ftn_resource_dropped_no_server_total",
            "Packets dropped: no live server",
            |s| s.drop_no_server,
        ),
        (
            "ftn_resource_rejected_no_server_total",
            "Packets answered with RST/unreachable: no live server",
            |s| s.reject_no_server,
        ),
    ];
    for (name, help, f) in res_fields {
        x.counter(
            name,
            help,
            c.resources
                .iter()
                .map(|(r, s)| (label("resource", r), f(s))),
        );
    }
    type SrvField = (
        &'static str,
        &'static str,
        fn(&ftn_common::ServerStats) -> u64,
    );
    let srv_fields: [SrvField; 5] = [
        (
            "ftn_server_packets_total",
            "Packets forwarded to the server",
            |s| s.packets,
        ),
        (
            "ftn_server_reply_packets_total",
            "Packets from the server translated back",
            |s| s.reply_packets,
        ),
        (
            "ftn_server_new_flows_total",
            "Flows created on the server",
            |s| s.new_flows,
        ),
        (
            "ftn_server_flows_moved_away_total",
            "Flows moved off the server because it was marked down",
            |s| s.flows_moved_away,
        ),
        (
            "ftn_server_icmp_errors_total",
            "ICMP errors about the server's flows translated",
            |s| s.icmp_errors,
        ),
    ];
    for (name, help, f) in srv_fields {
        x.counter(
            name,
            help,
            c.servers.iter().map(|(n, s)| (label("server", n), f(s))),
        );
    }
    x.counter(
        "ftn_dataplane_packets_total",
        "Every packet the XDP program saw, by what it did",
        c.global
            .iter()
            .map(|(k, v)| (label("outcome", k.name()), *v)),
    );
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::wire::{CheckStatus, ResourceStatus, ServerStatus};

    fn status() -> Status {
        let check = CheckStatus {
            check: "tcp:80".into(),
            up: true,
            last_latency_us: 1500,
            probes_ok: 7,
            probes_failed: 2,
            last_failure: None,
            local_errors: 3,
            unable_to_run: Some("creating a socket: Too many open files".into()),
        };
        Status {
            gateway: "gw".into(),
            config: "/etc/ftn/ftn.toml".into(),
            directory: "embedded".into(),
            revision: 12,
            interfaces: vec!["eth0".into()],
            adopted: false,
            resources: vec![ResourceStatus {
                name: "web \"1\"".into(),
                id: 0,
                vip: "198.18.100.1".into(),
                protocol: "tcp".into(),
                ports: vec![80],
                servers: vec!["p1".into(), "b1".into()],
                current: Some("b1".into()),
                pinned: None,
                state: "failed-over".into(),
                since_ms: 0,
                reason: String::new(),
                generation: 2,
                failback: "hold 10s".into(),
            }],
            servers: vec![ServerStatus {
                name: "p1".into(),
                id: 0,
                address: "198.18.2.10".into(),
                health: Health::Down,
                drained: false,
                since_ms: 0,
                evidence: String::new(),
                checks: vec![check],
            }],
            failovers: HashMap::from([("web \"1\"".to_string(), 4)]),
            commit_errors: 0,
            dataplane_errors: 0,
            reloads_ok: 1,
            reloads_failed: 2,
            passive_signals: HashMap::new(),
            cluster: None,
            warnings: Vec::new(),
            interface_states: Vec::new(),
            dataplane_fault_suspected: true,
            verdicts_applied: 0,
            last_verdict_to_maps_us: None,
            announce: None,
        }
    }

    /// The families keep their names, types and labels; label values are escaped; counters end
    /// with `_total`; the exposition ends with `# EOF`.
    #[test]
    fn exposition_names_types_labels_and_escaping() {
        let sync = SyncStats::default();
        sync.verdict_to_maps.record(1_500);
        sync.verdict_to_maps.record(30_000);
        let text = render(&status(), None, &sync, &ListenerStats::default());
        for line in [
            "# TYPE ftn_resource_server gauge",
            "ftn_resource_server{resource=\"web \\\"1\\\"\",server=\"b1\"} 1",
            "ftn_resource_server{resource=\"web \\\"1\\\"\",server=\"p1\"} 0",
            "ftn_resource_on_primary{resource=\"web \\\"1\\\"\"} 0",
            "# TYPE ftn_resource_moves counter",
            "ftn_resource_moves_total{resource=\"web \\\"1\\\"\"} 4",
            "ftn_server_up{server=\"p1\"} 0",
            "ftn_check_latency_seconds{server=\"p1\",check=\"tcp:80\"} 0.0015",
            "ftn_check_probes_total{server=\"p1\",check=\"tcp:80\",result=\"ok\"} 7",
            "ftn_check_probes_total{server=\"p1\",check=\"tcp:80\",result=\"failed\"} 2",
            "ftn_check_probes_total{server=\"p1\",check=\"tcp:80\",result=\"local_error\"} 3",
            "ftn_check_unable_to_run{server=\"p1\",check=\"tcp:80\"} 1",
            "ftn_config_reloads_total{result=\"refused\"} 2",
            "ftn_directory_revision{backend=\"embedded\"} 12",
            "ftn_dataplane_fault_suspected 1",
            "ftn_dataplane_up 0",
            "ftn_api_connections_total{outcome=\"capacity\"} 0",
            "# HELP ftn_server_up 1 when the server's checks say it is up.",
            "# TYPE ftn_verdict_to_maps_seconds histogram",
            "ftn_verdict_to_maps_seconds_count 2",
            "ftn_verdict_to_maps_seconds_sum 0.0315",
            "ftn_verdict_to_maps_seconds_bucket{le=\"0.001\"} 0",
            "ftn_verdict_to_maps_seconds_bucket{le=\"0.002\"} 1",
            "ftn_verdict_to_maps_seconds_bucket{le=\"0.02\"} 1",
            "ftn_verdict_to_maps_seconds_bucket{le=\"0.05\"} 2",
            "ftn_verdict_to_maps_seconds_bucket{le=\"+Inf\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            !text.contains("ftn_cluster_leader"),
            "no cluster: no cluster metrics"
        );
        assert!(!text.contains("_total_total"), "{text}");
        assert!(
            !text.contains(".."),
            "doubled period in a help text:\n{text}"
        );
    }
}
