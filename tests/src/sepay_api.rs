//! A fake SePay transaction API v2 on loopback, for `sepay-poll`'s end-to-end
//! tests: `GET /v2/transactions` with a bearer token, `transaction_date_from` /
//! `transaction_date_to` (inclusive), `per_page` / `page` paging with
//! `meta.pagination.has_more`, newest first, and 429s on demand.
//!
//! What is not known of the real API (see the plugin's README) is played
//! strictly here, so a plugin that gets it wrong fails loudly: a date not in
//! `YYYY-MM-DD HH:MM:SS` or a `per_page` over 100 gets a 422.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use soundbox_plugin_sdk::time::parse_vietnam_local;

/// The account `sepay_webhook()` pays into.
pub const ACCOUNT: &str = "0123499999";

/// One transaction, with the fields v2 returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SepayTx {
    /// v2's id (a UUID).
    pub id: String,
    /// The integer id the same transaction has in SePay's webhook.
    pub webhook_id: u64,
    /// `YYYY-MM-DD HH:MM:SS`, Vietnam time.
    pub transaction_date: String,
    pub account_number: String,
    pub va: Option<String>,
    pub amount_in: u64,
    pub amount_out: u64,
    pub accumulated: u64,
    pub transaction_content: String,
    pub reference_number: Option<String>,
    pub code: Option<String>,
    pub bank_brand_name: String,
}

impl SepayTx {
    /// Incoming transaction `n` of `amount` đồng, made now: the same payment
    /// as [`crate::sepay_webhook`]`(n, amount)` (account, reference
    /// `MBVCB.<n>`, amount, content).
    pub fn incoming(n: u64, amount: u64) -> SepayTx {
        SepayTx {
            id: format!("00000000-0000-4000-8000-{n:012x}"),
            webhook_id: n,
            transaction_date: crate::vietnam_now(),
            account_number: ACCOUNT.into(),
            va: None,
            amount_in: amount,
            amount_out: 0,
            accumulated: 19_077_000,
            transaction_content: format!("thanh toan don {n}"),
            reference_number: Some(format!("MBVCB.{n}")),
            code: None,
            bank_brand_name: "Vietcombank".into(),
        }
    }

    /// The same, dated `date` (`YYYY-MM-DD HH:MM:SS`, Vietnam time).
    pub fn at(mut self, date: &str) -> SepayTx {
        self.transaction_date = date.into();
        self
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
            "bank_account_id": "19",
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

    /// The transaction id both SePay connectors give it (see
    /// `plugins/sepay-common`), written out independently here.
    pub fn transaction_id(&self) -> String {
        let account = &self.account_number;
        match self.reference_number.as_deref().map(str::trim) {
            Some(reference) if !reference.is_empty() => format!("{account}/{reference}"),
            _ => {
                let (dir, amount) = if self.amount_in > 0 {
                    ("in", self.amount_in)
                } else {
                    ("out", self.amount_out)
                };
                let secs = parse_vietnam_local(&self.transaction_date)
                    .expect("transaction_date is YYYY-MM-DD HH:MM:SS")
                    / 1000;
                format!("{account}/{dir}/{amount}/{secs}")
            }
        }
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
    transactions: Vec<SepayTx>,
    rate_limit_next: u32,
    requests: u64,
    rate_limited: u64,
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
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind fake SePay");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(State {
            token: token.into(),
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
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("fake SePay runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let _ = axum::serve(listener, app).await;
            });
        });
        SepayApi { url, state }
    }

    /// Adds a transaction to the account's history.
    pub fn add(&self, tx: SepayTx) {
        self.state.lock().expect("state").transactions.push(tx);
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

    /// The decoded query of every request, in order.
    pub fn queries(&self) -> Vec<HashMap<String, String>> {
        self.state.lock().expect("state").queries.clone()
    }
}

fn error(status: StatusCode, message: &str, code: &str) -> Response {
    let body = json!({ "status": "error", "message": message, "error_code": code });
    (status, axum::Json(body)).into_response()
}

