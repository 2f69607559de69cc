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
//!
//! Whatever a plugin says, no change older than the dedupe window reaches the
//! log ([`StaleRule`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use tokio::net::TcpListener;

use crate::connectors::{CallError, Connectors, IncomingRequest, Plugin, Rejection};
use crate::http_server;
use crate::log::{AppendExpected, Appended, EventLog, KvBatch, LogError};
use crate::metrics::metrics;
use crate::model::{self, BalanceChange};
use crate::tasks::Tasks;

pub mod mqtt;
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
    /// Refuses changes older than the dedupe window.
    pub stale: StaleRule,
}

/// Taken off `log.dedupe_retention_days` to get the oldest bank time
/// accepted. The dedupe key is dated when the gateway stored the payment,
/// which is a little after the bank's time (provider retries, a backfill)
/// or, with a bank or Pi clock off, even before it; the day covers that and
/// the garbage collector's pass every ten minutes, so a key is always still there for
/// any payment old enough to be accepted.
pub const STALE_MARGIN: Duration = Duration::from_secs(24 * 3600);

/// A change dated further ahead than this is logged as a clock problem, and
/// accepted: a Pi after a power cut may run behind until NTP answers, and
/// refusing would lose a real payment.
pub const FUTURE_MARGIN: Duration = Duration::from_secs(3600);

/// The gateway's replay rule: a change whose bank time (`occurred_at_ms`) is
/// older than the dedupe retention minus [`STALE_MARGIN`] is refused, since
/// its dedupe key may be forgotten already and a replayed webhook (VNPay's
/// return URL hands the payer a signed IPN) would be announced again.
/// A change without a bank time is not judged: plugins with a signed time
/// set it, and keep their own, shorter, replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StaleRule {
    max_age_ms: i64,
}

impl StaleRule {
    /// The rule for a log remembering keys for `dedupe_retention`. With a
    /// retention under two days the margin is half of it, so something is
    /// still accepted.
    pub fn new(dedupe_retention: Duration) -> StaleRule {
        let margin = STALE_MARGIN.min(dedupe_retention / 2);
        let max_age = dedupe_retention.saturating_sub(margin);
        StaleRule {
            max_age_ms: i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// The oldest a change may be, as a duration.
    pub fn max_age(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.max_age_ms).unwrap_or(0))
    }

    /// Whether a change dated `occurred_at_ms` is refused at `now_ms`; exactly
    /// [`Self::max_age`] old is still accepted.
    pub fn is_stale(&self, occurred_at_ms: Option<i64>, now_ms: i64) -> bool {
        occurred_at_ms.is_some_and(|at| now_ms.saturating_sub(at) > self.max_age_ms)
    }

    /// Keeps what the log may take; each stale change is logged and counted
    /// in `soundbox_stale_changes_total{connector}`, and each far-future one
    /// logged. Returns the kept changes and how many were stale.
    pub fn sift(
        &self,
        connector: &str,
        changes: Vec<BalanceChange>,
        now_ms: i64,
    ) -> (Vec<BalanceChange>, usize) {
        let future_ms = FUTURE_MARGIN.as_millis() as i64;
        let mut stale = 0;
        let kept = changes
            .into_iter()
            .filter(|c| {
                if self.is_stale(c.occurred_at_ms, now_ms) {
                    stale += 1;
                    metrics()
                        .stale_changes
                        .with_label_values(&[connector])
                        .inc();
                    tracing::warn!(
                        %connector, provider = %c.provider, transaction_id = %c.transaction_id,
                        occurred_at_ms = c.occurred_at_ms, max_age_days = self.max_age_ms / 86_400_000,
                        "stale balance change refused: older than the dedupe window"
                    );
                    return false;
                }
                if let Some(at) = c.occurred_at_ms
                    && at.saturating_sub(now_ms) > future_ms
                {
                    tracing::warn!(
                        %connector, provider = %c.provider, transaction_id = %c.transaction_id,
                        ahead_secs = at.saturating_sub(now_ms) / 1000,
                        "balance change dated in the future (accepted): is this box's clock right?"
                    );
                }
                true
            })
            .collect();
        (kept, stale)
    }
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

