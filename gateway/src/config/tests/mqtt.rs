//! `[[mqtt]]` sinks and `[connector.mqtt]` subscriptions: what a user sees
//! for each bad entry.

use super::*;

#[test]
fn mqtt_defaults_to_the_embedded_broker_on_loopback() {
    let config = parse("[gateway]\nid = \"shop-9\"\n[mqtt]\n").expect("valid");
    let mqtt = config.mqtt.into_iter().next().expect("mqtt");
    assert_eq!(
        mqtt.broker,
        MqttBroker::Embedded {
            listen: "127.0.0.1:1883".parse().expect("addr")
        }
    );
    assert_eq!(mqtt.topic_prefix, "soundbox");
    assert_eq!(mqtt.client_id, "soundbox-shop-9");
    assert_eq!(mqtt.window, 64);
    assert!(parse("").expect("valid").mqtt.is_empty());
}

#[test]
fn mqtt_external_broker_with_tls_and_credentials() {
    // PATH is set in every test environment.
    let config = parse(
        "[mqtt]\nbroker = \"mqtts://mqtt.chain.vn\"\nusername = \"shop-9\"\n\
         password = \"${PATH}\"\ntopic_prefix = \"chain/hanoi\"\n",
    )
    .expect("valid");
    let path = std::env::var("PATH").expect("PATH");
    let mqtt = config.mqtt.into_iter().next().expect("mqtt");
    assert_eq!(
        mqtt.broker,
        MqttBroker::External(Endpoint {
            host: "mqtt.chain.vn".into(),
            port: 8883,
            tls: Some(MqttTls::default())
        })
    );
    assert_eq!(
        mqtt.password.as_ref().map(Secret::expose),
        Some(path.as_str())
    );
    assert!(!format!("{mqtt:?}").contains(&path));
    let plain = parse("[mqtt]\nbroker = \"mqtt://10.0.0.5\"\n").expect("valid");
    assert!(matches!(
        plain.mqtt.into_iter().next().expect("mqtt").broker,
        MqttBroker::External(Endpoint {
            port: 1883,
            tls: None,
            ..
        })
    ));
}

#[test]
fn mqtt_mistakes_are_located() {
    let cases = [
        (
            "[mqtt]\nbroker = \"http://x\"\n",
            "shop.toml:2:10: mqtt.broker: `http://x`: unknown scheme http",
        ),
        (
            "[mqtt]\nbroker = \"mqtt://\"\n",
            "shop.toml:2:10: mqtt.broker",
        ),
        (
            "[mqtt]\nembedded_listen = \"1883\"\n",
            "shop.toml:2:19: mqtt.embedded_listen",
        ),
        (
            "[mqtt]\nusername = \"a\"\n",
            "mqtt.username: the embedded broker has no TLS, and the gateway logs into it",
        ),
        (
            "[mqtt]\nbroker = \"mqtt://h\"\npassword = \"p\"\n",
            "shop.toml:3:12: mqtt.password: a password needs a username",
        ),
        (
            "[mqtt]\nbroker = \"mqtt://h\"\nca_file = \"ca.pem\"\n",
            "shop.toml:3:11: mqtt.ca_file: only used with an mqtts:// broker",
        ),
        (
            "[mqtt]\nbroker = \"mqtts://h\"\nca_file = \"missing.pem\"\n",
            "mqtt.ca_file: no file at ./missing.pem",
        ),
        (
            "[mqtt]\ntopic_prefix = \"a/#\"\n",
            "shop.toml:2:16: mqtt.topic_prefix",
        ),
        (
            "[mqtt]\nwindow = 5000\n",
            "shop.toml:2:10: mqtt.window: at most 1000",
        ),
        (
            "[mqtt]\nwindow = 0\n",
            "mqtt.window: must be greater than 0",
        ),
        (
            "[mqtt]\nbrokr = \"embedded\"\n",
            "shop.toml:2:1: mqtt.brokr: unknown field `brokr`",
        ),
    ];
    for (text, expected) in cases {
        let e = error(text);
        assert!(
            e.contains(expected),
            "{text:?}\n  got: {e}\n want: {expected}"
        );
    }
}

