//! A store chain over an MQTT cluster (docs/fleet.md), with the real binary
//! on a real clustered engine: three `nats-server` nodes (JetStream, MQTT
//! on each), a relay gateway taking SePay's webhooks at one URL and
//! publishing each payment on its shop's topic, ten shop gateways (own
//! processes and data dirs) each subscribed through one of the nodes, and
//! one standalone Speaker API simulator the shops share (a speaker each).
//! Also a Mosquitto broker with TLS client certificates made in the test.
//!
//! | scenario | test | CI size / long (`SOUNDBOX_CHAOS_LONG=1`) |
//! |---|---|---|
//! | payments for random shops while a node is killed and restarted, a shop SIGKILLed and restarted, a shop stopped for a while | [`a_chain_over_a_nats_cluster_announces_each_payment_once_at_its_shop`] | 500 / 2,000 payments |
//! | a shop with a wrong or missing client certificate is refused; the right one delivers and subscribes | [`mosquitto_with_client_certificates`] | 3 payments |
//!
//! Nothing here asserts how fast something happens: deadlines only bound
//! how long "eventually" may take.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use soundbox_e2e::mqtt::{Mosquitto, Subscriber, mosquitto_available};
use soundbox_e2e::nats::{NatsCluster, nats_available};
use soundbox_e2e::tls::{Pki, openssl_available};
use soundbox_e2e::{
    Gateway, SpeakerApi, admin, chaos_size, free_port, plugin, post_until_2xx, run_cli,
    sepay_connector, sepay_webhook_to, wait_until,
};

const SHOPS: usize = 10;

fn shop_id(i: usize) -> String {
    format!("shop-{i}")
}

/// Shop `i`'s bank account (what the relay's table and the shop's route name).
fn account(i: usize) -> String {
    format!("97050000{i:02}")
}

fn speaker(i: usize) -> String {
    format!("SB-{i}")
}

/// Distinct per payment, so a play names the payment it came from.
fn amount(id: u64) -> u64 {
    20_000 + id
}

/// The relay: SePay's webhooks in, each payment out on
/// `chain/<shop>/payments` through node 0.
fn relay_config(broker: &str) -> String {
    let shops: String = (0..SHOPS)
        .map(|i| format!("\"{}\" = \"{}\"\n", account(i), shop_id(i)))
        .collect();
    format!(
        "{}\
         [[mqtt]]\nname = \"shops\"\nbroker = \"{broker}\"\ntopic_prefix = \"chain\"\nretry_max_ms = 1000\n\
         [mqtt.relay]\ntopic = \"chain/{{shop}}/payments\"\n[mqtt.relay.shops]\n{shops}",
        sepay_connector()
    )
}

/// Shop `i`: its payments from its topic (through `broker`), announced on
/// its own speaker; its health and events on the cluster too.
fn shop_config(i: usize, broker: &str, speaker_keys: &str) -> String {
    format!(
        "[[connector]]\nname = \"chain\"\nplugin = \"{}\"\n\
         [connector.config]\nexpect_topic = \"chain/{shop}/payments\"\naccounts = \"{account}\"\n\
         [connector.mqtt]\nbroker = \"{broker}\"\ntopic = \"chain/{shop}/payments\"\nretry_max_ms = 1000\n\n\
         [speaker]\n{speaker_keys}client_secret = \"sim-secret\"\nmax_age_secs = 3600\ntimeout_ms = 3000\n\n\
         [[route]]\naccount = \"{account}\"\nspeakers = [\"{speaker}\"]\n\n\
         [[mqtt]]\nname = \"chain\"\nbroker = \"{broker}\"\ntopic_prefix = \"chain\"\nretry_max_ms = 1000\n",
        plugin("chain_relay").display(),
        shop = shop_id(i),
        account = account(i),
        speaker = speaker(i),
    )
}

