use super::*;
use serde_json::json;
use soundbox_plugin_sdk::log::Level;
use soundbox_plugin_sdk::testing::TestHost;

const SAMPLE: &str = include_str!("../../../examples/payloads/sepay-poll-v2.json");

/// 2024-07-25 14:02:37 in Vietnam (UTC+7) = 2024-07-25T07:02:37Z.
const NOW: i64 = 1_721_890_957;
const MIN: i64 = 60;

fn host() -> TestHost {
    TestHost::new().config("api_token", "tok-123")
}

fn all_mode() -> TestHost {
    host().config("mode", "all")
}

fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A v2 transaction `n` of `amount_in` đồng dated `date` (Vietnam time),
/// its webhook failed.
fn item(n: u64, date: &str, amount_in: u64) -> Value {
    json!({
        "id": uuid(n),
        "transaction_date": date,
        "account_number": "0123499999",
        "va": null,
        "transfer_type": "in",
        "amount_in": amount_in,
        "amount_out": 0,
        "accumulated": 0,
        "transaction_content": format!("don {n}"),
        "reference_number": format!("FT{n}"),
        "code": null,
        "bank_brand_name": "Vietcombank",
        "bank_account_id": "d6719d04-0000-4000-8000-a6006ab65aca",
        "va_id": null,
        "webhook_success": 0
    })
}

fn page(items: Vec<Value>, has_more: bool) -> HttpResponse {
    let body = json!({
        "status": "success",
        "data": items,
        "meta": { "pagination": { "has_more": has_more } }
    });
    HttpResponse::json(200, body.to_string())
}

fn state(host: &TestHost) -> Option<State> {
    host.kv_value(STATE_KEY)
        .map(|v| serde_json::from_slice(v).expect("state JSON"))
}