/// `GET /v2/transactions`.
fn list(state: &mut State, headers: &HeaderMap, query: HashMap<String, String>) -> Response {
    state.requests += 1;
    state.queries.push(query.clone());
    if state.rate_limit_next > 0 {
        state.rate_limit_next -= 1;
        state.rate_limited += 1;
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many requests",
            "RATE_LIMIT_EXCEEDED",
        );
        let h = response.headers_mut();
        h.insert(header::RETRY_AFTER, "1".parse().expect("header"));
        h.insert("x-ratelimit-limit", "3".parse().expect("header"));
        h.insert("x-ratelimit-remaining", "0".parse().expect("header"));
        return response;
    }
    let expected = format!("Bearer {}", state.token);
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if given != Some(expected.as_str()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated.",
            "UNAUTHENTICATED",
        );
    }

    let (per_page, page, from, to) = match params(&query) {
        Ok(values) => values,
        Err(message) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                &message,
                "VALIDATION_ERROR",
            );
        }
    };

    // Newest first; among equal dates, the latest added first.
    let mut matching: Vec<(i64, usize, &SepayTx)> = state
        .transactions
        .iter()
        .enumerate()
        .filter_map(|(i, tx)| Some((parse_vietnam_local(&tx.transaction_date)?, i, tx)))
        .filter(|(at, _, _)| from.is_none_or(|f| *at >= f) && to.is_none_or(|t| *at <= t))
        .collect();
    matching.sort_by_key(|(at, i, _)| std::cmp::Reverse((*at, *i)));
    let total = matching.len();
    let data: Vec<Value> = matching
        .iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .map(|(_, _, tx)| tx.json())
        .collect();
    let body = json!({
        "status": "success",
        "data": data,
        "meta": { "pagination": {
            "total": total,
            "per_page": per_page,
            "current_page": page,
            "last_page": total.div_ceil(per_page).max(1),
            "has_more": page.saturating_mul(per_page) < total,
        }}
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

/// `per_page`, `page`, `transaction_date_from`, `transaction_date_to`, checked
/// (a 422 with a message otherwise).
fn params(
    query: &HashMap<String, String>,
) -> Result<(usize, usize, Option<i64>, Option<i64>), String> {
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
    Ok((
        per_page,
        page,
        date("transaction_date_from")?,
        date("transaction_date_to")?,
    ))
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
        let txs: Vec<SepayTx> = (1..=5)
            .map(|n| SepayTx::incoming(n, 1_000 * n).at(&format!("2024-07-25 10:0{n}:00")))
            .collect();
        for tx in &txs {
            api.add(tx.clone());
        }
        (api, txs)
    }

    #[tokio::test]
    async fn the_token_is_checked() {
        let (api, _) = api_with_five();
        for token in [None, Some("wrong")] {
            let (status, _, body) = get(&api, token, "").await;
            assert_eq!(status, 401);
            assert_eq!(body["status"], "error");
            assert_eq!(body["message"], "Unauthenticated.");
        }
        let (status, _, body) = get(&api, Some("t0k"), "").await;
        assert_eq!(status, 200);
        assert_eq!(body["data"].as_array().map(Vec::len), Some(5));
        assert_eq!(api.requests(), 3);
    }

    #[tokio::test]
    async fn pages_newest_first_with_has_more() {
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
        let (_, _, past_the_end) = get(&api, Some("t0k"), "per_page=2&page=4").await;
        assert_eq!(ids(&past_the_end), Vec::<String>::new());
        assert_eq!(past_the_end["meta"]["pagination"]["has_more"], false);
    }

    #[tokio::test]
    async fn date_from_is_inclusive_and_must_be_well_formed() {
        let (api, txs) = api_with_five();
        // `%20` and `+` both decode to a space.
        for from in ["2024-07-25%2010%3A03%3A00", "2024-07-25+10:03:00"] {
            let (_, _, body) =
                get(&api, Some("t0k"), &format!("transaction_date_from={from}")).await;
            let expected: Vec<String> = txs[2..].iter().rev().map(|t| t.id.clone()).collect();
            assert_eq!(ids(&body), expected, "{from}");
        }
        let (_, _, body) = get(
            &api,
            Some("t0k"),
            "transaction_date_from=2024-07-25%2010:02:00&transaction_date_to=2024-07-25%2010:03:00",
        )
        .await;
        assert_eq!(ids(&body).len(), 2);
        for bad in [
            "transaction_date_from=2024-07-25",
            "per_page=101",
            "page=0",
            "page=x",
        ] {
            let (status, _, body) = get(&api, Some("t0k"), bad).await;
            assert_eq!(status, 422, "{bad}");
            assert_eq!(body["status"], "error");
        }
    }

    #[tokio::test]
    async fn rate_limits_on_demand() {
        let (api, _) = api_with_five();
        api.rate_limit_next(2);
        for _ in 0..2 {
            let (status, headers, body) = get(&api, Some("t0k"), "").await;
            assert_eq!(status, 429);
            assert_eq!(headers["retry-after"], "1");
            assert_eq!(body["status"], "error");
        }
        let (status, _, _) = get(&api, Some("t0k"), "").await;
        assert_eq!(status, 200);
        assert_eq!((api.requests(), api.rate_limited()), (3, 2));
        assert_eq!(api.queries().len(), 3);
    }

    #[test]
    fn a_transaction_and_its_webhook_agree() {
        let tx = SepayTx::incoming(7, 99_000).at("2024-07-25 14:02:37");
        let hook: Value = serde_json::from_str(&tx.webhook_body()).expect("json");
        let mut made: Value = serde_json::from_str(&crate::sepay_webhook(7, 99_000)).expect("json");
        made["transactionDate"] = json!("2024-07-25 14:02:37");
        assert_eq!(hook, made, "the same payment as sepay_webhook(7, _)");
        assert_eq!(tx.transaction_id(), "0123499999/MBVCB.7");
        assert_eq!(crate::sepay_transaction_id(7), tx.transaction_id());
        let item = tx.json();
        assert_eq!(item["reference_number"], hook["referenceCode"]);
        assert_eq!(item["transaction_date"], hook["transactionDate"]);

        let no_reference = SepayTx {
            reference_number: None,
            ..tx
        };
        // 2024-07-25 14:02:37 in Vietnam = 1721890957 Unix seconds.
        assert_eq!(
            no_reference.transaction_id(),
            "0123499999/in/99000/1721890957"
        );
    }
}
