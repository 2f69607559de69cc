//! End to end: SePay webhooks into the real release binary, through the
//! SePay plugin and the durable event log, out to a Speaker API simulator
//! and the embedded MQTT broker; every figure next to a baseline measured in
//! the same run.
//!
//! - Physical limit: plain append + `fdatasync` of 200-byte records, one
//!   writer, on the filesystem that holds the gateway's data dir, measured
//!   right before the gateway; also the bytes it wrote to disk per record.
//! - Naive baseline: an HTTP server inside the bench (axum) that parses the
//!   same webhook natively (serde_json), calls `notify` on its own standalone
//!   simulator (`soundbox-gateway speaker-sim`; token once) and answers 200.
//!   No durability, no plugin, no MQTT: its 2xx is its time to voice.
//! - Durable floor: the least any server that syncs each webhook before its
//!   2xx takes here: axum appends the body to a file and `fdatasync`s it on
//!   the blocking pool, then answers 200; one at a time, right after the
//!   physical limit. Goal #3's ratio for the gateway reads against it.
//! - The gateway: `soundbox-gateway run` with the SePay plugin (`auth =
//!   "none"`), `[speaker]` on its own standalone simulator with every account
//!   routed to one paired speaker, `[mqtt] broker = "embedded"`, default log
//!   level. A QoS 1 subscriber in the bench records `events` and
//!   `announcements`.
//!
//! **Time to voice** is webhook sent → its notify accepted: the `at` of the
//! payment's `sent` announcement (the gateway publishes it the moment
//! notify answers SENT) minus when the bench sent the webhook, both on this
//! machine's wall clock; MQTT's delivery is not in it (it is printed
//! beside). The **final result** (`played`, `unconfirmed`, ...) is the
//! announcement after `check_notify`, seen on MQTT: 1.5 s after the notify
//! at the earliest, whatever the simulator's play time ([`PLAY_MS`], short
//! here so plays are confirmed at the first poll).
//!
//! **Disk writes per payment**: the `write_bytes` of the gateway process's
//! `/proc/<pid>/io` (bytes it caused to be written to storage, counted as it
//! dirties 4 KiB page-cache pages) over a phase, divided by the payments
//! acknowledged in it; a phase runs from its first webhook until all its
//! payments have their final result, so sinks' and announcements' writes
//! count. One at a time and with `SENDERS` senders, beside the physical
//! limit's bytes per record: one `fdatasync` per payment dirties at least
//! one 4 KiB page, so one at a time is floored near 4 KiB; under load
//! payments synced together can share pages.
//!
//! The same load generator drives both servers: one request at a time
//! (the gateway's next request waits for the previous one's event and
//! voice), then `SENDERS` concurrent senders in a closed loop. Then ten
//! speakers on ten accounts, all online, one offline and against a flaky
//! API ([`lanes`]); then the chain path, a relay gateway and ten shops over
//! a three-node NATS cluster, against those ten speakers on one gateway
//! ([`chain`]). Also: warm startup to `/readyz` against `--version`, one
//! plugin call against the same parsing compiled natively, and the issue
//! goals computed from all this. Every payment must be published on
//! `events` once, announced `sent` once with one final result, and played
//! once: losses, duplicates, non-2xx replies and the gateway's warnings are
//! counted and printed.
//!
//! **The gateway's own answer** one at a time is its
//! `webhook_duration_seconds` histogram (handler to answer, in 0.1 ms steps
//! up to 1 ms) read before and after that phase: the 2xx without the
//! loopback round trip and the wake-ups at both ends.
//!
//! Figures, each next to its baselines where they compare: 2xx, time to
//! voice, final result and MQTT event p50/p99 one at a time and under load,
//! with their rates; the `fdatasync` floor (p50, p99, /s); the gateway's RSS
//! idle and under load, VmHWM, CPU per webhook and cores busy; KiB written
//! to disk per payment, one at a time and under load. Goals include
//! webhook → 2xx p99 one at a time ≤ 3× the `fdatasync` p99, ≥ 5,000
//! acknowledged/s with `SENDERS` senders, and ≤ 4 KiB written to disk per
//! payment with `SENDERS` senders (one at a time is printed as a note).
//!
//! Run: `make bench-e2e`, or `cargo bench -p soundbox-gateway --bench e2e`
//! after `make plugins`.

mod common;
// Beside this file, not in `benches/` itself: cargo would take it for a bench.
#[path = "e2e/chain.rs"]
mod chain;
#[path = "e2e/lanes.rs"]
mod lanes;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::State;
use axum::http::StatusCode;
use serde::Deserialize;

use common::{Stats, goal, micros, ms, stats};
use soundbox_e2e::mqtt::{Message, Subscriber, topic_matches};
use soundbox_e2e::{
    Gateway, RssPeak, SimControl, SpeakerApi, free_port, sepay_connector, sepay_webhook, wait_until,
};
/// Raw `fdatasync` appends (the physical limit) and their record size.
const RAW_SYNCS: usize = 3_000;
const RECORD_BYTES: usize = 200;
/// Webhooks before measuring (connections, caches, token).
const WARM_UP: u64 = 50;
/// Webhooks sent one at a time.
const SEQUENTIAL: u64 = 500;
/// Concurrent senders, and webhooks they send in all, under load.
const SENDERS: usize = 32;
const LOAD: u64 = 20_000;
/// Warm starts timed (and `--version` runs).
const STARTUP_RUNS: usize = 11;
const WASM_CALLS: usize = 5_000;
const NATIVE_CALLS: usize = 50_000;
/// The speaker every payment is routed to.
const SPEAKER: &str = "VNS-SHOP-1";
/// How long the gateway may take to announce the whole load.
const DRAIN_LIMIT: Duration = Duration::from_secs(180);
/// Amount of payment `id`: unique, so MQTT messages and plays map back to it.
fn amount(id: u64) -> u64 {
    10_000 + id
}

/// The load generator's HTTP client, the same for the gateway and the naive
/// server: a pooled connection per sender.
fn load_client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(SENDERS * 2)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("HTTP client")
}

/// How long the simulated speakers take to play an announcement (the
/// simulator's `--play-ms`): short, so `check_notify` answers `SUCCESS` at
/// the gateway's first poll (1.5 s after the notify) even under load. A real
/// speaker takes about 2 s; time to voice does not depend on it.
const PLAY_MS: u64 = 50;

/// The release binary the bench measures.
fn release_binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_soundbox-gateway"))
}

/// A standalone Speaker API simulator (`speaker-sim` of the release
/// binary) with `devices` as `--device` takes them (`HWID:paired[:offline]`),
/// playing for [`PLAY_MS`]; killed on drop.
fn speaker_sim(devices: &[String]) -> SpeakerApi {
    SpeakerApi::builder(free_port())
        .binary(release_binary())
        .devices(devices)
        .args(&["--play-ms", &PLAY_MS.to_string()])
        .start()
}

/// With the one paired speaker every payment of the one-speaker runs goes to.
fn one_speaker() -> SpeakerApi {
    speaker_sim(&[format!("{SPEAKER}:paired")])
}

