//! The embedded broker with the real binary, over the network: only the
//! gateway publishes under its prefix, nobody takes its client id, and a
//! broker reachable from the network needs accounts.

use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS,
};
use soundbox_e2e::mqtt::Subscriber;
use soundbox_e2e::{Gateway, free_port, post, run_cli, sepay_connector, sepay_webhook};

/// A SePay connector and `[mqtt]` on the embedded broker at `listen`, with
/// the default topic prefix (`soundbox`): topics are `soundbox/e2e/…`.
fn config(listen: &str, extra_mqtt: &str) -> String {
    format!(
        "{}\
         [mqtt]\nbroker = \"embedded\"\nembedded_listen = \"{listen}\"\n\
         retry_initial_ms = 50\nretry_max_ms = 500\n{extra_mqtt}\n",
        sepay_connector()
    )
}

const EVENTS: &str = "soundbox/e2e/events";
const STATUS: &str = "soundbox/e2e/status";

/// A client of the broker on `port`, not yet connected.
fn client(port: u16, id: &str, login: Option<(&str, &str)>) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(id, "127.0.0.1", port);
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login {
        options.set_credentials(user, password);
    }
    AsyncClient::new(options, 10)
}

/// Polls until the connection fails or `limit` passes; what came in, and
/// the error, if any.
async fn run_until_error(
    eventloop: &mut EventLoop,
    limit: Duration,
) -> (Vec<Incoming>, Option<ConnectionError>) {
    let mut incoming = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Ok(Ok(Event::Incoming(packet))) => incoming.push(packet),
            Ok(Ok(Event::Outgoing(_))) => {}
            Ok(Err(error)) => return (incoming, Some(error)),
            Err(_) => return (incoming, None),
        }
    }
}

