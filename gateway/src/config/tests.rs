//! What a user sees for each bad config: file, line, key and a reason.

use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("shop.toml"), text)
}

fn error(text: &str) -> String {
    parse(text)
        .expect_err("config should be rejected")
        .to_string()
}

#[test]
fn empty_config_gets_defaults() {
    let config = parse("").expect("empty config is valid");
    assert_eq!(config.gateway.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(config.gateway.data_dir, PathBuf::from("./data"));
    assert_eq!(config.limits.memory_bytes, 32 << 20);
    assert!(config.connectors.is_empty());
}

#[test]
fn unknown_key_names_file_line_and_key() {
    let e = error("[gateway]\nlisten = \"127.0.0.1:9\"\nlisen = \"x\"\n");
    assert!(
        e.starts_with("shop.toml:3:1: gateway.lisen: unknown field `lisen`"),
        "{e}"
    );
}

#[test]
fn unknown_table_is_rejected() {
    let e = error("[gatway]\nid = \"a\"\n");
    assert!(e.starts_with("shop.toml:1:"), "{e}");
    assert!(e.contains("unknown field `gatway`"), "{e}");
}

#[test]
fn syntax_error_is_located() {
    let e = error("[gateway]\nid = \"shop\n");
    assert!(e.starts_with("shop.toml:2:"), "{e}");
}

#[test]
fn bad_listen_address() {
    let e = error("[gateway]\n\nlisten = \"localhost\"\n");
    assert!(
        e.starts_with("shop.toml:3:10: gateway.listen: `localhost` is not an address"),
        "{e}"
    );
}

#[test]
fn wrong_type_is_located() {
    let e = error("[limits]\nmemory_mb = \"big\"\n");
    assert!(e.starts_with("shop.toml:2:13: limits.memory_mb:"), "{e}");
    let e = error("[limits]\ncpu_budget_ms = 0\n");
    assert!(
        e.contains("limits.cpu_budget_ms: must be greater than 0"),
        "{e}"
    );
}

#[test]
fn connector_errors_name_the_index_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let wasm = dir.path().join("p.wasm");
    std::fs::write(&wasm, b"").expect("write");
    let path = dir.path().join("c.toml");
    let ok = "[[connector]]\nname = \"sepay\"\nplugin = \"p.wasm\"\n";
    let config = Config::parse(&path, ok).expect("valid");
    assert_eq!(config.connectors[0].plugin, wasm);

    let missing = "[[connector]]\nname = \"sepay\"\nplugin = \"nope.wasm\"\n";
    let e = Config::parse(&path, missing)
        .expect_err("missing plugin")
        .to_string();
    assert!(
        e.contains("c.toml:3:10: connector[0].plugin: no plugin file at"),
        "{e}"
    );

    let dup = format!("{ok}{ok}");
    let e = Config::parse(&path, &dup)
        .expect_err("duplicate")
        .to_string();
    assert!(
        e.contains(":5:8: connector[1].name: `sepay` is used by another connector"),
        "{e}"
    );

    let bad_name = "[[connector]]\nname = \"Se Pay\"\nplugin = \"p.wasm\"\n";
    let e = Config::parse(&path, bad_name)
        .expect_err("bad name")
        .to_string();
    assert!(e.contains("connector[0].name: use 1-64 lower-case"), "{e}");

    let host =
        "[[connector]]\nname = \"a\"\nplugin = \"p.wasm\"\nallowed_hosts = [\"https://x.vn\"]\n";
    let e = Config::parse(&path, host)
        .expect_err("bad host")
        .to_string();
    assert!(e.contains(":4:18: connector[0].allowed_hosts[0]:"), "{e}");

    let hosts = "[[connector]]\nname = \"a\"\nplugin = \"p.wasm\"\n\
                 allowed_hosts = [\"[::1]:8080\", \"LOCALHOST:9000\", \"Api.X.vn.\", \"[::1]\"]\n";
    let config = Config::parse(&path, hosts).expect("host:port entries");
    assert_eq!(
        config.connectors[0].allowed_hosts,
        ["[::1]:8080", "localhost:9000", "api.x.vn", "[::1]"]
    );
    let port = "[[connector]]\nname = \"a\"\nplugin = \"p.wasm\"\n\
                allowed_hosts = [\"x.vn\", \"localhost:admin\"]\n";
    let e = Config::parse(&path, port)
        .expect_err("bad port")
        .to_string();
    assert!(
        e.contains(":4:26: connector[0].allowed_hosts[1]: bad port `admin`"),
        "{e}"
    );
}