/// Amount → the speakers that played it (one entry per play).
async fn plays_by_amount(sim: &SimControl) -> HashMap<u64, Vec<String>> {
    #[derive(Deserialize)]
    struct Play {
        amount: u64,
        hardware_id: String,
    }
    let mut by_amount: HashMap<u64, Vec<String>> = HashMap::new();
    for play in sim.plays().await {
        let p: Play = serde_json::from_value(play).expect("a play");
        by_amount.entry(p.amount).or_default().push(p.hardware_id);
    }
    by_amount
}

/// Waits until the speakers played `n` announcements in all
/// (`GET /_sim/stats`); false after `limit`.
async fn wait_played(sim: &SimControl, n: u64, limit: Duration) -> bool {
    wait_until(limit, async || {
        sim.stats().await["plays"].as_u64().unwrap_or(0) >= n
    })
    .await
}

/// One webhook as the load generator saw it.
#[derive(Debug, Clone, Copy)]
struct Shot {
    id: u64,
    sent: Instant,
    /// `sent` on the wall clock, to compare with the gateway's stamps.
    wall: SystemTime,
    done: Instant,
    /// HTTP status; 0 when the request failed (connection, timeout).
    status: u16,
}

impl Shot {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// The body of payment `id` in the one-speaker runs: [`sepay_webhook`] on
/// its one account.
fn one_speaker_body(id: u64) -> String {
    sepay_webhook(id, amount(id))
}

async fn post_one(client: &reqwest::Client, url: &str, id: u64, body: String) -> Shot {
    let wall = SystemTime::now();
    let sent = Instant::now();
    let status = match client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(response) => {
            let status = response.status().as_u16();
            // Read the body: the reply is complete only then.
            match response.bytes().await {
                Ok(_) => status,
                Err(_) => 0,
            }
        }
        Err(_) => 0,
    };
    Shot {
        id,
        sent,
        wall,
        done: Instant::now(),
        status,
    }
}

/// `ids` posted by `senders` concurrent senders, each one request at a time
/// (the next as soon as the previous one's reply is in).
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    ids: std::ops::Range<u64>,
    senders: usize,
    body: fn(u64) -> String,
) -> Vec<Shot> {
    let next = Arc::new(AtomicU64::new(ids.start));
    let end = ids.end;
    let mut tasks = Vec::new();
    for _ in 0..senders {
        let (client, url, next) = (client.clone(), url.to_string(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut shots = Vec::new();
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= end {
                    return shots;
                }
                shots.push(post_one(&client, &url, id, body(id)).await);
            }
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("sender"));
    }
    all.sort_by_key(|s| s.id);
    all
}

/// One message on `announcements`.
#[derive(Debug, Clone)]
struct Heard {
    /// When the bench received it, on both clocks.
    arrived: Instant,
    arrived_wall: SystemTime,
    /// `sent`, or how the announcement ended (`played`, `unconfirmed`, ...).
    result: String,
    detail: String,
    /// The gateway's stamp (`at`, ms): for `sent`, when notify answered SENT.
    at: Option<SystemTime>,
    hardware_id: String,
    seq: u64,
}

impl Heard {
    fn is_sent(&self) -> bool {
        self.result == "sent"
    }
}

/// What the MQTT subscriber received, by payment amount.
#[derive(Default)]
struct Seen {
    events: HashMap<u64, Vec<Instant>>,
    announcements: HashMap<u64, Vec<Heard>>,
    /// When the last announcement arrived.
    last_announcement: Option<Instant>,
    /// Messages that did not parse, and connection errors.
    unreadable: usize,
    /// When the connection failed, and why.
    connection_errors: Vec<(Instant, String)>,
}

impl Seen {
    /// The `sent` announcement of the payment of `amount`: its notify was
    /// accepted (the speaker was asked to say it).
    fn sent(&self, amount: u64) -> Option<&Heard> {
        self.announcements
            .get(&amount)?
            .iter()
            .find(|h| h.is_sent())
    }

    /// Its final result (`played`, `failed`, `unconfirmed`, `expired`,
    /// `refused`): the first message that is not `sent`.
    fn result(&self, amount: u64) -> Option<&Heard> {
        self.announcements
            .get(&amount)?
            .iter()
            .find(|h| !h.is_sent())
    }

    /// Copies of `sent`, and of final results, for `amount`.
    fn counts(&self, amount: u64) -> (usize, usize) {
        let heard = self
            .announcements
            .get(&amount)
            .map_or(&[][..], Vec::as_slice);
        let sent = heard.iter().filter(|h| h.is_sent()).count();
        (sent, heard.len() - sent)
    }
}

/// `s` locked (a panicked holder does not matter here).
fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock().unwrap_or_else(|e| e.into_inner())
}

/// A gateway's `events` and `announcements` as they arrive, by payment
/// amount: a QoS 1 [`Subscriber`] (on a thread and runtime of its own, so
/// the load generator does not delay its timestamps) that files each
/// message into [`Seen`].
struct Listener {
    seen: Arc<Mutex<Seen>>,
    subscriber: Subscriber,
}

/// How long [`Listener::wait_until`] waits once no announcement arrives:
/// longer than the gateway's confirmation (1.5 s + 11 polls 1 s apart).
const QUIET: Duration = Duration::from_secs(15);

impl Listener {
    /// To `<prefix>/events` and `<prefix>/announcements` on the broker on
    /// `port`; `prefix` may hold `+` levels (`chain/+`: every gateway of a
    /// chain).
    fn connect(port: u16, prefix: &str) -> Listener {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let (events, announcements) = (
            format!("{prefix}/events"),
            format!("{prefix}/announcements"),
        );
        let filed = seen.clone();
        let subscriber = Subscriber::options(port)
            .filter(&events)
            .filter(&announcements)
            .clean_session()
            .keep_alive(Duration::from_secs(30))
            .max_packet_size(256 << 10)
            .on_message(move |m| file(&filed, &events, &announcements, &m))
            .connect_blocking();
        Listener { seen, subscriber }
    }

    fn with<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&lock(&self.seen))
    }

    /// What it saw, shared with tasks that wait for announcements.
    fn seen(&self) -> Arc<Mutex<Seen>> {
        self.seen.clone()
    }

    /// Stops listening; returns what it saw, with the connection's errors.
    fn finish(self) -> Seen {
        let errors = self.subscriber.connection_errors();
        drop(self.subscriber);
        let mut seen = std::mem::take(&mut *lock(&self.seen));
        seen.connection_errors = errors;
        seen
    }

    /// Waits until `done(seen, id)` for every payment in `ids`; false after
    /// `limit`, or once no announcement arrived for [`QUIET`].
    fn wait_until(
        &self,
        ids: std::ops::Range<u64>,
        limit: Duration,
        done: impl Fn(&Seen, u64) -> bool,
    ) -> bool {
        let started = Instant::now();
        let deadline = started + limit;
        // Payments are done for good: check each once.
        let mut next = ids.start;
        loop {
            let (at, last) = self.with(|s| {
                let mut id = next;
                while id < ids.end && done(s, id) {
                    id += 1;
                }
                (id, s.last_announcement)
            });
            next = at;
            if next >= ids.end {
                return true;
            }
            let now = Instant::now();
            let quiet = last.unwrap_or(started).max(started);
            if now > deadline || now.duration_since(quiet) > QUIET {
                return false;
            }
            // Checking thousands holds the lock the subscriber needs: less often.
            let pause = if ids.end - next > 1 { 10 } else { 1 };
            std::thread::sleep(Duration::from_millis(pause));
        }
    }
}