/// How a CONNECT with `id` and `login` was answered.
async fn connack(port: u16, id: &str, login: Option<(&str, &str)>) -> Result<(), String> {
    let (_client, mut eventloop) = client(port, id, login);
    match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
        Ok(Ok(Event::Incoming(Incoming::ConnAck(ack))))
            if ack.code == ConnectReturnCode::Success =>
        {
            Ok(())
        }
        Ok(Err(ConnectionError::ConnectionRefused(code))) => Err(format!("{code:?}")),
        other => Err(format!("{other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_gateway_publishes_under_its_prefix_and_keeps_its_client_id() {
    let port = free_port();
    let gw = Gateway::start(&config(&format!("127.0.0.1:{port}"), ""));
    let sub = Subscriber::connect(port, "soundbox/#").await;
    assert!(
        sub.wait_for_last(STATUS, "online", Duration::from_secs(10))
            .await,
        "{}",
        gw.logs()
    );

    // An anonymous client (anyone on this box) fakes a payment and a
    // retained status: each time it is disconnected, without a PubAck.
    let (attacker, mut eventloop) = client(port, "pos-attacker", None);
    attacker
        .publish(
            EVENTS,
            QoS::AtLeastOnce,
            false,
            r#"{"amount":50000000,"id":"fake"}"#,
        )
        .await
        .expect("queue");
    let (incoming, error) = run_until_error(&mut eventloop, Duration::from_secs(5)).await;
    assert!(
        error.is_some(),
        "the fake payment's sender stays connected: {incoming:?}"
    );
    assert!(
        !incoming.iter().any(|p| matches!(p, Incoming::PubAck(_))),
        "{incoming:?}"
    );
    let (attacker, mut eventloop) = client(port, "pos-attacker", None);
    attacker
        .publish(STATUS, QoS::AtMostOnce, true, "hacked")
        .await
        .expect("queue");
    let (incoming, error) = run_until_error(&mut eventloop, Duration::from_secs(5)).await;
    assert!(
        error.is_some(),
        "the fake status's sender stays connected: {incoming:?}"
    );

    // Someone connecting with the gateway's client id is refused, and the
    // gateway stays connected.
    assert_eq!(
        connack(port, "soundbox-e2e", None).await,
        Err("BadClientId".to_string())
    );
    // Other topics work as on any broker.
    let (other, mut eventloop) = client(port, "pos-1", None);
    other
        .publish("pos/pos-1/hello", QoS::AtLeastOnce, false, "hi")
        .await
        .expect("queue");
    let (incoming, _) = run_until_error(&mut eventloop, Duration::from_secs(1)).await;
    assert!(
        incoming.iter().any(|p| matches!(p, Incoming::PubAck(_))),
        "{incoming:?}"
    );

    // A real payment after all that still arrives, from the gateway.
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(41, 150_000)).await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.logs());
    assert!(
        sub.wait_until(EVENTS, Duration::from_secs(10), |m| !m.is_empty())
            .await,
        "{}",
        gw.logs()
    );
    let events = sub.on(EVENTS);
    assert!(
        events.iter().all(|m| m.json()["amount"] == 150_000),
        "{events:?}"
    );
    let statuses: Vec<String> = sub.on(STATUS).iter().map(|m| m.text()).collect();
    assert!(statuses.iter().all(|s| s == "online"), "{statuses:?}");
    let late = Subscriber::connect(port, STATUS).await;
    assert!(
        late.wait_for_last(STATUS, "online", Duration::from_secs(5))
            .await,
        "the retained status is the gateway's"
    );
    let logs = gw.logs();
    assert!(
        logs.contains("tried to publish on the gateway's topics")
            && logs.contains("pos-attacker")
            && logs.contains(EVENTS),
        "{logs}"
    );
    assert!(
        !logs.contains("MQTT connection failed"),
        "the gateway was kicked off: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_broker_on_the_network_needs_accounts_and_checks_them() {
    // No accounts: refused before anything listens, by `check` and `run`.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config.toml");
    let open = format!(
        "[gateway]\ndata_dir = \"data\"\n{}",
        config(&format!("0.0.0.0:{}", free_port()), "")
    );
    std::fs::write(&path, &open).expect("write config");
    let path_text = path.to_str().expect("utf-8 path");
    let line = open
        .lines()
        .position(|l| l.starts_with("embedded_listen"))
        .expect("line")
        + 1;
    for args in [
        &["check", "--config", path_text][..],
        &["run", "--config", path_text][..],
    ] {
        let out = run_cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {stderr}");
        assert!(
            stderr.contains(&format!("config.toml:{line}:"))
                && stderr.contains("mqtt.embedded_listen")
                && stderr.contains("is reachable from the network")
                && stderr.contains("embedded_users"),
            "{args:?}: {stderr}"
        );
    }

    // With an account, on every address: it reads, nobody else does.
    let port = free_port();
    let gw = Gateway::builder(&config(
        &format!("0.0.0.0:{port}"),
        "embedded_users = [{ username = \"pos\", password = \"${E2E_POS_MQTT_PASSWORD}\" }]",
    ))
    .envs(&[("E2E_POS_MQTT_PASSWORD", "correct horse battery")])
    .start();
    assert_eq!(
        connack(port, "pos-1", None).await,
        Err("NotAuthorized".into())
    );
    assert_eq!(
        connack(port, "pos-1", Some(("pos", "wrong password"))).await,
        Err("BadUserNamePassword".into())
    );
    let (reader, mut eventloop) = client(port, "pos-1", Some(("pos", "correct horse battery")));
    reader
        .subscribe(EVENTS, QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (incoming, error) = run_until_error(&mut eventloop, Duration::from_secs(1)).await;
    assert!(error.is_none(), "{error:?}");
    assert!(
        incoming.iter().any(|p| matches!(p, Incoming::SubAck(_))),
        "{incoming:?}"
    );
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(42, 250_000)).await;
    assert_eq!(r.status, 200, "{}\n{}", r.body, gw.logs());
    let (incoming, error) = run_until_error(&mut eventloop, Duration::from_secs(5)).await;
    assert!(error.is_none(), "{error:?}");
    let payment = incoming.iter().find_map(|p| match p {
        Incoming::Publish(p) if p.topic == EVENTS => {
            serde_json::from_slice::<serde_json::Value>(&p.payload).ok()
        }
        _ => None,
    });
    assert_eq!(
        payment.map(|p| p["amount"].clone()),
        Some(250_000.into()),
        "{incoming:?}\n{}",
        gw.logs()
    );
    // An account reads; it does not publish as the gateway either.
    reader
        .publish(EVENTS, QoS::AtLeastOnce, false, r#"{"amount":50000000}"#)
        .await
        .expect("queue");
    let (incoming, error) = run_until_error(&mut eventloop, Duration::from_secs(5)).await;
    assert!(error.is_some(), "{incoming:?}");
}
