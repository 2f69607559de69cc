//! SePay's transaction API v2 → balance changes, in one of two modes
//! (`mode` in `[connector.config]`):
//!
//! - `backfill` (default; beside `sepay-webhook`): reports only what the
//!   webhook failed to deliver and can no longer deliver. Each sweep re-reads
//!   the last `lookback_hours` by bank date with `webhook_success=0`,
//!   ascending, every page. A transaction is reported once the poller first
//!   saw it at least `webhook_retry_horizon_mins` ago ([`Ledger`]), so the
//!   webhook and the poller never both report one payment and their keys
//!   never need to agree (see [`sepay_common::webhook_transaction_id`]).
//! - `all` (a shop with no webhook, e.g. behind NAT): reports every
//!   transaction at once, following a cursor on what SePay has recorded
//!   (`since_id` + `transaction_date_sort=asc`), plus a re-read of the
//!   lookback window every `reconcile_mins` as a safety net.
//!
//! Either way a transaction's key is `v2/<uuid>`
//! ([`sepay_common::poll_transaction_id`]), and every KV write (cursor,
//! sweep, ledger) is made in the call that returns the changes it accounts
//! for: the gateway applies a call's KV writes only once its changes are
//! stored (the WIT `kv` interface), so a failed store repeats the call.
//!
//! Each call fetches one page; while SePay says `has_more`, the next call
//! comes after [`PAGE_DELAY_MS`]. Config: see the README.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use soundbox_plugin_sdk::http::HttpError;
use soundbox_plugin_sdk::{
    BalanceChange, ConnectorError, Direction, HttpRequest, HttpResponse, PollOutcome,
    PollingConnector, config, export_polling_connector, http, kv, log, time,
};

/// The dedupe provider, shared with `sepay-webhook`.
pub use sepay_common::PROVIDER;
use sepay_common::{Ledger, Verdict};

/// KV key of the [`State`].
pub const STATE_KEY: &str = "state";
/// KV key of the backfill mode's [`Ledger`].
pub const LEDGER_KEY: &str = "ledger";
pub const DEFAULT_BASE_URL: &str = "https://userapi.sepay.vn";
/// Delay before the next page: SePay's docs (developer.sepay.vn, API v2
/// overview) allow 3 requests a second per IP.
pub const PAGE_DELAY_MS: u64 = 400;
/// The longest a 429's `Retry-After` makes us wait.
pub const MAX_RETRY_AFTER_MS: u64 = 600_000;
/// A clock before 2024-01-01 is not set yet (a Pi has no battery clock):
/// a window from there would be meaningless.
const CLOCK_SET_AFTER: i64 = 1_704_067_200;
/// How far back a `backfill` sweep reaches after an outage: two weeks, well
/// inside the gateway's default dedupe window (30 days, and the gateway
/// refuses bank times older than that minus a day).
pub const MAX_CATCH_UP_SECS: i64 = 14 * 24 * 3600;
/// The gateway's limits on a change's fields (see its `validate`).
const MAX_ACCOUNT_BYTES: usize = 64;
const MAX_REFERENCE_BYTES: usize = 256;
const MAX_CONTENT_BYTES: usize = 2048;
const MAX_EXTRA_VALUE_BYTES: usize = 256;

pub struct SepayPoller;

impl PollingConnector for SepayPoller {
    fn poll() -> Result<PollOutcome, ConnectorError> {
        poll_at(time::now_secs())
    }
}

export_polling_connector!(SepayPoller);

/// What the poller reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Only failed webhooks, once they can no longer arrive.
    Backfill,
    /// Every transaction (no webhook connector).
    All,
}