/// Whether payment `id` is on `events` and its notify was accepted.
fn voiced(s: &Seen, id: u64) -> bool {
    s.events.contains_key(&amount(id)) && s.sent(amount(id)).is_some()
}

/// Whether payment `id` is on `events` and has its final result.
fn settled(s: &Seen, id: u64) -> bool {
    s.events.contains_key(&amount(id)) && s.result(amount(id)).is_some()
}

/// Files message `m` into `seen`: on `events` (a filter) by amount, on
/// `announcements` as what was [`Heard`]; anything else is unreadable.
fn file(seen: &Mutex<Seen>, events: &str, announcements: &str, m: &Message) {
    let json: Option<serde_json::Value> = serde_json::from_slice(&m.payload).ok();
    let amount = json.as_ref().and_then(|j| j["amount"].as_u64());
    let mut s = lock(seen);
    match (amount, json) {
        (Some(a), _) if topic_matches(events, &m.topic) => {
            s.events.entry(a).or_default().push(m.arrived)
        }
        (Some(a), Some(j)) if topic_matches(announcements, &m.topic) => {
            let text = |k: &str| j[k].as_str().unwrap_or_default().to_string();
            let heard = Heard {
                arrived: m.arrived,
                arrived_wall: m.arrived_wall,
                result: text("result"),
                detail: text("detail"),
                at: j["at"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339(t).ok()),
                hardware_id: text("hardware_id"),
                seq: j["seq"].as_u64().unwrap_or(0),
            };
            s.announcements.entry(a).or_default().push(heard);
            s.last_announcement = Some(m.arrived);
        }
        _ => s.unreadable += 1,
    }
}

/// When each payment's notify was accepted (amount → the gateway's clock):
/// the `at` of its `sent` announcement on MQTT or, for a `sent` MQTT did not
/// bring, the time of the gateway's "announcement sent" log line. Also how
/// many came from the log.
fn voiced_at(seen: &Seen, log: &str) -> (HashMap<u64, SystemTime>, usize) {
    let mut at: HashMap<u64, SystemTime> = seen
        .announcements
        .iter()
        .filter_map(|(a, heard)| Some((*a, heard.iter().find(|h| h.is_sent())?.at?)))
        .collect();
    let mut from_log = 0;
    for line in log.lines().filter(|l| l.contains("announcement sent")) {
        let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if json["fields"]["message"] != "announcement sent" {
            continue;
        }
        let stamp = json["timestamp"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok());
        if let (Some(a), Some(stamp)) = (json["fields"]["amount"].as_u64(), stamp)
            && !at.contains_key(&a)
        {
            at.insert(a, stamp);
            from_log += 1;
        }
    }
    (at, from_log)
}

/// Time to voice (webhook sent → notify accepted, [`voiced_at`]) of the
/// acknowledged `shots`, and the rate (voiced ÷ first send to last voice).
fn voice_stats(shots: &[Shot], voiced: &HashMap<u64, SystemTime>) -> (Stats, f64) {
    let mut latencies = Vec::new();
    let mut last = None;
    for s in shots.iter().filter(|s| s.ok()) {
        if let Some(at) = voiced.get(&amount(s.id)) {
            // `at` has whole ms: a voice within the send's ms counts as 0.
            latencies.push(at.duration_since(s.wall).unwrap_or_default());
            last = last.max(Some(*at));
        }
    }
    let start = shots.iter().map(|s| s.wall).min();
    let rate = match (start, last) {
        (Some(a), Some(b)) if b > a => {
            latencies.len() as f64 / b.duration_since(a).unwrap_or_default().as_secs_f64()
        }
        _ => 0.0,
    };
    (stats(latencies), rate)
}

/// How late the `sent` announcements reached the bench after their `at`
/// (MQTT's share; the measurement does not include it).
fn mqtt_delay(seen: &Seen) -> Stats {
    stats(
        seen.announcements
            .values()
            .flatten()
            .filter(|h| h.is_sent())
            .filter_map(|h| h.arrived_wall.duration_since(h.at?).ok())
            .collect(),
    )
}

/// The naive server's state: one HTTP client, a token taken once.
#[derive(Clone)]
struct Naive {
    client: reqwest::Client,
    notify_url: String,
    token: String,
}

#[derive(Deserialize)]
struct SepayHook {
    id: u64,
    #[serde(rename = "transferAmount")]
    transfer_amount: u64,
}

/// `POST /hooks/sepay` of the naive baseline: parse, `notify`, 200.
async fn naive_hook(State(naive): State<Naive>, body: axum::body::Bytes) -> (StatusCode, String) {
    let Ok(hook) = serde_json::from_slice::<SepayHook>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad webhook".into());
    };
    let notify = serde_json::json!({
        "hardwareId": SPEAKER,
        "amount": hook.transfer_amount,
        "requestId": format!("naive-{}", hook.id),
    });
    let reply = naive
        .client
        .post(&naive.notify_url)
        .bearer_auth(&naive.token)
        .json(&notify)
        .send()
        .await;
    let played = match reply {
        Ok(r) if r.status().is_success() => r
            .json::<serde_json::Value>()
            .await
            .is_ok_and(|v| v["code"] == 200),
        _ => false,
    };
    if played {
        (StatusCode::OK, r#"{"success":true}"#.into())
    } else {
        (StatusCode::BAD_GATEWAY, "notify failed".into())
    }
}

/// Starts the naive server on `rt` in front of `sim`; returns its address.
fn start_naive(rt: &tokio::runtime::Runtime, sim: &SpeakerApi) -> String {
    let client = reqwest::Client::new();
    let token = rt.block_on(async {
        let reply: serde_json::Value = client
            .post(sim.url("/devices/v1/token/create"))
            .basic_auth("sim-client", Some("sim-secret"))
            .send()
            .await
            .expect("token/create")
            .json()
            .await
            .expect("token JSON");
        reply["access_token"]
            .as_str()
            .expect("a token from the simulator")
            .to_string()
    });
    let state = Naive {
        client,
        notify_url: sim.url("/devices/v1/speaker/transactions/notify"),
        token,
    };
    let router = axum::Router::new()
        .route("/hooks/sepay", axum::routing::post(naive_hook))
        .with_state(state);
    serve_on_loopback(rt, router, "the naive server")
}

