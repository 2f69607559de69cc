//! The admin server on loopback: health for supervisors, metrics for
//! Prometheus, a status page for shop staff, and the API that `queue
//! status|list|retry` use while the gateway runs (the store is locked by the
//! running process then).
//!
//! - `GET  /` → the status page ([`page`]).
//! - `GET  /healthz` → 200 while the process serves.
//! - `GET  /readyz` → 200, or 503 with the problems ([`status`]).
//! - `GET  /metrics` → Prometheus text ([`crate::metrics`]).
//! - `GET  /api/status` → [`status::StatusReport`] as JSON.
//! - `GET  /api/queue` → every sink's [`SinkStatus`] and the log's [`LogHealth`].
//! - `GET  /api/queue/{sink}?state=dead&limit=50` → [`QueueItem`]s.
//! - `POST /api/queue/{sink}/retry?seq=N` or `?dead=true` → `{"requeued": n}`.
//!
//! Every route, the Speaker API simulator's included, passes one guard ([`guarded`]):
//!
//! - `Host` must be an IP address or `localhost`, with the admin port: a web
//!   page whose own name was made to resolve here (DNS rebinding) is refused.
//! - With `[admin] token` set, everything but `/healthz` and `/readyz` needs
//!   `Authorization: Bearer <token>`, or HTTP Basic with the token as the
//!   password (what a browser asks for). Never in the URL: URLs end up in
//!   logs, history and `Referer`.
//! - A call that changes state (anything but GET and HEAD) without a bearer
//!   token must come from the admin's own origin: no `Origin` or `Origin:
//!   http://<Host>`, and no `Sec-Fetch-Site` other than `same-origin` or
//!   `none`. So a page on the LAN cannot make a browser POST here.

mod guard;
pub mod page;
pub mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;

use crate::http_server;

use crate::log::{LogEntry, LogError, LogHealth, QueueItem, SinkStatus, Store};
use crate::sinks::speaker::{Routing, lane_speaker};
use crate::tasks::Tasks;
pub use guard::guarded;
pub use status::Live;

/// The queue report `queue status` prints.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueReport {
    pub sinks: Vec<SinkStatus>,
    pub health: LogHealth,
}

/// What a queue command needs, whether it talks to the store or the API.
#[derive(Debug, Clone)]
pub struct QueueView {
    pub log: Store,
    /// The sinks the config names, in config order.
    pub sinks: Vec<String>,
    /// Which payments each speaker lane takes.
    pub routing: Option<Routing>,
}

