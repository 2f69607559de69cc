//! A fake SePay transaction API v2 on loopback, for the SePay e2e tests,
//! played from what SePay publishes (`GET /v2/transactions`):
//!
//! - `Authorization: Bearer <token>`, else 401 `error_code: unauthorized`;
//!   it can be told to refuse the right token too (a rotated token).
//! - 3 requests a second, checked before auth: 429 `error_code:
//!   rate_limited` with `Retry-After`, `X-RateLimit-Limit`, `-Remaining`,
//!   `-Reset`; or 429s on demand.
//! - `transaction_date_from` / `_to` (inclusive, `YYYY-MM-DD HH:MM:SS`),
//!   `webhook_success`, `transfer_type`, `bank_account_id`, `va_id`,
//!   `since_id` (transactions recorded after that one), `transaction_date_sort`
//!   (`asc`, or newest first by default), `page` / `per_page` (≤ 100) with
//!   `meta.pagination.has_more`.
//! - UUID `id`s and `bank_account_id`s; the webhook of the same transaction
//!   carries a separate integer id, as SePay's does.
//!
//! What SePay does not publish is played the plausible way and noted:
//! `since_id` is taken as "recorded after", and its results are still
//! ordered by bank date. Transactions are recorded in the order they are
//! [`SepayApi::add`]ed, so one added now with an old bank time is recorded
//! late. Nothing here assumes the API's fields equal the webhook's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::net::serve;
use soundbox_plugin_sdk::time::parse_vietnam_local;

/// The account `sepay_webhook()` pays into.
pub const ACCOUNT: &str = "0123499999";
/// SePay's UUID of that bank account.
pub const BANK_ACCOUNT_ID: &str = "d6719d04-5b1e-4c2a-9f3d-a6006ab65aca";
/// SePay's documented limit: requests a second per IP.
const RATE_PER_SEC: usize = 3;

/// One transaction, with the fields v2 returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SepayTx {
    /// v2's id (a UUID).
    pub id: String,
    /// The integer id SePay's webhook carries for it.
    pub webhook_id: u64,
    /// `YYYY-MM-DD HH:MM:SS`, Vietnam time: the bank's time.
    pub transaction_date: String,
    pub account_number: String,
    pub va: Option<String>,
    pub va_id: Option<String>,
    pub amount_in: u64,
    pub amount_out: u64,
    pub accumulated: u64,
    pub transaction_content: String,
    pub reference_number: Option<String>,
    pub code: Option<String>,
    pub bank_brand_name: String,
    pub bank_account_id: String,
    /// Whether SePay delivered its webhook (`webhook_success`).
    pub webhook_success: bool,
}

impl SepayTx {
    /// Incoming transaction `n` of `amount` đồng, made now, its webhook
    /// (integer id `n`, like [`crate::sepay_webhook`]`(n, amount)`) not yet
    /// delivered. Reference `MBVCB.<n>`.
    pub fn incoming(n: u64, amount: u64) -> SepayTx {
        SepayTx {
            id: format!("0b8e6f1c-{:04x}-4c1e-9f7e-{n:012x}", n % 0xffff),
            webhook_id: n,
            transaction_date: crate::vietnam_now(),
            account_number: ACCOUNT.into(),
            va: None,
            va_id: None,
            amount_in: amount,
            amount_out: 0,
            accumulated: 19_077_000,
            transaction_content: format!("thanh toan don {n}"),
            reference_number: Some(format!("MBVCB.{n}")),
            code: None,
            bank_brand_name: "Vietcombank".into(),
            bank_account_id: BANK_ACCOUNT_ID.into(),
            webhook_success: false,
        }
    }

    /// The same, dated `date` (`YYYY-MM-DD HH:MM:SS`, Vietnam time).
    pub fn at(mut self, date: &str) -> SepayTx {
        self.transaction_date = date.into();
        self
    }

    /// The same, with bank reference `reference` (or none).
    pub fn reference(mut self, reference: Option<&str>) -> SepayTx {
        self.reference_number = reference.map(str::to_string);
        self
    }

    /// The same, its webhook delivered (`webhook_success = 1`).
    pub fn delivered(mut self) -> SepayTx {
        self.webhook_success = true;
        self
    }

    /// The key `sepay-poll` gives it.
    pub fn poll_key(&self) -> String {
        format!("v2/{}", self.id)
    }

