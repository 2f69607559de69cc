//! Secrets never leave the process: with every secret the config can hold
//! set through `${ENV}`, and traffic that touches each (good and bad
//! webhook keys, the Speaker API's credentials, a forward's bearer token, an
//! MQTT password the broker never sees, the admin token), neither the debug
//! log nor anything the admin server answers contains one of them.

use std::process::Command;
use std::time::Duration;

use soundbox_e2e::{
    CountingSink, Gateway, SpeakerApi, free_port, gateway_bin, plugin, post, sepay_webhook,
};

const WEBHOOK_KEY: &str = "whk-7f3a9c1e5b2d4f60";
const SPEAKER_SECRET: &str = "spk-secret-91b2c3d4e5f6";
const POS_TOKEN: &str = "pos-token-0a1b2c3d4e5f";
const MQTT_PASSWORD: &str = "mqtt-pass-6e5d4c3b2a19";
const ADMIN_TOKEN: &str = "adm-token-13579bdf2468ace0";

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_appears_in_logs_or_admin_answers() {
    let api = SpeakerApi::start(free_port(), Some(SPEAKER_SECRET));
    let pos = CountingSink::start();
    // Nothing listens here: the MQTT sink fails to connect and logs why.
    let mqtt_port = free_port();
    let config = format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\n\
         auth = \"apikey\"\napi_key = \"${{SEPAY_WEBHOOK_API_KEY}}\"\n\n\
         [speaker]\n{}client_secret = \"${{SEPAY_SPEAKER_CLIENT_SECRET}}\"\n\n\
         [[route]]\naccount = \"*\"\nspeakers = [\"VNS-SHOP-1\"]\n\n\
         [mqtt]\nbroker = \"mqtt://127.0.0.1:{mqtt_port}\"\nusername = \"shop\"\n\
         password = \"${{MQTT_PASSWORD}}\"\nretry_initial_ms = 50\nretry_max_ms = 200\n\n\
         [[forward]]\nname = \"pos\"\nurl = \"{}\"\n[forward.headers]\n\
         Authorization = \"Bearer ${{POS_TOKEN}}\"\n\n\
         [admin]\ntoken = \"${{ADMIN_TOKEN}}\"\n",
        plugin("sepay_webhook").display(),
        api.speaker_keys(),
        pos.url
    );
    let gw = Gateway::builder(&config)
        .envs(&[
            ("SOUNDBOX_LOG", "debug"),
            ("SEPAY_WEBHOOK_API_KEY", WEBHOOK_KEY),
            ("SEPAY_SPEAKER_CLIENT_SECRET", SPEAKER_SECRET),
            ("POS_TOKEN", POS_TOKEN),
            ("MQTT_PASSWORD", MQTT_PASSWORD),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ])
        .start();

    let hook = gw.url("/hooks/sepay");
    let good = format!("Apikey {WEBHOOK_KEY}");
    let r = post(
        &hook,
        &[("authorization", &good)],
        sepay_webhook(1, 120_000),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // A near miss: the reply and the log say it failed, not what was expected.
    let near = format!("Apikey {WEBHOOK_KEY}x");
    let r = post(&hook, &[("authorization", &near)], sepay_webhook(2, 1_000)).await;
    assert_eq!(r.status, 401);
    let mut answers = vec![r.body];
    assert!(pos.wait_for(1, Duration::from_secs(20)), "{}", gw.logs());
    assert!(
        gw.wait_for_log("announcement sent", Duration::from_secs(20)),
        "{}",
        gw.logs()
    );
    assert!(
        gw.wait_for_log("MQTT connection failed", Duration::from_secs(20)),
        "{}",
        gw.logs()
    );

    // Everything the admin server shows, with the token and without.
    let client = reqwest::Client::new();
    for path in [
        "/",
        "/api/status",
        "/metrics",
        "/api/queue",
        "/api/queue/pos",
        "/readyz",
    ] {
        let url = format!("http://{}{path}", gw.admin_addr);
        for authorized in [true, false] {
            let mut request = client.get(&url);
            if authorized {
                request = request.bearer_auth(ADMIN_TOKEN);
            }
            let response = request.send().await.expect("admin GET");
            answers.push(response.text().await.expect("body"));
        }
    }
    // `check` prints the config it validated.
    let check = Command::new(gateway_bin())
        .args(["check", "--config"])
        .arg(gw.config_path())
        .envs([
            ("SEPAY_WEBHOOK_API_KEY", WEBHOOK_KEY),
            ("SEPAY_SPEAKER_CLIENT_SECRET", SPEAKER_SECRET),
            ("POS_TOKEN", POS_TOKEN),
            ("MQTT_PASSWORD", MQTT_PASSWORD),
            ("ADMIN_TOKEN", ADMIN_TOKEN),
        ])
        .output()
        .expect("check");
    answers.push(String::from_utf8_lossy(&check.stdout).into_owned());
    answers.push(String::from_utf8_lossy(&check.stderr).into_owned());

    let logs = gw.logs();
    assert!(logs.lines().count() > 20, "the log has content: {logs}");
    for secret in [
        WEBHOOK_KEY,
        SPEAKER_SECRET,
        POS_TOKEN,
        MQTT_PASSWORD,
        ADMIN_TOKEN,
    ] {
        assert!(!logs.contains(secret), "`{secret}` is in the log:\n{logs}");
        for answer in &answers {
            assert!(
                !answer.contains(secret),
                "`{secret}` is in an answer:\n{answer}"
            );
        }
    }
}
