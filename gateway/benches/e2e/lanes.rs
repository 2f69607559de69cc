//! Ten speakers, one lane each: time to voice (webhook sent → its notify
//! accepted) with every speaker online, with one of them offline, and
//! against a flaky Speaker API.
//!
//! One gateway with ten `[[route]]`s, account `01234000NN` → speaker
//! `VNS-LANE-NN`, on a standalone simulator with the ten speakers paired;
//! payment `id` goes to speaker `id % 10` (its webhook's `accountNumber`).
//! In order, on the same gateway:
//!
//! 1. **All online**: one at a time (each webhook waits until the previous
//!    payment's notify was accepted, its `sent` announcement), then
//!    [`SENDERS`] senders in a closed loop on the 2xx, as the one-speaker run.
//! 2. **One offline**: the tenth speaker offline in the simulator, the same
//!    two levels; the figures are the other nine's (the tenth's payments
//!    wait in its lane). Then it comes back and its backlog is timed.
//! 3. **Flaky API**: 30 % of calls 500, 10 % 429 with `Retry-After: 1`. One
//!    at a time at each speaker (ten senders, one per speaker), then
//!    [`SENDERS`] senders spread over the speakers (3 or 4 each) that each
//!    wait for their payment's voice before the next: a closed loop on the
//!    2xx would offer a hundred times what the flaky API takes, and time to
//!    voice would only measure the queue; senders that took any speaker's
//!    next payment would pile up behind whichever lane waits out a
//!    `Retry-After`, which no shop's customers do.
//!
//! Time to voice is the gateway's own stamp: the `at` of the `sent`
//! announcement (published the moment notify answered SENT) minus when the
//! bench sent the webhook, both on this machine's wall clock (`at` has whole
//! milliseconds). A `sent` that MQTT does not bring is timed from the
//! gateway's "announcement sent" log line, and counted.

use soundbox_e2e::sepay_webhook_to;

use super::*;

/// Speakers, one per account.
pub(super) const SPEAKERS: u64 = 10;
/// The speaker (`id % SPEAKERS`) that goes offline in the second scenario.
const OFFLINE: u64 = SPEAKERS - 1;
const WARM_UP: u64 = 50;
/// Webhooks one at a time, per scenario.
const SEQUENTIAL: u64 = 300;
/// Webhooks from the senders, per scenario.
const LOAD: u64 = 5_000;
/// Flaky API: webhooks one at a time at each speaker, and from the senders.
const FLAKY_PER_SPEAKER: u64 = 20;
const FLAKY_LOAD: u64 = 500;
const FLAKY_ERROR_RATE: f64 = 0.30;
const FLAKY_RATE_LIMIT_RATE: f64 = 0.10;
const FLAKY_RETRY_AFTER_SECS: u64 = 1;
/// How long one payment may take to be voiced before a sender gives up on
/// it (and it counts as missing).
const VOICE_LIMIT: Duration = Duration::from_secs(30);
/// How long the lanes may take to announce a scenario's load.
const LANES_DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// The speaker of payment `id`.
pub(super) fn speaker_of(id: u64) -> u64 {
    id % SPEAKERS
}

/// Payment `id` is for a speaker that stays online.
fn online(id: u64) -> bool {
    speaker_of(id) != OFFLINE
}

fn offline(id: u64) -> bool {
    !online(id)
}

pub(super) fn all(_: u64) -> bool {
    true
}

pub(super) fn hardware_id(speaker: u64) -> String {
    format!("VNS-LANE-{:02}", speaker + 1)
}

pub(super) fn account(speaker: u64) -> String {
    format!("01234000{:02}", speaker + 1)
}

/// The SePay webhook of payment `id`, into its speaker's account.
pub(super) fn body(id: u64) -> String {
    sepay_webhook_to(&account(speaker_of(id)), id, amount(id))
}

/// Time to voice of one scenario.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Scenario {
    /// One at a time.
    pub seq: Stats,
    /// Under load.
    pub load: Stats,
    /// Under load: 2xx per second, and notifies accepted per second.
    pub ack_rate: f64,
    pub voice_rate: f64,
    /// Payments timed, of those acknowledged (both levels).
    pub timed: usize,
    pub acknowledged: usize,
    /// Non-2xx replies and failed requests.
    pub failed: usize,
}