#[test]
fn env_is_expanded_in_plugin_settings_and_missing_env_is_located() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.wasm"), b"").expect("write");
    let path = dir.path().join("c.toml");
    // PATH is set in every test environment.
    let text = "[[connector]]\nname = \"a\"\nplugin = \"p.wasm\"\n[connector.config]\nk = \"${PATH}\"\nn = 3\n";
    let config = Config::parse(&path, text).expect("valid");
    let k = config.connectors[0]
        .settings
        .get("k")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    assert_eq!(k, std::env::var("PATH").ok());
    let text = "[[connector]]\nname = \"a\"\nplugin = \"p.wasm\"\n[connector.config]\nk = \"${SOUNDBOX_SURELY_UNSET_VAR}\"\n";
    let e = Config::parse(&path, text).expect_err("unset").to_string();
    assert!(
        e.contains(
            "connector[0].config: environment variable SOUNDBOX_SURELY_UNSET_VAR is not set"
        ),
        "{e}"
    );
}

#[test]
fn allow_unsigned_only_on_a_loopback_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.wasm"), b"").expect("write");
    let path = dir.path().join("c.toml");
    let connector =
        "[[connector]]\nname = \"a\"\nplugin = \"p.wasm\"\n[connector.config]\nauth = \"none\"\n";
    for listen in ["127.0.0.1:8080", "[::1]:8080"] {
        let text = format!("[gateway]\nlisten = \"{listen}\"\n{connector}allow_unsigned = true\n");
        let config = Config::parse(&path, &text).expect("loopback");
        assert!(config.connectors[0].allows_unsigned());
    }
    for listen in ["0.0.0.0:8080", "192.168.1.5:8080", "[::]:8080"] {
        let text = format!("[gateway]\nlisten = \"{listen}\"\n{connector}allow_unsigned = true\n");
        let e = Config::parse(&path, &text).expect_err(listen).to_string();
        assert!(
            e.contains(":8:1: connector[0].config.allow_unsigned: unsigned webhooks are allowed only while gateway.listen is on loopback"),
            "{e}"
        );
    }
    let text = format!("{connector}allow_unsigned = \"yes\"\n");
    let e = Config::parse(&path, &text)
        .expect_err("not a bool")
        .to_string();
    assert!(
        e.contains("connector[0].config.allow_unsigned: expected true or false"),
        "{e}"
    );
    let text = format!("{connector}allow_unsigned = false\n");
    let config = Config::parse(&path, &text).expect("false");
    assert!(!config.connectors[0].allows_unsigned());
}

#[test]
fn debug_output_hides_plugin_settings_and_forward_url_secrets() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("p.wasm"), b"").expect("write");
    let path = dir.path().join("c.toml");
    let text = "[[connector]]\nname = \"a\"\nplugin = \"p.wasm\"\n[connector.config]\n\
                api_key = \"sk-live-123\"\n\n\
                [[forward]]\nname = \"pos\"\nurl = \"https://user:pw-456@pos.example/hook?token=tk-789#frag\"\n\
                [forward.headers]\nAuthorization = \"Bearer hdr-000\"\n";
    let config = Config::parse(&path, text).expect("valid");
    let shown = format!("{config:?}");
    for secret in ["sk-live-123", "pw-456", "tk-789", "hdr-000", "user:"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(shown.contains("api_key"), "keys stay visible: {shown}");
    assert!(
        shown.contains("https://[redacted]@pos.example/hook?[redacted]#[redacted]"),
        "{shown}"
    );
}

#[test]
fn secret_is_redacted() {
    let s = Secret::new("hunter2");
    assert_eq!(format!("{s:?} {s}"), "[redacted] [redacted]");
    assert_eq!(s.expose(), "hunter2");
}