/// Where the poller is, kept in KV as small JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// `all`: the UUID of the last transaction reported by the cursor
    /// (SePay's `since_id`).
    #[serde(default)]
    pub cursor: Option<String>,
    /// A date sweep in progress.
    #[serde(default)]
    pub sweep: Option<Sweep>,
    /// `all`: when the last date sweep started (Unix s).
    #[serde(default)]
    pub last_sweep: i64,
    /// When the last complete sweep started (Unix s): the next one reaches
    /// back `lookback_hours` before it, so a gateway that was off longer
    /// than the window still reads all it missed (up to [`MAX_CATCH_UP_SECS`]).
    #[serde(default)]
    pub swept_until: i64,
}

/// A re-read of the window by bank date, page by page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sweep {
    /// Unix seconds: `transaction_date_from`, fixed for the whole sweep.
    pub from: i64,
    /// The page to fetch next (1-based).
    pub page: u32,
    /// The UUID of the last item seen (the cursor after a first sweep).
    #[serde(default)]
    pub last_id: Option<String>,
    /// When the sweep started (Unix s).
    #[serde(default)]
    pub started: i64,
}

/// The webhook's filters, applied by the poller too so it never reports
/// what the shop filtered out of its webhook. SePay's docs (developer.sepay.vn,
/// webhooks "create"): direction, account, virtual account, payment-code
/// prefix, "skip if no payment code".
#[derive(Debug, Clone, Default)]
pub struct Filters {
    /// `in` or `out`; `None`: both.
    pub transfer_type: Option<&'static str>,
    /// `account_number` or `va` equal to this.
    pub account: Option<String>,
    /// SePay's bank account UUID (an API parameter too).
    pub bank_account_id: Option<String>,
    /// `va` equal to this.
    pub va: Option<String>,
    /// SePay's virtual account UUID (an API parameter too).
    pub va_id: Option<String>,
    /// `code` starts with it, or the content contains it (case-insensitive).
    pub payment_code_prefix: Option<String>,
    pub skip_without_code: bool,
}

/// The connector's config, checked.
#[derive(Debug, Clone)]
pub struct Settings {
    api_token: String,
    pub base_url: String,
    pub per_page: u32,
    pub mode: Mode,
    pub lookback_secs: i64,
    pub horizon_secs: i64,
    pub reconcile_secs: i64,
    pub filters: Filters,
}

impl Settings {
    /// Reads and checks `[connector.config]`; a mistake there is `Fatal`.
    pub fn from_config() -> Result<Settings, ConnectorError> {
        let fatal = |m: String| ConnectorError::Fatal(m);
        let api_token = config::require("api_token")?.trim().to_string();
        if api_token.is_empty() {
            return Err(fatal("config `api_token` is empty".into()));
        }
        let base_url = config::get_or("base_url", DEFAULT_BASE_URL)
            .trim()
            .trim_end_matches('/')
            .to_string();
        if !base_url.starts_with("https://") && !base_url.starts_with("http://") {
            return Err(fatal(format!(
                "config `base_url` is `{base_url}`; expected an http(s) URL like {DEFAULT_BASE_URL}"
            )));
        }
        let mode = match text("mode").as_deref() {
            None | Some("backfill") => Mode::Backfill,
            Some("all") => Mode::All,
            Some(other) => {
                return Err(fatal(format!(
                    "config `mode` is `{other}`; expected backfill (beside sepay-webhook) or all (no webhook)"
                )));
            }
        };
        let transfer_type = match text("transfer_type").as_deref() {
            None | Some("in") => Some("in"),
            Some("out") => Some("out"),
            Some("both") | Some("all") => None,
            Some(other) => {
                return Err(fatal(format!(
                    "config `transfer_type` is `{other}`; expected in, out or both"
                )));
            }
        };
        let skip_without_code = match text("skip_without_code").as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(fatal(format!(
                    "config `skip_without_code` is `{other}`; expected true or false"
                )));
            }
        };
        // `backfill_hours` is the older name.
        let lookback_key =
            if config::get("lookback_hours").is_none() && config::get("backfill_hours").is_some() {
                "backfill_hours"
            } else {
                "lookback_hours"
            };
        let lookback_secs = number(lookback_key, 24, 1, 24 * 366)? as i64 * 3600;
        let horizon_secs = minutes("webhook_retry_horizon_mins", 40.0)?;
        if horizon_secs > lookback_secs {
            return Err(fatal(format!(
                "`{lookback_key}` must cover `webhook_retry_horizon_mins`: a failed webhook must still be in the window when it is due"
            )));
        }
        Ok(Settings {
            api_token,
            base_url,
            per_page: number("per_page", 100, 1, 100)? as u32,
            mode,
            lookback_secs,
            horizon_secs,
            reconcile_secs: minutes("reconcile_mins", 30.0)?,
            filters: Filters {
                transfer_type,
                account: text("account"),
                bank_account_id: text("bank_account_id"),
                va: text("va"),
                va_id: text("va_id"),
                payment_code_prefix: text("payment_code_prefix"),
                skip_without_code,
            },
        })
    }
}