fn param(request: &HttpRequest, name: &str) -> Option<String> {
    request
        .query_pairs()
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

fn warned(host: &TestHost, needle: &str) -> bool {
    host.logs()
        .iter()
        .any(|(level, line)| *level == Level::Warn && line.contains(needle))
}

fn ids(outcome: &PollOutcome) -> Vec<String> {
    outcome
        .changes
        .iter()
        .map(|c| c.transaction_id.clone())
        .collect()
}

/// Polls at `at`, keeping the host's state.
fn poll(host: TestHost, at: i64) -> (PollOutcome, TestHost) {
    let (outcome, host) = host.run_and_keep(|| poll_at(at));
    (outcome.expect("poll"), host)
}

#[test]
fn backfill_asks_for_failed_webhooks_over_the_window() {
    let (_, after) = poll(host().http(|_| Ok(page(vec![], false))), NOW);
    let sent = &after.sent()[0];
    assert_eq!(sent.method, "GET");
    assert_eq!(sent.path, "https://userapi.sepay.vn/v2/transactions");
    // 24 h before NOW, Vietnam time, percent-encoded.
    assert_eq!(
        sent.query,
        "transaction_date_from=2024-07-24%2014%3A02%3A37&page=1&transaction_date_sort=asc\
         &per_page=100&webhook_success=0&transfer_type=in"
    );
    assert_eq!(sent.header("authorization"), Some("Bearer tok-123"));
    assert_eq!(
        state(&after).and_then(|s| s.sweep),
        None,
        "no sweep left open"
    );
}

#[test]
fn backfill_reports_a_failed_webhook_once_past_the_horizon() {
    // Recorded late: its bank time is 23 hours old.
    let late = item(1, "2024-07-24 15:00:00", 50_000);
    let host = host().http(move |_| Ok(page(vec![late.clone()], false)));
    let (first, host) = poll(host, NOW);
    assert!(first.changes.is_empty(), "its webhook may still arrive");
    let (early, host) = poll(host, NOW + 39 * MIN);
    assert!(early.changes.is_empty(), "SePay's last retry is at 33 min");
    let (due, host) = poll(host, NOW + 40 * MIN);
    assert_eq!(ids(&due), [format!("v2/{}", uuid(1))]);
    let c = &due.changes[0];
    assert_eq!((c.provider.as_str(), c.amount), ("sepay", 50_000));
    let (again, host) = poll(host, NOW + 60 * MIN);
    assert!(again.changes.is_empty(), "reported once");
    // Out of the window: forgotten.
    let (_, host) = poll(host.http(|_| Ok(page(vec![], false))), NOW + 24 * 3600);
    let ledger: Ledger =
        serde_json::from_slice(host.kv_value(LEDGER_KEY).expect("ledger")).expect("json");
    assert!(ledger.is_empty());
}

#[test]
fn backfill_never_reports_a_delivered_webhook() {
    let mut delivered = item(1, "2024-07-25 14:00:00", 50_000);
    delivered["webhook_success"] = json!(1);
    let host = host().http(move |_| Ok(page(vec![delivered.clone()], false)));
    let (_, host) = poll(host, NOW);
    let (later, _) = poll(host, NOW + 3600);
    assert!(later.changes.is_empty());
}

#[test]
fn the_horizon_is_configurable_and_must_fit_the_window() {
    let host = host()
        .config("webhook_retry_horizon_mins", "0.1")
        .http(|_| Ok(page(vec![item(1, "2024-07-25 14:00:00", 5)], false)));
    let (first, host) = poll(host, NOW);
    assert!(first.changes.is_empty());
    let (due, _) = poll(host, NOW + 6);
    assert_eq!(due.changes.len(), 1, "6 s later");
    let result = self::host()
        .config("lookback_hours", "1")
        .config("webhook_retry_horizon_mins", "90")
        .run(|| poll_at(NOW));
    assert!(
        matches!(&result, Err(ConnectorError::Fatal(r)) if r.contains("lookback_hours")),
        "{result:?}"
    );
}

#[test]
fn a_sweep_pages_through_the_same_window() {
    let host = host()
        .config("per_page", "2")
        .config("webhook_retry_horizon_mins", "0")
        .http(|req| match param(req, "page").as_deref() {
            Some("1") => Ok(page(
                vec![
                    item(1, "2024-07-25 10:00:00", 10_000),
                    item(2, "2024-07-25 10:30:00", 20_000),
                ],
                true,
            )),
            Some("2") => Ok(page(vec![item(3, "2024-07-25 11:00:00", 30_000)], false)),
            other => panic!("unexpected page {other:?}"),
        });
    let (first, host) = poll(host, NOW);
    assert_eq!(first.changes.len(), 2);
    assert_eq!(first.next_poll_ms, Some(PAGE_DELAY_MS));
    let (second, host) = poll(host, NOW + 1);
    assert_eq!(second.changes.len(), 1);
    assert_eq!(second.next_poll_ms, None);
    let sent = &host.sent()[1];
    assert_eq!(param(sent, "page").as_deref(), Some("2"));
    assert_eq!(
        param(sent, "transaction_date_from").as_deref(),
        Some("2024-07-24 14:02:37"),
        "the same window"
    );
    assert_eq!(state(&host).and_then(|s| s.sweep), None);
}

#[test]
fn all_mode_starts_by_date_then_follows_the_cursor() {
    let host = all_mode().http(|req| {
        Ok(match param(req, "since_id").as_deref() {
            None => page(
                vec![
                    item(1, "2024-07-25 10:00:00", 10_000),
                    item(2, "2024-07-25 12:00:00", 20_000),
                ],
                false,
            ),
            Some(id) if id == uuid(2) => page(vec![item(3, "2024-07-25 09:00:00", 30_000)], false),
            Some(_) => page(vec![], false),
        })
    });
    let (first, host) = poll(host, NOW);
    assert_eq!(first.changes.len(), 2, "reported at once");
    let sent = &host.sent()[0];
    assert_eq!(param(sent, "webhook_success"), None);
    assert_eq!(
        param(sent, "transaction_date_from").as_deref(),
        Some("2024-07-24 14:02:37")
    );
    assert_eq!(state(&host).and_then(|s| s.cursor), Some(uuid(2)));

    // Recorded since, with an older bank time: the cursor finds it.
    let (second, host) = poll(host, NOW + 10);
    assert_eq!(ids(&second), [format!("v2/{}", uuid(3))]);
    let sent = &host.sent()[1];
    assert_eq!(param(sent, "since_id"), Some(uuid(2)));
    assert_eq!(param(sent, "transaction_date_sort").as_deref(), Some("asc"));
    assert_eq!(param(sent, "transaction_date_from"), None);
    assert_eq!(state(&host).and_then(|s| s.cursor), Some(uuid(3)));

    let (third, host) = poll(host, NOW + 20);
    assert!(third.changes.is_empty());
    assert_eq!(state(&host).and_then(|s| s.cursor), Some(uuid(3)), "kept");

    // 30 minutes after the last sweep: the window again.
    let (_, host) = poll(host, NOW + 30 * MIN);
    let sent = &host.sent()[3];
    assert!(param(sent, "transaction_date_from").is_some(), "{sent:?}");
    assert_eq!(param(sent, "since_id"), None);
    assert_eq!(state(&host).and_then(|s| s.cursor), Some(uuid(3)));
}

#[test]
fn all_mode_pages_the_cursor_when_there_is_more() {
    let saved = State {
        cursor: Some(uuid(1)),
        sweep: None,
        last_sweep: NOW,
        ..State::default()
    };
    let host = all_mode()
        .kv(STATE_KEY, &serde_json::to_vec(&saved).expect("json"))
        .http(|_| Ok(page(vec![item(2, "2024-07-25 10:00:00", 1)], true)));
    let (outcome, host) = poll(host, NOW + 1);
    assert_eq!(outcome.next_poll_ms, Some(PAGE_DELAY_MS));
    assert_eq!(state(&host).and_then(|s| s.cursor), Some(uuid(2)));
}

#[test]
fn the_webhooks_filters_apply() {
    let mut out = item(1, "2024-07-25 10:00:00", 0);
    out["transfer_type"] = json!("out");
    out["amount_out"] = json!(7_000);
    let mut coded = item(2, "2024-07-25 10:00:00", 2_000);
    coded["code"] = json!("DH1042");
    let mut in_content = item(3, "2024-07-25 10:00:00", 3_000);
    in_content["transaction_content"] = json!("thanh toan dh77 ");
    let mut via_va = item(4, "2024-07-25 10:00:00", 4_000);
    via_va["account_number"] = json!("888");
    via_va["va"] = json!("VQR1");
    let plain = item(5, "2024-07-25 10:00:00", 5_000);
    let items = vec![out, coded, in_content, via_va, plain];
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a [u64]);
    let cases: [Case; 7] = [
        (&[], &[2_000, 3_000, 4_000, 5_000]),
        (&[("transfer_type", "out")], &[7_000]),
        (
            &[("transfer_type", "both")],
            &[7_000, 2_000, 3_000, 4_000, 5_000],
        ),
        (&[("payment_code_prefix", "DH")], &[2_000, 3_000]),
        (&[("skip_without_code", "true")], &[2_000]),
        (&[("account", "0123499999")], &[2_000, 3_000, 5_000]),
        (&[("va", "VQR1")], &[4_000]),
    ];
    for (config, expected) in cases {
        let items = items.clone();
        let mut h = all_mode();
        for (k, v) in config {
            h = h.config(k, v);
        }
        let (outcome, after) = poll(h.http(move |_| Ok(page(items.clone(), false))), NOW);
        let amounts: Vec<u64> = outcome.changes.iter().map(|c| c.amount).collect();
        assert_eq!(amounts, expected, "{config:?}");
        let sent = &after.sent()[0];
        let direction = config.iter().find(|(k, _)| *k == "transfer_type");
        let asked = param(sent, "transfer_type");
        match direction.map(|(_, v)| *v) {
            Some("both") => assert_eq!(asked, None),
            Some(v) => assert_eq!(asked.as_deref(), Some(v)),
            None => assert_eq!(asked.as_deref(), Some("in")),
        }
    }
    // Account and VA ids go to SePay as parameters.
    let (_, after) = poll(
        all_mode()
            .config("bank_account_id", "ba-uuid")
            .config("va_id", "va-uuid")
            .http(|_| Ok(page(vec![], false))),
        NOW,
    );
    let sent = &after.sent()[0];
    assert_eq!(param(sent, "bank_account_id").as_deref(), Some("ba-uuid"));
    assert_eq!(param(sent, "va_id").as_deref(), Some("va-uuid"));
}