#[test]
fn an_embedded_broker_off_loopback_needs_accounts() {
    let e = parse("[mqtt]\nembedded_listen = \"0.0.0.0:1883\"\n")
        .expect_err("no accounts")
        .to_string();
    let expected = "shop.toml:2:19: mqtt.embedded_listen: 0.0.0.0:1883 is reachable";
    assert!(
        e.starts_with(expected) && e.contains("[[mqtt.embedded_users]]"),
        "{e}"
    );
    let config = parse(
        "[mqtt]\nembedded_listen = \"0.0.0.0:1883\"\n\
         embedded_users = [{ username = \"pos\", password = \"${PATH}\" }]\n",
    )
    .expect("valid");
    let mqtt = config.mqtt.into_iter().next().expect("mqtt");
    assert_eq!(mqtt.embedded_users.len(), 1);
    assert_eq!(mqtt.embedded_users[0].username, "pos");
    let path = std::env::var("PATH").expect("PATH");
    assert!(
        !format!("{mqtt:?}").contains(&path),
        "the password stays out of Debug"
    );
    let cases = [
        (
            "[mqtt]\n[[mqtt.embedded_users]]\nusername = \"pos\"\npassword = \"short\"\n",
            "shop.toml:4:12: mqtt.embedded_users[0].password: use 8-1024 characters",
        ),
        (
            "[mqtt]\nembedded_users = [{ username = \"a\", password = \"12345678\" }, \
             { username = \"a\", password = \"12345678\" }]\n",
            "mqtt.embedded_users[1].username: `a` is listed twice",
        ),
        (
            "[mqtt]\nbroker = \"mqtt://h\"\nembedded_users = []\n",
            "shop.toml:3:18: mqtt.embedded_users: only used with broker = \"embedded\"",
        ),
    ];
    for (text, expected) in cases {
        let e = parse(text).expect_err(text).to_string();
        assert!(e.contains(expected), "{text}\n{e}");
    }
}

#[test]
fn several_mqtt_sinks_with_names_client_certificates_and_a_relay_table() {
    let dir = tempfile::tempdir().expect("tempdir");
    for f in ["ca.pem", "shop.crt", "shop.key"] {
        std::fs::write(dir.path().join(f), "x").expect("write");
    }
    let text = "[gateway]\nid = \"relay\"\n\
        [[mqtt]]\n\
        [[mqtt]]\nname = \"chain\"\nbroker = \"mqtts://nats.chain.vn\"\n\
        ca_file = \"ca.pem\"\ncert_file = \"shop.crt\"\nkey_file = \"shop.key\"\n\
        topic_prefix = \"chain\"\nhealth_every_secs = 30\n\
        [mqtt.relay]\ntopic = \"chain/{shop}/payments\"\n\
        [mqtt.relay.shops]\n\"0123456789\" = \"shop-1\"\n\"999\" = \"shop-2\"\n";
    let config = Config::parse(&dir.path().join("gw.toml"), text).expect("valid");
    assert_eq!(config.mqtt.len(), 2);
    let (local, chain) = (&config.mqtt[0], &config.mqtt[1]);
    assert_eq!(local.sink_name(), "mqtt");
    assert_eq!(local.client_id, "soundbox-relay");
    assert_eq!(chain.sink_name(), "mqtt:chain");
    assert_eq!(chain.client_id, "soundbox-relay-chain");
    assert_eq!(chain.health_every, Duration::from_secs(30));
    let MqttBroker::External(endpoint) = &chain.broker else {
        panic!("external broker expected");
    };
    let tls = endpoint.tls.as_ref().expect("tls");
    assert_eq!(tls.ca_file, Some(dir.path().join("ca.pem")));
    let identity = tls.identity.as_ref().expect("client certificate");
    assert_eq!(identity.cert_file, dir.path().join("shop.crt"));
    assert_eq!(identity.key_file, dir.path().join("shop.key"));
    let relay = chain.relay.as_ref().expect("relay");
    assert_eq!(
        relay.topic_for("0123456789").as_deref(),
        Some("chain/shop-1/payments")
    );
    assert_eq!(relay.topic_for("555"), None);
    assert_eq!(
        config
            .mqtt
            .iter()
            .map(MqttConfig::sink_name)
            .collect::<Vec<_>>(),
        vec!["mqtt".to_string(), "mqtt:chain".to_string()]
    );
}