/// A config string, trimmed (TOML strings arrive as they are, other values
/// as JSON text); `None` when absent or empty.
fn text(key: &str) -> Option<String> {
    config::get(key)
        .map(|v| v.trim().trim_matches('"').trim().to_string())
        .filter(|v| !v.is_empty())
}

/// An integer config value in `min..=max` (a quoted number is accepted too).
fn number(key: &str, default: u64, min: u64, max: u64) -> Result<u64, ConnectorError> {
    let Some(value) = text(key) else {
        return Ok(default);
    };
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| {
            ConnectorError::Fatal(format!(
                "config `{key}` is `{value}`; expected an integer from {min} to {max}"
            ))
        })
}

/// Minutes (fractions allowed: `0.1` is 6 s) from 0 to a week, as seconds.
fn minutes(key: &str, default: f64) -> Result<i64, ConnectorError> {
    let value = match text(key) {
        None => default,
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|m| (0.0..=7.0 * 24.0 * 60.0).contains(m))
            .ok_or_else(|| {
                ConnectorError::Fatal(format!(
                    "config `{key}` is `{v}`; expected minutes from 0 to 10080"
                ))
            })?,
    };
    Ok((value * 60.0).round() as i64)
}

/// What one call asks SePay for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ask {
    /// A page of the window by bank date.
    Sweep(Sweep),
    /// The next page after the cursor (`all`).
    Since(String),
}

