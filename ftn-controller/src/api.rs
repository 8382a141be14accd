//! The admin API (HTTP/1.1, JSON), Prometheus `/metrics`, and the small client the CLI uses.
//!
//! Reads are open to whoever can reach the listener (loopback by default). Changes (`POST`)
//! need `Authorization: Bearer <token>` with the configured token; without a configured token
//! they are refused. Every input is validated; errors are `{"error": "..."}` with a 4xx status
//! for the caller's mistakes and 5xx for ours.
//!
//! | method | path | body / query | answer |
//! |---|---|---|---|
//! | GET | `/v1/status` | | resources, servers, checks, counters of the controller |
//! | GET | `/v1/events` | `?after=SEQ&limit=N` (N ≤ 10000, default 100) | events, oldest first |
//! | POST | `/v1/switchover` | `{"resource": "web", "to": "b1"}` | what moved |
//! | POST | `/v1/drain` | `{"server": "p1"}` | what moved |
//! | POST | `/v1/undrain` | `{"server": "p1"}` | what moved |
//! | POST | `/v1/reload` | | what changed, or why the file was refused |
//! | GET | `/v1/config` | | the running configuration (never the token) |
//! | GET | `/metrics` | | Prometheus text format |
//! | GET | `/healthz` | | `ok` while the engine task answers |

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::daemon::{Counters, MapSync, Request, RequestError, Status};
use crate::engine::Action;

/// Longest the API waits for the engine task.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_EVENTS: usize = 10_000;

#[derive(Clone)]
pub struct ApiState {
    requests: mpsc::Sender<Request>,
    token: Arc<RwLock<Option<String>>>,
    sync: MapSync,
}

impl ApiState {
    pub fn new(
        requests: mpsc::Sender<Request>,
        token: Arc<RwLock<Option<String>>>,
        sync: MapSync,
    ) -> Self {
        ApiState {
            requests,
            token,
            sync,
        }
    }
}

#[derive(Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    #[serde(default = "default_limit")]
    limit: usize,
}

fn default_limit() -> usize {
    100
}

/// Constant-time comparison, so the token cannot be guessed byte by byte from timings.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// A Response is the natural error of a handler step; handlers return it at once.
#[allow(clippy::result_large_err)]
fn authorize(state: &ApiState, headers: &HeaderMap) -> Result<(), Response> {
    let token = state
        .token
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let Some(token) = token else {
        return Err(error(
            StatusCode::FORBIDDEN,
            "changes through the API are disabled: set api.token_file (or api.token) in the configuration",
        ));
    };
    let Some(value) = headers.get(axum::http::header::AUTHORIZATION) else {
        return Err(error(
            StatusCode::UNAUTHORIZED,
            "this call changes the gateway: send `Authorization: Bearer <token>`",
        ));
    };
    let given = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(given.trim().as_bytes(), token.as_bytes()) {
        return Err(error(StatusCode::FORBIDDEN, "wrong API token"));
    }
    Ok(())
}

#[allow(clippy::result_large_err)]
async fn ask<T>(
    state: &ApiState,
    make: impl FnOnce(oneshot::Sender<T>) -> Request,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    state.requests.send(make(tx)).await.map_err(|_| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller is stopping",
        )
    })?;
    match tokio::time::timeout(ENGINE_TIMEOUT, rx).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(_)) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller is stopping",
        )),
        Err(_) => Err(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the controller did not answer within 10 s",
        )),
    }
}

