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
//! With `[admin] token` set, everything but `/healthz` and `/readyz` needs
//! `Authorization: Bearer <token>` (or `?token=` for a browser).

pub mod page;
pub mod status;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use subtle::ConstantTimeEq;

use crate::log::{EventLog, LogEntry, LogError, LogHealth, QueueItem, SinkStatus, SledLog};
use crate::sinks::speaker::{Routing, lane_speaker};
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
    pub log: SledLog,
    /// The sinks the config names, in config order.
    pub sinks: Vec<String>,
    /// Which payments each speaker lane takes.
    pub routing: Option<Routing>,
}

impl QueueView {
    pub fn report(&self) -> Result<QueueReport, LogError> {
        let mut names = self.sinks.clone();
        for known in self.log.known_sinks() {
            if !names.contains(&known) {
                names.push(known);
            }
        }
        let sinks = names
            .iter()
            .map(|s| self.status(s))
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
        let cursor = self.log.cursor(sink)?;
        let mut out = Vec::new();
        for entry in self.log.read(cursor, LOOK_AHEAD)? {
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

fn storage_error(e: LogError) -> Response {
    error(StatusCode::SERVICE_UNAVAILABLE, e)
}

impl status::Live {
    /// The queues of the sinks running now.
    fn queue_view(&self) -> QueueView {
        QueueView {
            log: self.log.clone(),
            sinks: self.sinks.load().iter().map(|(n, _)| n.clone()).collect(),
            routing: Routing::of(&self.config.load()),
        }
    }
}

async fn queue_report(State(live): State<Arc<Live>>) -> Response {
    match live.queue_view().report() {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => storage_error(e),
    }
}

/// A 404 for a sink neither the config nor the store knows.
fn unknown_sink(view: &QueueView, sink: &str) -> Option<Response> {
    let known =
        view.sinks.iter().any(|s| s == sink) || view.log.known_sinks().iter().any(|s| s == sink);
    (!known).then(|| error(StatusCode::NOT_FOUND, format!("no sink named `{sink}`")))
}

async fn queue_list(
    State(live): State<Arc<Live>>,
    Path(sink): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    let view = live.queue_view();
    if let Some(r) = unknown_sink(&view, &sink) {
        return r;
    }
    match view.list(&sink, q.state.as_deref(), q.limit.unwrap_or(50).min(10_000)) {
        Ok(items) => axum::Json::<Vec<QueueItem>>(items).into_response(),
        Err(e) => storage_error(e),
    }
}

async fn queue_retry(
    State(live): State<Arc<Live>>,
    Path(sink): Path<String>,
    Query(q): Query<RetryQuery>,
) -> Response {
    let view = live.queue_view();
    if let Some(r) = unknown_sink(&view, &sink) {
        return r;
    }
    let which = match (q.seq, q.dead) {
        (Some(seq), false) => Some(seq),
        (None, true) => None,
        _ => return error(StatusCode::BAD_REQUEST, "give either seq=N or dead=true"),
    };
    match view.log.requeue(&sink, which) {
        Ok(n) => axum::Json(serde_json::json!({ "requeued": n })).into_response(),
        Err(e) => storage_error(e),
    }
}

async fn healthz() -> Response {
    (StatusCode::OK, "ok\n").into_response()
}

/// The report, built off the async threads (it reads the store).
async fn report(live: Arc<Live>) -> Result<status::StatusReport, Response> {
    tokio::task::spawn_blocking(move || {
        let report = live.report();
        live.update_metrics(&report);
        report
    })
    .await
    .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e))
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

/// Lets a request through when no token is set, or when it carries it.
async fn require_token(State(live): State<Arc<Live>>, request: Request, next: Next) -> Response {
    let config = live.config.load();
    let Some(token) = &config.admin.token else {
        return next.run(request).await;
    };
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    let query = request.uri().query().and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(str::to_string)
    });
    let expected = token.expose().as_bytes();
    let given = bearer.or(query).unwrap_or_default();
    if bool::from(given.as_bytes().ct_eq(expected)) {
        next.run(request).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "this admin API needs `Authorization: Bearer <admin.token>`",
        )
    }
}

/// The admin routes; `/healthz` and `/readyz` stay open for supervisors.
pub fn router(live: Arc<Live>) -> Router {
    let guarded = Router::new()
        .route("/", get(status_page))
        .route("/metrics", get(metrics_text))
        .route("/api/status", get(status_json))
        .route("/api/queue", get(queue_report))
        .route("/api/queue/{sink}", get(queue_list))
        .route("/api/queue/{sink}/retry", post(queue_retry))
        .layer(middleware::from_fn_with_state(live.clone(), require_token));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(live)
}

/// Serves the admin server until `shutdown` is cancelled; `extra` (the
/// Speaker API simulator) is merged in, outside the token check.
pub async fn serve(
    live: Arc<Live>,
    extra: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(live).merge(extra))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