/// One poll, with `now` (Unix seconds) as the clock: fetch one page, map
/// it, save the state that follows it.
pub fn poll_at(now: i64) -> Result<PollOutcome, ConnectorError> {
    let settings = Settings::from_config()?;
    if now < CLOCK_SET_AFTER {
        return Err(ConnectorError::Transient(
            "the clock is not set yet; polling waits for it".into(),
        ));
    }
    let mut state = load::<State>(STATE_KEY).unwrap_or_default();
    let mut ledger = match settings.mode {
        Mode::Backfill => Some(load::<Ledger>(LEDGER_KEY).unwrap_or_default()),
        Mode::All => None,
    };
    // `all`: the last `lookback_hours`. `backfill`: also back to the
    // previous sweep's window (an outage longer than the window) and to any
    // failed webhook still waiting out the horizon, so it is read again.
    let mut window_start = now - settings.lookback_secs;
    if let Some(ledger) = &ledger {
        if state.swept_until > 0 {
            window_start = window_start.min(state.swept_until - settings.lookback_secs);
        }
        if let Some(pending) = ledger.oldest_pending() {
            window_start = window_start.min(pending);
        }
        window_start = window_start.max(now - MAX_CATCH_UP_SECS);
    }
    let fresh_sweep = || Sweep {
        from: window_start,
        page: 1,
        last_id: None,
        started: now,
    };
    let ask = match (&state.sweep, settings.mode, &state.cursor) {
        (Some(sweep), _, _) => Ask::Sweep(sweep.clone()),
        (None, Mode::All, Some(cursor))
            if now.saturating_sub(state.last_sweep) < settings.reconcile_secs =>
        {
            Ask::Since(cursor.clone())
        }
        _ => {
            state.last_sweep = now;
            Ask::Sweep(fresh_sweep())
        }
    };

    let response = http::send(&request(&settings, &ask)).map_err(http_failed)?;
    if response.status == 429 {
        let wait = retry_after_ms(&response);
        log::warn(&format!(
            "SePay rate-limited us (429); next poll in {wait} ms, state unchanged"
        ));
        return Ok(PollOutcome {
            changes: Vec::new(),
            next_poll_ms: Some(wait),
        });
    }
    check_status(&response)?;
    let page = parse_page(&response.body, settings.per_page).map_err(|reason| {
        log::warn(&format!("unexpected answer from SePay: {reason}"));
        ConnectorError::Transient(reason)
    })?;

    let mut changes = Vec::new();
    let mut last_id = None;
    for item in &page.items {
        let id = text_of(item.get("id")).map(|i| i.trim().to_string());
        if id.as_deref().is_some_and(|i| !i.is_empty()) {
            last_id = id.clone();
        }
        if !settings.filters.keep(item) {
            continue;
        }
        let change = match to_change(item) {
            Ok(Some(change)) => change,
            Ok(None) => continue,
            Err(reason) => {
                log::warn(&format!("skipped a SePay transaction: {reason}"));
                continue;
            }
        };
        let Some(ledger) = ledger.as_mut() else {
            changes.push(change);
            continue;
        };
        // SePay's docs: `webhook_success` 1 means delivered. We asked for
        // `webhook_success=0`; an item saying 1 anyway is the webhook's.
        if matches!(item.get("webhook_success"), Some(v) if v == 1 || v == true || v == "1") {
            continue;
        }
        let bank_time = item_time(item).unwrap_or(now);
        let uuid = id.unwrap_or_default();
        match ledger.observe_failed(&uuid, bank_time, now, settings.horizon_secs) {
            Verdict::Emit => {
                log::info(&format!(
                    "transaction {uuid}: SePay's webhook failed and can no longer arrive; reporting it"
                ));
                changes.push(change);
            }
            Verdict::Wait | Verdict::Emitted => {}
            Verdict::Full => log::warn(&format!(
                "transaction {uuid}: too many failed webhooks to track; looked at again later"
            )),
        }
    }

    let more = page.has_more && !page.items.is_empty();
    let next_poll_ms = match ask {
        Ask::Sweep(sweep) if more => {
            state.sweep = Some(Sweep {
                page: sweep.page.saturating_add(1),
                last_id: last_id.or(sweep.last_id),
                ..sweep
            });
            Some(PAGE_DELAY_MS)
        }
        Ask::Sweep(sweep) => {
            state.sweep = None;
            state.swept_until = sweep.started;
            if let Some(ledger) = ledger.as_mut() {
                // Out of every later window: nothing asks about these again.
                ledger.prune(sweep.from);
            }
            if settings.mode == Mode::All && state.cursor.is_none() {
                // The first sweep's last item (the newest bank date) starts
                // the cursor; the reconcile sweeps cover the rest.
                state.cursor = last_id.or(sweep.last_id);
            }
            None
        }
        Ask::Since(_) => {
            if let Some(id) = last_id {
                state.cursor = Some(id);
            }
            more.then_some(PAGE_DELAY_MS)
        }
    };
    if let Some(ledger) = ledger {
        save(LEDGER_KEY, &ledger)?;
    }
    save(STATE_KEY, &state)?;
    Ok(PollOutcome {
        changes,
        next_poll_ms,
    })
}