impl Scenario {
    /// From the shots of both levels, counting only payments `measured(id)`.
    pub(super) fn of(
        seq: &[Shot],
        load: &[Shot],
        voiced: &HashMap<u64, SystemTime>,
        measured: fn(u64) -> bool,
    ) -> Scenario {
        let pick = |shots: &[Shot]| -> Vec<Shot> {
            shots.iter().filter(|s| measured(s.id)).copied().collect()
        };
        let (seq_m, load_m) = (pick(seq), pick(load));
        let (seq_voice, _) = voice_stats(&seq_m, voiced);
        let (load_voice, voice_rate) = voice_stats(&load_m, voiced);
        let acknowledged: Vec<&Shot> = seq_m.iter().chain(&load_m).filter(|s| s.ok()).collect();
        Scenario {
            seq: seq_voice,
            load: load_voice,
            ack_rate: ack_phase(load).ack_rate,
            voice_rate,
            timed: acknowledged
                .iter()
                .filter(|s| voiced.contains_key(&amount(s.id)))
                .count(),
            acknowledged: acknowledged.len(),
            failed: seq.iter().chain(load).filter(|s| !s.ok()).count(),
        }
    }
}

/// Everything measured of the ten-speaker gateway.
pub(super) struct LanesRun {
    pub online: Scenario,
    /// The nine speakers that stayed online.
    pub offline: Scenario,
    pub flaky: Scenario,
    /// The offline speaker's payments, and how long after it came back the
    /// last of them was voiced.
    pub backlog: usize,
    pub backlog_voiced_after: Option<Duration>,
    pub outcome: Outcome,
}

