//! The admin API's listener (connection caps, timeouts), router and handlers.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::worker::Worker;
use crate::control::{Request, RequestError};
use crate::dataplane::sync::{MapSync, ReadCounters};
use crate::engine::Action;
use crate::wire::{Done, ErrorBody, ServerBody, SwitchoverBody};

/// Longest the API waits for the engine task.
const ENGINE_TIMEOUT: Duration = Duration::from_secs(10);
pub const MAX_EVENTS: usize = 10_000;

#[derive(Clone)]
pub struct ApiState {
    requests: mpsc::Sender<Request>,
    token: Arc<RwLock<Option<String>>>,
    sync: MapSync,
    listener: Arc<ListenerStats>,
    /// Reads the dataplane's counters apart from the map-sync thread (None: ask that thread,
    /// e.g. an in-memory dataplane in tests).
    counters: Option<Arc<std::sync::Mutex<Box<dyn ReadCounters>>>>,
    worker: Worker,
    /// The last `/metrics` answer and when its build started: requests that arrive while one
    /// is being built wait for the next build, so that scrapers share builds and at most one
    /// runs at a time, each answer started after its request arrived.
    last_metrics: Arc<tokio::sync::Mutex<Option<(Instant, Bytes)>>>,
}

impl ApiState {
    pub fn new(
        requests: mpsc::Sender<Request>,
        token: Arc<RwLock<Option<String>>>,
        sync: MapSync,
        counters: Option<Box<dyn ReadCounters>>,
    ) -> std::io::Result<Self> {
        Ok(ApiState {
            requests,
            token,
            sync,
            listener: Arc::default(),
            counters: counters.map(|c| Arc::new(std::sync::Mutex::new(c))),
            worker: Worker::spawn()?,
            last_metrics: Arc::default(),
        })
    }
}

fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(ErrorBody { error: msg.into() })).into_response()
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

#[expect(
    clippy::result_large_err,
    reason = "a Response is the natural error of a handler step: handlers return it at once"
)]
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
    let inputs = match ask(&s, Request::Status).await {
        Ok(i) => i,
        Err(r) => return r,
    };
    // Built and encoded on the worker thread: at 100,000 resources the JSON is tens of MB.
    match s
        .worker
        .run(move || serde_json::to_vec(&inputs.build()))
        .await
    {
        Ok(Ok(body)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
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
    let received = std::time::SystemTime::now();
    match ask(&s, |reply| Request::Action(action, received, reply)).await {
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
    let arrived = Instant::now();
    let mut last = s.last_metrics.lock().await;
    let body = match &*last {
        // Built while this request waited: as fresh as one built for it alone.
        Some((started, body)) if *started >= arrived => body.clone(),
        _ => {
            let started = Instant::now();
            match build_metrics(&s).await {
                Ok(body) => {
                    *last = Some((started, body.clone()));
                    body
                }
                Err(r) => return r,
            }
        }
    };
    drop(last);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            super::metrics::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}

/// One `/metrics` answer: the status from the engine, the counters read and the text encoded
/// on the worker thread (never the map-sync thread, unless no counter reader exists).
async fn build_metrics(s: &ApiState) -> Result<Bytes, Response> {
    let inputs = ask(s, Request::Status).await?;
    let names = |st: &crate::wire::Status| {
        (
            st.resources
                .iter()
                .map(|r| (r.name.clone(), r.id))
                .collect::<Vec<_>>(),
            st.servers
                .iter()
                .map(|s| (s.name.clone(), s.id))
                .collect::<Vec<_>>(),
        )
    };
    let sync = s.sync.clone();
    let listener = s.listener.clone();
    let built = match &s.counters {
        Some(reader) => {
            let reader = reader.clone();
            s.worker
                .run(move || {
                    let st = inputs.build();
                    let (resources, servers) = names(&st);
                    let counters = reader
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .read(&resources, &servers);
                    if let Err(e) = &counters {
                        tracing::warn!("reading the dataplane's counters: {e}");
                    }
                    super::metrics::render(&st, counters.as_ref().ok(), sync.stats(), &listener)
                })
                .await
        }
        None => {
            let st = match s.worker.run(move || inputs.build()).await {
                Ok(st) => st,
                Err(e) => return Err(error(StatusCode::SERVICE_UNAVAILABLE, e)),
            };
            let (resources, servers) = names(&st);
            let counters = s.sync.counters(resources, servers).await;
            s.worker
                .run(move || {
                    super::metrics::render(&st, counters.as_ref().ok(), sync.stats(), &listener)
                })
                .await
        }
    };
    built
        .map(Bytes::from)
        .map_err(|e| error(StatusCode::SERVICE_UNAVAILABLE, e))
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

/// How much of this process the admin API may take: it shares the file-descriptor limit with
/// the health checks, and a flood of connections to it must never starve them (a check that
/// cannot open a socket cannot see a server die).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Connections served at once. At the cap the listener stops accepting: further clients wait
    /// in the kernel's backlog (no descriptor is spent on them) until a connection ends.
    pub max_connections: usize,
    /// Connections from one client address at once; more are accepted and closed at once.
    pub max_per_client: usize,
    /// Longest wait for a complete request head (also: how long an idle keep-alive
    /// connection is kept). A client that sends nothing, or a byte at a time, is closed then.
    pub header_timeout: Duration,
    /// Longest time from a request head to its answer, the body's upload included.
    pub request_timeout: Duration,
}

/// Live counters of the listener, for `/metrics`.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub open: std::sync::atomic::AtomicU64,
    pub accepted: std::sync::atomic::AtomicU64,
    /// Closed at once: the client had `max_per_client` connections open.
    pub refused_per_client: std::sync::atomic::AtomicU64,
    /// Times the listener stopped accepting because `max_connections` were open.
    pub at_capacity: std::sync::atomic::AtomicU64,
    /// accept() failed (e.g. EMFILE).
    pub accept_errors: std::sync::atomic::AtomicU64,
}

/// After an accept() error, the listener waits this long before accepting again (an error such
/// as EMFILE would otherwise spin).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);
/// On shutdown, connections get this long to finish the request in progress.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(1);
/// hyper's read buffer (and so the largest request head); bodies are limited by axum.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// Binds the listener (an error names the address) and serves until `shutdown`.
pub async fn serve(
    listen: SocketAddr,
    state: ApiState,
    limits: ApiLimits,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("the admin API cannot listen on {listen}: {e}"))?;
    let stats = state.listener.clone();
    let app = router(state);
    Ok(tokio::spawn(accept_loop(
        listener, app, limits, stats, shutdown,
    )))
}