impl Filters {
    /// Whether the webhook, filtered like this, would have reported `item`.
    pub fn keep(&self, item: &Value) -> bool {
        let field = |name: &str| {
            text_of(item.get(name))
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        let same = |want: &Option<String>, got: Option<String>| {
            want.as_ref().is_none_or(|w| got.as_deref() == Some(w))
        };
        if let Some(want) = self.transfer_type
            && field("transfer_type").is_some_and(|t| t != want)
        {
            return false;
        }
        if let Some(account) = &self.account
            && field("account_number").as_ref() != Some(account)
            && field("va").as_ref() != Some(account)
        {
            return false;
        }
        if !same(&self.va, field("va"))
            || !same(&self.va_id, field("va_id"))
            || !same(&self.bank_account_id, field("bank_account_id"))
        {
            return false;
        }
        let code = field("code");
        if self.skip_without_code && code.is_none() {
            return false;
        }
        if let Some(prefix) = &self.payment_code_prefix {
            let prefix = prefix.to_lowercase();
            let in_code = code.is_some_and(|c| c.to_lowercase().starts_with(&prefix));
            let in_content =
                field("transaction_content").is_some_and(|c| c.to_lowercase().contains(&prefix));
            if !in_code && !in_content {
                return false;
            }
        }
        true
    }
}

/// A KV value as JSON; `None` when absent, or (with a warning) unreadable,
/// which starts over like a first poll.
fn load<T: for<'de> Deserialize<'de>>(key: &str) -> Option<T> {
    let saved = kv::get(key)?;
    serde_json::from_slice(&saved)
        .map_err(|e| log::warn(&format!("saved `{key}` is unreadable ({e}); starting over")))
        .ok()
}

fn save<T: Serialize>(key: &str, value: &T) -> Result<(), ConnectorError> {
    let json = serde_json::to_vec(value)
        .map_err(|e| ConnectorError::Fatal(format!("cannot encode `{key}`: {e}")))?;
    kv::set(key, &json).map_err(|e| ConnectorError::Transient(format!("cannot save `{key}`: {e}")))
}

/// The request for `ask`: SePay's documented v2 parameters only.
fn request(settings: &Settings, ask: &Ask) -> HttpRequest {
    let mut query: Vec<(&str, String)> = Vec::new();
    match ask {
        Ask::Sweep(sweep) => {
            query.push(("transaction_date_from", vietnam_local(sweep.from)));
            query.push(("page", sweep.page.to_string()));
        }
        Ask::Since(cursor) => query.push(("since_id", cursor.clone())),
    }
    // SePay's docs: `since_id` goes with ascending order; a sweep in
    // ascending order reads what was added during it on its last pages.
    query.push(("transaction_date_sort", "asc".into()));
    query.push(("per_page", settings.per_page.to_string()));
    if settings.mode == Mode::Backfill {
        query.push(("webhook_success", "0".into()));
    }
    let f = &settings.filters;
    if let Some(t) = f.transfer_type {
        query.push(("transfer_type", t.into()));
    }
    if let Some(id) = &f.bank_account_id {
        query.push(("bank_account_id", id.clone()));
    }
    if let Some(id) = &f.va_id {
        query.push(("va_id", id.clone()));
    }
    let query = query
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
    HttpRequest {
        method: "GET".into(),
        path: format!("{}/v2/transactions", settings.base_url),
        query,
        headers: vec![
            (
                "authorization".into(),
                format!("Bearer {}", settings.api_token),
            ),
            ("accept".into(), "application/json".into()),
        ],
        body: Vec::new(),
    }
}

fn http_failed(error: HttpError) -> ConnectorError {
    match error {
        HttpError::NotAllowed(reason) => ConnectorError::Fatal(format!(
            "the gateway refused the request to SePay ({reason}); check base_url and allowed_hosts"
        )),
        HttpError::Timeout => ConnectorError::Transient("SePay did not answer in time".into()),
        HttpError::Connect(reason) => {
            ConnectorError::Transient(format!("could not reach SePay: {reason}"))
        }
        HttpError::TooLarge => ConnectorError::Fatal(
            "SePay's answer is larger than the gateway accepts; lower per_page".into(),
        ),
        HttpError::Other(reason) => {
            ConnectorError::Transient(format!("request to SePay failed: {reason}"))
        }
    }
}

/// `Retry-After` of a 429 in ms: whole seconds (SePay's v1 API named the
/// header `x-sepay-userapi-retry-after`); 1 s when absent, at most 10 min.
fn retry_after_ms(response: &HttpResponse) -> u64 {
    let secs = ["retry-after", "x-sepay-userapi-retry-after"]
        .iter()
        .find_map(|name| header(response, name)?.trim().parse::<u64>().ok())
        .unwrap_or(1)
        .max(1);
    secs.saturating_mul(1000).min(MAX_RETRY_AFTER_MS)
}

fn header<'a>(response: &'a HttpResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Any status but 2xx (429 is handled before) as the error it means.
fn check_status(response: &HttpResponse) -> Result<(), ConnectorError> {
    let status = response.status;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let said = error_message(&response.body);
    let with = |what: String| match &said {
        Some(message) => format!("{what}: {message}"),
        None => what,
    };
    Err(match status {
        // A token rotated in SePay's dashboard is fixed by the shop, in the
        // config or at SePay: keep asking (with the gateway's backoff), and
        // let `/readyz` name the reason after a few failures in a row.
        401 | 403 => ConnectorError::Transient(with(format!(
            "SePay rejected the API token ({status}); check api_token"
        ))),
        408 | 500..=599 => ConnectorError::Transient(with(format!("SePay answered {status}"))),
        // 404, 422 and the other 4xx: the request itself is wrong (a date
        // format SePay refuses, say); asking again will not help.
        400..=499 => ConnectorError::Fatal(with(format!("SePay answered {status}"))),
        _ => ConnectorError::Transient(with(format!("SePay answered {status}"))),
    })
}

/// SePay's `{status: "error", message, error_code}`, as one short line.
fn error_message(body: &[u8]) -> Option<String> {
    let json: Value = serde_json::from_slice(body).ok()?;
    let message = json.get("message").and_then(Value::as_str)?;
    let code = json.get("error_code").and_then(|c| text_of(Some(c)));
    let line = match code {
        Some(code) => format!("{message} ({code})"),
        None => message.to_string(),
    };
    let line: String = line.chars().filter(|c| !c.is_control()).collect();
    Some(soundbox_plugin_sdk::text::truncate(&line, 300).to_string())
}

/// One page of `GET /v2/transactions`.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Value>,
    pub has_more: bool,
}