/// Serves `router` on `rt` at a free loopback port; returns its address.
fn serve_on_loopback(rt: &tokio::runtime::Runtime, router: axum::Router, what: &str) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap_or_else(|e| panic!("bind {what}: {e}"));
    let addr = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{what}'s address: {e}"));
    rt.spawn(async move { axum::serve(listener, router).await });
    addr.to_string()
}

/// The durable floor: the least any server that keeps each webhook on disk
/// before its 2xx takes on this machine. axum appends the body to a file and
/// `fdatasync`s it on the blocking pool (the gateway keeps disk work off its
/// async workers too), then answers 200: no parsing, plugin, index or sinks.
/// Driven by the same client one at a time, 1 ms apart (the gateway's next
/// webhook waits for the previous one's voice on MQTT, about that long).
fn run_durable_floor(rt: &tokio::runtime::Runtime, dir: &Path) -> Phase {
    let server_rt = common::runtime("durable floor");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("durable-floor.log"))
        .expect("open the durable floor's file");
    let file = Arc::new(Mutex::new(file));
    let keep = move |body: axum::body::Bytes| {
        let file = file.clone();
        async move {
            let synced = tokio::task::spawn_blocking(move || {
                use std::io::Write;
                let mut file = file.lock().map_err(|_| std::io::Error::other("poisoned"))?;
                file.write_all(&body)?;
                file.sync_data()
            })
            .await;
            match synced {
                Ok(Ok(())) => (StatusCode::OK, r#"{"success":true}"#),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "not stored"),
            }
        }
    };
    let router = axum::Router::new().route("/hooks/sepay", axum::routing::post(keep));
    let addr = serve_on_loopback(&server_rt, router, "the durable floor");
    let url = format!("http://{addr}/hooks/sepay");
    let client = load_client();
    let seq = rt.block_on(async {
        let mut seq = Vec::new();
        for id in 0..WARM_UP + SEQUENTIAL {
            let shot = post_one(&client, &url, id, one_speaker_body(id)).await;
            if id >= WARM_UP {
                seq.push(shot);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        seq
    });
    server_rt.shutdown_background();
    ack_phase(&seq)
}

/// Latency figures of one phase of one system.
#[derive(Debug, Default, Clone, Copy)]
struct Phase {
    /// Non-2xx replies and failed requests.
    failed: usize,
    ack: Stats,
    /// 2xx per second, from the first send to the last 2xx.
    ack_rate: f64,
    /// Time to voice: webhook sent → its notify accepted ([`voice_stats`]),
    /// and notifies accepted per second.
    voice: Stats,
    voice_rate: f64,
    /// Webhook sent → its final result (`played`, `unconfirmed`, ...) seen
    /// on MQTT, and results per second.
    result: Stats,
    result_rate: f64,
    event: Stats,
    event_rate: f64,
}

fn ack_phase(shots: &[Shot]) -> Phase {
    let ok: Vec<&Shot> = shots.iter().filter(|s| s.ok()).collect();
    let start = shots.iter().map(|s| s.sent).min();
    let end = ok.iter().map(|s| s.done).max();
    let rate = match (start, end) {
        (Some(a), Some(b)) if b > a => ok.len() as f64 / (b - a).as_secs_f64(),
        _ => 0.0,
    };
    Phase {
        failed: shots.len() - ok.len(),
        ack: stats(ok.iter().map(|s| s.done - s.sent).collect()),
        ack_rate: rate,
        ..Phase::default()
    }
}

/// Losses and duplicates on one topic (or at the speaker) for a set of
/// payments.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    missing: usize,
    duplicates: usize,
}

impl Tally {
    fn add(&mut self, copies: usize) {
        match copies {
            0 => self.missing += 1,
            n => self.duplicates += n - 1,
        }
    }

    fn exceptions(&self) -> usize {
        self.missing + self.duplicates
    }
}

/// Latency (first arrival − sent) and rate (arrivals ÷ first send to last
/// arrival) of `arrivals` for `shots`.
fn arrival_stats(shots: &[Shot], first: impl Fn(u64) -> Option<Instant>) -> (Stats, f64) {
    let mut latencies = Vec::new();
    let mut last = None;
    for s in shots {
        if let Some(at) = first(amount(s.id)) {
            latencies.push(at.saturating_duration_since(s.sent));
            last = last.max(Some(at));
        }
    }
    let start = shots.iter().map(|s| s.sent).min();
    let rate = match (start, last) {
        (Some(a), Some(b)) if b > a => latencies.len() as f64 / (b - a).as_secs_f64(),
        _ => 0.0,
    };
    (stats(latencies), rate)
}

/// What became of each acknowledged payment, on MQTT and at the speakers.
#[derive(Debug, Default)]
struct Delivery {
    /// On `events`.
    events: Tally,
    /// Announced `sent` (notify accepted) on `announcements`.
    sent: Tally,
    /// A final result on `announcements`.
    results: Tally,
    /// Played by the simulated speaker.
    plays: Tally,
    /// Final results by result and detail (numbers as `N`), with counts.
    by_result: HashMap<String, usize>,
    /// `sent` announcements MQTT did not bring, whose time the gateway's
    /// log gave.
    sent_from_log: usize,
    /// Payments announced or played on a speaker their account is not
    /// routed to.
    wrong_speaker: usize,
    /// `sent` announcements of one speaker whose `at` went back while their
    /// log seq went up: announced out of log order.
    out_of_order: usize,
    unreadable: usize,
}

impl Delivery {
    /// Tallies `acknowledged` payments, whose speaker is `speaker(id)`.
    fn of(
        acknowledged: impl Iterator<Item = u64>,
        seen: &Seen,
        plays: &HashMap<u64, Vec<String>>,
        speaker: impl Fn(u64) -> String,
    ) -> Delivery {
        let mut d = Delivery {
            unreadable: seen.unreadable,
            ..Delivery::default()
        };
        for id in acknowledged {
            let a = amount(id);
            let hw = speaker(id);
            d.events.add(seen.events.get(&a).map_or(0, Vec::len));
            let (sent, results) = seen.counts(a);
            d.sent.add(sent);
            d.results.add(results);
            let played = plays.get(&a).map_or(&[][..], Vec::as_slice);
            d.plays.add(played.len());
            let heard = seen.announcements.get(&a).map_or(&[][..], Vec::as_slice);
            if played.iter().any(|p| *p != hw) || heard.iter().any(|h| h.hardware_id != hw) {
                d.wrong_speaker += 1;
            }
            if let Some(result) = seen.result(a) {
                // Numbers as `N`, so details that differ only in them group.
                let mut detail = String::new();
                for c in result.detail.chars().take(100) {
                    if !c.is_ascii_digit() {
                        detail.push(c);
                    } else if !detail.ends_with('N') {
                        detail.push('N');
                    }
                }
                let key = if detail.is_empty() {
                    result.result.clone()
                } else {
                    format!("{}: {detail}", result.result)
                };
                *d.by_result.entry(key).or_insert(0) += 1;
            }
        }
        // Each lane announces in log order: per speaker, `at` never goes back.
        let mut by_speaker: HashMap<&str, Vec<(u64, SystemTime)>> = HashMap::new();
        for h in seen
            .announcements
            .values()
            .flatten()
            .filter(|h| h.is_sent())
        {
            if let Some(at) = h.at {
                by_speaker
                    .entry(&h.hardware_id)
                    .or_default()
                    .push((h.seq, at));
            }
        }
        for sent in by_speaker.values_mut() {
            sent.sort();
            let mut latest = SystemTime::UNIX_EPOCH;
            for (_, at) in sent.iter() {
                if *at < latest {
                    d.out_of_order += 1;
                }
                latest = latest.max(*at);
            }
        }
        d
    }

    fn exceptions(&self) -> usize {
        self.events.exceptions()
            + self.sent.exceptions()
            + self.results.exceptions()
            + self.plays.exceptions()
            + self.wrong_speaker
            + self.out_of_order
    }

    /// The correctness lines of a run.
    fn print(&self) {
        let t = |t: Tally| format!("missing {} duplicated {}", t.missing, t.duplicates);
        println!(
            "    per acknowledged payment: events {}; `sent` {}; final results {}; speaker plays {}",
            t(self.events),
            t(self.sent),
            t(self.results),
            t(self.plays)
        );
        println!(
            "    on a speaker not routed to: {}; announced out of log order: {}; `sent` MQTT did not bring (timed from the gateway's log): {}; unreadable MQTT messages: {}",
            self.wrong_speaker, self.out_of_order, self.sent_from_log, self.unreadable
        );
        let mut results: Vec<_> = self.by_result.iter().collect();
        results.sort();
        println!("    final results: {results:?}");
    }
}

/// How a section of the bench (the ten speakers, the chain) ended.
struct Outcome {
    /// Whether each wait ended with everything announced.
    drained: Vec<(&'static str, bool)>,
    delivery: Delivery,
    /// `sent` announcements: their `at` → the bench.
    mqtt_delay: Stats,
    /// The gateways' warnings and errors, by message.
    warnings: HashMap<String, usize>,
    sent: u64,
    acknowledged: u64,
    elapsed: Duration,
}

impl Outcome {
    /// The tail of the section's report: `delay`, what the MQTT delay is;
    /// `whose`, whose logs the warnings are; `section`, its name.
    fn print(&self, delay: &str, whose: &str, section: &str) {
        println!(
            "  `sent` reached the bench p50 {:.1} ms p99 {:.1} ms after its `at` ({delay})",
            ms(self.mqtt_delay.p50),
            ms(self.mqtt_delay.p99)
        );
        println!(
            "  correctness: {} webhooks sent, {} acknowledged; everything announced in time: {:?}",
            self.sent, self.acknowledged, self.drained
        );
        self.delivery.print();
        let mut warnings: Vec<_> = self.warnings.iter().collect();
        warnings.sort();
        println!("    {whose} log warnings/errors, by message: {warnings:?}");
        println!("  {section} run took {:.0} s", self.elapsed.as_secs_f64());
    }
}

/// Everything measured of the gateway.
#[derive(Default)]
struct GatewayRun {
    sequential: Phase,
    load: Phase,
    /// The gateway's own answer time one at a time, from its
    /// `webhook_duration_seconds` (no mean: a histogram has no samples).
    sequential_answer: Stats,
    idle_rss_kib: u64,
    load_rss_kib: u64,
    /// Bytes the gateway process wrote to disk ([`common::write_bytes`]) per
    /// acknowledged payment, one at a time and under load: from a phase's
    /// first webhook until all its payments have their final result.
    sequential_written: f64,
    load_written: f64,
    hwm_kib: u64,
    drained: bool,
    delivery: Delivery,
    /// MQTT's delay of the `sent` announcements (not in time to voice).
    mqtt_delay: Stats,
    /// The subscriber's connection errors: seconds since the load started
    /// (negative: before), and the error.
    mqtt_errors: Vec<(f64, String)>,
    /// When the load started (UTC), to place the gateway's warnings.
    load_started_utc: String,
    /// The gateway's CPU time (user + system) over the load, ms per webhook,
    /// and the cores it kept busy while acknowledging.
    cpu_ms_per_webhook: f64,
    cores_busy: f64,
    /// Warnings and errors the gateway logged, by message.
    warnings: HashMap<String, usize>,
    total: u64,
}

/// A gateway under test (`soundbox-gateway run`, release) on `config`, in
/// a temp dir under `dir`, logging JSON at its default level to its
/// `gateway.log` (nothing reads it while the gateway runs); returns once
/// `/readyz` answers 200. Killed on drop.
fn start_gateway(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    config: &str,
    gateway_keys: &str,
) -> Gateway {
    std::fs::create_dir_all(dir).expect("gateway dir");
    let gateway = Gateway::builder(config)
        .gateway_keys(gateway_keys)
        .binary(release_binary())
        .dir_in(dir)
        .log_file()
        .default_log_level()
        .start();
    let (code, body) = rt.block_on(gateway.wait_ready(200, Duration::from_secs(60)));
    assert_eq!(
        code,
        200,
        "the gateway was not ready within 60 s ({body}); its log:\n{}",
        gateway.logs()
    );
    gateway
}

/// `[speaker]` on `sim`, announcing payments up to a day old.
fn speaker_table(sim: &SpeakerApi) -> String {
    format!(
        "[speaker]\n{}client_secret = \"sim-secret\"\nmax_age_secs = 86400\n\n",
        sim.speaker_keys()
    )
}

/// The measured gateway: the SePay plugin (`auth = "none"`), `[speaker]`
/// on `sim`, `routes` (its `[[route]]` tables) and the embedded MQTT
/// broker; and the broker's port.
fn start_bench_gateway(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    sim: &SpeakerApi,
    routes: &str,
) -> (Gateway, u16) {
    let mqtt = free_port();
    let config = format!(
        "{}{}{routes}\n[mqtt]\nbroker = \"embedded\"\nembedded_listen = \"127.0.0.1:{mqtt}\"\n\n",
        sepay_connector(),
        speaker_table(sim),
    );
    (start_gateway(rt, dir, &config, "id = \"bench\""), mqtt)
}

/// `at` − `origin` in seconds, negative when `at` came first.
fn signed_secs(at: Instant, origin: Instant) -> f64 {
    match at.checked_duration_since(origin) {
        Some(d) => d.as_secs_f64(),
        None => -(origin - at).as_secs_f64(),
    }
}

/// `bytes` over the payments acknowledged in `shots`.
fn per_payment(bytes: u64, shots: &[Shot]) -> f64 {
    bytes as f64 / shots.iter().filter(|s| s.ok()).count().max(1) as f64
}

/// User + system CPU time of `pid` so far (`/proc/<pid>/stat`, USER_HZ 100).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 and 15 of the file; the first after the name is field 3.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Warnings and errors in the gateway's JSON log, counted by message (with
/// its `reason` field if `with_reason`, and when it first happened).
fn warnings(log: &str, with_reason: bool) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for line in log.lines() {
        if !line.contains("\"WARN\"") && !line.contains("\"ERROR\"") {
            continue;
        }
        let Ok(json) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let level = json["level"].as_str().unwrap_or_default();
        if level == "WARN" || level == "ERROR" {
            let fields = &json["fields"];
            let message = fields["message"].as_str().unwrap_or("?");
            let reason = fields["reason"]
                .as_str()
                .or(fields["error"].as_str())
                .filter(|_| with_reason)
                .unwrap_or("");
            let at = json["timestamp"].as_str().unwrap_or("?");
            let key = format!("{level} {message} ({reason})");
            let first = counts.keys().find(|k: &&String| k.ends_with(&key)).cloned();
            let key = first.unwrap_or_else(|| format!("first at {at}: {key}"));
            *counts.entry(key).or_insert(0) += 1;
        }
    }
    counts
}

fn run_gateway(rt: &tokio::runtime::Runtime, dir: &Path) -> GatewayRun {
    let sim = one_speaker();
    let routes = format!("[[route]]\naccount = \"*\"\nspeakers = [\"{SPEAKER}\"]\n");
    let (mut gateway, mqtt_port) = start_bench_gateway(rt, dir, &sim, &routes);
    let pid = gateway.pid();
    let subscriber = Listener::connect(mqtt_port, "soundbox/bench");
    let url = gateway.url("/hooks/sepay");
    let client = load_client();
    let mut run = GatewayRun::default();

    // Warm up (until every warm-up payment has its final result), then idle memory.
    let warm = rt.block_on(async {
        let mut shots = Vec::new();
        for id in 0..WARM_UP {
            shots.push(post_one(&client, &url, id, one_speaker_body(id)).await);
        }
        shots
    });
    assert!(
        warm.iter().all(Shot::ok),
        "warm-up webhooks were refused; the gateway's log:\n{}",
        gateway.logs()
    );
    assert!(
        subscriber.wait_until(0..WARM_UP, Duration::from_secs(30), settled),
        "warm-up payments were not announced within 30 s"
    );
    std::thread::sleep(Duration::from_secs(1));
    run.idle_rss_kib = soundbox_e2e::rss_kib(pid);
    let written_before = common::write_bytes(pid);
    let answers_before = answer_buckets(&gateway);

    // One at a time: each waits for the previous one's event and voice (its
    // `sent`: a final result comes 1.5 s later at the earliest).
    let seq_ids = WARM_UP..WARM_UP + SEQUENTIAL;
    let mut seq = Vec::new();
    for id in seq_ids.clone() {
        seq.push(rt.block_on(post_one(&client, &url, id, one_speaker_body(id))));
        subscriber.wait_until(id..id + 1, Duration::from_secs(10), voiced);
    }
    // Their final results (1.5 s after the voice) are written in this phase.
    subscriber.wait_until(seq_ids.clone(), Duration::from_secs(30), settled);
    let written_seq = common::write_bytes(pid);
    let answers = answer_buckets(&gateway);
    let answer_quantile = |q| common::histogram_quantile(&answers_before, &answers, q);
    run.sequential_answer = Stats {
        p50: answer_quantile(0.5).unwrap_or_default(),
        p99: answer_quantile(0.99).unwrap_or_default(),
        mean: Duration::ZERO,
    };

    // Under load.
    let load_ids = seq_ids.end..seq_ids.end + LOAD;
    let sampler = RssPeak::watch(pid, Duration::from_millis(20));
    let cpu_before = cpu_time(pid);
    let load_started = Instant::now();
    run.load_started_utc = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
    let load = rt.block_on(closed_loop(
        &client,
        &url,
        load_ids.clone(),
        SENDERS,
        one_speaker_body,
    ));
    let acked = (load_started.elapsed(), cpu_time(pid));
    run.drained = subscriber.wait_until(WARM_UP..load_ids.end, DRAIN_LIMIT, settled);
    let written_load = common::write_bytes(pid);
    run.load_rss_kib = sampler.finish();
    run.cpu_ms_per_webhook = ms(cpu_time(pid).saturating_sub(cpu_before)) / LOAD as f64;
    run.cores_busy = (acked.1.saturating_sub(cpu_before)).as_secs_f64() / acked.0.as_secs_f64();
    run.hwm_kib = soundbox_e2e::status_kib(pid, "VmHWM:");
    // Late duplicates have a moment to show up.
    std::thread::sleep(Duration::from_secs(2));
    let plays = rt.block_on(plays_by_amount(&sim.control()));
    let seen = subscriber.finish();
    gateway.shut_down();

    let log = gateway.logs();
    let (voiced_at, from_log) = voiced_at(&seen, &log);
    let first_event = |a: u64| seen.events.get(&a).and_then(|v| v.first().copied());
    let first_result = |a: u64| seen.result(a).map(|h| h.arrived);
    for (phase, shots) in [(&mut run.sequential, &seq), (&mut run.load, &load)] {
        *phase = ack_phase(shots);
        (phase.voice, phase.voice_rate) = voice_stats(shots, &voiced_at);
        (phase.result, phase.result_rate) = arrival_stats(shots, first_result);
        (phase.event, phase.event_rate) = arrival_stats(shots, first_event);
    }
    run.sequential_written = per_payment(written_seq.saturating_sub(written_before), &seq);
    run.load_written = per_payment(written_load.saturating_sub(written_seq), &load);

    // Exactly once: every acknowledged payment on `events`, announced
    // `sent` and with one final result on MQTT, and played by the speaker.
    let acknowledged: Vec<u64> = warm
        .iter()
        .chain(&seq)
        .chain(&load)
        .filter(|s| s.ok())
        .map(|s| s.id)
        .collect();
    run.delivery = Delivery::of(acknowledged.iter().copied(), &seen, &plays, |_| {
        SPEAKER.to_string()
    });
    run.delivery.sent_from_log = from_log;
    run.mqtt_delay = mqtt_delay(&seen);
    run.mqtt_errors = seen
        .connection_errors
        .iter()
        .map(|(at, e)| (signed_secs(*at, load_started), e.clone()))
        .collect();
    run.total = acknowledged.len() as u64;
    run.warnings = warnings(&log, true);
    run
}

/// The buckets of the gateway's `webhook_duration_seconds` for accepted
/// SePay webhooks, from its `/metrics`.
fn answer_buckets(gateway: &Gateway) -> Vec<(f64, f64)> {
    let text = common::http_body(&gateway.admin_addr, "/metrics").unwrap_or_default();
    common::histogram_buckets(
        &text,
        "soundbox_webhook_duration_seconds",
        &["connector=\"sepay\"", "status=\"200\""],
    )
}

/// The naive baseline: its sequential and loaded phases, and its plays.
struct NaiveRun {
    sequential: Phase,
    load: Phase,
    plays: Tally,
}

fn run_naive(rt: &tokio::runtime::Runtime) -> NaiveRun {
    let sim = one_speaker();
    let server_rt = common::runtime("naive server");
    let addr = start_naive(&server_rt, &sim);
    let url = format!("http://{addr}/hooks/sepay");
    let client = load_client();
    let (seq, load, plays) = rt.block_on(async {
        for id in 0..WARM_UP {
            post_one(&client, &url, id, one_speaker_body(id)).await;
        }
        let mut seq = Vec::new();
        for id in WARM_UP..WARM_UP + SEQUENTIAL {
            seq.push(post_one(&client, &url, id, one_speaker_body(id)).await);
        }
        let start = WARM_UP + SEQUENTIAL;
        let load = closed_loop(
            &client,
            &url,
            start..start + LOAD,
            SENDERS,
            one_speaker_body,
        )
        .await;
        (seq, load, plays_by_amount(&sim.control()).await)
    });
    let mut tally = Tally::default();
    for s in seq.iter().chain(&load).filter(|s| s.ok()) {
        tally.add(plays.get(&amount(s.id)).map_or(0, Vec::len));
    }
    // Its 2xx comes once notify answered: that is its time to voice.
    let with_voice = |mut p: Phase| {
        (p.voice, p.voice_rate) = (p.ack, p.ack_rate);
        p
    };
    server_rt.shutdown_background();
    NaiveRun {
        sequential: with_voice(ack_phase(&seq)),
        load: with_voice(ack_phase(&load)),
        plays: tally,
    }
}

/// Warm startup to `/readyz` 200 on the default config, and `--version`.
struct Startup {
    ready: Duration,
    worst: Duration,
    version: Duration,
}

fn run_startup() -> Startup {
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, admin) = common::default_config(dir.path());
    // Warm the plugin cache and the page cache once.
    let (_, child) = common::time_to_ready(&config, &admin);
    common::stop(child);
    let mut ready = Vec::new();
    for _ in 0..STARTUP_RUNS {
        let (t, child) = common::time_to_ready(&config, &admin);
        ready.push(t);
        common::stop(child);
    }
    let version = (0..STARTUP_RUNS).map(|_| common::version_time()).collect();
    Startup {
        worst: ready.iter().max().copied().unwrap_or_default(),
        ready: common::median(ready),
        version: common::median(version),
    }
}

