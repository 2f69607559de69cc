//! Payments on MQTT with the real binary: a real Mosquitto broker (Debian's
//! package) and the embedded one; the broker restarted mid-stream; the
//! retained status when the gateway dies; TLS with a password.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use soundbox_e2e::mqtt::{Message, Mosquitto, Subscriber, mosquitto_available, transaction_ids};
use soundbox_e2e::{
    Gateway, admin, free_port, post, sepay_connector, sepay_transaction_id, sepay_webhook,
    wait_until,
};

/// A SePay connector and `[mqtt]` with `mqtt_keys`; topics under `prefix`.
fn config(prefix: &str, mqtt_keys: &str) -> String {
    format!(
        "{}\
         [mqtt]\ntopic_prefix = \"{prefix}\"\nretry_initial_ms = 50\nretry_max_ms = 500\n{mqtt_keys}\n",
        sepay_connector()
    )
}

/// A topic prefix no other test uses, so retained messages do not mix.
fn unique_prefix() -> String {
    format!("t{}", free_port())
}

/// Posts webhooks `ids` (amount = 1000 + id), four at a time; all must be 2xx.
async fn post_payments(gw: &Gateway, ids: std::ops::Range<u64>) {
    post_counting(gw.url("/hooks/sepay"), ids, Arc::default()).await;
}