impl QueueView {
    /// Every registered sink's queue: those the config names first, then
    /// any the store still keeps entries for (until `queue forget`). Reads
    /// the store: call it off the async workers.
    pub fn report(&self) -> Result<QueueReport, LogError> {
        let registered = self.log.known_sinks()?;
        let mut names: Vec<String> = self
            .sinks
            .iter()
            .filter(|s| registered.contains(s))
            .cloned()
            .collect();
        for known in registered {
            if !names.contains(&known) {
                names.push(known);
            }
        }
        let sinks = names
            .iter()
            .map(|s| {
                self.status(s).map(|mut status| {
                    status.configured = self.sinks.contains(s);
                    status
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(QueueReport {
            sinks,
            health: self.log.health(),
        })
    }

    /// One sink's queue; a lane's counts only the payments routed to it.
    pub fn status(&self, sink: &str) -> Result<SinkStatus, LogError> {
        if self.filters(sink) {
            self.log
                .status_where(sink, Some(&|e: &LogEntry| self.takes(sink, e)))
        } else {
            self.log.status(sink)
        }
    }

    /// Whether `sink` takes only some entries (a lane of a routed speaker).
    fn filters(&self, sink: &str) -> bool {
        self.routing.is_some() && lane_speaker(sink).is_some()
    }

    /// Whether `entry` is for `sink`: a lane takes the payments routed to
    /// its speaker, every other sink takes everything.
    fn takes(&self, sink: &str, entry: &LogEntry) -> bool {
        self.routing
            .as_ref()
            .and_then(|routing| routing.lane_wants(sink, entry))
            .unwrap_or(true)
    }

    /// The first `n` entries `sink` has yet to settle, oldest first (a
    /// lane's: routed to it), looking at most a few thousand entries ahead.
    pub fn waiting(&self, sink: &str, n: usize) -> Result<Vec<LogEntry>, LogError> {
        const LOOK_AHEAD: usize = 4096;
        let cursor = self.log.cursor_now(sink)?;
        let mut out = Vec::new();
        for entry in self.log.read_now(cursor, LOOK_AHEAD)? {
            if out.len() >= n {
                break;
            }
            if self.takes(sink, &entry) {
                out.push(entry);
            }
        }
        Ok(out)
    }

    /// One sink's entries, newest first; a lane's are the payments routed to it.
    pub fn list(
        &self,
        sink: &str,
        state: Option<&str>,
        limit: usize,
    ) -> Result<Vec<QueueItem>, LogError> {
        if self.filters(sink) {
            let wants = |e: &LogEntry| self.takes(sink, e);
            self.log.list_where(sink, state, limit, Some(&wants))
        } else {
            self.log.list(sink, state, limit)
        }
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    state: Option<String>,
    limit: Option<usize>,
}

#[derive(Debug, Deserialize)]
struct RetryQuery {
    seq: Option<u64>,
    #[serde(default)]
    dead: bool,
}

fn error(status: StatusCode, reason: impl std::fmt::Display) -> Response {
    let body =
        serde_json::json!({ "error": status.canonical_reason(), "reason": reason.to_string() });
    (status, axum::Json(body)).into_response()
}

/// A 503 naming the kind of failure; the detail (paths, store errors) goes
/// to the log.
fn storage_error(e: LogError) -> Response {
    tracing::warn!(error = %e, "admin API: the event log failed");
    let reason = match e {
        LogError::Full(_) => "the event log is full; see the gateway log",
        _ => "the event log failed; see the gateway log",
    };
    error(StatusCode::SERVICE_UNAVAILABLE, reason)
}

impl status::Live {
    /// The queues of the sinks running now.
    fn queue_view(&self) -> QueueView {
        QueueView {
            log: self.log.clone(),
            sinks: crate::sinks::sink_names(&self.config.load()),
            routing: Routing::of(&self.config.load()),
        }
    }
}

/// Why a queue request failed, turned into a reply at the handler.
enum QueueError {
    UnknownSink(String),
    Store(LogError),
}

impl From<LogError> for QueueError {
    fn from(e: LogError) -> Self {
        QueueError::Store(e)
    }
}

impl QueueError {
    fn reply(self) -> Response {
        match self {
            QueueError::UnknownSink(sink) => {
                error(StatusCode::NOT_FOUND, format!("no sink named `{sink}`"))
            }
            QueueError::Store(e) => storage_error(e),
        }
    }
}

/// Runs `f` on the queue view off the async workers (it reads the store).
async fn with_view<T: Send + 'static>(
    live: Arc<Live>,
    f: impl FnOnce(&QueueView) -> Result<T, QueueError> + Send + 'static,
) -> Result<T, Response> {
    let tasks = live.tasks.clone();
    match tasks
        .spawn_blocking("admin queue read", move || f(&live.queue_view()))
        .await
    {
        Ok(result) => result.map_err(QueueError::reply),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e)),
    }
}

async fn queue_report(State(live): State<Arc<Live>>) -> Response {
    match with_view(live, |view| Ok(view.report()?)).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(r) => r,
    }
}

/// Refuses a sink neither the config nor the store knows.
fn known_sink(view: &QueueView, sink: &str) -> Result<(), QueueError> {
    let registered = view.log.known_sinks()?;
    if view.sinks.iter().any(|s| s == sink) || registered.iter().any(|s| s == sink) {
        Ok(())
    } else {
        Err(QueueError::UnknownSink(sink.to_string()))
    }
}

async fn queue_list(
    State(live): State<Arc<Live>>,
    Path(sink): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let listed = with_view(live, move |view| {
        known_sink(view, &sink)?;
        Ok(view.list(&sink, q.state.as_deref(), q.limit.unwrap_or(50).min(10_000))?)
    })
    .await;
    match listed {
        Ok(items) => axum::Json::<Vec<QueueItem>>(items).into_response(),
        Err(r) => r,
    }
}

async fn queue_retry(
    State(live): State<Arc<Live>>,
    Path(sink): Path<String>,
    Query(q): Query<RetryQuery>,
) -> Response {
    let which = match (q.seq, q.dead) {
        (Some(seq), false) => Some(seq),
        (None, true) => None,
        _ => return error(StatusCode::BAD_REQUEST, "give either seq=N or dead=true"),
    };
    let store = live.log.clone();
    let checked = {
        let sink = sink.clone();
        with_view(live, move |view| known_sink(view, &sink)).await
    };
    if let Err(r) = checked {
        return r;
    }
    match store.requeue(&sink, which).await {
        Ok(n) => axum::Json(serde_json::json!({ "requeued": n })).into_response(),
        Err(e) => storage_error(e),
    }
}

/// Lets go of a sink the config no longer names: GC stops keeping its
/// backlog. A configured sink is refused (it would register again).
async fn queue_forget(State(live): State<Arc<Live>>, Path(sink): Path<String>) -> Response {
    if live.queue_view().sinks.contains(&sink) {
        return error(
            StatusCode::CONFLICT,
            format!(
                "sink `{sink}` is in the config; remove it from the config (and reload) before forgetting it"
            ),
        );
    }
    match live.log.forget(&sink).await {
        Ok(true) => axum::Json(serde_json::json!({ "forgotten": sink })).into_response(),
        Ok(false) => error(
            StatusCode::NOT_FOUND,
            format!("no registered sink named `{sink}`"),
        ),
        Err(e) => storage_error(e),
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// The report, built off the async threads (it reads the store).
async fn report(live: Arc<Live>) -> Result<status::StatusReport, Response> {
    let tasks = live.tasks.clone();
    tasks
        .spawn_blocking("admin status report", move || {
            let report = live.report();
            live.update_metrics(&report);
            report
        })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "admin API: building the status report failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the status report failed",
            )
        })
}