#[test]
fn speaker_routes_forwards_and_log_are_checked() {
    let e = error("[speaker]\nmax_age_secs = 60\n");
    assert!(
        e.starts_with("shop.toml:1:1: speaker.client_id: required"),
        "{e}"
    );
    let e = error("[[route]]\naccount = \"1\"\nspeakers = [\"A\"]\n");
    assert!(
        e.contains("route[0].account: routes need a [speaker] section"),
        "{e}"
    );
    let e = error("[speaker]\nsimulator = true\n[[route]]\naccount = \"1\"\nspeakers = []\n");
    assert!(e.starts_with("shop.toml:5:12: route[0].speakers:"), "{e}");
    let e = error("[[forward]]\nname = \"speaker\"\nurl = \"http://x\"\n");
    assert!(e.contains("forward[0].name: `speaker` is already"), "{e}");
    let e = error("[[forward]]\nname = \"pos\"\nurl = \"ftp://x\"\n");
    assert!(e.contains("forward[0].url: expected an http"), "{e}");
    let e = error("[log]\nmax_disk_mb = 0\n");
    assert!(
        e.starts_with("shop.toml:2:15: log.max_disk_mb: must be greater than 0"),
        "{e}"
    );

    let config = parse(
        "[speaker]\nsimulator = true\n[speaker.sim_faults]\nerror_rate = 0.3\n\
         [[speaker.sim_devices]]\nhardware_id = \"VNS1\"\npaired = true\n\
         [[route]]\naccount = \"*\"\nspeakers = [\"VNS1\"]\nmin_amount = 5000\n",
    )
    .expect("valid");
    let speaker = config.speaker.expect("speaker");
    let SpeakerApi::Simulator(SimulatorConfig { devices, faults }) = speaker.api.clone() else {
        panic!("simulated");
    };
    assert_eq!(devices[0].hardware_id, "VNS1");
    assert!(devices[0].online, "online by default");
    assert_eq!(faults.error_rate, 0.3);
    assert_eq!(speaker.max_age, Duration::from_secs(300));
    assert_eq!(speaker.max_calls_per_sec, None, "unpaced by default");
    assert_eq!(config.routes[0].min_amount, 5000);
}

#[test]
fn the_speaker_call_rate_is_positive() {
    let e = error(
        "[speaker]
simulator = true
max_calls_per_sec = 0
",
    );
    assert!(
        e.starts_with("shop.toml:3:21: speaker.max_calls_per_sec: must be greater than 0"),
        "{e}"
    );
    let config = parse(
        "[speaker]
simulator = true
max_calls_per_sec = 3
",
    )
    .expect("valid");
    let rate = config.speaker.and_then(|s| s.max_calls_per_sec);
    assert_eq!(rate.map(|r| r.get()), Some(3));
}

#[test]
fn speaker_credentials_come_from_the_environment_and_stay_secret() {
    let config = parse(
        "[speaker]\nclient_id = \"partner\"\nclient_secret = \"${SOUNDBOX_TEST_SPEAKER_SECRET_UNSET}\"\n",
    );
    let e = config.expect_err("unset variable").to_string();
    assert!(
        e.contains("speaker.client_secret") && e.contains("SOUNDBOX_TEST_SPEAKER_SECRET_UNSET"),
        "{e}"
    );
    let config =
        parse("[speaker]\nclient_id = \"partner\"\nclient_secret = \"hunter2\"\n").expect("valid");
    let speaker = config.speaker.expect("speaker");
    assert!(!format!("{speaker:?}").contains("hunter2"));
    let SpeakerApi::Remote { base_url, .. } = speaker.api else {
        panic!("a remote Speaker API");
    };
    assert_eq!(base_url, "https://speaker-api.sepay.vn/devices/v1");
}

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
fn admin_defaults_and_a_short_token_is_refused() {
    let config = parse("").expect("valid");
    assert_eq!(config.admin, AdminConfig::default());
    assert_eq!(config.admin.stall_after, Duration::from_secs(120));

    let config = parse(
        "[admin]\nstall_after_secs = 30\nconnector_failures = 2\ntoken = \"0123456789abcdef\"\n",
    )
    .expect("valid");
    assert_eq!(config.admin.stall_after, Duration::from_secs(30));
    assert_eq!(config.admin.connector_failures, 2);
    assert_eq!(
        config.admin.token.as_ref().map(Secret::expose),
        Some("0123456789abcdef")
    );
    assert!(!format!("{:?}", config.admin).contains("0123456789abcdef"));

    let e = error("[admin]\ntoken = \"short\"\n");
    assert!(e.starts_with("shop.toml:2:9: admin.token:"), "{e}");
    let e = error("[admin]\nstall_after_secs = 0\n");
    assert!(e.starts_with("shop.toml:2:"), "{e}");
    assert!(e.contains("admin.stall_after_secs"), "{e}");
}