/// Reads a 2xx answer: `data` must be a list; `meta.pagination.has_more`,
/// when missing, is taken to be "the page is full".
pub fn parse_page(body: &[u8], per_page: u32) -> Result<Page, String> {
    let mut json: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON: {e}"))?;
    if json.get("status").and_then(Value::as_str) == Some("error") {
        return Err(format!(
            "SePay answered an error: {}",
            error_message(body).unwrap_or_else(|| "(no message)".into())
        ));
    }
    let Some(Value::Array(items)) = json.get_mut("data").map(Value::take) else {
        return Err("the answer has no `data` list".into());
    };
    let has_more = match json.pointer("/meta/pagination/has_more") {
        Some(Value::Bool(more)) => *more,
        _ => items.len() >= per_page as usize,
    };
    Ok(Page { items, has_more })
}

/// When the item happened, in Unix seconds.
fn item_time(item: &Value) -> Option<i64> {
    let date = item.get("transaction_date")?.as_str()?;
    time::parse_vietnam_local(date).map(|ms| ms.div_euclid(1000))
}

/// One v2 transaction as a balance change. `Ok(None)`: nothing to report (no
/// money moved; logged at debug).
/// `Err`: an item that cannot be reported as it is (the caller warns and
/// skips it rather than hold back the whole page forever).
pub fn to_change(item: &Value) -> Result<Option<BalanceChange>, String> {
    let field = |name: &str| text_of(item.get(name));
    let sepay_id = field("id").unwrap_or_default();
    let what = |reason: &str| format!("transaction {sepay_id}: {reason}");

    let account = field("account_number")
        .map(|a| a.trim().to_string())
        .filter(|a| !a.is_empty())
        .ok_or_else(|| what("no account_number"))?;
    if account.len() > MAX_ACCOUNT_BYTES || account.chars().any(char::is_control) {
        return Err(what("account_number is not a plausible account"));
    }
    let va = field("va");
    let amount_in = amount(item.get("amount_in")).map_err(|e| what(&format!("amount_in {e}")))?;
    let amount_out =
        amount(item.get("amount_out")).map_err(|e| what(&format!("amount_out {e}")))?;
    let (direction, amount) = match (amount_in, amount_out) {
        (0, 0) => {
            log::debug(&what("amount_in and amount_out are both 0"));
            return Ok(None);
        }
        (n, 0) => (Direction::Incoming, n),
        (0, n) => (Direction::Outgoing, n),
        _ => return Err(what("both amount_in and amount_out are set")),
    };
    let date = field("transaction_date");
    let occurred_at_ms = date.as_deref().and_then(time::parse_vietnam_local);
    let reference = field("reference_number")
        .map(|r| r.trim().to_string())
        .filter(|r| !r.is_empty());
    let transaction_id =
        sepay_common::poll_transaction_id(&sepay_id).ok_or_else(|| what("no usable id"))?;

    let mut extra = Vec::new();
    let mut keep = |k: &str, v: Option<String>| {
        if let Some(v) = v.filter(|v| !v.is_empty()) {
            let v = soundbox_plugin_sdk::text::truncate(&v, MAX_EXTRA_VALUE_BYTES).to_string();
            extra.push((k.to_string(), v));
        }
    };
    keep("sepayId", Some(sepay_id.clone()));
    keep("bank_brand_name", field("bank_brand_name"));
    keep("va", va);
    keep("code", field("code"));
    keep("accumulated", field("accumulated"));
    keep("transaction_date", date);

    Ok(Some(BalanceChange {
        provider: PROVIDER.into(),
        transaction_id,
        account,
        amount,
        currency: "VND".into(),
        direction,
        reference: reference.filter(|r| r.len() <= MAX_REFERENCE_BYTES),
        counterparty: None,
        content: field("transaction_content")
            .map(|c| soundbox_plugin_sdk::text::truncate(&c, MAX_CONTENT_BYTES).to_string()),
        occurred_at_ms,
        extra,
    }))
}