/// A table cell: a value, or `–`.
fn cell(v: Option<f64>, decimals: usize) -> String {
    v.map_or("–".into(), |v| format!("{v:.decimals$}"))
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "–".into(),
    }
}

/// One row: the gateway's figure, the naive server's and the physical
/// limit's (when they compare), and the ratios.
fn row(name: &str, gateway: f64, naive: Option<f64>, physical: Option<f64>, decimals: usize) {
    println!(
        "  {name:<44} {:>10} {:>10} {:>10} {:>9} {:>9}",
        cell(Some(gateway), decimals),
        cell(naive, decimals),
        cell(physical, decimals),
        ratio(gateway, naive),
        ratio(gateway, physical),
    );
}

/// A row of the gateway's figure alone.
fn solo(name: &str, gateway: f64, decimals: usize) {
    row(name, gateway, None, None, decimals);
}

/// The p50 and p99 rows of `what` (`2xx`, `time to voice`) at `level`.
fn latency_rows(what: &str, level: &str, gw: Stats, naive: Option<Stats>, raw: Option<Stats>) {
    let p = |f: fn(&Stats) -> Duration, s: Option<Stats>| s.map(|s| ms(f(&s)));
    let name = |q: &str| format!("{what} {q} ms, {level}");
    row(
        &name("p50"),
        ms(gw.p50),
        p(|s| s.p50, naive),
        p(|s| s.p50, raw),
        2,
    );
    row(
        &name("p99"),
        ms(gw.p99),
        p(|s| s.p99, naive),
        p(|s| s.p99, raw),
        2,
    );
}