/// Accepts connections within `limits` and serves each on its own task.
async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: ApiLimits,
    stats: Arc<ListenerStats>,
    shutdown: CancellationToken,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let per_client: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>> =
        Arc::default();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // A slot first, then accept: at the cap, clients wait in the backlog, not in our table.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                stats.at_capacity.fetch_add(1, Relaxed);
                tracing::debug!(
                    max = limits.max_connections,
                    "admin API at its connection cap; not accepting until one ends"
                );
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    slot = slots.clone().acquire_owned() => match slot {
                        Ok(slot) => slot,
                        Err(_) => break,
                    },
                }
            }
        };
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        // Reap finished connection tasks.
        while connections.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Relaxed);
                tracing::warn!("admin API: accepting a connection failed: {e}");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let client = ClientSlot::take(&per_client, peer.ip(), limits.max_per_client);
        let Some(client) = client else {
            stats.refused_per_client.fetch_add(1, Relaxed);
            tracing::debug!(%peer, max = limits.max_per_client, "admin API: too many connections from this client; closed");
            drop(stream);
            continue;
        };
        stats.accepted.fetch_add(1, Relaxed);
        stats.open.fetch_add(1, Relaxed);
        let (app, stats, shutdown) = (app.clone(), stats.clone(), shutdown.clone());
        connections.spawn(async move {
            serve_connection(stream, app, limits, shutdown).await;
            stats.open.fetch_sub(1, Relaxed);
            drop((slot, client));
        });
    }
    // Stop accepting; let the requests in progress finish (each bounded by SHUTDOWN_GRACE).
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// One client address's share of the connections, returned when dropped.
struct ClientSlot {
    table: Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
    ip: std::net::IpAddr,
}

impl ClientSlot {
    fn take(
        table: &Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>,
        ip: std::net::IpAddr,
        max: usize,
    ) -> Option<ClientSlot> {
        let mut t = table.lock().unwrap_or_else(|p| p.into_inner());
        let n = t.entry(ip).or_default();
        if *n >= max.max(1) {
            return None;
        }
        *n += 1;
        Some(ClientSlot {
            table: table.clone(),
            ip,
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut t = self.table.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = t.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                t.remove(&self.ip);
            }
        }
    }
}

