//! Ingress: where balance changes enter the flow. Webhooks: `POST
//! /hooks/<connector>` → the connector's plugin → the durable event log → the
//! reply the provider expects. Pollers ([`poll`]): the connector's interval →
//! its plugin → the same log.
//!
//! The sender gets a 2xx only after the event log made every change durable; any
//! failure is a 4xx (do not retry as is) or 5xx (retry) with a short JSON reason.
//! The reason is generic for our own failures (storage, a broken or slow
//! plugin): the detail (paths, upstream URLs, wasmtime errors) is in our log
//! only. A plugin's `bad-request` and `unauthorized` reasons are its message to
//! the sender and are passed on, clipped ([`for_sender`]).
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
use crate::http_server;
use crate::log::{Appended, EventLog, LogError};
use crate::metrics::metrics;
use crate::model::BalanceChange;

pub mod poll;

/// Webhook connections open at once, at most. Far above what a shop's
/// providers send, and well below the usual limit of 1024 file descriptors,
/// which the event log, plugins, sinks and the admin server share.
pub const MAX_CONNECTIONS: usize = 256;

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
        let limits = http_server::Limits::with_max_connections(MAX_CONNECTIONS);
        http_server::serve(listener, self.router(), limits, shutdown).await
    }
}

fn reason(status: StatusCode, error: &str, reason: impl std::fmt::Display) -> Response {
    let body = serde_json::json!({ "error": error, "reason": reason.to_string() });
    (status, axum::Json(body)).into_response()
}

/// The longest reason passed on from a plugin, in characters.
const MAX_SENDER_REASON: usize = 200;

/// A plugin's reason as the sender may see it: no control characters, at
/// most [`MAX_SENDER_REASON`] characters.
fn for_sender(text: &str) -> String {
    let mut clean: String = text.chars().filter(|c| !c.is_control()).collect();
    if let Some((cut, _)) = clean.char_indices().nth(MAX_SENDER_REASON) {
        clean.truncate(cut);
        clean.push('…');
    }
    clean
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
            format!("no connector named `{}`", for_sender(name)),
        );
    };
    if !plugin.world().handles_webhooks() {
        return reason(
            StatusCode::NOT_FOUND,
            "not_a_webhook_connector",
            format!(
                "connector `{}` polls; it takes no webhooks",
                for_sender(name)
            ),
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
        Err(rejection) => {
            tracing::info!(connector = %name, error = %rejection.body_text(), "webhook body unreadable");
            return reason(
                rejection.status(),
                "bad_body",
                "the request body could not be read",
            );
        }
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
        return not_stored(name, &error);
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

/// A 503 the sender will retry; what went wrong goes to our log only.
fn not_stored(name: &str, error: &LogError) -> Response {
    tracing::error!(connector = %name, %error, "could not store changes; sender will retry");
    let (code, text) = match error {
        LogError::Full(_) => ("log_full", "storage full, retry later"),
        _ => ("not_stored", "storage unavailable, retry later"),
    };
    reason(StatusCode::SERVICE_UNAVAILABLE, code, text)
}

/// Maps a failed call to what the sender is told; the detail goes to our log.
fn call_failed(name: &str, error: CallError) -> Response {
    let (status, code, text) = match &error {
        CallError::Rejected(Rejection::BadRequest(r)) => {
            tracing::info!(connector = %name, reason = %r, "webhook rejected as malformed");
            return reason(StatusCode::BAD_REQUEST, "bad_request", for_sender(r));
        }
        CallError::Rejected(Rejection::Unauthorized(r)) => {
            tracing::warn!(connector = %name, reason = %r, "webhook failed authentication");
            return reason(StatusCode::UNAUTHORIZED, "unauthorized", for_sender(r));
        }
        CallError::Rejected(Rejection::Transient(r)) => {
            tracing::warn!(connector = %name, reason = %r, "connector asked the sender to retry");
            return reason(
                StatusCode::SERVICE_UNAVAILABLE,
                "transient",
                "temporarily unavailable, retry later",
            );
        }
        CallError::Rejected(Rejection::Fatal(r)) => {
            tracing::error!(connector = %name, reason = %r, "connector reported a fatal error");
            return reason(
                StatusCode::INTERNAL_SERVER_ERROR,
                "connector_failed",
                "connector failed",
            );
        }
        CallError::Instantiate(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "connector_unavailable",
            "connector unavailable, retry later",
        ),
        CallError::Timeout(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "connector_unavailable",
            "connector timed out, retry later",
        ),
        CallError::CpuBudget(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "connector_failed",
            "connector exceeded its CPU budget",
        ),
        CallError::Memory(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "connector_failed",
            "connector exceeded its memory cap",
        ),
        // Other calls hold the process-wide plugin memory right now: not
        // this request's fault, and a retry will find room.
        CallError::MemoryBudget(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "gateway busy, retry later",
        ),
        CallError::TooLarge(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "connector_failed",
            "connector returned too much",
        ),
        // Traps, invalid results and whatever else a plugin gets wrong.
        _ => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "connector_failed",
            "connector failed",
        ),
    };
    tracing::error!(connector = %name, %error, "plugin call failed");
    reason(status, code, text)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plugin_reason_reaches_the_sender_clipped_and_clean() {
        assert_eq!(for_sender("bad signature"), "bad signature");
        assert_eq!(
            for_sender("line\r\nInjected: yes\u{1b}[31m"),
            "lineInjected: yes[31m"
        );
        let long = "é".repeat(500);
        let clipped = for_sender(&long);
        assert_eq!(clipped.chars().count(), MAX_SENDER_REASON + 1);
        assert!(clipped.ends_with('…'));
    }

    async fn body_of(response: Response) -> String {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    #[tokio::test]
    async fn sandbox_bounds_reach_the_sender_as_retry_or_failure() {
        let busy = call_failed("c", CallError::MemoryBudget(128 << 20));
        assert_eq!(
            busy.status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "retried later"
        );
        let big = call_failed("c", CallError::TooLarge("1048576 bytes of strings".into()));
        assert_eq!(big.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = body_of(big).await;
        assert!(
            body.contains("connector returned too much") && !body.contains("1048576"),
            "{body}"
        );
    }

    #[tokio::test]
    async fn internal_failures_reach_the_sender_as_a_generic_reason() {
        let failures = [
            CallError::Trap("wasm backtrace: 0: 0x1234 - <unknown>!core::panicking".into()),
            CallError::Instantiate("/var/lib/soundbox-gateway/plugin-cache/x.cwasm".into()),
            CallError::Rejected(Rejection::Fatal(
                "GET https://api.bank.example/v1?key=s".into(),
            )),
            CallError::Rejected(Rejection::Transient("https://api.bank.example down".into())),
        ];
        for failure in failures {
            let shown = format!("{failure}");
            let body = body_of(call_failed("c", failure)).await;
            assert!(
                !body.contains("wasm") && !body.contains("/var/") && !body.contains("bank.example"),
                "{shown} became {body}"
            );
        }
        let full = not_stored(
            "c",
            &LogError::Full("12 MiB free on /var/lib, 64 reserved".into()),
        );
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_of(full).await;
        assert!(
            body.contains("log_full") && !body.contains("/var/"),
            "{body}"
        );
        let failed = not_stored(
            "c",
            &LogError::Storage("Io(Custom { kind: StorageFull })".into()),
        );
        let body = body_of(failed).await;
        assert!(
            !body.contains("Io(") && body.contains("retry later"),
            "{body}"
        );
    }
}
