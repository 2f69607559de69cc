//! What a user sees for each bad config: file, line, key and a reason.

mod mqtt;

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