/// Senders that each post a webhook and, if `waits(id)`, wait until its
/// notify was accepted (its `sent` on MQTT) before the next. `queues`: the
/// ids in order, and how many senders share them.
pub(super) async fn voice_loop(
    client: &reqwest::Client,
    url: &str,
    queues: Vec<(Vec<u64>, usize)>,
    seen: Arc<Mutex<Seen>>,
    waits: fn(u64) -> bool,
) -> Vec<Shot> {
    let mut tasks = Vec::new();
    for (ids, senders) in queues {
        let queue = Arc::new(Mutex::new(std::collections::VecDeque::from(ids)));
        for _ in 0..senders {
            let (client, url, queue, seen) =
                (client.clone(), url.to_string(), queue.clone(), seen.clone());
            tasks.push(tokio::spawn(async move {
                let mut shots = Vec::new();
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop_front();
                    let Some(id) = next else {
                        return shots;
                    };
                    let shot = post_one(&client, &url, id, body(id)).await;
                    shots.push(shot);
                    if shot.ok() && waits(id) {
                        let deadline = Instant::now() + VOICE_LIMIT;
                        loop {
                            let heard = lock(&seen).sent(amount(id)).is_some();
                            if heard || Instant::now() > deadline {
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                }
            }));
        }
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("sender"));
    }
    all.sort_by_key(|s| s.id);
    all
}

/// `ids` queued by speaker, with `senders` spread over the speakers (3 or
/// 4 each for 32): a sender waits only for its own speaker, as a customer
/// waits at one counter.
fn by_speaker(ids: std::ops::Range<u64>, senders: usize) -> Vec<(Vec<u64>, usize)> {
    let speakers = SPEAKERS as usize;
    (0..SPEAKERS)
        .map(|s| {
            let queue = ids.clone().filter(|id| speaker_of(*id) == s).collect();
            let extra = usize::from((s as usize) < senders % speakers);
            (queue, senders / speakers + extra)
        })
        .collect()
}

/// The next `n` payment ids.
pub(super) fn take(next: &mut u64, n: u64) -> std::ops::Range<u64> {
    let ids = *next..*next + n;
    *next += n;
    ids
}

/// Acknowledged payments among `shots` that `counted(id)`.
pub(super) fn acked(shots: &[Shot], counted: fn(u64) -> bool) -> u64 {
    shots.iter().filter(|s| s.ok() && counted(s.id)).count() as u64
}

pub(super) fn run(rt: &tokio::runtime::Runtime, dir: &Path) -> LanesRun {
    let started = Instant::now();
    let devices: Vec<String> = (0..SPEAKERS)
        .map(|s| format!("{}:paired", hardware_id(s)))
        .collect();
    let sim = speaker_sim(&devices);
    let control = sim.control();
    let routes: String = (0..SPEAKERS)
        .map(|s| {
            format!(
                "[[route]]\naccount = \"{}\"\nspeakers = [\"{}\"]\n\n",
                account(s),
                hardware_id(s)
            )
        })
        .collect();
    let (mut gateway, mqtt_port) = start_bench_gateway(rt, dir, &sim, &routes);
    let subscriber = Listener::connect(mqtt_port, "soundbox/bench");
    let client = load_client();
    let url = gateway.url("/hooks/sepay");
    let mut next = 0;
    let mut drained = Vec::new();
    let one_sender = |ids: std::ops::Range<u64>| vec![(ids.collect::<Vec<u64>>(), 1)];

    // Warm up: every lane has its token, connections and a settled payment.
    let ids = take(&mut next, WARM_UP);
    let warm = rt.block_on(closed_loop(&client, &url, ids.clone(), SENDERS, body));
    assert!(
        warm.iter().all(Shot::ok),
        "warm-up webhooks were refused; the gateway's log:\n{}",
        gateway.logs()
    );
    assert!(
        subscriber.wait_until(ids, Duration::from_secs(30), voiced),
        "warm-up payments were not announced within 30 s; the gateway's log:\n{}",
        gateway.logs()
    );
    let mut played = acked(&warm, all);

    // 1. All online.
    let ids = take(&mut next, SEQUENTIAL);
    let on_seq = rt.block_on(voice_loop(
        &client,
        &url,
        one_sender(ids),
        subscriber.seen(),
        all,
    ));
    let ids = take(&mut next, LOAD);
    let on_load = rt.block_on(closed_loop(&client, &url, ids, SENDERS, body));
    played += acked(&on_seq, all) + acked(&on_load, all);
    let ok = rt.block_on(wait_played(&control, played, LANES_DRAIN_LIMIT));
    drained.push(("all online", ok));

    // 2. One offline: its lane waits, the other nine's should not.
    let offline_hw = hardware_id(OFFLINE);
    rt.block_on(control.set_online(&offline_hw, false));
    let ids = take(&mut next, SEQUENTIAL);
    let off_seq = rt.block_on(voice_loop(
        &client,
        &url,
        one_sender(ids),
        subscriber.seen(),
        online,
    ));
    let ids = take(&mut next, LOAD);
    let off_load = rt.block_on(closed_loop(&client, &url, ids, SENDERS, body));
    played += acked(&off_seq, online) + acked(&off_load, online);
    let ok = rt.block_on(wait_played(&control, played, LANES_DRAIN_LIMIT));
    drained.push(("one offline, the other nine", ok));
    let back = SystemTime::now();
    rt.block_on(control.set_online(&offline_hw, true));
    let backlog = (acked(&off_seq, offline) + acked(&off_load, offline)) as usize;
    played += backlog as u64;
    let ok = rt.block_on(wait_played(&control, played, LANES_DRAIN_LIMIT));
    drained.push(("the offline speaker's backlog once back", ok));

    // 3. Flaky API.
    rt.block_on(set_faults(&control, true));
    let ids = take(&mut next, FLAKY_PER_SPEAKER * SPEAKERS);
    let flaky_seq = rt.block_on(voice_loop(
        &client,
        &url,
        by_speaker(ids, SPEAKERS as usize),
        subscriber.seen(),
        all,
    ));
    let ids = take(&mut next, FLAKY_LOAD);
    let flaky_load = rt.block_on(voice_loop(
        &client,
        &url,
        by_speaker(ids, SENDERS),
        subscriber.seen(),
        all,
    ));
    played += acked(&flaky_seq, all) + acked(&flaky_load, all);
    let ok = rt.block_on(wait_played(&control, played, LANES_DRAIN_LIMIT));
    drained.push(("flaky API", ok));
    rt.block_on(set_faults(&control, false));

    // Every final result (the confirmations run up to ~13 s), then a moment
    // for late duplicates.
    let ok = subscriber.wait_until(0..next, LANES_DRAIN_LIMIT, settled);
    drained.push(("final results", ok));
    std::thread::sleep(Duration::from_secs(2));
    let plays = rt.block_on(plays_by_amount(&control));
    let seen = subscriber.finish();
    gateway.shut_down();

    let log = gateway.logs();
    let (voiced, from_log) = voiced_at(&seen, &log);
    let shots: Vec<&Shot> = [
        &warm,
        &on_seq,
        &on_load,
        &off_seq,
        &off_load,
        &flaky_seq,
        &flaky_load,
    ]
    .into_iter()
    .flatten()
    .collect();
    let acknowledged: Vec<u64> = shots.iter().filter(|s| s.ok()).map(|s| s.id).collect();
    let mut delivery = Delivery::of(acknowledged.iter().copied(), &seen, &plays, |id| {
        hardware_id(speaker_of(id))
    });
    delivery.sent_from_log = from_log;
    let backlog_voiced_after = off_seq
        .iter()
        .chain(&off_load)
        .filter(|s| s.ok() && offline(s.id))
        .filter_map(|s| voiced.get(&amount(s.id)))
        .max()
        .map(|at| at.duration_since(back).unwrap_or_default());
    LanesRun {
        online: Scenario::of(&on_seq, &on_load, &voiced, all),
        offline: Scenario::of(&off_seq, &off_load, &voiced, online),
        flaky: Scenario::of(&flaky_seq, &flaky_load, &voiced, all),
        backlog,
        backlog_voiced_after,
        outcome: Outcome {
            drained,
            delivery,
            mqtt_delay: mqtt_delay(&seen),
            warnings: warnings(&log, false),
            sent: next,
            acknowledged: acknowledged.len() as u64,
            elapsed: started.elapsed(),
        },
    }
}

/// The flaky API's faults on, or every fault off; plays stay [`PLAY_MS`].
async fn set_faults(sim: &SimControl, flaky: bool) {
    let faults = if flaky {
        serde_json::json!({
            "error_rate": FLAKY_ERROR_RATE,
            "rate_limit_rate": FLAKY_RATE_LIMIT_RATE,
            "retry_after_secs": FLAKY_RETRY_AFTER_SECS,
            "play_ms": PLAY_MS,
        })
    } else {
        serde_json::json!({ "play_ms": PLAY_MS })
    };
    sim.set_faults(faults).await;
}

/// A row of the ten-speaker table: each scenario's figure, and the ratios
/// of the other two to all-online.
fn row3(name: &str, online: f64, offline: f64, flaky: f64, decimals: usize) {
    println!(
        "  {name:<44} {:>10} {:>10} {:>10} {:>9} {:>9}",
        cell(Some(online), decimals),
        cell(Some(offline), decimals),
        cell(Some(flaky), decimals),
        ratio(offline, Some(online)),
        ratio(flaky, Some(online)),
    );
}

impl LanesRun {
    pub fn print(&self) {
        println!(
            "ten speakers, one lane each: 10 accounts -> 10 speakers; time to voice = webhook sent -> notify accepted \
             (the gateway's `at` on its `sent` announcement, whole ms)"
        );
        println!(
            "  per scenario: {SEQUENTIAL} one at a time (each waits for the previous payment's voice), then {SENDERS} senders x {LOAD} \
             in a closed loop on the 2xx; {WARM_UP} warm-up; simulated plays last {PLAY_MS} ms"
        );
        println!(
            "  1 offline: {} offline in the simulator, figures of the other nine; flaky: {:.0} % of calls 500 + {:.0} % 429 \
             (Retry-After {FLAKY_RETRY_AFTER_SECS} s), one at a time = one sender per speaker x {FLAKY_PER_SPEAKER}, \
             {SENDERS} senders (3-4 per speaker) x {FLAKY_LOAD} in all, each waiting for its payment's voice (a loop on the 2xx would only time a queue)",
            hardware_id(OFFLINE),
            FLAKY_ERROR_RATE * 100.0,
            FLAKY_RATE_LIMIT_RATE * 100.0,
        );
        println!();
        println!(
            "  {:<44} {:>10} {:>10} {:>10} {:>9} {:>9}",
            "figure", "all online", "1 offline", "flaky", "off/on", "flaky/on"
        );
        let (on, off, flaky) = (self.online, self.offline, self.flaky);
        let p = |f: fn(&Scenario) -> Stats, q: fn(&Stats) -> Duration| {
            (ms(q(&f(&on))), ms(q(&f(&off))), ms(q(&f(&flaky))))
        };
        let rows = [
            ("one at a time", p(|s| s.seq, |s| s.p50), "p50"),
            ("one at a time", p(|s| s.seq, |s| s.p99), "p99"),
            ("32 senders", p(|s| s.load, |s| s.p50), "p50"),
            ("32 senders", p(|s| s.load, |s| s.p99), "p99"),
        ];
        for (level, (a, b, c), q) in rows {
            let level = if level == "32 senders" {
                format!("{SENDERS} senders")
            } else {
                level.to_string()
            };
            row3(&format!("time to voice {q} ms, {level}"), a, b, c, 1);
        }
        let under = format!("{SENDERS} senders");
        row3(
            &format!("2xx /s, {under}"),
            on.ack_rate,
            off.ack_rate,
            flaky.ack_rate,
            0,
        );
        row3(
            &format!("announcements (notify accepted) /s, {under}"),
            on.voice_rate,
            off.voice_rate,
            flaky.voice_rate,
            0,
        );
        let share = |s: Scenario| s.voice_rate / s.ack_rate.max(f64::MIN_POSITIVE);
        row3(
            &format!("announcements /s / 2xx /s, {under}"),
            share(on),
            share(off),
            share(flaky),
            2,
        );
        println!();
        println!(
            "  timed: all online {}/{}, the nine {}/{}, flaky {}/{} acknowledged payments; non-2xx or failed: {} / {} / {}",
            on.timed,
            on.acknowledged,
            off.timed,
            off.acknowledged,
            flaky.timed,
            flaky.acknowledged,
            on.failed,
            off.failed,
            flaky.failed
        );
        println!(
            "  the offline speaker's {} payments: last voiced {} after it came back online",
            self.backlog,
            self.backlog_voiced_after
                .map_or("never".into(), |d| format!("{:.1} s", d.as_secs_f64()))
        );
        self.outcome.print(
            "MQTT's share, not in time to voice",
            "gateway",
            "ten-speaker",
        );
    }

    /// The time-to-voice goals; true if all are met.
    pub fn goals(&self) -> bool {
        let (on, off, flaky) = (self.online, self.offline, self.flaky);
        let over = |a: Duration, b: Duration| a.as_secs_f64() / b.as_secs_f64().max(1e-9);
        let mut met = goal(
            "voice: 1 of 10 speakers offline, the others' p99 / all-online p99, one at a time",
            over(off.seq.p99, on.seq.p99),
            1.5,
            "x",
            false,
        );
        met &= goal(
            &format!(
                "voice: 1 of 10 speakers offline, the others' p99 / all-online p99, {SENDERS} senders"
            ),
            over(off.load.p99, on.load.p99),
            1.5,
            "x",
            false,
        );
        met &= goal(
            &format!("voice: announcements /s / acknowledged /s, 10 speakers, {SENDERS} senders"),
            on.voice_rate / on.ack_rate.max(f64::MIN_POSITIVE),
            0.9,
            "x",
            true,
        );
        met &= goal(
            "voice: p99 at 30% 5xx + 10% 429, one at a time per speaker",
            flaky.seq.p99.as_secs_f64(),
            5.0,
            "s",
            false,
        );
        met &= goal(
            &format!("voice: p99 at 30% 5xx + 10% 429, {SENDERS} senders"),
            flaky.load.p99.as_secs_f64(),
            5.0,
            "s",
            false,
        );
        // The figures stand only if every acknowledged payment was timed
        // and announced exactly once.
        let untimed: usize = [on, off, flaky]
            .iter()
            .map(|s| s.acknowledged - s.timed)
            .sum();
        let exceptions = self.outcome.delivery.exceptions() + untimed;
        println!(
            "  [{}] ten speakers: every acknowledged payment timed, announced once, played once, in its lane's order: {exceptions} exceptions",
            if exceptions == 0 { " met  " } else { "NOT met" }
        );
        met && exceptions == 0
    }
}