#[test]
fn mqtt_sink_mistakes_are_located() {
    let cases = [
        (
            "[[mqtt]]\n[[mqtt]]\n",
            "shop.toml:2:1: mqtt[1].name: only one [[mqtt]] may go without a name",
        ),
        (
            "[[mqtt]]\nname = \"a\"\n[[mqtt]]\nname = \"a\"\nbroker = \"mqtt://h\"\n",
            "shop.toml:4:8: mqtt[1].name: `a` names another [[mqtt]] too",
        ),
        (
            "[[mqtt]]\nname = \"Chain!\"\n",
            "shop.toml:2:8: mqtt[0].name: use 1-64 lower-case letters",
        ),
        (
            "[[mqtt]]\n[[mqtt]]\nname = \"b\"\n",
            "mqtt[1].broker: only one [[mqtt]] may use the embedded broker",
        ),
        (
            "[[mqtt]]\nbroker = \"mqtt://h\"\n[[mqtt]]\nname = \"b\"\nbroker = \"mqtt://h\"\nclient_id = \"soundbox-gateway\"\n",
            "shop.toml:6:13: mqtt[1].client_id: `soundbox-gateway` is also the client id of sink mqtt",
        ),
        (
            "[[mqtt]]\nbroker = \"mqtt://h\"\ncert_file = \"c.pem\"\n",
            "shop.toml:3:13: mqtt[0].cert_file: only used with an mqtts:// broker",
        ),
        (
            "[[mqtt]]\ncert_file = \"c.pem\"\n",
            "mqtt[0].cert_file: the embedded broker has no TLS",
        ),
        (
            "[[mqtt]]\nbroker = \"mqtts://h\"\ncert_file = \"Cargo.toml\"\n",
            "mqtt[0].key_file: cert_file needs its key_file",
        ),
        (
            "[[mqtt]]\nbroker = \"mqtt://h\"\n[mqtt.relay]\ntopic = \"chain/payments\"\n",
            "shop.toml:4:9: mqtt[0].relay.topic: a topic with {shop} once",
        ),
        (
            "[[mqtt]]\nbroker = \"mqtt://h\"\n[mqtt.relay]\ntopic = \"c/{shop}/p\"\n",
            "mqtt[0].relay.shops: list which shop owns each account",
        ),
        (
            "[[mqtt]]\nbroker = \"mqtt://h\"\n[mqtt.relay]\ntopic = \"c/{shop}/p\"\n[mqtt.relay.shops]\n\"1\" = \"a/b\"\n",
            "shop.toml:6:7: mqtt[0].relay.shops.1: a shop id",
        ),
        (
            "[[mqtt]]\nhealth_every_secs = 0\n",
            "mqtt[0].health_every_secs: must be greater than 0",
        ),
    ];
    for (text, expected) in cases {
        let e = error(text);
        assert!(e.contains(expected), "{text}\n{e}");
    }
}

#[test]
fn a_connector_may_take_its_input_from_an_mqtt_subscription() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.wasm"), "x").expect("write");
    let connector = "[gateway]\nid = \"shop-1\"\n\
        [[connector]]\nname = \"chain\"\nplugin = \"p.wasm\"\n[connector.mqtt]\n";
    let parse_in =
        |extra: &str| Config::parse(&dir.path().join("gw.toml"), &format!("{connector}{extra}"));
    let config = parse_in("broker = \"mqtt://nats:1883\"\ntopic = \"chain/shop-1/payments\"\n")
        .expect("valid");
    let s = config.connectors[0]
        .subscription
        .as_ref()
        .expect("subscription");
    assert_eq!(s.broker.to_string(), "mqtt://nats:1883");
    assert_eq!(s.topic, "chain/shop-1/payments");
    assert_eq!(s.client_id, "soundbox-shop-1-in-chain");
    let cases = [
        (
            "topic = \"x\"\n",
            "gw.toml:6:1: connector: missing field `broker`",
        ),
        (
            "broker = \"mqtt://h\"\ntopic = \"a/#/b\"\n",
            "gw.toml:8:9: connector[0].mqtt.topic: a topic filter",
        ),
        (
            "broker = \"mqtt://h\"\ntopic = \"a\"\nbogus = 1\n",
            "gw.toml:9:1: connector.mqtt.bogus: unknown field `bogus`",
        ),
        (
            "broker = \"mqtt://h\"\ntopic = \"a\"\nclient_id = \"soundbox-shop-1\"\n[[mqtt]]\nbroker = \"mqtt://h\"\n",
            "connector[0].mqtt.client_id: `soundbox-shop-1` is the client id of sink mqtt",
        ),
    ];
    for (extra, expected) in cases {
        let e = parse_in(extra).expect_err(extra).to_string();
        assert!(e.contains(expected), "{extra}\n{e}");
    }
}