#[test]
fn a_rejected_token_is_transient_with_the_reason() {
    let host = all_mode().http(|_| {
        Ok(HttpResponse::json(
            401,
            r#"{"status":"error","message":"Unauthenticated.","error_code":"unauthorized"}"#,
        ))
    });
    let (result, after) = host.run_and_keep(|| poll_at(NOW));
    match result {
        Err(ConnectorError::Transient(reason)) => {
            assert!(
                reason.contains("SePay rejected the API token (401); check api_token"),
                "{reason}"
            );
            assert!(reason.contains("unauthorized"), "{reason}");
            assert!(!reason.contains("tok-123"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(state(&after), None, "nothing saved");
}

#[test]
fn rate_limited_waits_as_told_and_keeps_the_state() {
    let saved = State {
        cursor: Some(uuid(9)),
        sweep: None,
        last_sweep: NOW,
        ..State::default()
    };
    let host = all_mode()
        .kv(STATE_KEY, &serde_json::to_vec(&saved).expect("json"))
        .http(|_| {
            let mut r = HttpResponse::json(
                429,
                r#"{"status":"error","message":"Too many","error_code":"rate_limited"}"#,
            );
            r.headers.push(("Retry-After".into(), "7".into()));
            Ok(r)
        });
    let (outcome, after) = poll(host, NOW + 1);
    assert_eq!(outcome.next_poll_ms, Some(7_000));
    assert!(outcome.changes.is_empty());
    assert_eq!(state(&after), Some(saved));
    assert!(warned(&after, "rate-limited"));
}

#[test]
fn refused_requests_are_fatal_with_sepays_message() {
    let host = host().http(|_| {
        Ok(HttpResponse::json(
            422,
            r#"{"status":"error","message":"The transaction date from is not a valid date.","error_code":"validation_error"}"#,
        ))
    });
    match host.run(|| poll_at(NOW)) {
        Err(ConnectorError::Fatal(reason)) => {
            assert!(
                reason.contains("422") && reason.contains("not a valid date"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_sample_maps_to_balance_changes() {
    let page = parse_page(SAMPLE.as_bytes(), 100).expect("sample page");
    let a = host()
        .run(|| to_change(&page.items[0]))
        .expect("item")
        .expect("a change");
    assert_eq!(a.provider, "sepay");
    assert_eq!(a.transaction_id, "v2/0b8e6f1c-5d0a-4c1e-9f7e-2a1d3c4b5e6f");
    assert_eq!(a.amount, 2_277_000);
    assert_eq!(a.direction, Direction::Incoming);
    assert_eq!(a.reference.as_deref(), Some("MBVCB.3278907687"));
    assert_eq!(a.occurred_at_ms, Some(1_701_933_300_000));
    assert!(a.extra.contains(&(
        "sepayId".into(),
        "0b8e6f1c-5d0a-4c1e-9f7e-2a1d3c4b5e6f".into()
    )));
    let b = host()
        .run(|| to_change(&page.items[1]))
        .expect("item")
        .expect("a change");
    assert_eq!((b.direction, b.amount), (Direction::Outgoing, 350_000));
}

#[test]
fn config_mistakes_are_fatal() {
    let responder = |_: &HttpRequest| Ok(page(vec![], false));
    let missing = TestHost::new().http(responder).run(|| poll_at(NOW));
    assert!(matches!(missing, Err(ConnectorError::Fatal(r)) if r.contains("api_token")));
    for (key, value) in [
        ("per_page", "0"),
        ("per_page", "101"),
        ("lookback_hours", "-1"),
        ("mode", "both"),
        ("transfer_type", "sideways"),
        ("skip_without_code", "yes"),
        ("webhook_retry_horizon_mins", "-1"),
        ("reconcile_mins", "soon"),
        ("base_url", "userapi.sepay.vn"),
    ] {
        let result = host()
            .config(key, value)
            .http(responder)
            .run(|| poll_at(NOW));
        assert!(
            matches!(&result, Err(ConnectorError::Fatal(r)) if r.contains(key)),
            "{key}={value}: {result:?}"
        );
    }
}

#[test]
fn an_unreadable_state_starts_over() {
    let host = host()
        .kv(STATE_KEY, b"{not json")
        .http(|_| Ok(page(vec![], false)));
    let (outcome, after) = host.run_and_keep(|| poll_at(NOW));
    assert!(outcome.is_ok());
    assert!(warned(&after, "unreadable"));
}

#[test]
fn an_unset_clock_waits() {
    let host = host().http(|_| Ok(page(vec![], false)));
    let result = host.run(|| poll_at(1_000));
    assert!(
        matches!(result, Err(ConnectorError::Transient(_))),
        "{result:?}"
    );
}

#[test]
fn server_errors_and_network_trouble_are_transient() {
    let saved = State {
        cursor: Some(uuid(4)),
        sweep: None,
        last_sweep: NOW,
        ..State::default()
    };
    let failures: Vec<fn() -> Result<HttpResponse, HttpError>> = vec![
        || Ok(HttpResponse::json(500, "oops")),
        || Ok(HttpResponse::empty(502)),
        || Err(HttpError::Timeout),
        || Err(HttpError::Connect("connection refused".into())),
    ];
    for failure in failures {
        let host = all_mode()
            .kv(STATE_KEY, &serde_json::to_vec(&saved).expect("json"))
            .http(move |_| failure());
        let (result, after) = host.run_and_keep(|| poll_at(NOW + 1));
        assert!(
            matches!(result, Err(ConnectorError::Transient(_))),
            "{result:?}"
        );
        assert_eq!(state(&after), Some(saved.clone()));
    }
}

#[test]
fn amounts_must_be_whole_dong() {
    for (v, expected) in [
        (json!(150000), Ok(150_000)),
        (json!(150000.0), Ok(150_000)),
        (json!("150000"), Ok(150_000)),
        (json!(" 150000.00 "), Ok(150_000)),
        (json!(null), Ok(0)),
        (json!("150000.50"), Err(())),
        (json!(150000.5), Err(())),
        (json!(-5), Err(())),
        (json!("-5"), Err(())),
        (json!(""), Err(())),
        (json!("1e5"), Err(())),
        (json!(true), Err(())),
    ] {
        assert_eq!(amount(Some(&v)).map_err(|_| ()), expected, "{v}");
    }
    assert_eq!(amount(None), Ok(0));
}

#[test]
fn odd_items_are_skipped_not_fatal() {
    let mut decimal = item(1, "2024-07-25 10:00:00", 0);
    decimal["amount_in"] = json!("150000.50");
    let mut nothing = item(2, "2024-07-25 10:00:00", 0);
    nothing["amount_out"] = json!(0);
    let mut no_account = item(3, "2024-07-25 10:00:00", 5_000);
    no_account["account_number"] = json!(null);
    let mut both = item(4, "2024-07-25 10:00:00", 5_000);
    both["amount_out"] = json!(5_000);
    let mut as_text = item(5, "2024-07-25 10:00:00", 0);
    as_text["amount_in"] = json!("70000.00");
    let items = vec![decimal, nothing, no_account, both, as_text];
    let host = all_mode().http(move |_| Ok(page(items.clone(), false)));
    let (outcome, after) = host.run_and_keep(|| poll_at(NOW));
    let changes = outcome.expect("the page still goes through").changes;
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].amount, 70_000);
    assert!(warned(&after, "not a whole number"));
    assert!(warned(&after, "no account_number"));
    assert!(warned(&after, "both amount_in and amount_out"));
    assert!(
        after
            .logs()
            .iter()
            .any(|(l, m)| *l == Level::Debug && m.contains("both 0"))
    );
}

#[test]
fn vietnam_local_round_trips() {
    assert_eq!(vietnam_local(NOW), "2024-07-25 14:02:37");
    assert_eq!(vietnam_local(0), "1970-01-01 07:00:00");
    for secs in [0, 951_782_400, 1_709_164_799, NOW, 4_102_444_800, -86_400] {
        let text = vietnam_local(secs);
        assert_eq!(
            time::parse_vietnam_local(&text),
            Some(secs * 1000),
            "{text}"
        );
    }
}

/// The point of the shared key: the webhook and the API report one
/// transaction under one (provider, transaction id), each through its own
/// plugin's parser.

#[test]
fn an_unexpected_body_is_transient_and_logged() {
    for (body, reason) in [
        ("<html>maintenance</html>", "not JSON"),
        (r#"{"status":"success"}"#, "no `data` list"),
        (r#"{"data":{"id":1}}"#, "no `data` list"),
        (
            r#"{"status":"error","message":"Server busy","error_code":"BUSY"}"#,
            "Server busy (BUSY)",
        ),
    ] {
        let host = host().http(move |_| Ok(HttpResponse::json(200, body)));
        let (result, after) = host.run_and_keep(|| poll_at(NOW));
        match result {
            Err(ConnectorError::Transient(r)) => assert!(r.contains(reason), "{r}"),
            other => panic!("{body}: {other:?}"),
        }
        assert!(warned(&after, reason), "{:?}", after.logs());
        assert_eq!(state(&after), None);
    }
}

#[test]
fn after_an_outage_longer_than_the_window_backfill_reads_all_it_missed() {
    let hour = 3600;
    let (_, host) = poll(host().http(|_| Ok(page(vec![], false))), NOW);
    // Off for two days; a payment an hour after the last sweep failed.
    let missed = item(1, &vietnam_local(NOW + hour), 90_000);
    let host = host.http(move |_| Ok(page(vec![missed.clone()], false)));
    let back = NOW + 48 * hour;
    let (first, host) = poll(host, back);
    assert!(first.changes.is_empty(), "first seen now");
    assert_eq!(
        param(&host.sent()[1], "transaction_date_from").as_deref(),
        Some(vietnam_local(NOW - 24 * hour).as_str()),
        "back to the previous sweep's window"
    );
    let (due, host) = poll(host, back + 40 * MIN);
    assert_eq!(ids(&due), [format!("v2/{}", uuid(1))]);
    assert_eq!(
        param(&host.sent()[2], "transaction_date_from").as_deref(),
        Some(vietnam_local(NOW + hour).as_str()),
        "still reaching the pending one"
    );
    // Reported: the window moves on.
    let (_, host) = poll(host.http(|_| Ok(page(vec![], false))), back + 41 * MIN);
    assert_eq!(
        param(&host.sent()[3], "transaction_date_from").as_deref(),
        Some(vietnam_local(back + 40 * MIN - 24 * hour).as_str())
    );

    // Never further back than two weeks.
    let old = State {
        swept_until: NOW - 30 * 24 * hour,
        ..State::default()
    };
    let (_, after) = poll(
        self::host()
            .kv(STATE_KEY, &serde_json::to_vec(&old).expect("json"))
            .http(|_| Ok(page(vec![], false))),
        NOW,
    );
    assert_eq!(
        param(&after.sent()[0], "transaction_date_from").as_deref(),
        Some(vietnam_local(NOW - MAX_CATCH_UP_SECS).as_str())
    );
}

/// One payment, through both plugins' real code: SePay records it (maybe
/// late, with an older bank time), tries its webhook at 0, 1, 2, 4, 7, 12,
/// 20 and 33 minutes, and one attempt gets through or none does; the poller
/// (default `backfill` mode) polls on its own schedule against a listing
/// that honours `webhook_success=0` and `transaction_date_from`.
mod cross_source {
    use super::*;
    use proptest::prelude::*;
    use std::cell::Cell;
    use std::rc::Rc;

    const RETRY_MINUTES: [i64; 8] = [0, 1, 2, 4, 7, 12, 20, 33];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]
        #[test]
        fn webhook_and_poller_never_both_report_one_payment(
            webhook_id in 1..u64::MAX / 2,
            n in any::<u32>(),
            amount in 1..100_000_000_u64,
            reference in proptest::option::of("[A-Z]{2}[0-9]{6}"),
            late_secs in 0..(4 * 3600_i64),
            delivered_at in proptest::option::of(0..RETRY_MINUTES.len()),
            poller_starts in 0..(6 * 3600_i64),
            gaps in proptest::collection::vec(1..900_i64, 1..40),
        ) {
            let recorded = NOW;
            let mut tx = item(u64::from(n), &vietnam_local(recorded - late_secs), amount);
            tx["reference_number"] = json!(reference);
            let delivered = delivered_at.map(|i| recorded + RETRY_MINUTES[i] * 60);

            let clock = Rc::new(Cell::new(0_i64));
            let seen = clock.clone();
            let listed = tx.clone();
            let mut host = host().http(move |req| {
                let t = seen.get();
                let failed = delivered.is_none_or(|d| t < d);
                let from = param(req, "transaction_date_from")
                    .and_then(|f| time::parse_vietnam_local(&f))
                    .unwrap_or(i64::MIN);
                let bank = time::parse_vietnam_local(
                    listed["transaction_date"].as_str().unwrap_or_default(),
                )
                .unwrap_or(0);
                let wants_failed = param(req, "webhook_success").as_deref() == Some("0");
                let shown = t >= recorded && bank >= from && (!wants_failed || failed);
                let mut item = listed.clone();
                item["webhook_success"] = json!(u8::from(!failed));
                Ok(page(if shown { vec![item] } else { vec![] }, false))
            });
            let mut reported = Vec::new();
            let mut polls = Vec::new();
            let mut t = recorded + poller_starts;
            for gap in gaps {
                polls.push(t);
                clock.set(t);
                let (outcome, after) = host.run_and_keep(|| poll_at(t));
                host = after;
                let outcome = outcome.map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                reported.extend(outcome.changes.into_iter().map(|c| (t, c)));
                t += gap;
            }

            let poll_key = format!("v2/{}", uuid(u64::from(n)));
            match delivered {
                Some(_) => {
                    let body = json!({
                        "id": webhook_id, "gateway": "Vietcombank",
                        "transactionDate": vietnam_local(recorded - late_secs),
                        "accountNumber": "0123499999", "code": null, "content": "don",
                        "transferType": "in", "transferAmount": amount, "accumulated": 0,
                        "subAccount": null, "referenceCode": reference, "description": ""
                    });
                    let hook = sepay_webhook::parse(body.to_string().as_bytes())
                        .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
                    prop_assert!(reported.is_empty(), "the poller reported a delivered webhook");
                    prop_assert_ne!(&hook.transaction_id, &poll_key);
                    prop_assert_eq!(hook.transaction_id, webhook_id.to_string());
                }
                None => {
                    // Once a poll comes 40 minutes after the first saw it.
                    let due = polls.iter().any(|p| *p >= polls[0] + 40 * 60);
                    prop_assert_eq!(reported.len(), usize::from(due));
                    if let Some((at, change)) = reported.first() {
                        prop_assert!(*at >= recorded + 40 * 60, "reported at +{} s", at - recorded);
                        prop_assert_eq!(&change.transaction_id, &poll_key);
                    }
                }
            }
        }
    }
}