    /// The key `sepay-webhook` gives it: SePay's integer id.
    pub fn webhook_key(&self) -> String {
        self.webhook_id.to_string()
    }

    /// The item as `GET /v2/transactions` lists it.
    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "transaction_date": self.transaction_date,
            "account_number": self.account_number,
            "va": self.va,
            "transfer_type": if self.amount_in > 0 { "in" } else { "out" },
            "amount_in": self.amount_in,
            "amount_out": self.amount_out,
            "accumulated": self.accumulated,
            "transaction_content": self.transaction_content,
            "reference_number": self.reference_number,
            "code": self.code,
            "bank_brand_name": self.bank_brand_name,
            "bank_account_id": self.bank_account_id,
            "va_id": self.va_id,
            "webhook_success": u8::from(self.webhook_success),
        })
    }

    /// The webhook SePay sends for this transaction.
    pub fn webhook_body(&self) -> String {
        let incoming = self.amount_in > 0;
        json!({
            "id": self.webhook_id,
            "gateway": self.bank_brand_name,
            "transactionDate": self.transaction_date,
            "accountNumber": self.account_number,
            "code": self.code,
            "content": self.transaction_content,
            "transferType": if incoming { "in" } else { "out" },
            "transferAmount": if incoming { self.amount_in } else { self.amount_out },
            "accumulated": self.accumulated,
            "subAccount": self.va,
            "referenceCode": self.reference_number,
            "description": ""
        })
        .to_string()
    }
}

/// `at` as Vietnam local time, the way SePay writes dates.
pub fn vietnam_time(at: SystemTime) -> String {
    let local = at + Duration::from_secs(7 * 3600);
    humantime::format_rfc3339_seconds(local)
        .to_string()
        .trim_end_matches('Z')
        .replacen('T', " ", 1)
}

/// `minutes` ago, Vietnam time.
pub fn vietnam_minutes_ago(minutes: u64) -> String {
    vietnam_time(SystemTime::now() - Duration::from_secs(minutes * 60))
}

#[derive(Debug, Default)]
struct State {
    token: String,
    reject_token: bool,
    /// In the order SePay recorded them.
    transactions: Vec<SepayTx>,
    rate_limit_next: u32,
    enforce_rate: bool,
    recent: Vec<Instant>,
    requests: u64,
    rate_limited: u64,
    unauthorized: u64,
    queries: Vec<HashMap<String, String>>,
}

/// The running fake; it lives as long as the test process.
pub struct SepayApi {
    /// Base URL, e.g. `http://127.0.0.1:41234` (the plugin's `base_url`).
    pub url: String,
    state: Arc<Mutex<State>>,
}

impl SepayApi {
    /// Serves on a free loopback port; requests must carry `Bearer <token>`.
    pub fn start(token: &str) -> SepayApi {
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
            enforce_rate: true,
            ..State::default()
        }));
        let shared = state.clone();
        let app = axum::Router::new().route(
            "/v2/transactions",
            axum::routing::get(
                move |headers: HeaderMap, Query(query): Query<HashMap<String, String>>| {
                    let state = shared.clone();
                    async move { list(&mut state.lock().expect("state"), &headers, query) }
                },
            ),
        );
        let addr = serve(app);
        let url = format!("http://{addr}");
        SepayApi { url, state }
    }

    /// SePay records `tx` now (after every one added before). An old
    /// `transaction_date` makes it a late recording.
    pub fn add(&self, tx: SepayTx) {
        self.state.lock().expect("state").transactions.push(tx);
    }

    /// Marks the webhook of the transaction with UUID `id` as delivered or
    /// failed.
    pub fn set_webhook_success(&self, id: &str, success: bool) {
        let mut state = self.state.lock().expect("state");
        for tx in state.transactions.iter_mut().filter(|t| t.id == id) {
            tx.webhook_success = success;
        }
    }

    /// While `true`, even the right token gets 401 (rotated in the dashboard).
    pub fn reject_token(&self, reject: bool) {
        self.state.lock().expect("state").reject_token = reject;
    }

    /// The next `n` requests get `429` with `Retry-After: 1`.
    pub fn rate_limit_next(&self, n: u32) {
        self.state.lock().expect("state").rate_limit_next = n;
    }

    /// Requests received on `/v2/transactions`, 429s and 401s included.
    pub fn requests(&self) -> u64 {
        self.state.lock().expect("state").requests
    }

    /// 429s sent.
    pub fn rate_limited(&self) -> u64 {
        self.state.lock().expect("state").rate_limited
    }

    /// 401s sent.
    pub fn unauthorized(&self) -> u64 {
        self.state.lock().expect("state").unauthorized
    }

    /// The decoded query of every request, in order.
    pub fn queries(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().expect("state").queries.clone()
    }
}

