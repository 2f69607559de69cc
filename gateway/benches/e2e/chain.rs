//! The chain path (docs/fleet.md): a webhook at the relay → the payment
//! announced at its shop, with ten shops, against one gateway taking the
//! same webhooks itself (the ten-speaker run's "all online", same run).
//!
//! Three `nats-server` nodes on loopback (JetStream, MQTT on each); ten shop
//! gateways (release binary, own processes and data dirs), shop `s` owning
//! account `01234000NN` of [`lanes`] and its speaker, subscribed to
//! `chain/shop-s/payments` through node `s % 3` with the chain-relay plugin,
//! publishing its events and announcements on the cluster; one relay gateway
//! taking the SePay webhooks and publishing each payment on its shop's topic
//! through node 0. Same load as the ten-speaker run: [`SEQUENTIAL`] one at
//! a time (each waits for the previous payment's voice), then [`SENDERS`]
//! senders x [`LOAD`] in a closed loop on the relay's 2xx.
//!
//! Time to voice is webhook sent at the relay → the shop's notify accepted:
//! the `at` of the shop's `sent` announcement (whole ms), as everywhere in
//! this bench. Needs `nats-server` (`make test-tools` installs it); without
//! it the chain is skipped and says so.

use soundbox_e2e::nats::{NatsCluster, nats_available};

use super::lanes::{
    SPEAKERS, Scenario, account, acked, all, body, hardware_id, speaker_of, take, voice_loop,
};
use super::*;

/// Nodes of the NATS cluster.
const NODES: usize = 3;
const WARM_UP: u64 = 50;
const SEQUENTIAL: u64 = 300;
const LOAD: u64 = 5_000;
/// How long the shops may take to announce the load.
const CHAIN_DRAIN_LIMIT: Duration = Duration::from_secs(120);

fn shop_id(shop: u64) -> String {
    format!("shop-{shop}")
}

/// Everything measured of the chain.
pub(super) struct ChainRun {
    pub chain: Scenario,
    /// Its `sent` announcements travelled over the cluster; its warnings
    /// are the relay's and the shops'.
    pub outcome: Outcome,
}

/// Shop `shop`: its payments from its topic through `broker`, announced on
/// its speaker; its events and announcements on the cluster.
fn start_shop(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    shop: u64,
    broker: &str,
    sim: &SpeakerApi,
) -> Gateway {
    let config = format!(
        "[[connector]]\nname = \"chain\"\nplugin = \"{plugin}\"\n\
         [connector.config]\nexpect_topic = \"chain/{id}/payments\"\naccounts = \"{account}\"\n\
         [connector.mqtt]\nbroker = \"{broker}\"\ntopic = \"chain/{id}/payments\"\nretry_max_ms = 1000\n\n\
         {speaker_table}\
         [[route]]\naccount = \"{account}\"\nspeakers = [\"{speaker}\"]\n\n\
         [[mqtt]]\nname = \"chain\"\nbroker = \"{broker}\"\ntopic_prefix = \"chain\"\nretry_max_ms = 1000\n",
        plugin = soundbox_e2e::plugin("chain_relay").display(),
        id = shop_id(shop),
        account = account(shop),
        speaker = hardware_id(shop),
        speaker_table = speaker_table(sim),
    );
    let id = format!("id = \"{}\"", shop_id(shop));
    start_gateway(rt, &dir.join(shop_id(shop)), &config, &id)
}

/// The relay: SePay's webhooks in, each payment out on its shop's topic
/// through `broker`.
fn start_relay(rt: &tokio::runtime::Runtime, dir: &Path, broker: &str) -> Gateway {
    let shops: String = (0..SPEAKERS)
        .map(|s| format!("\"{}\" = \"{}\"\n", account(s), shop_id(s)))
        .collect();
    let config = format!(
        "{}[[mqtt]]\nname = \"shops\"\nbroker = \"{broker}\"\ntopic_prefix = \"chain\"\nretry_max_ms = 1000\n\
         [mqtt.relay]\ntopic = \"chain/{{shop}}/payments\"\n[mqtt.relay.shops]\n{shops}",
        sepay_connector(),
    );
    start_gateway(rt, &dir.join("relay"), &config, "id = \"relay\"")
}