/// [`post_payments`] to `url`, counting acknowledged payments in `posted`.
async fn post_counting(url: String, ids: std::ops::Range<u64>, posted: Arc<AtomicU64>) {
    let ids: Vec<u64> = ids.collect();
    for chunk in ids.chunks(4) {
        let posts: Vec<_> = chunk
            .iter()
            .map(|&id| {
                let url = url.clone();
                tokio::spawn(async move { post(&url, &[], sepay_webhook(id, 1_000 + id)).await })
            })
            .collect();
        for sent in posts {
            let reply = sent.await.expect("post task");
            assert_eq!(reply.status, 200, "{}", reply.body);
            posted.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Waits until `counter` reaches `n`.
async fn reaches(counter: &AtomicU64, n: u64) {
    while counter.load(Ordering::SeqCst) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn expected_ids(ids: std::ops::Range<u64>) -> BTreeSet<String> {
    ids.map(sepay_transaction_id).collect()
}

/// The broker `.ci/run` started (`SOUNDBOX_TEST_MQTT_PORT`), or our own.
fn shared_or_own_broker() -> (u16, Option<Mosquitto>) {
    match std::env::var("SOUNDBOX_TEST_MQTT_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
    {
        Some(port) => (port, None),
        None => {
            let own = Mosquitto::start();
            (own.port, Some(own))
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_payment_reaches_a_mosquitto_subscriber() {
    if !mosquitto_available() {
        return;
    }
    let (port, _own) = shared_or_own_broker();
    let prefix = unique_prefix();
    let sub = Subscriber::connect(port, &format!("{prefix}/#")).await;
    let gw = Gateway::start(&config(
        &prefix,
        &format!("broker = \"mqtt://127.0.0.1:{port}\""),
    ));
    post_payments(&gw, 0..100).await;
    // A provider retry of one of them: no second event id.
    post_payments(&gw, 5..6).await;

    let events = format!("{prefix}/e2e/events");
    let all = sub
        .wait_until(&events, Duration::from_secs(20), |m| {
            transaction_ids(m).len() >= 100
        })
        .await;
    assert!(all, "{} events\n{}", sub.on(&events).len(), gw.logs());
    assert_eq!(sub.transaction_ids(&events), expected_ids(0..100));
    assert_eq!(sub.distinct_ids(&events).len(), 100);
    let event = sub
        .on(&events)
        .into_iter()
        .map(|m| m.json())
        .find(|e| e["transaction_id"] == sepay_transaction_id(42).as_str())
        .expect("payment 42");
    assert_eq!(event["schema"], 1);
    assert_eq!(event["provider"], "sepay");
    assert_eq!(event["connector"], "sepay");
    assert_eq!(event["account"], "0123499999");
    assert_eq!(event["direction"], "in");
    assert_eq!(event["amount"], 1_042);
    assert_eq!(event["currency"], "VND");
    assert_eq!(event["reference"], "MBVCB.42");
    assert_eq!(event["content"], "thanh toan don 42");
    assert!(
        event["occurred_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert!(
        event["received_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    let status = sub.on(&format!("{prefix}/e2e/status"));
    assert_eq!(status.last().map(|m| m.text()).as_deref(), Some("online"));

    // `queue status` shows the MQTT sink caught up (its PubAcks may land
    // just after the subscriber saw the last event).
    let mut pending = serde_json::Value::Null;
    wait_until(Duration::from_secs(5), async || {
        let status = gw.queue_status();
        pending = admin::sink(&status, "mqtt")
            .unwrap_or_else(|| panic!("no mqtt sink in {status}"))["pending"]
            .clone();
        pending == 0
    })
    .await;
    assert_eq!(pending, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_restart_mid_stream_loses_no_payment() {
    if !mosquitto_available() {
        return;
    }
    let mut broker = Mosquitto::start();
    let prefix = unique_prefix();
    let sub = Subscriber::connect(broker.port, &format!("{prefix}/#")).await;
    let gw = Gateway::start(&config(&prefix, &format!("broker = \"{}\"", broker.url())));
    let events = format!("{prefix}/e2e/events");

    // Payments flow the whole time; the broker goes away after about a
    // third and comes back after about two thirds of them.
    let posted = Arc::new(AtomicU64::new(0));
    let poster = tokio::spawn(post_counting(
        gw.url("/hooks/sepay"),
        0..300,
        posted.clone(),
    ));
    reaches(&posted, 100).await;
    broker.stop();
    reaches(&posted, 200).await;
    assert!(
        gw.wait_for_log("MQTT connection failed", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    broker.restart();
    poster
        .await
        .expect("every payment acknowledged while the broker was away");

    let all = sub
        .wait_until(&events, Duration::from_secs(30), |m| {
            transaction_ids(m).len() >= 300
        })
        .await;
    let got = sub.transaction_ids(&events);
    let missing: Vec<_> = expected_ids(0..300).difference(&got).cloned().collect();
    assert!(
        all && missing.is_empty(),
        "missing {missing:?}\n{}",
        gw.logs()
    );
    // At least once: a resend after the reconnect has the same id.
    assert_eq!(sub.distinct_ids(&events).len(), 300);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_retained_status_turns_offline_when_the_gateway_is_killed() {
    if !mosquitto_available() {
        return;
    }
    let (port, _own) = shared_or_own_broker();
    let prefix = unique_prefix();
    let status = format!("{prefix}/e2e/status");
    let sub = Subscriber::connect(port, &status).await;
    let mut gw = Gateway::start(&config(
        &prefix,
        &format!("broker = \"mqtt://127.0.0.1:{port}\""),
    ));
    let online = sub
        .wait_for_last(&status, "online", Duration::from_secs(10))
        .await;
    assert!(online, "{}", gw.logs());

    gw.kill();
    let offline = sub
        .wait_for_last(&status, "offline", Duration::from_secs(15))
        .await;
    assert!(offline, "the broker published the last will");
    // Someone subscribing later is told too (retained).
    let late = Subscriber::connect(port, &status).await;
    let told = late
        .wait_until(&status, Duration::from_secs(5), |m| {
            m.last().is_some_and(|m| m.retain && m.text() == "offline")
        })
        .await;
    assert!(told);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_embedded_broker_carries_events_and_announcements() {
    let mqtt_port = free_port();
    let prefix = unique_prefix();
    let speaker = "[speaker]\nsimulator = true\n\
                   [[speaker.sim_devices]]\nhardware_id = \"VNS-SHOP-1\"\npaired = true\n\
                   [[route]]\naccount = \"*\"\nspeakers = [\"VNS-SHOP-1\"]\n";
    let gw = Gateway::start(&format!(
        "{}{speaker}",
        config(
            &prefix,
            &format!("broker = \"embedded\"\nembedded_listen = \"127.0.0.1:{mqtt_port}\"")
        )
    ));
    let sub = Subscriber::connect(mqtt_port, &format!("{prefix}/#")).await;
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(77, 150_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);

    let events = format!("{prefix}/e2e/events");
    let announcements = format!("{prefix}/e2e/announcements");
    assert!(
        sub.wait_until(&events, Duration::from_secs(10), |m| !m.is_empty())
            .await,
        "{}",
        gw.logs()
    );
    assert_eq!(sub.on(&events)[0].json()["amount"], 150_000);
    // `sent` at once, then `played` once check_notify says SUCCESS.
    assert!(
        sub.wait_until(&announcements, Duration::from_secs(30), |m| {
            m.iter().any(|m| m.json()["result"] == "played")
        })
        .await,
        "{:?}\n{}",
        sub.on(&announcements),
        gw.logs()
    );
    let mut said: Vec<serde_json::Value> =
        sub.on(&announcements).iter().map(Message::json).collect();
    said.dedup(); // a QoS 1 resend
    let results: Vec<&str> = said.iter().filter_map(|a| a["result"].as_str()).collect();
    assert_eq!(results, ["sent", "played"], "{said:?}");
    for a in &said {
        assert_eq!(a["hardware_id"], "VNS-SHOP-1");
        assert_eq!(a["words"], "một trăm năm mươi nghìn đồng");
        assert_eq!(a["event_id"], sub.on(&events)[0].json()["id"]);
        assert_eq!(a["request_id"], said[0]["request_id"]);
    }
    // The retained status is there for a subscriber that comes later.
    let status = format!("{prefix}/e2e/status");
    let late = Subscriber::connect(mqtt_port, &status).await;
    assert!(
        late.wait_for_last(&status, "online", Duration::from_secs(5))
            .await
    );
}

/// Writes a CA and a server certificate for localhost / 127.0.0.1 into `dir`.
fn make_certificates(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    run(&[
        &["req", "-x509", "-nodes"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=e2e-ca",
        ],
    ]
    .concat());
    run(&[
        &["req", "-nodes"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("write ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_and_a_password_to_an_external_broker() {
    if !mosquitto_available() {
        return;
    }
    let certs = tempfile::tempdir().expect("tempdir");
    make_certificates(certs.path());
    let passwd = certs.path().join("passwd");
    let made = Command::new("mosquitto_passwd")
        .args(["-b", "-c"])
        .arg(&passwd)
        .args(["shop", "s3cret-pass"])
        .status()
        .expect("mosquitto_passwd");
    assert!(made.success());
    let tls_port = free_port();
    let d = certs.path().display();
    // The plain listener (for the test's subscriber) stays anonymous; the
    // TLS one is the gateway's; credentials are checked wherever given.
    let broker = Mosquitto::start_with(&format!(
        "allow_anonymous true\npassword_file {}\n\
         listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
        passwd.display()
    ));
    let prefix = unique_prefix();
    let sub = Subscriber::connect(broker.port, &format!("{prefix}/#")).await;
    let keys = |password: &str| {
        format!(
            "broker = \"mqtts://localhost:{tls_port}\"\nca_file = \"{d}/ca.pem\"\n\
             username = \"shop\"\npassword = \"{password}\""
        )
    };

    let wrong = Gateway::start(&config(&prefix, &keys("wrong-pass-x9")));
    assert!(
        wrong.wait_for_log("MQTT connection failed", Duration::from_secs(10)),
        "{}",
        wrong.logs()
    );
    assert!(
        !wrong.logs().contains("wrong-pass-x9"),
        "the password is not logged"
    );
    drop(wrong);

    let gw = Gateway::start(&config(&prefix, &keys("s3cret-pass")));
    post_payments(&gw, 0..10).await;
    let events = format!("{prefix}/e2e/events");
    assert!(
        sub.wait_until(&events, Duration::from_secs(15), |m| transaction_ids(m)
            .len()
            >= 10)
            .await,
        "{}",
        gw.logs()
    );
    assert_eq!(sub.transaction_ids(&events), expected_ids(0..10));
    assert!(!gw.logs().contains("s3cret-pass"));
}
