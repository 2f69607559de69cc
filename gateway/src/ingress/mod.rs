//! Ingress: where balance changes enter the flow. Webhooks: `POST
//! /hooks/<connector>` → the connector's plugin → the durable event log → the
//! reply the provider expects. Pollers ([`poll`]): the connector's interval →
//! its plugin → the same log.
//!
//! The sender gets a 2xx only after the event log made every change durable; any
//! failure is a 4xx (do not retry as is) or 5xx (retry) with a short JSON reason.
//! A call's plugin KV writes are applied only after its changes are stored.

use std::sync::Arc;

use arc_swap::ArcSwap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::connectors::{CallError, Connectors, IncomingRequest, Plugin, Rejection};
use crate::log::{Appended, EventLog, LogError};
use crate::metrics::metrics;
use crate::model::BalanceChange;

pub mod poll;

/// What the handlers share.
#[derive(Debug)]
pub struct Ingress {
    /// Swapped whole by a config reload; a call in flight keeps the plugin
    /// it started on.
    pub connectors: Arc<ArcSwap<Connectors>>,
    pub log: Arc<dyn EventLog>,
    pub max_body_bytes: usize,
}

impl Ingress {
    pub fn router(self: Arc<Self>) -> Router {
        let limit = self.max_body_bytes;
        Router::new()
            // GET too: VNPay calls its IPN URL with the fields in the query string.
            .route("/hooks/{connector}", post(webhook).get(webhook))
            .fallback(not_found)
            .layer(DefaultBodyLimit::max(limit))
            .with_state(self)
    }

    /// Serves until `shutdown` is cancelled, then finishes in-flight requests.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> std::io::Result<()> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    }
}

fn reason(status: StatusCode, error: &str, reason: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": error, "reason": reason.to_string() });
    (status, axum::Json(body)).into_response()
}

async fn not_found() -> Response {
    reason(
        StatusCode::NOT_FOUND,
        "not_found",
        "webhooks are posted to /hooks/<connector>",
    )
}

/// A webhook, counted in `webhook_responses_total` by connector and status.
async fn webhook(
    State(ingress): State<Arc<Ingress>>,
    Path(name): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let plugin = ingress.connectors.load().get(&name).cloned();
    let label = if plugin.is_some() { &name } else { "unknown" };
    let response = handle(&ingress, plugin, &name, method, query, headers, body).await;
    metrics()
        .webhook_responses
        .with_label_values(&[label, response.status().as_str()])
        .inc();
    response
}

async fn handle(
    ingress: &Ingress,
    plugin: Option<Arc<Plugin>>,
    name: &str,
    method: Method,
    query: Option<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let Some(plugin) = plugin else {
        return reason(
            StatusCode::NOT_FOUND,
            "unknown_connector",
            format!("no connector named `{name}`"),
        );
    };
    if !plugin.world().handles_webhooks() {
        return reason(
            StatusCode::NOT_FOUND,
            "not_a_webhook_connector",
            format!("connector `{name}` polls; it takes no webhooks"),
        );
    }
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return reason(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "webhook bodies are at most {} bytes",
                    ingress.max_body_bytes
                ),
            );
        }
        Err(rejection) => return reason(rejection.status(), "bad_body", rejection.body_text()),
    };
    let request = IncomingRequest {
        method: method.as_str().to_string(),
        path: format!("/hooks/{name}"),
        query: query.unwrap_or_default(),
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
        body: body.to_vec(),
    };
    let result = match plugin.handle(request).await {
        Ok(result) => result,
        Err(error) => return call_failed(name, error),
    };
    if let Err(error) = store(&*ingress.log, name, result.changes).await {
        tracing::error!(connector = %name, %error, "could not store changes; sender will retry");
        let code = match error {
            LogError::Full(_) => "log_full",
            _ => "not_stored",
        };
        return reason(StatusCode::SERVICE_UNAVAILABLE, code, error);
    }
    plugin.commit_kv(result.kv_writes);
    match result.reply {
        Some(reply) => plugin_reply(name, reply),
        None => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "ok": true })),
        )
            .into_response(),
    }
}

/// Appends `changes` durably and logs what became of each: new, or a
/// duplicate of a payment already seen (a provider's retry, or a poller and a
/// webhook connector that both saw it).
pub async fn store(
    log: &dyn EventLog,
    connector: &str,
    changes: Vec<BalanceChange>,
) -> Result<(), LogError> {
    if changes.is_empty() {
        return Ok(());
    }
    let keys: Vec<(String, String, u64)> = changes
        .iter()
        .map(|c| (c.provider.clone(), c.transaction_id.clone(), c.amount))
        .collect();
    let appended = log.append(changes).await?;
    for ((provider, transaction_id, amount), outcome) in keys.iter().zip(appended) {
        match outcome {
            Appended::New(seq) => tracing::info!(
                %connector, %provider, %transaction_id, amount, seq,
                "balance change logged"
            ),
            Appended::Duplicate(seq) => tracing::info!(
                %connector, %provider, %transaction_id, seq,
                "duplicate balance change ignored"
            ),
        }
    }
    Ok(())
}

/// Maps a failed call to what the sender is told; the detail goes to our log.
fn call_failed(name: &str, error: CallError) -> Response {
    match &error {
        CallError::Rejected(Rejection::BadRequest(r)) => {
            tracing::info!(connector = %name, reason = %r, "webhook rejected as malformed");
            reason(StatusCode::BAD_REQUEST, "bad_request", r)
        }
        CallError::Rejected(Rejection::Unauthorized(r)) => {
            tracing::warn!(connector = %name, reason = %r, "webhook failed authentication");
            reason(StatusCode::UNAUTHORIZED, "unauthorized", r)
        }
        CallError::Rejected(Rejection::Transient(r)) => {
            tracing::warn!(connector = %name, reason = %r, "connector asked the sender to retry");
            reason(StatusCode::SERVICE_UNAVAILABLE, "transient", r)
        }
        CallError::Rejected(Rejection::Fatal(r)) => {
            tracing::error!(connector = %name, reason = %r, "connector reported a fatal error");
            reason(StatusCode::INTERNAL_SERVER_ERROR, "connector_failed", r)
        }
        CallError::Instantiate(_) | CallError::Timeout(_) => {
            tracing::error!(connector = %name, %error, "plugin call failed");
            reason(
                StatusCode::SERVICE_UNAVAILABLE,
                "connector_unavailable",
                &error,
            )
        }
        _ => {
            tracing::error!(connector = %name, %error, "plugin call failed");
            reason(
                StatusCode::INTERNAL_SERVER_ERROR,
                "connector_failed",
                &error,
            )
        }
    }
}

fn plugin_reply(name: &str, reply: crate::connectors::Reply) -> Response {
    let Ok(status) = StatusCode::from_u16(reply.status) else {
        tracing::error!(connector = %name, status = reply.status, "plugin replied with an invalid status");
        return reason(
            StatusCode::INTERNAL_SERVER_ERROR,
            "connector_failed",
            "plugin replied with an invalid HTTP status",
        );
    };
    let mut response = (status, reply.body).into_response();
    for (k, v) in reply.headers {
        if let (Ok(k), Ok(v)) = (HeaderName::try_from(k), HeaderValue::try_from(v)) {
            response.headers_mut().insert(k, v);
        }
    }
    response
}