fn main() {
    let started = Instant::now();
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    // The gateway's data dir and the raw file share one filesystem (under
    // target/: a real disk, not a tmpfs).
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let rt = common::runtime("load generator");

    let (wasm, native) =
        common::plugin_call_samples(&common::sepay_body(500), WASM_CALLS, NATIVE_CALLS);
    let (wasm, native) = (stats(wasm), stats(native));
    let startup = run_startup();
    let naive = run_naive(&rt);
    // Right before the gateway: on a shared disk the floor moves.
    let written = common::write_bytes(std::process::id());
    let (raw_samples, raw_elapsed) = common::raw_fdatasync(scratch.path(), RECORD_BYTES, RAW_SYNCS);
    let raw_rate = RAW_SYNCS as f64 / raw_elapsed.as_secs_f64();
    // The bench does nothing else meanwhile: these are the raw file's writes.
    let raw_written =
        common::write_bytes(std::process::id()).saturating_sub(written) as f64 / RAW_SYNCS as f64;
    let raw = stats(raw_samples);
    let floor = run_durable_floor(&rt, scratch.path());
    let gw = run_gateway(&rt, scratch.path());
    let lanes = lanes::run(&rt, &scratch.path().join("lanes"));
    let chain = chain::run(&rt, &scratch.path().join("chain"));
    let elapsed = started.elapsed();

    println!(
        "e2e: SePay webhook -> plugin -> durable log -> Speaker API simulator + MQTT (release binary, loopback)"
    );
    println!(
        "  load: {WARM_UP} warm-up, {SEQUENTIAL} one at a time, then {SENDERS} senders x {LOAD} webhooks in a closed loop; \
         physical limit: {RAW_SYNCS} appends of {RECORD_BYTES} B + fdatasync"
    );
    println!(
        "  machine: {} cores, load average {} at the start (others may be using it: figures are noisy)",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "  naive: axum + serde_json -> notify on its own speaker-sim, 200 after notify (no log, no plugin, no MQTT)"
    );
    println!(
        "  time to voice: gateway = webhook sent -> notify accepted (the `at` of its `sent` announcement on MQTT); naive = its 2xx"
    );
    println!(
        "  final result: webhook sent -> `played`/`unconfirmed`/... on MQTT, after check_notify (first poll 1.5 s after notify; \
         simulated plays last {PLAY_MS} ms; past 16 being checked per speaker, `unconfirmed` at once)"
    );
    println!();
    println!(
        "  {:<44} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "figure", "gateway", "naive", "fdatasync", "gw/naive", "gw/fsync"
    );
    let (gs, gl, ns, nl) = (gw.sequential, gw.load, naive.sequential, naive.load);
    let seq = "one at a time";
    let under = format!("{SENDERS} senders");
    latency_rows("2xx", seq, gs.ack, Some(ns.ack), Some(raw));
    latency_rows(
        "gateway's own answer",
        seq,
        gw.sequential_answer,
        None,
        Some(raw),
    );
    latency_rows("2xx", &under, gl.ack, Some(nl.ack), Some(raw));
    let rate = format!("2xx /s, {under}");
    row(&rate, gl.ack_rate, Some(nl.ack_rate), Some(raw_rate), 0);
    latency_rows("time to voice", seq, gs.voice, Some(ns.voice), None);
    latency_rows("time to voice", &under, gl.voice, Some(nl.voice), None);
    let rate = format!("announcements (notify accepted) /s, {under}");
    row(&rate, gl.voice_rate, Some(nl.voice_rate), None, 0);
    latency_rows("final result", seq, gs.result, None, None);
    latency_rows("final result", &under, gl.result, None, None);
    solo(&format!("final results /s, {under}"), gl.result_rate, 0);
    latency_rows("MQTT event", seq, gs.event, None, None);
    latency_rows("MQTT event", &under, gl.event, None, None);
    solo(&format!("MQTT events /s, {under}"), gl.event_rate, 0);
    solo("fdatasync p50 ms (physical limit)", ms(raw.p50), 3);
    solo("fdatasync p99 ms (physical limit)", ms(raw.p99), 3);
    solo("fdatasync /s (physical limit)", raw_rate, 0);
    latency_rows("durable floor 2xx", seq, floor.ack, None, Some(raw));
    let mib = |kib: u64| kib as f64 / 1024.0;
    solo("gateway RSS MiB, idle (warm)", mib(gw.idle_rss_kib), 1);
    solo("gateway RSS MiB, max under load", mib(gw.load_rss_kib), 1);
    solo("gateway VmHWM MiB (whole run)", mib(gw.hwm_kib), 1);
    solo("gateway CPU ms per webhook, load", gw.cpu_ms_per_webhook, 3);
    solo("gateway cores busy while acknowledging", gw.cores_busy, 2);
    let kib = |bytes: f64| bytes / 1024.0;
    let written = |level: &str| format!("disk KiB written per payment, {level}");
    let raw_kib = Some(kib(raw_written));
    row(&written(seq), kib(gw.sequential_written), None, raw_kib, 2);
    row(&written(&under), kib(gw.load_written), None, raw_kib, 2);
    println!();
    println!(
        "  startup to /readyz 200, default config, warm cache ({STARTUP_RUNS} runs): median {:.1} ms (max {:.1} ms); \
         `--version` {:.1} ms; ratio {:.1}x",
        ms(startup.ready),
        ms(startup.worst),
        ms(startup.version),
        startup.ready.as_secs_f64() / startup.version.as_secs_f64()
    );
    println!(
        "  plugin call, SePay handle() on 500 B: wasm p50 {:.1} µs p99 {:.1} µs; native p50 {:.2} µs p99 {:.2} µs; \
         ratio p50 {:.1}x p99 {:.1}x",
        micros(wasm.p50),
        micros(wasm.p99),
        micros(native.p50),
        micros(native.p99),
        micros(wasm.p50) / micros(native.p50),
        micros(wasm.p99) / micros(native.p99),
    );
    println!();
    println!(
        "  correctness, gateway: {} webhooks sent, {} acknowledged; non-2xx or failed: {} one at a time, {} under load",
        WARM_UP + SEQUENTIAL + LOAD,
        gw.total,
        gs.failed,
        gl.failed
    );
    gw.delivery.print();
    println!(
        "    everything announced within {} s: {}; `sent` reached the bench p50 {:.1} ms p99 {:.1} ms after its `at` \
         (MQTT's share, not in time to voice)",
        DRAIN_LIMIT.as_secs(),
        gw.drained,
        ms(gw.mqtt_delay.p50),
        ms(gw.mqtt_delay.p99),
    );
    println!(
        "    bench subscriber's MQTT connection errors: {} (s after the load started, error): {:?}",
        gw.mqtt_errors.len(),
        gw.mqtt_errors.iter().take(3).collect::<Vec<_>>()
    );
    let mut warnings: Vec<_> = gw.warnings.iter().collect();
    warnings.sort();
    println!(
        "    gateway log warnings/errors (load started {}): {warnings:?}",
        gw.load_started_utc
    );
    println!(
        "  correctness, naive: non-2xx or failed: {} one at a time, {} under load; plays missing {} duplicated {}",
        ns.failed, nl.failed, naive.plays.missing, naive.plays.duplicates
    );
    println!();
    lanes.print();
    println!();
    match &chain {
        Some(chain) => chain.print(&lanes.online),
        None => {
            println!("chain: skipped, nats-server is not installed (`make test-tools` installs it)")
        }
    }
    println!();
    println!("goals (computed from the figures above):");
    goal("#2 plugin call p99", micros(wasm.p99), 100.0, "µs", false);
    goal(
        "#2 plugin call p99 / native p99",
        wasm.p99.as_secs_f64() / native.p99.as_secs_f64(),
        5.0,
        "x",
        false,
    );
    goal(
        "#3 webhook->2xx p99 / fdatasync p99, one at a time",
        gs.ack.p99.as_secs_f64() / raw.p99.as_secs_f64(),
        3.0,
        "x",
        false,
    );
    println!(
        "  [ note  ] #3 the same inside the gateway, one at a time: its answer p99 {:.2} ms / fdatasync p99: {:.2} x \
         (webhook_duration_seconds, from the handler to the answer, to 0.1 ms; the sender's 2xx adds the loopback \
         round trip and both ends' wake-ups, which the naive server's 2xx p50 of {:.2} ms with no disk also pays)",
        ms(gw.sequential_answer.p99),
        gw.sequential_answer.p99.as_secs_f64() / raw.p99.as_secs_f64(),
        ms(ns.ack.p50),
    );
    println!(
        "  [ note  ] #3 the durable floor (a bare server: body appended + fdatasync on the blocking pool, 200), one at a \
         time: its 2xx p99 {:.2} ms / fdatasync p99: {:.2} x ({} failed); the gateway's 2xx p99 / the floor's: {:.2} x",
        ms(floor.ack.p99),
        floor.ack.p99.as_secs_f64() / raw.p99.as_secs_f64(),
        floor.failed,
        gs.ack.p99.as_secs_f64() / floor.ack.p99.as_secs_f64(),
    );
    goal(
        &format!("#3 webhooks acknowledged /s, {SENDERS} concurrent senders (group commit)"),
        gl.ack_rate,
        5_000.0,
        "/s",
        true,
    );
    goal(
        &format!("disk: KiB written per payment, {SENDERS} concurrent senders"),
        kib(gw.load_written),
        4.0,
        "KiB",
        false,
    );
    println!(
        "  [ note  ] disk: KiB written per payment, one at a time: {:.2} KiB (no limit: one fdatasync per payment \
         dirties at least one 4 KiB page, so one at a time is floored near 4 KiB; append + fdatasync wrote {:.2} KiB per record)",
        kib(gw.sequential_written),
        kib(raw_written),
    );
    goal(
        "#7 startup to ready, warm, median",
        ms(startup.ready),
        150.0,
        "ms",
        false,
    );
    let exact = gw.delivery.exceptions();
    println!(
        "  [{}] every acknowledged payment published on events once, announced `sent` once with one final result, played once: {exact} exceptions",
        if exact == 0 { " met  " } else { "NOT met" }
    );
    lanes.goals();
    if let Some(chain) = &chain {
        chain.goals();
    }
    println!();
    println!("bench ran {:.0} s", elapsed.as_secs_f64());
}