/// Runs blocking harness calls (process kills, waits) off the runtime's
/// workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_chain_over_a_nats_cluster_announces_each_payment_once_at_its_shop() {
    if !nats_available() {
        return;
    }
    let payments = chaos_size(500u64, 2_000);
    let mut cluster = blocking(|| NatsCluster::start(3));
    let api = SpeakerApi::builder(free_port())
        .devices(
            &(0..SHOPS)
                .map(|i| format!("{}:paired", speaker(i)))
                .collect::<Vec<_>>(),
        )
        .start();
    // Every event any gateway publishes on the cluster, to check no shop
    // logged another's payment.
    let events = Subscriber::connect(cluster.mqtt_port(2), "chain/+/events").await;

    let mut shops: Vec<Gateway> = (0..SHOPS)
        .map(|i| {
            let broker = cluster.mqtt_url(i % 3);
            Gateway::builder(&shop_config(i, &broker, &api.speaker_keys()))
                .gateway_keys(&format!("id = \"{}\"\nshutdown_grace_secs = 2", shop_id(i)))
                .start()
        })
        .collect();
    // A shop's session must exist before the relay publishes to it (the
    // cluster keeps messages only for sessions it knows): docs/fleet.md.
    admin::wait_subscribed(&shops, Duration::from_secs(60)).await;
    let relay = Gateway::builder(&relay_config(&cluster.mqtt_url(0)))
        .gateway_keys("id = \"relay\"")
        .start();

    // Payments for random shops, each acknowledged by the relay; chaos at
    // fixed points of the flow.
    let mut rng = fastrand::Rng::with_seed(17);
    let plan: Vec<(u64, usize)> = (0..payments).map(|id| (id, rng.usize(..SHOPS))).collect();
    let sent = Arc::new(AtomicUsize::new(0));
    let sender = tokio::spawn({
        let (plan, sent, url) = (plan.clone(), sent.clone(), relay.url("/hooks/sepay"));
        async move {
            let client = reqwest::Client::new();
            for (id, shop) in plan {
                let body = sepay_webhook_to(&account(shop), id, amount(id));
                post_until_2xx(&client, &url, &body, &id).await;
                sent.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }
    });
    let at = |fraction: f64| (payments as f64 * fraction) as usize;
    let reached = |n: usize| {
        let sent = sent.clone();
        async move {
            while sent.load(Ordering::SeqCst) < n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    reached(at(0.15)).await;
    println!("killing cluster node 1 (shops 1, 4, 7 lose their broker)");
    blocking(|| cluster.kill(1));
    reached(at(0.30)).await;
    println!("SIGKILL shop 3 and restart it");
    blocking(|| shops[3].kill_and_restart());
    reached(at(0.40)).await;
    println!("restarting cluster node 1");
    blocking(|| cluster.restart(1));
    reached(at(0.50)).await;
    println!("stopping shop 5 for a while");
    blocking(|| shops[5].shut_down());
    reached(at(0.85)).await;
    println!("starting shop 5 again");
    blocking(|| shops[5].start_again());
    sender.await.expect("sender");
    println!("all {payments} payments acknowledged by the relay");

    // Every acknowledged payment announced exactly once, on its shop's speaker.
    let want: BTreeMap<String, BTreeSet<u64>> = (0..SHOPS)
        .map(|i| {
            let amounts = plan
                .iter()
                .filter(|(_, shop)| *shop == i)
                .map(|(id, _)| amount(*id))
                .collect();
            (speaker(i), amounts)
        })
        .collect();
    let played = |plays: &[Value]| -> BTreeMap<String, Vec<u64>> {
        let mut by_speaker: BTreeMap<String, Vec<u64>> = BTreeMap::new();
        for p in plays {
            by_speaker
                .entry(p["hardware_id"].as_str().unwrap_or_default().to_string())
                .or_default()
                .push(p["amount"].as_u64().unwrap_or(0));
        }
        by_speaker
    };
    wait_until(Duration::from_secs(chaos_size(180, 600)), async || {
        api.plays().await.len() as u64 >= payments
    })
    .await;
    // A little longer, so a late duplicate would show.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plays = api.plays().await;
    let got = played(&plays);
    for (hw, amounts) in &want {
        let heard = got.get(hw).cloned().unwrap_or_default();
        let distinct: BTreeSet<u64> = heard.iter().copied().collect();
        let missing: Vec<&u64> = amounts.difference(&distinct).collect();
        let foreign: Vec<&u64> = distinct.difference(amounts).collect();
        assert!(
            missing.is_empty() && foreign.is_empty() && heard.len() == distinct.len(),
            "speaker {hw}: {} played, {} distinct, {} expected; missing {missing:?}, \
             not its shop's {foreign:?}",
            heard.len(),
            distinct.len(),
            amounts.len()
        );
    }
    assert_eq!(plays.len() as u64, payments, "every payment once, no more");

    // No shop logged another shop's payment (each publishes its log on
    // chain/<shop>/events).
    for i in 0..SHOPS {
        let topic = format!("chain/{}/events", shop_id(i));
        let foreign: Vec<String> = events
            .on(&topic)
            .iter()
            .map(|m| m.json())
            .filter(|e| e["account"] != account(i).as_str())
            .map(|e| e.to_string())
            .collect();
        assert!(foreign.is_empty(), "{topic}: {foreign:?}");
    }

    // `fleet status` lists every gateway, online, from the retained documents.
    let broker = cluster.mqtt_url(1);
    let mut listed: Vec<Value> = Vec::new();
    wait_until(Duration::from_secs(30), async || {
        let out = blocking(|| {
            run_cli(&[
                "fleet", "status", "--broker", &broker, "--prefix", "chain", "--json",
            ])
        });
        listed = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let online = |id: &str| {
            listed
                .iter()
                .any(|g| g["id"] == id && g["status"] == "online" && g["health"]["gateway"] == id)
        };
        (0..SHOPS).all(|i| online(&shop_id(i))) && online("relay")
    })
    .await;
    let ids: BTreeSet<String> = listed
        .iter()
        .filter(|g| g["status"] == "online" && !g["health"].is_null())
        .filter_map(|g| g["id"].as_str().map(str::to_string))
        .collect();
    let mut expected: BTreeSet<String> = (0..SHOPS).map(shop_id).collect();
    expected.insert("relay".into());
    assert_eq!(ids, expected, "fleet status: {listed:#?}");
    let table =
        blocking(|| run_cli(&["fleet", "status", "--broker", &broker, "--prefix", "chain"]));
    let table = String::from_utf8_lossy(&table.stdout);
    println!("{table}");
    assert!(
        table.contains("shop-9") && table.contains("relay"),
        "{table}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn mosquitto_with_client_certificates() {
    if !mosquitto_available() || !openssl_available() {
        return;
    }
    let pki = Pki::generate();
    // A shop may read only its own payments and write only under its own id.
    let acl = "pattern read chain/%u/payments\npattern write chain/%u/#\n\
               user relay\ntopic write chain/+/payments\ntopic write chain/relay/#\n";
    let broker = Mosquitto::start_tls(&pki, Some(acl));
    let url = broker.url().replacen("mqtt://", "mqtts://", 1);
    let (shop_cert, shop_key) = pki.client_cert("shop-1");
    let (relay_cert, relay_key) = pki.client_cert("relay");
    let tls = |cert: &std::path::Path, key: &std::path::Path| {
        format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.ca_cert.display(),
            cert.display(),
            key.display()
        )
    };
    let api = SpeakerApi::builder(free_port())
        .devices(&["SB-1:paired"])
        .start();
    let shop = Gateway::builder(&format!(
            "[[connector]]\nname = \"chain\"\nplugin = \"{}\"\n[connector.config]\naccounts = \"{acct}\"\n\
             [connector.mqtt]\nbroker = \"{url}\"\ntopic = \"chain/shop-1/payments\"\n{}retry_max_ms = 500\n\n\
             [speaker]\n{}client_secret = \"sim-secret\"\n\n[[route]]\naccount = \"{acct}\"\nspeakers = [\"SB-1\"]\n\n\
             [admin]\nstall_after_secs = 2\n",
            plugin("chain_relay").display(),
            tls(&shop_cert, &shop_key),
            api.speaker_keys(),
            acct = account(1),
        )).gateway_keys("id = \"shop-1\"").start();
    admin::wait_subscribed(std::slice::from_ref(&shop), Duration::from_secs(30)).await;

    // Three relays: no client certificate, one from another CA, the right one.
    let relay_with = |tls: &str, id: &str| {
        Gateway::builder(&format!(
                "{}\
                 [[mqtt]]\nname = \"shops\"\nbroker = \"{url}\"\ntopic_prefix = \"chain\"\n{tls}retry_max_ms = 500\n\
                 [mqtt.relay]\ntopic = \"chain/{{shop}}/payments\"\n[mqtt.relay.shops]\n\"{}\" = \"shop-1\"\n",
                sepay_connector(),
                account(1)
            )).gateway_keys(&format!("id = \"{id}\"")).start()
    };
    let no_cert = relay_with(
        &format!("ca_file = \"{}\"\n", pki.ca_cert.display()),
        "relay",
    );
    let rogue = relay_with(
        &format!(
            "ca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            pki.ca_cert.display(),
            pki.rogue_client_cert.display(),
            pki.rogue_client_key.display()
        ),
        "relay",
    );
    let client = reqwest::Client::new();
    for (relay, id) in [(&no_cert, 1u64), (&rogue, 2)] {
        let body = sepay_webhook_to(&account(1), id, amount(id));
        post_until_2xx(&client, &relay.url("/hooks/sepay"), &body, &id).await;
    }
    // Both keep their payment and keep failing to connect, saying why.
    for relay in [&no_cert, &rogue] {
        let mut sink = Value::Null;
        wait_until(Duration::from_secs(20), async || {
            let status = relay.api_status().await;
            sink = admin::sink(&status, "mqtt:shops")
                .cloned()
                .unwrap_or_default();
            !sink["last_error"].is_null()
        })
        .await;
        assert_eq!(sink["pending"], 1, "{sink}");
        assert!(
            !sink["last_error"].is_null(),
            "the refusal is shown: {sink}"
        );
    }
    assert!(api.plays().await.is_empty(), "nothing got through");
    drop(no_cert);
    drop(rogue);

    // The right certificate delivers, through the shop's subscription.
    let relay = relay_with(&tls(&relay_cert, &relay_key), "relay");
    let body = sepay_webhook_to(&account(1), 3, amount(3));
    post_until_2xx(&client, &relay.url("/hooks/sepay"), &body, &3).await;
    wait_until(Duration::from_secs(30), async || {
        !api.plays().await.is_empty()
    })
    .await;
    let plays = api.plays().await;
    let amounts: Vec<u64> = plays.iter().filter_map(|p| p["amount"].as_u64()).collect();
    assert_eq!(amounts, vec![amount(3)], "{plays:?}");

    // The broker goes away: past `stall_after_secs`, /readyz names the
    // subscription; back once the broker is.
    assert_eq!(shop.admin_get("/readyz").await.0, 200);
    let mut broker = broker;
    blocking(|| broker.stop());
    let (code, body) = shop.wait_ready(503, Duration::from_secs(30)).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("connector `chain`: not subscribed"), "{body}");
    blocking(|| broker.restart());
    let (code, body) = shop.wait_ready(200, Duration::from_secs(30)).await;
    assert_eq!(code, 200, "still unready: {body}");
}
