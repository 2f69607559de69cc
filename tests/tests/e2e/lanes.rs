//! Speaker lanes with the real binary (docs/speaker.md): every routed
//! speaker has a lane of its own (`speaker:<hardware id>` in the log), so a
//! speaker that is offline holds only its own payments; `check_notify`
//! runs beside the lane and its results go out on MQTT; the status page,
//! `/readyz` and `/metrics` name a speaker that is down.
//!
//! SePay does not say whether business errors come as HTTP 4xx or as HTTP
//! 200 with the code in the envelope, so every scenario runs against both:
//! each is a module with a test per style (`http4xx`, `http200`).
//!
//! | scenario | test | CI size / long (`SOUNDBOX_CHAOS_LONG=1`) |
//! |---|---|---|
//! | ten speakers on ten accounts, one offline, then back | [`ten_speakers_one_offline_then_back`] | 4 payments each |
//! | the same, the offline one stays down past `max_age_secs` | [`an_offline_speakers_payments_expire_saying_offline`] | 1 each, 3 for it |
//! | one route, two speakers, one offline | [`two_speakers_on_one_route_one_offline`] | 3 payments |
//! | a flaky API (5xx, 429, tokens living 5 s) | [`a_flaky_api_announces_every_payment_once`] | 300 payments over ~12 s |
//! | `FAILED` and never-confirmed announcements on MQTT | [`failed_and_unconfirmed_announcements_on_mqtt`] | 2 payments (~20 s) |
//! | refusals classified by `pair/check` (not paired, unknown speaker) | [`refusals_are_classified_by_pair_check`] | 3 payments |
//! | SIGKILL loop, three speakers, one flapping (standalone simulator) | [`sigkill_loop_with_a_flapping_speaker`] | 60 payments, 5 kills / 600, 50 |
//! | status page, `/readyz`, `/metrics` name the offline speaker | [`status_readyz_and_metrics_name_the_offline_speaker`] | 3 payments |
//!
//! Nothing here asserts how fast something happens: deadlines are
//! generous and only bound how long "eventually" may take.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use soundbox_e2e::mqtt::Subscriber;
use soundbox_e2e::{
    Gateway, SpeakerApi, chaos_size, free_port, post, post_until_2xx, sepay_connector,
    sepay_webhook_to,
};

/// Runs `scenario(style)` once per error style, as a module of two tests.
macro_rules! in_both_styles {
    (async $scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread")]
            async fn http4xx() {
                super::$scenario("http4xx").await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn http200() {
                super::$scenario("http200").await;
            }
        }
    };
    ($scenario:ident) => {
        mod $scenario {
            #[test]
            fn http4xx() {
                super::$scenario("http4xx");
            }

            #[test]
            fn http200() {
                super::$scenario("http200");
            }
        }
    };
}

// ---------------------------------------------------------------------------
// Helpers

/// One payment: into `account`, for speaker `hw`, SePay id `id`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Payment {
    account: String,
    hw: String,
    id: u64,
}

impl Payment {
    fn amount(&self) -> u64 {
        amount(self.id)
    }

    /// What its play looks like: speaker and amount.
    fn play(&self) -> (String, u64) {
        (self.hw.clone(), self.amount())
    }
}

/// The amount of payment `id`: distinct per payment, so a play names the
/// payment it came from.
fn amount(id: u64) -> u64 {
    10_000 + id
}

/// Bank account `i` (what a `[[route]]` matches).
fn account(i: usize) -> String {
    format!("97040000{i:02}")
}

/// The log's name for `hw`'s lane.
fn lane_name(hw: &str) -> String {
    format!("speaker:{hw}")
}