/// None when `nats-server` is not installed.
pub(super) fn run(rt: &tokio::runtime::Runtime, dir: &Path) -> Option<ChainRun> {
    if !nats_available() {
        return None;
    }
    let started = Instant::now();
    let cluster = NatsCluster::start(NODES);
    let devices: Vec<String> = (0..SPEAKERS)
        .map(|s| format!("{}:paired", hardware_id(s)))
        .collect();
    let sim = speaker_sim(&devices);
    let control = sim.control();
    let mut shops: Vec<Gateway> = (0..SPEAKERS)
        .map(|s| start_shop(rt, dir, s, &cluster.mqtt_url(s as usize % NODES), &sim))
        .collect();
    let client = load_client();
    // The cluster keeps a shop's messages only once its session exists.
    rt.block_on(soundbox_e2e::admin::wait_subscribed(
        &shops,
        Duration::from_secs(60),
    ));
    let mut relay = start_relay(rt, dir, &cluster.mqtt_url(0));
    let subscriber = Listener::connect(cluster.mqtt_port(NODES - 1), "chain/+");
    let url = relay.url("/hooks/sepay");
    let logs = || -> String {
        shops
            .iter()
            .chain([&relay])
            .map(Gateway::logs)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let mut next = 0;
    let mut drained = Vec::new();

    // Warm up: every shop has its token, connections and a voiced payment.
    let ids = take(&mut next, WARM_UP);
    let warm = rt.block_on(closed_loop(&client, &url, ids.clone(), SENDERS, body));
    assert!(
        warm.iter().all(Shot::ok),
        "the relay refused warm-up webhooks; the logs:\n{}",
        logs()
    );
    assert!(
        subscriber.wait_until(ids, Duration::from_secs(60), voiced),
        "warm-up payments were not announced at their shops within 60 s; the logs:\n{}",
        logs()
    );

    let ids = take(&mut next, SEQUENTIAL);
    let one_sender = vec![(ids.collect::<Vec<u64>>(), 1)];
    let seq = rt.block_on(voice_loop(
        &client,
        &url,
        one_sender,
        subscriber.seen(),
        all,
    ));
    let load_ids = take(&mut next, LOAD);
    let load = rt.block_on(closed_loop(&client, &url, load_ids, SENDERS, body));
    let played = acked(&warm, all) + acked(&seq, all) + acked(&load, all);
    let ok = rt.block_on(wait_played(&control, played, CHAIN_DRAIN_LIMIT));
    drained.push(("every payment played at its shop", ok));
    let ok = subscriber.wait_until(0..next, CHAIN_DRAIN_LIMIT, settled);
    drained.push(("final results", ok));
    // A moment for late duplicates.
    std::thread::sleep(Duration::from_secs(2));
    let plays = rt.block_on(plays_by_amount(&control));
    let seen = subscriber.finish();
    relay.shut_down();
    for shop in &mut shops {
        shop.shut_down();
    }

    let mut voiced = HashMap::new();
    let mut from_log = 0;
    let mut warnings_by_message: HashMap<String, usize> = HashMap::new();
    for gateway in shops.iter().chain([&relay]) {
        let log = gateway.logs();
        let (at, n) = voiced_at(&seen, &log);
        voiced.extend(at);
        from_log += n;
        for (message, count) in warnings(&log, false) {
            *warnings_by_message.entry(message).or_insert(0) += count;
        }
    }
    let acknowledged: Vec<u64> = [&warm, &seq, &load]
        .into_iter()
        .flatten()
        .filter(|s| s.ok())
        .map(|s| s.id)
        .collect();
    let mut delivery = Delivery::of(acknowledged.iter().copied(), &seen, &plays, |id| {
        hardware_id(speaker_of(id))
    });
    delivery.sent_from_log = from_log;
    Some(ChainRun {
        chain: Scenario::of(&seq, &load, &voiced, all),
        outcome: Outcome {
            drained,
            delivery,
            mqtt_delay: mqtt_delay(&seen),
            warnings: warnings_by_message,
            sent: next,
            acknowledged: acknowledged.len() as u64,
            elapsed: started.elapsed(),
        },
    })
}

impl ChainRun {
    /// The chain's figures beside `single`: one gateway taking the same
    /// webhooks for the same ten speakers itself.
    pub fn print(&self, single: &Scenario) {
        println!(
            "chain: webhook at a relay -> NATS cluster ({NODES} nodes, MQTT, JetStream) -> {SPEAKERS} shop gateways, one speaker each; \
             time to voice = webhook sent at the relay -> the shop's notify accepted (its `at`, whole ms)"
        );
        println!(
            "  {SEQUENTIAL} one at a time (each waits for the previous payment's voice), then {SENDERS} senders x {LOAD} in a closed \
             loop on the relay's 2xx; {WARM_UP} warm-up. Baseline: one gateway, the same ten accounts and speakers (the ten-speaker run, all online)"
        );
        println!();
        println!(
            "  {:<44} {:>10} {:>10} {:>10}",
            "figure", "chain", "one gw", "chain/one"
        );
        let under = format!("{SENDERS} senders");
        let lines = [
            (
                "time to voice p50 ms, one at a time",
                ms(self.chain.seq.p50),
                ms(single.seq.p50),
                1,
            ),
            (
                "time to voice p99 ms, one at a time",
                ms(self.chain.seq.p99),
                ms(single.seq.p99),
                1,
            ),
            (
                &*format!("time to voice p50 ms, {under}"),
                ms(self.chain.load.p50),
                ms(single.load.p50),
                1,
            ),
            (
                &*format!("time to voice p99 ms, {under}"),
                ms(self.chain.load.p99),
                ms(single.load.p99),
                1,
            ),
            (
                &*format!("2xx /s, {under}"),
                self.chain.ack_rate,
                single.ack_rate,
                0,
            ),
            (
                &*format!("announcements (notify accepted) /s, {under}"),
                self.chain.voice_rate,
                single.voice_rate,
                0,
            ),
        ];
        for (name, chain, one, decimals) in lines {
            println!(
                "  {name:<44} {:>10} {:>10} {:>10}",
                cell(Some(chain), decimals),
                cell(Some(one), decimals),
                ratio(chain, Some(one)),
            );
        }
        println!();
        println!(
            "  timed: {}/{} acknowledged payments; non-2xx or failed at the relay: {}",
            self.chain.timed, self.chain.acknowledged, self.chain.failed
        );
        self.outcome.print(
            "over the cluster; not in time to voice",
            "relay's and shops'",
            "chain",
        );
    }

    /// No figure of the chain has a target yet: only that each payment is
    /// announced once, at its shop, in its shop's order.
    pub fn goals(&self) -> bool {
        let exceptions =
            self.outcome.delivery.exceptions() + (self.chain.acknowledged - self.chain.timed);
        println!(
            "  [{}] chain: every payment the relay acknowledged timed, announced once at its shop's speaker, in order: {exceptions} exceptions",
            if exceptions == 0 { " met  " } else { "NOT met" }
        );
        exceptions == 0
    }
}