/// A string or a number as text; `None` for null, absent or anything else.
fn text_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An amount in whole đồng: a JSON integer, or a number or numeric string
/// that is exactly integral (`150000`, `"150000"`, `"150000.00"`). Null or
/// absent is 0. Anything else (negative, `"150000.50"`) is an error.
fn amount(value: Option<&Value>) -> Result<u64, String> {
    let bad = |v: &Value| format!("`{v}` is not a whole number of đồng");
    match value {
        None | Some(Value::Null) => Ok(0),
        Some(v @ Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(whole), _) => Ok(whole),
            // Below 2^53 an f64 holds every integer exactly.
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => {
                Ok(f as u64)
            }
            _ => Err(bad(v)),
        },
        Some(v @ Value::String(s)) => {
            let s = s.trim();
            let (whole, fraction) = s.split_once('.').unwrap_or((s, ""));
            let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
            if whole.is_empty() || !digits(whole) || !fraction.bytes().all(|b| b == b'0') {
                return Err(bad(v));
            }
            whole.parse().map_err(|_| bad(v))
        }
        Some(v) => Err(bad(v)),
    }
}

/// Unix seconds as Vietnam local time, `YYYY-MM-DD HH:MM:SS`: the format of
/// SePay's dates, and (an assumption) of `transaction_date_from`.
pub fn vietnam_local(unix_secs: i64) -> String {
    let local = unix_secs + time::VIETNAM_OFFSET_SECS;
    let (days, secs) = (local.div_euclid(86_400), local.rem_euclid(86_400));
    // Civil from days, Howard Hinnant's algorithm.
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Percent-encodes a query value (`%20` for space: unambiguous for any server).
fn percent_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests;