fn answer(r: Result<String, RequestError>) -> Response {
    match r {
        Ok(result) => Json(Done { result }).into_response(),
        Err(RequestError::Refused(e)) => {
            use crate::engine::ActionError as E;
            let status = match e {
                E::UnknownResource(_) | E::UnknownServer(_) => StatusCode::NOT_FOUND,
                E::Capacity { .. } => StatusCode::INSUFFICIENT_STORAGE,
                _ => StatusCode::CONFLICT,
            };
            error(status, e.to_string())
        }
        Err(RequestError::Invalid(e)) => error(StatusCode::UNPROCESSABLE_ENTITY, e),
        Err(RequestError::Internal(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(RequestError::NotLeader(e)) => error(StatusCode::CONFLICT, e),
    }
}

fn body_error(r: JsonRejection) -> Response {
    error(r.status(), r.body_text())
}

async fn status(State(s): State<ApiState>) -> Response {
    match ask(&s, Request::Status).await {
        Ok(st) => Json(st).into_response(),
        Err(r) => r,
    }
}

async fn events(
    State(s): State<ApiState>,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    if q.limit == 0 || q.limit > MAX_EVENTS {
        return error(
            StatusCode::BAD_REQUEST,
            format!("limit must be between 1 and {MAX_EVENTS}, got {}", q.limit),
        );
    }
    match ask(&s, |reply| Request::Events {
        after: q.after,
        limit: q.limit,
        reply,
    })
    .await
    {
        Ok(Ok(ev)) => Json(ev).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(r) => r,
    }
}

async fn act(s: ApiState, headers: HeaderMap, action: Action) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return r;
    }
    match ask(&s, |reply| Request::Action(action, reply)).await {
        Ok(r) => answer(r),
        Err(r) => r,
    }
}

/// A change request with a JSON body: token first, then the body, then the engine.
async fn act_on<B>(
    s: ApiState,
    headers: HeaderMap,
    body: Result<Json<B>, JsonRejection>,
    action: impl FnOnce(B) -> Action,
) -> Response {
    match body {
        Ok(Json(b)) => act(s, headers, action(b)).await,
        // Unauthenticated callers learn nothing about the body's shape.
        Err(e) => match authorize(&s, &headers) {
            Err(r) => r,
            Ok(()) => body_error(e),
        },
    }
}

async fn switchover(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<SwitchoverBody>, JsonRejection>,
) -> Response {
    act_on(s, headers, body, |b| Action::Switchover {
        resource: b.resource,
        to: b.to,
    })
    .await
}

async fn drain(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<ServerBody>, JsonRejection>,
) -> Response {
    act_on(s, headers, body, |b| Action::Drain { server: b.server }).await
}

async fn undrain(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<ServerBody>, JsonRejection>,
) -> Response {
    act_on(s, headers, body, |b| Action::Undrain { server: b.server }).await
}

async fn reload(State(s): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&s, &headers) {
        return r;
    }
    match ask(&s, Request::Reload).await {
        Ok(r) => answer(r),
        Err(r) => r,
    }
}