async fn readyz(State(live): State<Arc<Live>>) -> Response {
    match report(live).await {
        Ok(r) if r.ready => axum::Json(serde_json::json!({ "ready": true })).into_response(),
        Ok(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({ "ready": false, "problems": r.problems })),
        )
            .into_response(),
        Err(response) => response,
    }
}

async fn status_json(State(live): State<Arc<Live>>) -> Response {
    match report(live).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(response) => response,
    }
}

async fn status_page(State(live): State<Arc<Live>>) -> Response {
    match report(live).await {
        Ok(r) => Html(page::render(&r)).into_response(),
        Err(response) => response,
    }
}

async fn metrics_text(State(live): State<Arc<Live>>) -> Response {
    if let Err(response) = report(live).await {
        return response;
    }
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        crate::metrics::metrics().encode(),
    )
        .into_response()
}

/// The admin routes, unguarded ([`serve`] adds the guard, [`guarded`]).
pub fn router(live: Arc<Live>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/", get(status_page))
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(status_json))
        .route("/api/queue", get(queue_report))
        .route("/api/queue/{sink}", get(queue_list))
        .route("/api/queue/{sink}/retry", post(queue_retry))
        .route("/api/queue/{sink}/forget", post(queue_forget))
        .with_state(live)
}

/// Admin connections open at once, at most: the status page, a Prometheus
/// scraper, `queue` commands, and the in-process Speaker API simulator's
/// pooled client connections. Its own cap, apart from the webhooks', so a
/// flood of webhook connections never silences `/healthz`.
pub const MAX_CONNECTIONS: usize = 64;

/// Serves the admin server until `tasks` is cancelled; `extra` (the
/// Speaker API simulator) is merged in, behind the same guard. Requests in
/// flight then get [`http_server::DRAIN_DEADLINE`] to finish.
pub async fn serve(
    live: Arc<Live>,
    extra: Router,
    listener: TcpListener,
    tasks: Tasks,
) -> std::io::Result<()> {
    let port = listener.local_addr()?.port();
    let app = guarded(router(live.clone()).merge(extra), live, port);
    let limits = http_server::Limits::with_max_connections(MAX_CONNECTIONS);
    http_server::serve(listener, app, limits, tasks).await
}