/// `[[route]]` tables: each account to its speakers.
fn routes(routes: &[(String, Vec<String>)]) -> String {
    routes
        .iter()
        .map(|(account, speakers)| {
            format!("[[route]]\naccount = \"{account}\"\nspeakers = {speakers:?}\n")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The SePay connector, `[speaker]` with the in-process simulator sending
/// business errors in `style` (`speaker_keys` and `faults` added to
/// `[speaker]` and `[speaker.sim_faults]`), its paired `devices` (hardware
/// id, online), the routes, then `extra` tables.
fn in_process(
    style: &str,
    speaker_keys: &str,
    faults: &str,
    devices: &[(String, bool)],
    route_table: &[(String, Vec<String>)],
    extra: &str,
) -> String {
    let devices: String = devices
        .iter()
        .map(|(hw, online)| sim_device(hw, true, *online))
        .collect();
    in_process_with(style, speaker_keys, faults, &devices, route_table, extra)
}

/// A `[[speaker.sim_devices]]` table.
fn sim_device(hw: &str, paired: bool, online: bool) -> String {
    format!(
        "[[speaker.sim_devices]]\nhardware_id = \"{hw}\"\npaired = {paired}\nonline = {online}\n"
    )
}

/// [`in_process`] with the simulator's device tables as given.
fn in_process_with(
    style: &str,
    speaker_keys: &str,
    faults: &str,
    device_tables: &str,
    route_table: &[(String, Vec<String>)],
    extra: &str,
) -> String {
    format!(
        "{}[speaker]\nsimulator = true\n{speaker_keys}\n\n[speaker.sim_faults]\nerror_style = \"{style}\"\n{faults}\n\n\
         {device_tables}\n{}\n{extra}\n",
        sepay_connector(),
        routes(route_table)
    )
}

/// One speaker per account: `prefix0` on account 0, and so on.
fn one_speaker_per_account(prefix: &str, n: usize) -> Vec<(String, Vec<String>)> {
    (0..n)
        .map(|i| (account(i), vec![format!("{prefix}{i}")]))
        .collect()
}

/// Ten accounts, a speaker each (`<prefix>0` …), the tenth offline in the
/// simulator.
struct TenSpeakers {
    route_table: Vec<(String, Vec<String>)>,
    speakers: Vec<String>,
    offline: String,
    /// The simulator's devices, `(hardware id, online)`.
    devices: Vec<(String, bool)>,
}

fn ten_speakers_the_last_offline(prefix: &str) -> TenSpeakers {
    let route_table = one_speaker_per_account(prefix, 10);
    let speakers: Vec<String> = route_table.iter().map(|(_, s)| s[0].clone()).collect();
    let offline = speakers[9].clone();
    let devices = speakers
        .iter()
        .map(|hw| (hw.clone(), *hw != offline))
        .collect();
    TenSpeakers {
        route_table,
        speakers,
        offline,
        devices,
    }
}

/// `per_account` payments into each account of `routes`, for its first
/// speaker, ids numbered from `first`.
fn payments_for(routes: &[(String, Vec<String>)], per_account: u64, first: u64) -> Vec<Payment> {
    let mut id = first;
    let mut out = Vec::new();
    for _ in 0..per_account {
        for (account, speakers) in routes {
            out.push(Payment {
                account: account.clone(),
                hw: speakers[0].clone(),
                id,
            });
            id += 1;
        }
    }
    out
}

/// Posts `payments`, four at a time; each must be acknowledged.
async fn pay_all(gw: &Gateway, payments: &[Payment]) {
    let url = gw.url("/hooks/sepay");
    for chunk in payments.chunks(4) {
        let posts: Vec<_> = chunk
            .iter()
            .cloned()
            .map(|p| {
                let url = url.clone();
                tokio::spawn(async move {
                    let r = post_as_sepay(&url, &p).await;
                    (p, r)
                })
            })
            .collect();
        for sent in posts {
            let (p, r) = sent.await.expect("post task");
            assert_eq!(r.status, 200, "payment {p:?}: {}", r.body);
        }
    }
}

/// Posts `p`'s webhook, again after a 5xx as SePay does when its "retry on
/// server error" is on (a plugin call can run out of its CPU budget on a
/// busy machine, and the sender is told to retry). Any other answer ends it.
async fn post_as_sepay(url: &str, p: &Payment) -> soundbox_e2e::Reply {
    let mut tries = 0;
    loop {
        let r = post(url, &[], sepay_webhook_to(&p.account, p.id, p.amount())).await;
        tries += 1;
        if r.status < 500 || tries >= 20 {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every sink's queue (`GET /api/queue`), by name.
async fn queues(gw: &Gateway) -> BTreeMap<String, Value> {
    let report = gw.admin_json("/api/queue").await;
    report["sinks"]
        .as_array()
        .unwrap_or_else(|| panic!("no sinks in {report}"))
        .iter()
        .map(|s| {
            (
                s["sink"].as_str().unwrap_or_default().to_string(),
                s.clone(),
            )
        })
        .collect()
}

/// `hw`'s lane as `GET /api/queue` shows it.
async fn lane(gw: &Gateway, hw: &str) -> Value {
    let name = lane_name(hw);
    let mut all = queues(gw).await;
    all.remove(&name)
        .unwrap_or_else(|| panic!("no lane {name} in /api/queue: {all:?}"))
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or(u64::MAX)
}

/// `queue list --sink <lane> [--state S] --json` run by the CLI (through the
/// admin API, the gateway holding the store).
fn queue_list(gw: &Gateway, sink: &str, state: Option<&str>) -> Vec<Value> {
    let mut args = vec!["list", "--sink", sink, "--json", "--limit", "10000"];
    if let Some(state) = state {
        args.extend(["--state", state]);
    }
    let (code, stdout, stderr) = gw.queue(&args);
    assert_eq!(code, 0, "queue list --sink {sink}: {stderr}{stdout}");
    match serde_json::from_str(&stdout) {
        Ok(Value::Array(items)) => items,
        other => panic!("queue list --sink {sink}: {other:?}"),
    }
}

/// The speaker and amount of each play.
fn played(plays: &[Value]) -> BTreeSet<(String, u64)> {
    plays
        .iter()
        .map(|p| {
            (
                p["hardware_id"].as_str().unwrap_or_default().to_string(),
                p["amount"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// Asserts that `plays` are exactly `payments`, each played once on its
/// speaker under a requestId of its own.
fn assert_played_once(plays: &[Value], payments: &[Payment], gw: &Gateway) {
    let want: BTreeSet<(String, u64)> = payments.iter().map(Payment::play).collect();
    let got = played(plays);
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "never played: {missing:?}; played but not expected: {extra:?}\n{}",
        gw.log_tail(300)
    );
    let mut per_request: BTreeMap<&str, u32> = BTreeMap::new();
    for p in plays {
        *per_request
            .entry(p["request_id"].as_str().unwrap_or_default())
            .or_default() += 1;
    }
    let twice: Vec<_> = per_request.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "requestIds played more than once: {twice:?}"
    );
    assert_eq!(
        plays.len(),
        payments.len(),
        "one play per payment and speaker"
    );
    assert_eq!(
        per_request.len(),
        payments.len(),
        "one requestId per payment and speaker"
    );
}

/// Waits until every lane of `speakers` has nothing pending.
async fn drained(gw: &Gateway, speakers: &[String]) {
    gw.eventually("every lane drained", Duration::from_secs(60), async || {
        let all = queues(gw).await;
        speakers
            .iter()
            .all(|hw| all.get(&lane_name(hw)).is_some_and(|l| l["pending"] == 0))
    })
    .await;
}

// ---------------------------------------------------------------------------
// 1. Ten speakers on ten accounts, one offline

in_both_styles!(async ten_speakers_one_offline_then_back);

/// Nine speakers announce every payment while the tenth is offline; its
/// payments wait in its lane (not dead letters) and are announced once when
/// it comes back.
async fn ten_speakers_one_offline_then_back(style: &str) {
    let TenSpeakers {
        route_table,
        speakers,
        offline,
        devices,
    } = ten_speakers_the_last_offline("VNS-T");
    let gw = Gateway::start(&in_process(style, "", "", &devices, &route_table, ""));
    let sim = gw.simulator();
    let payments = payments_for(&route_table, 4, 1);
    pay_all(&gw, &payments).await;

    let (theirs, others): (Vec<Payment>, Vec<Payment>) =
        payments.iter().cloned().partition(|p| p.hw == offline);
    let want: BTreeSet<(String, u64)> = others.iter().map(Payment::play).collect();
    gw.eventually(
        "every payment of the nine online speakers played",
        Duration::from_secs(60),
        async || want.is_subset(&played(&sim.plays().await)),
    )
    .await;

    // The offline speaker's payments wait in its own lane.
    let its_lane = lane(&gw, &offline).await;
    assert_eq!(n(&its_lane["pending"]), theirs.len() as u64, "{its_lane}");
    assert_eq!(its_lane["dead_letters"], 0, "{its_lane}");
    assert_eq!(its_lane["expired"], 0, "{its_lane}");
    let waiting = queue_list(&gw, &lane_name(&offline), Some("pending"));
    let waiting_amounts: BTreeSet<u64> = waiting
        .iter()
        .filter_map(|i| i["amount"].as_u64())
        .collect();
    let its_amounts: BTreeSet<u64> = theirs.iter().map(Payment::amount).collect();
    assert_eq!(
        waiting_amounts, its_amounts,
        "its lane lists its payments: {waiting:?}"
    );
    let plays = sim.plays().await;
    assert!(
        plays.iter().all(|p| p["hardware_id"] != offline.as_str()),
        "an offline speaker played: {plays:?}"
    );
    // No other lane holds anything.
    let all = queues(&gw).await;
    for hw in speakers.iter().filter(|hw| **hw != offline) {
        let l = &all[&lane_name(hw)];
        assert_eq!(l["dead_letters"], 0, "{l}");
        assert_eq!(l["expired"], 0, "{l}");
    }

    // It comes back: its payments, still fresh, are announced once.
    sim.set_online(&offline, true).await;
    let want: BTreeSet<(String, u64)> = payments.iter().map(Payment::play).collect();
    gw.eventually(
        "the speaker that came back to play its payments",
        Duration::from_secs(60),
        async || want.is_subset(&played(&sim.plays().await)),
    )
    .await;
    drained(&gw, &speakers).await;
    assert_played_once(&sim.plays().await, &payments, &gw);
    for (name, l) in queues(&gw).await {
        if name.starts_with("speaker:") {
            assert_eq!(l["dead_letters"], 0, "{l}");
            assert_eq!(l["expired"], 0, "{l}");
            assert_eq!(n(&l["delivered"]), 4, "{l}");
        }
    }
    gw.assert_no_panic();
}

in_both_styles!(async an_offline_speakers_payments_expire_saying_offline);

/// With a short `max_age_secs` and the speaker down for good, its payments
/// (a burst of three) end expired, kept in its lane with "offline" in the
/// reason; none is a dead letter, none is played.
async fn an_offline_speakers_payments_expire_saying_offline(style: &str) {
    let TenSpeakers {
        route_table,
        speakers,
        offline,
        devices,
    } = ten_speakers_the_last_offline("VNS-E");
    let gw = Gateway::start(&in_process(
        style,
        "max_age_secs = 3",
        "",
        &devices,
        &route_table,
        "",
    ));
    let sim = gw.simulator();
    let mut payments = payments_for(&route_table, 1, 1);
    // Two more for the offline speaker, in the same burst.
    let account9 = route_table[9].0.clone();
    payments.extend((100..102).map(|id| Payment {
        account: account9.clone(),
        hw: offline.clone(),
        id,
    }));
    pay_all(&gw, &payments).await;
    let theirs: Vec<&Payment> = payments.iter().filter(|p| p.hw == offline).collect();

    gw.eventually(
        "the offline speaker's payments to expire",
        Duration::from_secs(60),
        async || {
            let l = lane(&gw, &offline).await;
            l["pending"] == 0 && n(&l["expired"]) == theirs.len() as u64
        },
    )
    .await;
    let expired = queue_list(&gw, &lane_name(&offline), Some("expired"));
    assert_eq!(expired.len(), theirs.len(), "{expired:?}");
    for item in &expired {
        let reason = item["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains("offline"),
            "payment of {} expired without saying the speaker is offline: {reason:?}\nall: {expired:#?}",
            item["amount"]
        );
    }
    // The same through the admin API.
    let api = gw
        .admin_json(&format!("/api/queue/{}?state=expired", lane_name(&offline)))
        .await;
    assert_eq!(api.as_array().map(Vec::len), Some(theirs.len()), "{api}");

    // Nothing of it played; no lane has a dead letter.
    let plays = sim.plays().await;
    assert!(
        plays.iter().all(|p| p["hardware_id"] != offline.as_str()),
        "an offline speaker played: {plays:?}"
    );
    drained(&gw, &speakers).await;
    let mut announced = 0;
    for (name, l) in queues(&gw).await {
        if name.starts_with("speaker:") {
            assert_eq!(l["dead_letters"], 0, "{l}");
            if name != lane_name(&offline) {
                announced += n(&l["delivered"]);
            }
        }
    }
    eprintln!(
        "offline past max age ({style}): {} expired saying offline; the other nine announced {announced} of 9 within 3 s",
        expired.len()
    );
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// 2. One route, two speakers, one offline

in_both_styles!(async two_speakers_on_one_route_one_offline);

/// A payment routed to two speakers is announced by the online one at once,
/// while the other's copy waits (fresh, not expired) in its own lane; both
/// play it once, under requestIds of their own.
async fn two_speakers_on_one_route_one_offline(style: &str) {
    let (up, down) = ("VNS-D1".to_string(), "VNS-D2".to_string());
    let route_table = vec![(account(0), vec![up.clone(), down.clone()])];
    let devices = vec![(up.clone(), true), (down.clone(), false)];
    let gw = Gateway::start(&in_process(
        style,
        "max_age_secs = 300",
        "",
        &devices,
        &route_table,
        "",
    ));
    let sim = gw.simulator();
    let on_up = payments_for(&route_table, 3, 1);
    pay_all(&gw, &on_up).await;
    let on_down: Vec<Payment> = on_up
        .iter()
        .map(|p| Payment {
            hw: down.clone(),
            ..p.clone()
        })
        .collect();

    let want: BTreeSet<(String, u64)> = on_up.iter().map(Payment::play).collect();
    gw.eventually(
        "the online speaker of the route to play",
        Duration::from_secs(60),
        async || want.is_subset(&played(&sim.plays().await)),
    )
    .await;
    // Meanwhile the other speaker's copies wait, far from expiring.
    let waiting = lane(&gw, &down).await;
    assert_eq!(n(&waiting["pending"]), 3, "{waiting}");
    assert_eq!(waiting["expired"], 0, "{waiting}");
    assert_eq!(waiting["dead_letters"], 0, "{waiting}");
    let oldest = waiting["oldest_pending_age_ms"]
        .as_i64()
        .unwrap_or(i64::MAX);
    assert!(oldest < 300_000, "already older than max_age: {waiting}");
    let delivered = lane(&gw, &up).await;
    assert_eq!(n(&delivered["delivered"]), 3, "{delivered}");

    sim.set_online(&down, true).await;
    let all: Vec<Payment> = on_up.iter().chain(&on_down).cloned().collect();
    let want: BTreeSet<(String, u64)> = all.iter().map(Payment::play).collect();
    gw.eventually(
        "the second speaker to play once back",
        Duration::from_secs(60),
        async || want.is_subset(&played(&sim.plays().await)),
    )
    .await;
    drained(&gw, &[up, down]).await;
    assert_played_once(&sim.plays().await, &all, &gw);
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// 3. A flaky API

in_both_styles!(async a_flaky_api_announces_every_payment_once);

/// 30% of calls answered 500, 10% 429 (`Retry-After: 0`), tokens living
/// 5 s, with the default voice-shaped retries: 300 payments to three
/// speakers over more than two token lives are each announced exactly once,
/// and none is a dead letter.
async fn a_flaky_api_announces_every_payment_once(style: &str) {
    let route_table = one_speaker_per_account("VNS-F", 3);
    let speakers: Vec<String> = route_table.iter().map(|(_, s)| s[0].clone()).collect();
    let devices: Vec<(String, bool)> = speakers.iter().map(|hw| (hw.clone(), true)).collect();
    let gw = Gateway::start(&in_process(
        style,
        "",
        "error_rate = 0.3\nrate_limit_rate = 0.1\nretry_after_secs = 0\ntoken_ttl_secs = 5",
        &devices,
        &route_table,
        "",
    ));
    let sim = gw.simulator();
    let payments = payments_for(&route_table, 100, 1);
    let started = Instant::now();
    // One sender per account, spread over ~12 s (more than two token lives).
    let url = gw.url("/hooks/sepay");
    let senders: Vec<_> = route_table
        .iter()
        .map(|(account, _)| {
            let mine: Vec<Payment> = payments
                .iter()
                .filter(|p| p.account == *account)
                .cloned()
                .collect();
            let url = url.clone();
            tokio::spawn(async move {
                for p in mine {
                    let r = post_as_sepay(&url, &p).await;
                    assert_eq!(r.status, 200, "payment {p:?}: {}", r.body);
                    tokio::time::sleep(Duration::from_millis(120)).await;
                }
            })
        })
        .collect();
    for sender in senders {
        sender.await.expect("sender");
    }
    let want: BTreeSet<(String, u64)> = payments.iter().map(Payment::play).collect();
    gw.eventually(
        "all 300 payments played",
        Duration::from_secs(120),
        async || want.is_subset(&played(&sim.plays().await)),
    )
    .await;
    drained(&gw, &speakers).await;
    let took = started.elapsed();
    let plays = sim.plays().await;
    assert_played_once(&plays, &payments, &gw);
    let stats = sim.stats().await;
    assert_eq!(stats["plays"], 300, "{stats}");
    assert!(
        n(&stats["tokens_issued"]) >= 2,
        "tokens expired along the way: {stats}"
    );
    for hw in &speakers {
        let l = lane(&gw, hw).await;
        assert_eq!(l["dead_letters"], 0, "{l}");
        assert_eq!(l["expired"], 0, "{l}");
        assert_eq!(n(&l["delivered"]), 100, "{l}");
    }
    // The faults did bite: notifies failed and were retried.
    let retried = gw.logs().matches("delivery failed; will retry").count();
    assert!(retried > 0, "no notify was retried: {stats}");
    gw.assert_no_panic();
    eprintln!(
        "flaky API ({style}): 300 payments announced once each in {:.1} s after {retried} retries; simulator {stats}",
        took.as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// 4. FAILED and never-confirmed announcements on MQTT

in_both_styles!(async failed_and_unconfirmed_announcements_on_mqtt);

/// The results published for `amount`, in order, repeats (a QoS 1 resend)
/// dropped.
fn results_for(sub: &Subscriber, topic: &str, amount: u64) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for m in sub.on(topic) {
        let a = m.json();
        if a["amount"] == amount && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn result_names(results: &[Value]) -> Vec<String> {
    results
        .iter()
        .map(|a| a["result"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// A speaker that cannot play (`check_notify` answers `FAILED`) yields
/// `sent`, then one new notify under `<requestId>-r1`, then `failed`; one
/// never confirmed yields `sent`, then `unconfirmed`. The speaker's health
/// is retained on `speakers/<hwid>`.
async fn failed_and_unconfirmed_announcements_on_mqtt(style: &str) {
    let hw = "VNS-M1".to_string();
    let mqtt_port = free_port();
    let prefix = format!("lanes{}", free_port());
    let route_table = vec![(account(0), vec![hw.clone()])];
    let gw = Gateway::start(&in_process(
        style,
        "",
        "failed_rate = 1.0",
        &[(hw.clone(), true)],
        &route_table,
        &format!(
            "[mqtt]\nbroker = \"embedded\"\nembedded_listen = \"127.0.0.1:{mqtt_port}\"\n\
             topic_prefix = \"{prefix}\"\nretry_initial_ms = 50\nretry_max_ms = 500\n"
        ),
    ));
    let sim = gw.simulator();
    let sub = Subscriber::connect(mqtt_port, &format!("{prefix}/#")).await;
    let announcements = format!("{prefix}/e2e/announcements");
    let health = format!("{prefix}/e2e/speakers/{hw}");

    // Its health, once pair/check answered; retained for a later subscriber.
    let online = |m: &[soundbox_e2e::mqtt::Message]| {
        m.iter().any(|m| {
            let s = m.json();
            s["hardware_id"] == hw.as_str() && s["online"] == true && s["paired"] == true
        })
    };
    assert!(
        sub.wait_until(&health, Duration::from_secs(20), online)
            .await,
        "{:?}\n{}",
        sub.on(&health),
        gw.log_tail(100)
    );
    let late = Subscriber::connect(mqtt_port, &health).await;
    assert!(
        late.wait_until(&health, Duration::from_secs(10), |m| {
            m.iter().any(|m| m.retain && m.json()["online"] == true)
        })
        .await,
        "retained speaker health: {:?}",
        late.on(&health)
    );

    // FAILED: sent, one new notify, failed.
    let first = Payment {
        account: account(0),
        hw: hw.clone(),
        id: 1,
    };
    pay_all(&gw, std::slice::from_ref(&first)).await;
    let settled = |r: &[Value]| {
        r.iter()
            .any(|a| a["result"] != "sent" && a["result"].is_string())
    };
    assert!(
        sub.wait_until(&announcements, Duration::from_secs(60), |_| settled(
            &results_for(&sub, &announcements, first.amount())
        ))
        .await,
        "no final result for the FAILED payment: {:?}\n{}",
        results_for(&sub, &announcements, first.amount()),
        gw.log_tail(100)
    );
    let results = results_for(&sub, &announcements, first.amount());
    assert_eq!(result_names(&results), ["sent", "failed"], "{results:#?}");
    let (sent, failed) = (&results[0], &results[1]);
    let request_id = sent["request_id"].as_str().unwrap_or_default().to_string();
    assert!(request_id.starts_with("sbx-"), "{sent}");
    assert_eq!(failed["request_id"], format!("{request_id}-r1"), "{failed}");
    assert!(
        failed["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{failed}"
    );
    for a in &results {
        assert_eq!(a["schema"], 1, "{a}");
        assert_eq!(a["hardware_id"], hw.as_str(), "{a}");
        assert_eq!(a["amount"], first.amount(), "{a}");
        assert_eq!(a["event_id"], sent["event_id"], "{a}");
        assert_eq!(a["seq"], sent["seq"], "{a}");
        assert!(
            a["words"].as_str().is_some_and(|w| w.ends_with("đồng")),
            "{a}"
        );
        assert!(a["at"].as_str().is_some_and(|t| t.ends_with('Z')), "{a}");
    }
    assert!(
        sent["event_id"].is_string() && sent["seq"].is_u64(),
        "{sent}"
    );
    // Two notifications, both FAILED at the simulator, nothing played.
    let tried: BTreeSet<String> = sim
        .failed()
        .await
        .iter()
        .filter_map(|p| p["request_id"].as_str().map(str::to_string))
        .collect();
    let want: BTreeSet<String> = [request_id.clone(), format!("{request_id}-r1")].into();
    assert_eq!(tried, want, "one new notify, not more");
    assert!(sim.plays().await.is_empty());

    // Never confirmed: sent, then unconfirmed after the last poll.
    sim.set_faults(serde_json::json!({ "error_style": style, "never_confirm": true }))
        .await;
    let second = Payment {
        account: account(0),
        hw: hw.clone(),
        id: 2,
    };
    pay_all(&gw, std::slice::from_ref(&second)).await;
    assert!(
        sub.wait_until(&announcements, Duration::from_secs(60), |_| settled(
            &results_for(&sub, &announcements, second.amount())
        ))
        .await,
        "no final result for the unconfirmed payment: {:?}\n{}",
        results_for(&sub, &announcements, second.amount()),
        gw.log_tail(100)
    );
    let results = results_for(&sub, &announcements, second.amount());
    assert_eq!(
        result_names(&results),
        ["sent", "unconfirmed"],
        "{results:#?}"
    );
    assert_eq!(results[0]["request_id"], results[1]["request_id"]);
    assert!(
        results[1]["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{}",
        results[1]
    );
    // It was played (never confirmed is not never said), once.
    let plays = sim.plays().await;
    assert_eq!(played(&plays), BTreeSet::from([second.play()]), "{plays:?}");
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// 4b. Refusals classified by pair/check

in_both_styles!(async refusals_are_classified_by_pair_check);

/// SePay's refusal codes are unpublished, so a refused notify is classified
/// by asking `pair/check`: a speaker that is not paired expires the payment
/// at once saying so (kept, not a dead letter, not retried until max age);
/// one SePay does not know makes a dead letter naming the hardware id to
/// check. A paired speaker beside them announces its payment.
async fn refusals_are_classified_by_pair_check(style: &str) {
    let (unpaired, unknown, fine) = ("VNS-R-UNPAIRED", "VNS-R-UNKNOWN", "VNS-R-OK");
    let route_table = vec![
        (account(0), vec![unpaired.to_string()]),
        (account(1), vec![unknown.to_string()]),
        (account(2), vec![fine.to_string()]),
    ];
    // A long max age: an expiry before it can only be the "not paired" one.
    let gw = Gateway::start(&in_process_with(
        style,
        "max_age_secs = 600",
        "",
        &format!(
            "{}{}",
            sim_device(unpaired, false, true),
            sim_device(fine, true, true)
        ),
        &route_table,
        "",
    ));
    let sim = gw.simulator();
    let payments = payments_for(&route_table, 1, 1);
    pay_all(&gw, &payments).await;
    gw.eventually(
        "each lane to settle its payment",
        Duration::from_secs(60),
        async || {
            let all = queues(&gw).await;
            [unpaired, unknown, fine]
                .iter()
                .all(|hw| all.get(&lane_name(hw)).is_some_and(|l| l["pending"] == 0))
        },
    )
    .await;

    let expired = queue_list(&gw, &lane_name(unpaired), Some("expired"));
    assert_eq!(expired.len(), 1, "not paired: expired at once: {expired:?}");
    let reason = expired[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("not paired"), "{reason}");
    assert_eq!(lane(&gw, unpaired).await["dead_letters"], 0);

    let dead = queue_list(&gw, &lane_name(unknown), Some("dead"));
    assert_eq!(dead.len(), 1, "unknown speaker: a dead letter: {dead:?}");
    let reason = dead[0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(unknown) && reason.contains("hardware id"),
        "{reason}"
    );

    assert_played_once(&sim.plays().await, &payments[2..], &gw);
    let status = gw.api_status().await;
    let state = status["speakers"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["hardware_id"] == unpaired))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(state["paired"], false, "{status}");
    assert!(
        status
            .to_string()
            .contains(&format!("Speaker {unpaired} is not paired")),
        "the status names it: {status}"
    );
    gw.assert_no_panic();
}

// ---------------------------------------------------------------------------
// 5. SIGKILL loop, three speakers, one flapping

in_both_styles!(sigkill_loop_with_a_flapping_speaker);

/// Posts `payments` with `workers` senders pacing `pace` between two of
/// their own, each until it is acknowledged (the gateway is being killed):
/// a provider's retries. Returns the acknowledged ones.
async fn post_until_acked(
    url: String,
    payments: Vec<Payment>,
    workers: usize,
    pace: Duration,
) -> Vec<Payment> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let mut tasks = Vec::new();
    for w in 0..workers {
        let mine: Vec<Payment> = payments.iter().skip(w).step_by(workers).cloned().collect();
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            for p in &mine {
                let body = sepay_webhook_to(&p.account, p.id, p.amount());
                post_until_2xx(&client, &url, &body, p).await;
                tokio::time::sleep(pace).await;
            }
            mine
        }));
    }
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.expect("sender"));
    }
    acked
}

/// What the gateway knows of the acknowledged payments that were never
/// played: each one's state in its lane and what every run's log says of
/// it; the whole logs go to a file.
async fn lost_payments(
    gw: &Gateway,
    acked: &[Payment],
    plays: &[Value],
    runs: &[String],
) -> String {
    let got = played(plays);
    let missing: Vec<&Payment> = acked.iter().filter(|p| !got.contains(&p.play())).collect();
    let mut report = format!(
        "{} of {} acknowledged payments never played: {missing:?}\nlanes: {:?}\n",
        missing.len(),
        acked.len(),
        queues(gw).await
    );
    for p in &missing {
        let items = queue_list(gw, &lane_name(&p.hw), None);
        let item = items.iter().find(|i| i["amount"] == p.amount());
        report.push_str(&format!("payment {p:?} in its lane: {item:?}\n"));
        let transaction = format!("\"transaction_id\":\"{}\"", p.id);
        for (run, log) in runs.iter().enumerate() {
            for line in log.lines().filter(|l| l.contains(&transaction)) {
                report.push_str(&format!("  run {run}: {line}\n"));
            }
        }
    }
    let file = std::env::temp_dir().join(format!("lanes-sigkill-{}.log", std::process::id()));
    let all: Vec<String> = runs
        .iter()
        .enumerate()
        .map(|(run, log)| format!("=== run {run}\n{log}"))
        .collect();
    if std::fs::write(&file, all.join("\n")).is_ok() {
        report.push_str(&format!("every run's log: {}\n", file.display()));
    }
    report
}

/// The standalone simulator (it survives the gateway's kills) with three
/// speakers on three accounts, one switched off and on every 0.5–1 s; the
/// gateway SIGKILLed and restarted while payments are posted. Once the
/// speaker stays on, every acknowledged payment is played exactly once on
/// its speaker: nothing lost, nothing twice.
fn sigkill_loop_with_a_flapping_speaker(style: &str) {
    let count: u64 = chaos_size(60, 600);
    let kills: usize = chaos_size(5, 50);
    let route_table = one_speaker_per_account("VNS-K", 3);
    let speakers: Vec<String> = route_table.iter().map(|(_, s)| s[0].clone()).collect();
    let flapping = speakers[2].clone();
    let devices: Vec<String> = speakers.iter().map(|hw| format!("{hw}:paired")).collect();
    let api = SpeakerApi::builder(free_port())
        .devices(&devices)
        .args(&["--error-style", style])
        .start();
    let mut gw = Gateway::start(&format!(
        "{}[speaker]\n{}client_secret = \"sim-secret\"\nmax_age_secs = 600\ntimeout_ms = 2000\n\n{}",
        sepay_connector(),
        api.speaker_keys(),
        routes(&route_table)
    ));
    let payments = payments_for(&route_table, count / 3, 1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // The flapping speaker.
    let stop = Arc::new(AtomicBool::new(false));
    let flips = {
        let (control, stop, hw) = (api.control(), stop.clone(), flapping.clone());
        runtime.spawn(async move {
            let mut online = true;
            let mut flips = 0u32;
            while !stop.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(500..1000))).await;
                online = !online;
                control.set_online(&hw, online).await;
                flips += 1;
            }
            control.set_online(&hw, true).await;
            flips
        })
    };
    // Spread the payments over the kills (each about 1.5 s with the restart).
    let workers = 3;
    let pace = Duration::from_millis(kills as u64 * 1500 * workers as u64 / count);
    let sender = runtime.spawn(post_until_acked(
        gw.url("/hooks/sepay"),
        payments.clone(),
        workers,
        pace,
    ));
    let started = Instant::now();
    let mut killed = 0;
    // Every run's log, for a failure to show what each did.
    let mut runs: Vec<String> = Vec::new();
    while !sender.is_finished() || killed < kills {
        std::thread::sleep(Duration::from_millis(fastrand::u64(300..900)));
        runs.push(gw.logs());
        gw.kill_and_restart();
        killed += 1;
        assert!(
            started.elapsed() < Duration::from_secs(chaos_size(300, 3600)),
            "the SIGKILL loop took too long"
        );
    }
    let acked = runtime.block_on(sender).expect("sender");
    stop.store(true, Ordering::SeqCst);
    let flips = runtime.block_on(flips).expect("flapper");
    assert_eq!(acked.len(), payments.len(), "every payment acknowledged");

    // The speaker stays on now: everything acknowledged is played.
    let want: BTreeSet<(String, u64)> = acked.iter().map(Payment::play).collect();
    let control = api.control();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !want.is_subset(&played(&runtime.block_on(control.plays()))) {
        if Instant::now() > deadline {
            runs.push(gw.logs());
            let plays = runtime.block_on(control.plays());
            panic!(
                "{}",
                runtime.block_on(lost_payments(&gw, &acked, &plays, &runs))
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    runtime.block_on(drained(&gw, &speakers));
    let plays = runtime.block_on(control.plays());
    assert_played_once(&plays, &acked, &gw);
    gw.assert_no_panic();
    eprintln!(
        "SIGKILL loop ({style}): {} payments, {killed} kills, {flips} flips of {flapping}, {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------
// 6. Status page, /readyz and /metrics name the offline speaker

in_both_styles!(async status_readyz_and_metrics_name_the_offline_speaker);

/// `soundbox_speaker_online{hardware_id}`, if `/metrics` has it.
async fn speaker_online(gw: &Gateway, hw: &str) -> Option<f64> {
    gw.metrics()
        .await
        .value("soundbox_speaker_online", &[("hardware_id", hw)])
}

/// With one speaker offline and payments waiting for it: `/api/status` has
/// it offline with what waits and a warning naming it, `/metrics` says
/// `soundbox_speaker_online 0`, `/readyz` stays 200 until it has been down
/// longer than `admin.stall_after_secs`, then answers 503 naming it; back
/// online, its payments are played and the gateway is ready again.
async fn status_readyz_and_metrics_name_the_offline_speaker(style: &str) {
    let route_table = one_speaker_per_account("VNS-S", 2);
    let (up, down) = (route_table[0].1[0].clone(), route_table[1].1[0].clone());
    let devices = vec![(up.clone(), true), (down.clone(), false)];
    let gw = Gateway::start(&in_process(
        style,
        "",
        "",
        &devices,
        &route_table,
        "[admin]\nstall_after_secs = 3600\n",
    ));
    let sim = gw.simulator();
    let mut payments = payments_for(&route_table, 1, 1);
    payments.push(Payment {
        account: route_table[1].0.clone(),
        hw: down.clone(),
        id: 3,
    });
    pay_all(&gw, &payments).await;
    let theirs: Vec<u64> = payments
        .iter()
        .filter(|p| p.hw == down)
        .map(Payment::amount)
        .collect();

    let speaker = |status: &Value, hw: &str| -> Value {
        status["speakers"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["hardware_id"] == hw))
            .cloned()
            .unwrap_or(Value::Null)
    };
    gw.eventually(
        "the status to show the offline speaker with its payments",
        Duration::from_secs(30),
        async || {
            let status = gw.api_status().await;
            let s = speaker(&status, &down);
            s["online"] == false && n(&s["waiting"]) >= theirs.len() as u64
        },
    )
    .await;
    let status = gw.api_status().await;
    let s = speaker(&status, &down);
    assert_eq!(s["paired"], true, "{s}");
    assert!(s["down_since_ms"].is_i64(), "{s}");
    let amounts: BTreeSet<u64> = s["waiting_amounts"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    assert_eq!(amounts, theirs.iter().copied().collect(), "{s}");
    let warnings = status["warnings"].to_string();
    assert!(warnings.contains(&down), "a warning names it: {status}");
    assert!(!warnings.contains(&up), "only the offline one: {warnings}");
    // Down for less than stall_after_secs: a warning, not unready.
    let (ready, body) = gw.admin_get("/readyz").await;
    assert_eq!(ready, 200, "{body}");
    gw.eventually(
        "the other speaker's payment played",
        Duration::from_secs(30),
        async || played(&sim.plays().await).contains(&(up.clone(), amount(1))),
    )
    .await;
    let status = gw.api_status().await;
    assert_eq!(speaker(&status, &up)["online"], true, "{status}");
    let page = gw.admin_get("/").await.1;
    assert!(page.contains(&down) && page.contains("offline"), "{page}");

    assert_eq!(
        speaker_online(&gw, &down).await,
        Some(0.0),
        "soundbox_speaker_online of {down}"
    );
    gw.eventually(
        "soundbox_speaker_online 1 for the other",
        Duration::from_secs(10),
        async || speaker_online(&gw, &up).await == Some(1.0),
    )
    .await;

    // Down longer than stall_after_secs (2 s now): unready, naming it.
    gw.reload("stall_after_secs = 3600", "stall_after_secs = 2")
        .await;
    let mut last = (0, String::new());
    gw.eventually(
        "/readyz to answer 503 naming the speaker",
        Duration::from_secs(30),
        async || {
            last = gw.admin_get("/readyz").await;
            last.0 == 503 && last.1.contains(&down)
        },
    )
    .await;
    let problems: Value = serde_json::from_str(&last.1).expect("readyz JSON");
    let problems = problems["problems"].to_string();
    assert!(problems.contains(&down), "{problems}");
    assert!(!problems.contains(&up), "{problems}");

    // Back online: its payments are announced and the gateway is ready.
    sim.set_online(&down, true).await;
    gw.eventually(
        "ready again with the speaker back",
        Duration::from_secs(60),
        async || gw.admin_get("/readyz").await.0 == 200,
    )
    .await;
    let want: BTreeSet<(String, u64)> = payments.iter().map(Payment::play).collect();
    gw.eventually("its payments played", Duration::from_secs(30), async || {
        want.is_subset(&played(&sim.plays().await))
    })
    .await;
    drained(&gw, &[up, down.clone()]).await;
    assert_played_once(&sim.plays().await, &payments, &gw);
    gw.eventually(
        "soundbox_speaker_online 1 once back",
        Duration::from_secs(10),
        async || speaker_online(&gw, &down).await == Some(1.0),
    )
    .await;
    gw.assert_no_panic();
}
