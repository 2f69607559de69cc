//! Secure by default, tried as an attacker on the shop's network would: an
//! unsigned webhook on the shipped config, unsigned mode off loopback, a
//! forged log line, a damaged store, and the data dir's permissions.

use std::time::Duration;

use soundbox_e2e::{
    Gateway, free_port, plugin, post, run_cli, sepay_webhook, wait_until, workspace,
};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The shipped `config.toml` without its `[gateway]` table (the harness
/// writes one with free ports), the plugin by absolute path and the broker
/// on a free port.
fn shipped_config() -> String {
    let shipped = std::fs::read_to_string(workspace().join("config.toml")).expect("config.toml");
    let start = shipped.find("[gateway]").expect("a [gateway] table");
    let end = start
        + shipped[start + 1..]
            .find("\n[")
            .expect("a table after [gateway]")
        + 1;
    format!("{}{}", &shipped[..start], &shipped[end..])
        .replace(
            "plugins/target/wasm32-wasip2/release/sepay_webhook.wasm",
            &plugin("sepay_webhook").display().to_string(),
        )
        .replace("127.0.0.1:1883", &format!("127.0.0.1:{}", free_port()))
}

/// The attack from the review: an unsigned SePay body saying 5,000,000 đ,
/// posted to the gateway on its shipped config, must not be announced; the
/// README's sample with the demo key is.
#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_config_refuses_an_unsigned_payment() {
    let gw = Gateway::start(&shipped_config());
    let hook = gw.url("/hooks/sepay");

    let forged = post(&hook, &[], sepay_webhook(1, 5_000_000)).await;
    assert_eq!(forged.status, 401, "an unsigned webhook: {}", forged.body);
    let wrong = post(
        &hook,
        &[("authorization", "Apikey guessed")],
        sepay_webhook(2, 5_000_000),
    )
    .await;
    assert_eq!(wrong.status, 401, "a wrong key: {}", wrong.body);

    let signed = post(
        &hook,
        &[("authorization", "Apikey demo-key-change-me")],
        sepay_webhook(3, 150_000),
    )
    .await;
    assert_eq!(signed.status, 200, "the README's sample: {}", signed.body);
    let sim = gw.simulator();
    let mut plays = Vec::new();
    wait_until(Duration::from_secs(20), async || {
        plays = sim.plays().await;
        !plays.is_empty()
    })
    .await;
    let amounts: Vec<u64> = plays.iter().filter_map(|p| p["amount"].as_u64()).collect();
    assert_eq!(amounts, [150_000], "only the signed payment is spoken");
    // The refused ones burnt no dedupe key: the real payment 1 still counts.
    let real = post(
        &hook,
        &[("authorization", "Apikey demo-key-change-me")],
        sepay_webhook(1, 5_000_000),
    )
    .await;
    assert_eq!(real.status, 200, "{}", real.body);
    assert!(
        gw.wait_for_log("\"amount\":5000000", Duration::from_secs(10)),
        "the real payment with the forged one's id is logged"
    );
}

fn sepay_with(settings: &str) -> String {
    format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\n{settings}\n",
        plugin("sepay_webhook").display()
    )
}

/// `auth = "none"` alone, or no auth at all, is a config mistake: every
/// request is refused (500, the connector flagged), nothing is logged.
#[tokio::test(flavor = "multi_thread")]
async fn unsigned_mode_must_be_said_in_words() {
    for settings in [
        "auth = \"none\"",
        "",
        "auth = \"none\"\nallow_unsigned = false",
    ] {
        let gw = Gateway::start(&sepay_with(settings));
        let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(1, 5_000_000)).await;
        assert_eq!(r.status, 500, "[{settings}]: {}", r.body);
        assert!(
            !gw.logs().contains("balance change logged"),
            "[{settings}] logged a payment"
        );
    }

    let gw = Gateway::start(&sepay_with("auth = \"none\"\nallow_unsigned = true"));
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(1, 50_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(
        gw.logs().contains("accepts unsigned webhooks"),
        "a warning at start while unsigned mode is on"
    );
    let status = gw.api_status().await;
    assert!(
        status["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().any(|w| w
                .as_str()
                .is_some_and(|w| w.contains("accepts unsigned webhooks")))),
        "the status page warns too: {}",
        status["warnings"]
    );
}

/// `allow_unsigned` with a listener the network can reach is refused at
/// load, naming the file, line and key.
#[test]
fn unsigned_mode_is_refused_off_loopback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.toml");
    let config = format!(
        "[gateway]\nlisten = \"0.0.0.0:8080\"\n{}",
        sepay_with("auth = \"none\"\nallow_unsigned = true")
    );
    std::fs::write(&path, config).expect("write");
    let out = run_cli(&["check", "--config", path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("shop.toml:8:1: connector[0].config.allow_unsigned: unsigned webhooks are allowed only while gateway.listen is on loopback"),
        "{stderr}"
    );
}

/// The forged log line from the review: a webhook whose field carries a
/// newline, a fake `balance change logged` line and an ESC sequence. The
/// SePay plugin refuses the body and quotes the field in its reason, which
/// the gateway logs; the text log (what `journalctl` shows) keeps it on that
/// line, escaped.
#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_cannot_forge_a_log_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (listen, admin) = (free_port(), free_port());
    let config = format!(
        "[gateway]\nlisten = \"127.0.0.1:{listen}\"\nadmin_listen = \"127.0.0.1:{admin}\"\n\
         data_dir = \"data\"\n\n[plugins]\nunsigned = \"allowed for local development\"\n\n{}",
        sepay_with("auth = \"none\"\nallow_unsigned = true")
    );
    let path = dir.path().join("config.toml");
    std::fs::write(&path, config).expect("write config");
    let log_path = dir.path().join("gateway.log");
    let mut child = std::process::Command::new(soundbox_e2e::gateway_bin())
        .args(["--log-format", "text", "run", "--config"])
        .arg(&path)
        .env("SOUNDBOX_LOG", "info")
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn()
        .expect("spawn gateway");
    let healthz = format!("http://127.0.0.1:{admin}/healthz");
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while reqwest::get(&healthz).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the gateway did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    const FORGED: &str = "\n2026-12-03T03:00:00.000000Z  INFO soundbox_gateway::ingress: \
         balance change logged connector=sepay amount=99999999\u{1b}[2K";
    let mut body: serde_json::Value =
        serde_json::from_str(&sepay_webhook(9, 10_000)).expect("sample");
    body["transferType"] = format!("in{FORGED}").into();
    let url = format!("http://127.0.0.1:{listen}/hooks/sepay");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let r = loop {
        let r = post(&url, &[], body.to_string()).await;
        // Ingress may answer a moment after the admin server.
        if r.status == 400 || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(r.status, 400, "{}", r.body);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&log_path).expect("log");
        if log.contains("amount=99999999") || std::time::Instant::now() > deadline {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let _ = child.kill();
    let _ = child.wait();
    let quoting: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("amount=99999999"))
        .collect();
    assert_eq!(quoting.len(), 1, "the field is logged once:\n{log}");
    assert!(
        quoting[0].contains("transferType") && quoting[0].contains(r"in\n2026-12-03T03:00:00"),
        "on the refusal's own line, escaped: {}",
        quoting[0]
    );
    assert!(!log.contains('\u{1b}'), "no raw ESC in the log:\n{log}");
}