    /// Serves until `tasks` is cancelled, then gives requests in flight up
    /// to `drain` to finish.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tasks: Tasks,
        drain: Duration,
    ) -> std::io::Result<()> {
        let limits = http_server::Limits::with_max_connections(MAX_CONNECTIONS).with_drain(drain);
        http_server::serve(listener, self.router(), limits, tasks).await
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

/// A webhook, counted in `webhook_responses_total` and timed in
/// `webhook_duration_seconds` by connector and status.
async fn webhook(
    State(ingress): State<Arc<Ingress>>,
    Path(name): Path<String>,
    method: Method,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let plugin = ingress.connectors.load().get(&name).cloned();
    let label = if plugin.is_some() { &name } else { "unknown" };
    let response = handle(&ingress, plugin, &name, method, query, headers, body).await;
    let status = response.status();
    let labels = [label, status.as_str()];
    let metrics = metrics();
    metrics.webhook_responses.with_label_values(&labels).inc();
    metrics
        .webhook_seconds
        .with_label_values(&labels)
        .observe(started.elapsed().as_secs_f64());
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
    // From here until its append is queued, the committer may hold a
    // commit for this webhook to share it.
    let expected = ingress.log.expect_append();
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
        Err(error) => return answer(name, Err(error)),
    };
    // Only stale changes: refused (4xx, so the sender does not retry into
    // acceptance) and nothing, KV writes included, kept. Mixed: the fresh ones
    // are stored and the plugin's reply sent, since a 4xx would lose them and
    // a retry would drop the stale ones again.
    let (changes, stale) = ingress.stale.sift(name, result.changes, model::now_ms());
    if stale > 0 && changes.is_empty() {
        return stale_refused();
    }
    let kv = plugin.kv_batch(result.kv_writes);
    if let Err(error) = store(&*ingress.log, name, changes, kv, expected).await {
        return not_stored(name, &error);
    }
    answer(name, Ok(result.reply))
}

/// What the sender is told once the plugin has answered (and its changes
/// are stored): a failed call's status and generic reason, the plugin's
/// reply, or `200 {"ok":true}`. `plugin test` prints the same.
pub(crate) fn answer(
    name: &str,
    result: Result<Option<crate::connectors::Reply>, CallError>,
) -> Response {
    match result {
        Err(error) => call_failed(name, error),
        Ok(Some(reply)) => plugin_reply(name, reply),
        Ok(None) => (
            StatusCode::OK,
            axum::Json(serde_json::json!({ "ok": true })),
        )
            .into_response(),
    }
}