/// Serves one connection (HTTP/1.1, keep-alive) under the header and request timeouts.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    app: Router,
    limits: ApiLimits,
    shutdown: CancellationToken,
) {
    use tower::ServiceExt as _;
    let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let app = app.clone();
        async move {
            let answer = tokio::time::timeout(limits.request_timeout, app.oneshot(req)).await;
            Ok::<_, std::convert::Infallible>(match answer {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => error(
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request was not complete or answered within {:?}",
                        limits.request_timeout
                    ),
                ),
            })
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("admin API connection ended: {e}");
            }
        }
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::client::call;
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A listener with small limits on loopback, serving `GET /` = "ok".
    async fn limited(
        limits: ApiLimits,
    ) -> (
        SocketAddr,
        Arc<ListenerStats>,
        CancellationToken,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(ListenerStats::default());
        let shutdown = CancellationToken::new();
        let app = Router::new().route("/", get(|| async { "ok" }));
        let task = tokio::spawn(accept_loop(
            listener,
            app,
            limits,
            stats.clone(),
            shutdown.clone(),
        ));
        (addr, stats, shutdown, task)
    }

    const LIMITS: ApiLimits = ApiLimits {
        max_connections: 4,
        max_per_client: 2,
        header_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_secs(2),
    };

    /// Reads until the peer closes (or 5 s pass); returns what came and whether it closed.
    async fn read_to_close(s: &mut tokio::net::TcpStream) -> (Vec<u8>, bool) {
        let mut got = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut got)).await;
        (got, matches!(r, Ok(Ok(_)) | Ok(Err(_))))
    }

    /// A client that connects and sends nothing (or half a request head) is closed after the
    /// header timeout; one that asks properly is answered.
    #[tokio::test]
    async fn silent_and_slow_clients_are_closed_after_the_header_timeout() {
        let (addr, _stats, shutdown, task) = limited(LIMITS).await;
        let started = std::time::Instant::now();
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        for s in [&mut silent, &mut half] {
            let (_, closed) = read_to_close(s).await;
            assert!(closed, "still open after 5 s");
        }
        let took = started.elapsed();
        assert!(
            took >= LIMITS.header_timeout && took < LIMITS.header_timeout + Duration::from_secs(2),
            "closed after {took:?}"
        );
        let (code, body) = call(addr, "GET", "/", None, None).await.unwrap();
        assert_eq!((code, body.as_str()), (200, "ok"));
        shutdown.cancel();
        task.await.unwrap();
    }

    /// A keep-alive connection left idle after its answer is closed after the header timeout.
    #[tokio::test]
    async fn idle_keep_alive_connections_are_closed_after_the_header_timeout() {
        let (addr, _stats, shutdown, task) = limited(LIMITS).await;
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"ok") {
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the answer");
            got.extend_from_slice(&buf[..n]);
        }
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        let idle = std::time::Instant::now();
        let (rest, closed) = read_to_close(&mut s).await;
        let took = idle.elapsed();
        assert!(closed && rest.is_empty(), "{rest:?}");
        assert!(
            took >= LIMITS.header_timeout && took < LIMITS.header_timeout + Duration::from_secs(2),
            "closed after {took:?}"
        );
        shutdown.cancel();
        task.await.unwrap();
    }

    /// One client gets `max_per_client` connections, the next ones are closed at once; other
    /// clients are still served while the first holds its share; at `max_connections` the
    /// listener waits, and serves again once connections end.
    #[tokio::test]
    async fn connection_caps_per_client_and_in_total() {
        let limits = ApiLimits {
            header_timeout: Duration::from_secs(3),
            ..LIMITS
        };
        let (addr, stats, shutdown, task) = limited(limits).await;
        use std::sync::atomic::Ordering::Relaxed;
        // Two held connections from 127.0.0.1 (sending nothing).
        let held: Vec<_> = futures_hold(addr, 2).await;
        wait_for(|| stats.open.load(Relaxed) == 2).await;
        // The third from the same address is closed without an answer.
        let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (got, closed) = read_to_close(&mut third).await;
        assert!(closed && got.is_empty(), "{got:?}");
        assert_eq!(stats.refused_per_client.load(Relaxed), 1);
        // Another client address (127.0.0.2 is loopback too) is served.
        let other = tokio::net::TcpSocket::new_v4().unwrap();
        other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut other = other.connect(addr).await.unwrap();
        other
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = read_to_close(&mut other).await;
        assert!(
            got.starts_with(b"HTTP/1.1 200"),
            "{}",
            String::from_utf8_lossy(&got)
        );
        // Fill the total cap (4) from two more addresses; the next client waits in the backlog.
        let mut more = Vec::new();
        for ip in ["127.0.0.3", "127.0.0.4"] {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(format!("{ip}:0").parse().unwrap()).unwrap();
            more.push(s.connect(addr).await.unwrap());
        }
        wait_for(|| stats.open.load(Relaxed) == 4).await;
        let waiting = tokio::spawn(call(addr, "GET", "/", None, None));
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!waiting.is_finished(), "served beyond max_connections");
        assert!(stats.at_capacity.load(Relaxed) >= 1);
        drop(held);
        drop(more);
        let (code, _) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served once connections ended")
            .unwrap()
            .unwrap();
        assert_eq!(code, 200);
        shutdown.cancel();
        task.await.unwrap();
    }

    async fn futures_hold(addr: SocketAddr, n: usize) -> Vec<tokio::net::TcpStream> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        v
    }

    async fn wait_for(cond: impl Fn() -> bool) {
        for _ in 0..500 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("condition not reached within 5 s");
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
    }
}