async fn running_config(State(s): State<ApiState>) -> Response {
    match ask(&s, Request::Config).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn healthz(State(s): State<ApiState>) -> Response {
    match ask(&s, Request::Status).await {
        Ok(_) => "ok\n".into_response(),
        Err(r) => r,
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    let st = match ask(&s, Request::Status).await {
        Ok(st) => st,
        Err(r) => return r,
    };
    let counters = s
        .sync
        .counters(
            st.resources
                .iter()
                .map(|r| (r.name.clone(), r.id))
                .collect(),
            st.servers.iter().map(|s| (s.name.clone(), s.id)).collect(),
        )
        .await;
    let sync = s.sync.stats();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&st, counters.as_ref().ok(), sync),
    )
        .into_response()
}

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of the controller's status and the dataplane's counters.
pub fn render_metrics(
    st: &Status,
    c: Option<&Counters>,
    sync: &crate::daemon::SyncStats,
) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    family(
        &mut o,
        "ftn_resource_server",
        "gauge",
        "1 for the server a resource's new flows go to now.",
    );
    for r in &st.resources {
        for s in &r.servers {
            let _ = writeln!(
                o,
                "ftn_resource_server{{resource=\"{}\",server=\"{}\"}} {}",
                esc(&r.name),
                esc(s),
                u8::from(r.current.as_deref() == Some(s))
            );
        }
    }
    if let Some(c) = &st.cluster {
        family(
            &mut o,
            "ftn_cluster_leader",
            "gauge",
            "1 while this gateway leads the shared directory (only the leader decides).",
        );
        let _ = writeln!(o, "ftn_cluster_leader {}", u8::from(c.role == "leader"));
        family(
            &mut o,
            "ftn_cluster_has_leader",
            "gauge",
            "1 when this gateway knows a leader of the shared directory.",
        );
        let _ = writeln!(o, "ftn_cluster_has_leader {}", u8::from(c.leader.is_some()));
        family(&mut o, "ftn_etcd_connected", "gauge", "1 while etcd answers this gateway; 0: the dataplane keeps its last state and this gateway decides nothing.");
        let _ = writeln!(o, "ftn_etcd_connected {}", u8::from(c.etcd == "connected"));
        family(
            &mut o,
            "ftn_cluster_gateways_live",
            "gauge",
            "Gateways whose lease is live, as this gateway sees them.",
        );
        let _ = writeln!(
            o,
            "ftn_cluster_gateways_live {}",
            c.gateways.iter().filter(|g| g.live).count()
        );
        family(
            &mut o,
            "ftn_cluster_applied_revision",
            "gauge",
            "Directory revision each gateway's maps hold, as published in etcd.",
        );
        for g in &c.gateways {
            let _ = writeln!(
                o,
                "ftn_cluster_applied_revision{{gateway=\"{}\"}} {}",
                esc(&g.name),
                g.applied_revision
            );
        }
        family(
            &mut o,
            "ftn_cluster_leaderships_total",
            "counter",
            "Times this gateway became the leader since it started.",
        );
        let _ = writeln!(o, "ftn_cluster_leaderships_total {}", c.leaderships);
    }
    family(
        &mut o,
        "ftn_resource_on_primary",
        "gauge",
        "1 when the resource is served by the first server of its list.",
    );
    for r in &st.resources {
        let _ = writeln!(
            o,
            "ftn_resource_on_primary{{resource=\"{}\"}} {}",
            esc(&r.name),
            u8::from(r.current.is_some() && r.current.as_ref() == r.servers.first())
        );
    }
    family(
        &mut o,
        "ftn_resource_no_server",
        "gauge",
        "1 when no server of the resource is up.",
    );
    for r in &st.resources {
        let _ = writeln!(
            o,
            "ftn_resource_no_server{{resource=\"{}\"}} {}",
            esc(&r.name),
            u8::from(r.current.is_none())
        );
    }
    family(&mut o, "ftn_resource_moves_total", "counter", "Changes of a resource's current server since the controller started (failover, failback, switchover).");
    for r in &st.resources {
        let _ = writeln!(
            o,
            "ftn_resource_moves_total{{resource=\"{}\"}} {}",
            esc(&r.name),
            st.failovers.get(&r.name).copied().unwrap_or(0)
        );
    }
    family(
        &mut o,
        "ftn_server_up",
        "gauge",
        "1 when the server's checks say it is up.",
    );
    for s in &st.servers {
        let _ = writeln!(
            o,
            "ftn_server_up{{server=\"{}\"}} {}",
            esc(&s.name),
            u8::from(s.health == crate::directory::Health::Up)
        );
    }
    family(
        &mut o,
        "ftn_server_drained",
        "gauge",
        "1 while the server is drained for maintenance.",
    );
    for s in &st.servers {
        let _ = writeln!(
            o,
            "ftn_server_drained{{server=\"{}\"}} {}",
            esc(&s.name),
            u8::from(s.drained)
        );
    }
    family(
        &mut o,
        "ftn_check_latency_seconds",
        "gauge",
        "Latency of the last successful probe of a check.",
    );
    for s in &st.servers {
        for ch in &s.checks {
            let _ = writeln!(
                o,
                "ftn_check_latency_seconds{{server=\"{}\",check=\"{}\"}} {:.6}",
                esc(&s.name),
                esc(&ch.check),
                ch.last_latency_us as f64 / 1e6
            );
        }
    }
    family(
        &mut o,
        "ftn_check_probes_total",
        "counter",
        "Probes run by a check, by result.",
    );
    for s in &st.servers {
        for ch in &s.checks {
            let _ = writeln!(
                o,
                "ftn_check_probes_total{{server=\"{}\",check=\"{}\",result=\"ok\"}} {}",
                esc(&s.name),
                esc(&ch.check),
                ch.probes_ok
            );
            let _ = writeln!(
                o,
                "ftn_check_probes_total{{server=\"{}\",check=\"{}\",result=\"failed\"}} {}",
                esc(&s.name),
                esc(&ch.check),
                ch.probes_failed
            );
            let _ = writeln!(
                o,
                "ftn_check_probes_total{{server=\"{}\",check=\"{}\",result=\"local_error\"}} {}",
                esc(&s.name),
                esc(&ch.check),
                ch.local_errors
            );
        }
    }
    family(
        &mut o,
        "ftn_check_unable_to_run",
        "gauge",
        "1 while a check cannot run for a local reason on this gateway (no file descriptor, no route, refused socket): its server's verdict is frozen.",
    );
    for s in &st.servers {
        for ch in &s.checks {
            let _ = writeln!(
                o,
                "ftn_check_unable_to_run{{server=\"{}\",check=\"{}\"}} {}",
                esc(&s.name),
                esc(&ch.check),
                u8::from(ch.unable_to_run.is_some())
            );
        }
    }
    family(&mut o, "ftn_server_passive_reports_total", "counter", "Passive health reports from the dataplane (SYNs unanswered or refused), each followed by immediate checks.");
    for s in &st.servers {
        let _ = writeln!(
            o,
            "ftn_server_passive_reports_total{{server=\"{}\"}} {}",
            esc(&s.name),
            st.passive_signals.get(&s.name).copied().unwrap_or(0)
        );
    }
    family(
        &mut o,
        "ftn_directory_revision",
        "gauge",
        "Revision of the directory the controller decided from.",
    );
    let _ = writeln!(
        o,
        "ftn_directory_revision{{backend=\"{}\"}} {}",
        esc(&st.directory),
        st.revision
    );
    family(
        &mut o,
        "ftn_directory_commit_errors_total",
        "counter",
        "Directory commits that failed (nothing was applied).",
    );
    let _ = writeln!(o, "ftn_directory_commit_errors_total {}", st.commit_errors);
    family(
        &mut o,
        "ftn_config_reloads_total",
        "counter",
        "Configuration reloads, by result.",
    );
    let _ = writeln!(o, "ftn_config_reloads_total{{result=\"ok\"}} {}\nftn_config_reloads_total{{result=\"refused\"}} {}", st.reloads_ok, st.reloads_failed);
    family(
        &mut o,
        "ftn_map_sync_batches_total",
        "counter",
        "Batches of map writes applied by the map-sync task.",
    );
    let _ = writeln!(
        o,
        "ftn_map_sync_batches_total {}",
        sync.batches.load(Relaxed)
    );
    family(
        &mut o,
        "ftn_map_sync_writes_total",
        "counter",
        "Map entries written by the map-sync task.",
    );
    let _ = writeln!(o, "ftn_map_sync_writes_total {}", sync.writes.load(Relaxed));
    family(
        &mut o,
        "ftn_map_sync_errors_total",
        "counter",
        "Map writes that failed (followed by a full resync).",
    );
    let _ = writeln!(o, "ftn_map_sync_errors_total {}", sync.errors.load(Relaxed));
    family(
        &mut o,
        "ftn_dataplane_up",
        "gauge",
        "1 when the dataplane's maps could be read (it says nothing about the XDP attachment).",
    );
    let _ = writeln!(o, "ftn_dataplane_up {}", u8::from(c.is_some()));
    if let Some(c) = c {
        type ResField = (
            &'static str,
            &'static str,
            fn(&ftn_common::ResourceStats) -> u64,
        );
        let res_fields: [ResField; 8] = [
            (
                "ftn_resource_packets_total",
                "Client to server packets forwarded.",
                |s| s.packets,
            ),
            (
                "ftn_resource_bytes_total",
                "Client to server bytes forwarded.",
                |s| s.bytes,
            ),
            (
                "ftn_resource_reply_packets_total",
                "Server to client packets translated back.",
                |s| s.reply_packets,
            ),
            (
                "ftn_resource_reply_bytes_total",
                "Server to client bytes translated back.",
                |s| s.reply_bytes,
            ),
            ("ftn_resource_new_flows_total", "Flows created.", |s| {
                s.new_flows
            }),
            (
                "ftn_resource_flows_moved_total",
                "Flows moved because their server was marked down.",
                |s| s.flows_moved,
            ),
            (
                "ftn_resource_dropped_no_server_total",
                "Packets dropped: no live server.",
                |s| s.drop_no_server,
            ),
            (
                "ftn_resource_rejected_no_server_total",
                "Packets answered with RST/unreachable: no live server.",
                |s| s.reject_no_server,
            ),
        ];
        for (name, help, f) in res_fields {
            family(&mut o, name, "counter", help);
            for (r, s) in &c.resources {
                let _ = writeln!(o, "{name}{{resource=\"{}\"}} {}", esc(r), f(s));
            }
        }
        type SrvField = (
            &'static str,
            &'static str,
            fn(&ftn_common::ServerStats) -> u64,
        );
        let srv_fields: [SrvField; 5] = [
            (
                "ftn_server_packets_total",
                "Packets forwarded to the server.",
                |s| s.packets,
            ),
            (
                "ftn_server_reply_packets_total",
                "Packets from the server translated back.",
                |s| s.reply_packets,
            ),
            (
                "ftn_server_new_flows_total",
                "Flows created on the server.",
                |s| s.new_flows,
            ),
            (
                "ftn_server_flows_moved_away_total",
                "Flows moved off the server because it was marked down.",
                |s| s.flows_moved_away,
            ),
            (
                "ftn_server_icmp_errors_total",
                "ICMP errors about the server's flows translated.",
                |s| s.icmp_errors,
            ),
        ];
        for (name, help, f) in srv_fields {
            family(&mut o, name, "counter", help);
            for (n, s) in &c.servers {
                let _ = writeln!(o, "{name}{{server=\"{}\"}} {}", esc(n), f(s));
            }
        }
        family(
            &mut o,
            "ftn_dataplane_packets_total",
            "counter",
            "Every packet the XDP program saw, by what it did.",
        );
        for (k, v) in &c.global {
            let _ = writeln!(
                o,
                "ftn_dataplane_packets_total{{outcome=\"{}\"}} {v}",
                k.name()
            );
        }
    }
    o
}