fn error(status: StatusCode, message: &str, code: &str) -> Response {
    let body = json!({ "status": "error", "message": message, "error_code": code });
    (status, axum::Json(body)).into_response()
}

fn rate_limited(state: &mut State, reset_secs: u64) -> Response {
    state.rate_limited += 1;
    let mut response = error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "rate_limited",
    );
    let h = response.headers_mut();
    let reset = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() + reset_secs)
        .unwrap_or_default();
    h.insert(header::RETRY_AFTER, reset_secs.into());
    h.insert("x-ratelimit-limit", RATE_PER_SEC.into());
    h.insert("x-ratelimit-remaining", 0.into());
    h.insert("x-ratelimit-reset", reset.into());
    response
}

/// `GET /v2/transactions`.
fn list(state: &mut State, headers: &HeaderMap, query: HashMap<String, String>) -> Response {
    state.requests += 1;
    state.queries.push(query.clone());
    // The rate limit is checked before auth.
    if state.rate_limit_next > 0 {
        state.rate_limit_next -= 1;
        return rate_limited(state, 1);
    }
    let now = Instant::now();
    state
        .recent
        .retain(|t| now.duration_since(*t) < Duration::from_secs(1));
    if state.enforce_rate && state.recent.len() >= RATE_PER_SEC {
        return rate_limited(state, 1);
    }
    state.recent.push(now);

    let expected = format!("Bearer {}", state.token);
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if state.reject_token || given != Some(expected.as_str()) {
        state.unauthorized += 1;
        return error(StatusCode::UNAUTHORIZED, "Unauthenticated.", "unauthorized");
    }

    let p = match params(&query) {
        Ok(values) => values,
        Err(message) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &message,
                "validation_error",
            );
        }
    };
    let after = match &p.since_id {
        None => None,
        Some(id) => match state.transactions.iter().position(|t| &t.id == id) {
            Some(i) => Some(i),
            None => {
                return error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "The selected since id is invalid.",
                    "validation_error",
                );
            }
        },
    };
    let text = |key: &str| query.get(key).map(String::as_str);
    let mut matching: Vec<(i64, usize, &SepayTx)> = state
        .transactions
        .iter()
        .enumerate()
        .filter(|(i, _)| after.is_none_or(|a| *i > a))
        .filter_map(|(i, tx)| Some((parse_vietnam_local(&tx.transaction_date)?, i, tx)))
        .filter(|(at, _, _)| p.from.is_none_or(|f| *at >= f) && p.to.is_none_or(|t| *at <= t))
        .filter(|(_, _, tx)| match text("webhook_success") {
            Some("0") => !tx.webhook_success,
            Some("1") => tx.webhook_success,
            _ => true,
        })
        .filter(|(_, _, tx)| match text("transfer_type") {
            Some("in") => tx.amount_in > 0,
            Some("out") => tx.amount_out > 0,
            _ => true,
        })
        .filter(|(_, _, tx)| text("bank_account_id").is_none_or(|b| b == tx.bank_account_id))
        .filter(|(_, _, tx)| text("va_id").is_none_or(|v| Some(v) == tx.va_id.as_deref()))
        .collect();
    // Among equal dates, in the order recorded.
    matching.sort_by_key(|(at, i, _)| (*at, *i));
    if !p.ascending {
        matching.reverse();
    }
    let total = matching.len();
    let data: Vec<Value> = matching
        .iter()
        .skip((p.page - 1).saturating_mul(p.per_page))
        .take(p.per_page)
        .map(|(_, _, tx)| tx.json())
        .collect();
    let body = json!({
        "status": "success",
        "data": data,
        "meta": { "pagination": {
            "total": total,
            "per_page": p.per_page,
            "current_page": p.page,
            "last_page": total.div_ceil(p.per_page).max(1),
            "has_more": p.page.saturating_mul(p.per_page) < total,
        }}
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

struct Params {
    per_page: usize,
    page: usize,
    from: Option<i64>,
    to: Option<i64>,
    since_id: Option<String>,
    ascending: bool,
}

/// The query, checked (a 422 with a message otherwise).
fn params(query: &HashMap<String, String>) -> Result<Params, String> {
    let number = |key: &str, default: usize| match query.get(key) {
        None => Ok(default),
        Some(v) => v
            .parse::<usize>()
            .map_err(|_| format!("The {key} field must be an integer.")),
    };
    let date = |key: &str| match query.get(key) {
        None => Ok(None),
        Some(v) => parse_vietnam_local(v)
            .map(Some)
            .ok_or_else(|| format!("The {key} field must match the format Y-m-d H:i:s.")),
    };
    let (per_page, page) = (number("per_page", 20)?, number("page", 1)?);
    if !(1..=100).contains(&per_page) || page < 1 {
        return Err("per_page must be 1 to 100 and page at least 1.".into());
    }
    let ascending = match query.get("transaction_date_sort").map(String::as_str) {
        None | Some("desc") => false,
        Some("asc") => true,
        Some(_) => return Err("The transaction_date_sort must be asc or desc.".into()),
    };
    for key in ["webhook_success"] {
        if query.get(key).is_some_and(|v| v != "0" && v != "1") {
            return Err(format!("The {key} field must be 0 or 1."));
        }
    }
    Ok(Params {
        per_page,
        page,
        from: date("transaction_date_from")?,
        to: date("transaction_date_to")?,
        since_id: query.get("since_id").cloned(),
        ascending,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(api: &SepayApi, token: Option<&str>, query: &str) -> (u16, HeaderMap, Value) {
        let mut request =
            reqwest::Client::new().get(format!("{}/v2/transactions?{query}", api.url));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("request");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        (status, headers, response.json().await.expect("JSON body"))
    }

    fn ids(body: &Value) -> Vec<String> {
        body["data"]
            .as_array()
            .expect("data")
            .iter()
            .map(|t| t["id"].as_str().expect("id").to_string())
            .collect()
    }

    fn api_with_five() -> (SepayApi, Vec<SepayTx>) {
        let api = SepayApi::start("t0k");
        api.state.lock().expect("state").enforce_rate = false;
        let txs: Vec<SepayTx> = (1..=5)
            .map(|n| SepayTx::incoming(n, 1_000 * n).at(&format!("2024-07-25 10:0{n}:00")))
            .collect();
        for tx in &txs {
            api.add(tx.clone());
        }
        (api, txs)
    }

    #[tokio::test]
    async fn the_token_is_checked_and_can_be_rotated() {
        let (api, _) = api_with_five();
        for token in [None, Some("wrong")] {
            let (status, _, body) = get(&api, token, "").await;
            assert_eq!(status, 401);
            assert_eq!(body["error_code"], "unauthorized");
        }
        let (status, _, body) = get(&api, Some("t0k"), "").await;
        assert_eq!(status, 200);
        assert_eq!(body["data"].as_array().map(Vec::len), Some(5));
        api.reject_token(true);
        assert_eq!(get(&api, Some("t0k"), "").await.0, 401);
        api.reject_token(false);
        assert_eq!(get(&api, Some("t0k"), "").await.0, 200);
        assert_eq!((api.requests(), api.unauthorized()), (5, 3));
    }

    #[tokio::test]
    async fn items_have_uuids_and_no_webhook_id() {
        let (api, txs) = api_with_five();
        let (_, _, body) = get(&api, Some("t0k"), "per_page=1").await;
        let item = &body["data"][0];
        for key in ["id", "bank_account_id"] {
            let text = item[key].as_str().expect(key);
            assert_eq!(text.len(), 36, "{key}: {text}");
            assert_eq!(text.matches('-').count(), 4, "{key}: {text}");
        }
        assert_eq!(item["webhook_success"], 0);
        let ids: Vec<&String> = txs.iter().map(|t| &t.id).collect();
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(ids.len(), unique.len());
    }

    #[tokio::test]
    async fn pages_newest_first_with_has_more_or_ascending() {
        let (api, txs) = api_with_five();
        let mut seen = Vec::new();
        for (page, more) in [(1, true), (2, true), (3, false)] {
            let (status, _, body) =
                get(&api, Some("t0k"), &format!("per_page=2&page={page}")).await;
            assert_eq!(status, 200);
            assert_eq!(body["meta"]["pagination"]["has_more"], more, "page {page}");
            assert_eq!(body["meta"]["pagination"]["total"], 5);
            seen.extend(ids(&body));
        }
        let newest_first: Vec<String> = txs.iter().rev().map(|t| t.id.clone()).collect();
        assert_eq!(seen, newest_first);
        let (_, _, asc) = get(&api, Some("t0k"), "transaction_date_sort=asc").await;
        let oldest_first: Vec<String> = txs.iter().map(|t| t.id.clone()).collect();
        assert_eq!(ids(&asc), oldest_first);
    }

    #[tokio::test]
    async fn since_id_is_what_was_recorded_after() {
        let (api, txs) = api_with_five();
        // Recorded last, with the oldest bank time.
        let late = SepayTx::incoming(6, 6_000).at("2024-07-25 09:00:00");
        api.add(late.clone());
        let (_, _, body) = get(
            &api,
            Some("t0k"),
            &format!("since_id={}&transaction_date_sort=asc", txs[4].id),
        )
        .await;
        assert_eq!(ids(&body), std::slice::from_ref(&late.id));
        let (_, _, body) = get(
            &api,
            Some("t0k"),
            "transaction_date_from=2024-07-25%2010:00:00&transaction_date_sort=asc",
        )
        .await;
        assert!(!ids(&body).contains(&late.id), "its bank time is older");
        let (status, _, _) = get(&api, Some("t0k"), "since_id=nope").await;
        assert_eq!(status, 422);
    }

    #[tokio::test]
    async fn filters_by_webhook_success_date_and_direction() {
        let (api, txs) = api_with_five();
        api.set_webhook_success(&txs[0].id, true);
        let (_, _, body) = get(&api, Some("t0k"), "webhook_success=0").await;
        assert_eq!(ids(&body).len(), 4);
        let (_, _, body) = get(&api, Some("t0k"), "webhook_success=1").await;
        assert_eq!(ids(&body), [txs[0].id.clone()]);
        let (_, _, body) = get(&api, Some("t0k"), "transfer_type=out").await;
        assert!(ids(&body).is_empty());
        // `%20` and `+` both decode to a space.
        for from in ["2024-07-25%2010%3A03%3A00", "2024-07-25+10:03:00"] {
            let (_, _, body) =
                get(&api, Some("t0k"), &format!("transaction_date_from={from}")).await;
            assert_eq!(ids(&body).len(), 3, "{from}");
        }
        for bad in [
            "transaction_date_from=2024-07-25",
            "per_page=101",
            "page=0",
            "webhook_success=2",
        ] {
            let (status, _, body) = get(&api, Some("t0k"), bad).await;
            assert_eq!(status, 422, "{bad}");
            assert_eq!(body["error_code"], "validation_error");
        }
    }

    #[tokio::test]
    async fn two_transfers_may_share_a_reference_or_have_none() {
        let api = SepayApi::start("t0k");
        let a = SepayTx::incoming(1, 50_000).reference(Some("FT1"));
        let b = SepayTx::incoming(2, 50_000).reference(Some("FT1"));
        let c = SepayTx::incoming(3, 50_000).reference(None);
        for tx in [&a, &b, &c] {
            api.add(tx.clone());
        }
        let (_, _, body) = get(&api, Some("t0k"), "").await;
        assert_eq!(ids(&body).len(), 3);
        assert_ne!(a.poll_key(), b.poll_key());
        assert_ne!(a.webhook_key(), b.webhook_key());
        assert!(
            body["data"]
                .as_array()
                .expect("data")
                .iter()
                .any(|t| t["reference_number"].is_null())
        );
    }

    #[tokio::test]
    async fn rate_limits_with_sepays_headers() {
        let (api, _) = api_with_five();
        api.rate_limit_next(1);
        let (status, headers, body) = get(&api, None, "").await;
        assert_eq!(status, 429, "before auth");
        assert_eq!(headers["retry-after"], "1");
        assert_eq!(headers["x-ratelimit-limit"], "3");
        assert_eq!(headers["x-ratelimit-remaining"], "0");
        assert!(headers.contains_key("x-ratelimit-reset"));
        assert_eq!(body["error_code"], "rate_limited");
        // Three a second.
        api.state.lock().expect("state").enforce_rate = true;
        let mut statuses = Vec::new();
        for _ in 0..4 {
            statuses.push(get(&api, Some("t0k"), "").await.0);
        }
        assert_eq!(statuses, [200, 200, 200, 429]);
        assert_eq!(api.rate_limited(), 2);
    }
}