#[test]
fn sizes_and_durations_too_large_for_their_unit_are_errors() {
    // Each wrapped (or, in debug builds, panicked) when converted to bytes or seconds.
    for (text, key) in [
        (
            "[log]\nkeep_settled_hours = 9223372036854775807\n",
            "log.keep_settled_hours",
        ),
        (
            "[log]\ndedupe_retention_days = 9223372036854775807\n",
            "log.dedupe_retention_days",
        ),
        ("[log]\nmax_disk_mb = 17592186044416\n", "log.max_disk_mb"),
        (
            "[log]\nmin_free_disk_mb = 17592186044416\n",
            "log.min_free_disk_mb",
        ),
        ("[log]\ncache_mb = 17592186044416\n", "log.cache_mb"),
        ("[limits]\nmemory_mb = 17592186044416\n", "limits.memory_mb"),
    ] {
        let e = error(text);
        assert!(e.starts_with("shop.toml:2:"), "{e}");
        assert!(
            e.contains(&format!("{key}: ")) && e.contains("too large"),
            "{e}"
        );
    }
    let config =
        parse("[log]\nkeep_settled_hours = 0\nmin_free_disk_mb = 0\n").expect("zero is allowed");
    assert!(config.log.keep_settled.is_zero());
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

#[test]
fn plugins_trust_no_key_and_refuse_unsigned_by_default() {
    let config = parse("").expect("valid");
    assert!(config.plugins.trusted_keys.is_empty());
    assert!(!config.plugins.allow_unsigned);
    let config = parse("[plugins]\nunsigned = \"allowed for local development\"\n").expect("valid");
    assert!(config.plugins.allow_unsigned);
}

#[test]
fn plugins_unsigned_takes_only_the_exact_words() {
    for words in ["\"yes\"", "\"Allowed for local development\"", "\"\""] {
        let e = error(&format!("[plugins]\nunsigned = {words}\n"));
        assert!(e.starts_with("shop.toml:2:12: plugins.unsigned:"), "{e}");
        assert!(e.contains("allowed for local development"), "{e}");
    }
    let e = error("[plugins]\nunsigned = true\n");
    assert!(e.starts_with("shop.toml:2:"), "{e}");
}

#[test]
fn plugins_trusted_keys_are_key_lines_or_pub_files_beside_the_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = trusted_key::testing::write_key(dir.path(), "acme");
    std::fs::copy(&keys.public_key, dir.path().join("acme-copy.pub")).expect("copy");
    let text = format!(
        "[plugins]\ntrusted_keys = [\"{}\", \"acme-copy.pub\"]\n",
        keys.public_key_line
    );
    let config = Config::parse(&dir.path().join("shop.toml"), &text).expect("valid");
    assert_eq!(config.plugins.trusted_keys.len(), 2);
    assert_eq!(
        config.plugins.trusted_keys[0],
        config.plugins.trusted_keys[1]
    );

    let e = error("[plugins]\ntrusted_keys = [\"missing.pub\"]\n");
    assert!(
        e.starts_with("shop.toml:2:17: plugins.trusted_keys[0]:"),
        "{e}"
    );
    let e = error("[plugins]\ntrusted_keys = [\"RWQnot-a-key\"]\n");
    assert!(
        e.starts_with("shop.toml:2:17: plugins.trusted_keys[0]:"),
        "{e}"
    );
    assert!(e.contains("not a minisign public key"), "{e}");
}
