//! The admin API on loopback: what `queue status|list|retry` use while the
//! gateway runs (the store is locked by the running process then).
//!
//! - `GET  /api/queue` → every sink's [`SinkStatus`] and the log's [`LogHealth`].
//! - `GET  /api/queue/{sink}?state=dead&limit=50` → [`QueueItem`]s.
//! - `POST /api/queue/{sink}/retry?seq=N` or `?dead=true` → `{"requeued": n}`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::log::{LogError, LogHealth, QueueItem, SinkStatus, SledLog};

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
            .map(|s| self.log.status(s))
            .collect::<Result<_, _>>()?;
        Ok(QueueReport {
            sinks,
            health: self.log.health(),
        })
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

async fn queue_report(State(view): State<Arc<QueueView>>) -> Response {
    match view.report() {
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
    State(view): State<Arc<QueueView>>,
    Path(sink): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if let Some(r) = unknown_sink(&view, &sink) {
        return r;
    }
    match view
        .log
        .list(&sink, q.state.as_deref(), q.limit.unwrap_or(50).min(10_000))
    {
        Ok(items) => axum::Json::<Vec<QueueItem>>(items).into_response(),
        Err(e) => storage_error(e),
    }
}

async fn queue_retry(
    State(view): State<Arc<QueueView>>,
    Path(sink): Path<String>,
    Query(q): Query<RetryQuery>,
) -> Response {
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

/// The admin API; `extra` (e.g. the Speaker API simulator) is merged in.
pub fn router(view: Arc<QueueView>) -> Router {
    Router::new()
        .route("/api/queue", get(queue_report))
        .route("/api/queue/{sink}", get(queue_list))
        .route("/api/queue/{sink}/retry", post(queue_retry))
        .with_state(view)
}

/// Serves the admin API until `shutdown` is cancelled.
pub async fn serve(
    view: Arc<QueueView>,
    extra: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(view).merge(extra))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}