/// Appends `changes` durably, with the plugin's KV writes from the same
/// call, and logs what became of each: new, or a duplicate of a payment
/// already seen (a provider's retry, or a poller and a webhook connector that
/// both saw it). `expected` is let go as the append is queued.
pub async fn store(
    log: &dyn EventLog,
    connector: &str,
    changes: Vec<BalanceChange>,
    kv: Option<KvBatch>,
    expected: AppendExpected,
) -> Result<(), LogError> {
    if changes.is_empty() && kv.is_none() {
        return Ok(());
    }
    let keys: Vec<(String, String, u64)> = changes
        .iter()
        .map(|c| (c.provider.clone(), c.transaction_id.clone(), c.amount))
        .collect();
    // Let go before the append is queued, not after: a committer that
    // received it while this still counted would wait for it in vain.
    drop(expected);
    let committed = log.append(changes, kv).await?;
    if let Err(reason) = &committed.kv {
        tracing::warn!(%connector, %reason, "plugin KV writes not applied");
    }
    for ((provider, transaction_id, amount), outcome) in keys.iter().zip(committed.appended) {
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

/// A webhook whose every change is older than the dedupe window.
pub(crate) fn stale_refused() -> Response {
    reason(
        StatusCode::BAD_REQUEST,
        "stale",
        "payment is older than the dedupe window",
    )
}

/// A 503 the sender will retry; what went wrong goes to our log only, and
/// only here (the store leaves it to whoever answers for the failure).
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

    const DAY_MS: i64 = 86_400_000;

    fn dated(id: &str, occurred_at_ms: Option<i64>) -> BalanceChange {
        BalanceChange {
            occurred_at_ms,
            ..BalanceChange::example(id, 10_000)
        }
    }

    #[test]
    fn stale_rule_boundaries() {
        let rule = StaleRule::new(Duration::from_secs(30 * 24 * 3600));
        assert_eq!(rule.max_age(), Duration::from_secs(29 * 24 * 3600));
        let now = 1_800_000_000_000;
        let oldest = now - 29 * DAY_MS;
        assert!(
            !rule.is_stale(Some(oldest), now),
            "exactly the limit: inside"
        );
        assert!(!rule.is_stale(Some(oldest + 1), now), "just inside");
        assert!(rule.is_stale(Some(oldest - 1), now), "just outside");
        assert!(rule.is_stale(Some(now - 40 * DAY_MS), now), "40 days");
        assert!(!rule.is_stale(None, now), "no bank time: not judged");
        assert!(!rule.is_stale(Some(now + 365 * DAY_MS), now), "future");
        assert!(rule.is_stale(Some(i64::MIN), now), "no overflow");
        // One day of retention: half a day of margin, half a day accepted.
        let short = StaleRule::new(Duration::from_secs(24 * 3600));
        assert_eq!(short.max_age(), Duration::from_secs(12 * 3600));
        assert!(!short.is_stale(Some(now - DAY_MS / 2), now));
        assert!(short.is_stale(Some(now - DAY_MS / 2 - 1), now));
    }

    #[test]
    fn sift_drops_and_counts_only_the_stale() {
        let rule = StaleRule::new(Duration::from_secs(30 * 24 * 3600));
        let now = model::now_ms();
        let counter = || {
            metrics()
                .stale_changes
                .with_label_values(&["sift-test"])
                .get()
        };
        let before = counter();
        let changes = vec![
            dated("fresh", Some(now - 60_000)),
            dated("old", Some(now - 29 * DAY_MS - 1)),
            dated("undated", None),
            dated("ahead", Some(now + 2 * DAY_MS)),
            dated("older", Some(now - 400 * DAY_MS)),
        ];
        let (kept, stale) = rule.sift("sift-test", changes, now);
        let ids: Vec<_> = kept.iter().map(|c| c.transaction_id.as_str()).collect();
        assert_eq!(ids, ["fresh", "undated", "ahead"]);
        assert_eq!(stale, 2);
        assert_eq!(counter() - before, 2);
        let (kept, stale) = rule.sift("sift-test", Vec::new(), now);
        assert!(kept.is_empty() && stale == 0);
    }

    #[tokio::test]
    async fn stale_is_a_400_with_a_reason() {
        let refused = stale_refused();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let body: serde_json::Value =
            serde_json::from_str(&body_of(refused).await).unwrap_or_default();
        assert_eq!(
            body,
            serde_json::json!({"error": "stale", "reason": "payment is older than the dedupe window"})
        );
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
            CallError::Trap(wasmtime::Error::msg(
                "wasm backtrace: 0: 0x1234 - <unknown>!core::panicking",
            )),
            CallError::Instantiate(wasmtime::Error::msg(
                "/var/lib/soundbox-gateway/plugin-cache/x.cwasm",
            )),
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
            &LogError::Full(crate::log::StorageError::msg(
                "12 MiB free on /var/lib, 64 reserved",
            )),
        );
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = body_of(full).await;
        assert!(
            body.contains("log_full") && !body.contains("/var/"),
            "{body}"
        );
        let failed = not_stored(
            "c",
            &LogError::storage(
                "segment write /var/lib/x",
                std::io::Error::other("Io(Custom { kind: StorageFull })"),
            ),
        );
        let body = body_of(failed).await;
        assert!(
            !body.contains("Io(") && body.contains("retry later"),
            "{body}"
        );
    }
}