async fn fallback(method: Method, uri: Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!(
            "no such endpoint: {method} {}; see GET /v1/status, GET /v1/events, GET /v1/config, POST /v1/switchover, POST /v1/drain, POST /v1/undrain, POST /v1/reload, GET /metrics",
            uri.path()
        ),
    )
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/events", get(events))
        .route("/v1/switchover", post(switchover))
        .route("/v1/drain", post(drain))
        .route("/v1/undrain", post(undrain))
        .route("/v1/reload", post(reload))
        .route("/v1/config", get(running_config))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(fallback)
        .with_state(state)
}

/// Binds the listener (an error names the address) and serves until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    state: ApiState,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("the admin API cannot listen on {listen}: {e}"))?;
    let app = router(state);
    Ok(tokio::spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = r {
            tracing::error!("admin API stopped: {e}");
        }
    }))
}

// ---------------------------------------------------------------------------------------------
// Client.

/// One HTTP/1.1 request to the admin API; returns the status code and the body.
pub async fn call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> anyhow::Result<(u16, String)> {
    let fut = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| {
            anyhow::anyhow!("cannot reach the ftn admin API at {addr}: {e} (is `ftn run` running, and is api.listen this address?)")
        })?;
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nUser-Agent: ftn-cli\r\nContent-Length: {}\r\n",
            payload.len()
        );
        if body.is_some() {
            req.push_str("Content-Type: application/json\r\n");
        }
        if let Some(t) = token {
            let _ = write!(req, "Authorization: Bearer {t}\r\n");
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        s.write_all(req.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        parse_response(&raw)
    };
    tokio::time::timeout(Duration::from_secs(15), fut)
        .await
        .map_err(|_| anyhow::anyhow!("the ftn admin API at {addr} did not answer within 15 s"))?
}

fn parse_response(raw: &[u8]) -> anyhow::Result<(u16, String)> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP response (no end of headers)"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let mut lines = head.lines();
    let code: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("malformed HTTP status line"))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let mut body = raw[split + 4..].to_vec();
    if chunked {
        let mut out = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(String::from_utf8_lossy(&rest[..eol]).trim(), 16)
                .map_err(|_| anyhow::anyhow!("malformed chunked body"))?;
            rest = &rest[eol + 2..];
            if size == 0 || rest.len() < size {
                break;
            }
            out.extend_from_slice(&rest[..size]);
            rest = rest.get(size + 2..).unwrap_or(&[]);
        }
        body = out;
    }
    Ok((code, String::from_utf8_lossy(&body).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse_plain_and_chunked() {
        let (c, b) = parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
        assert_eq!((c, b.as_str()), (200, "ok"));
        let (c, b) = parse_response(
            b"HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((c, b.as_str()), (404, "abcde"));
        assert!(parse_response(b"garbage").is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
    }
}
