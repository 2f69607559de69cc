//! The admin server of the real binary: `/readyz` following a Speaker API
//! outage, `/metrics` as Prometheus text, `/api/status`, the bearer token,
//! and the status page as a real browser renders it.

use std::process::{Command, Stdio};
use std::time::Duration;

use soundbox_e2e::{Gateway, SpeakerApi, admin, free_port, plugin, post, sepay_webhook};

/// The SePay connector's API key, and the header that carries it: the
/// status page's verdict must be green, and unsigned mode is a warning.
const KEY: &str = "admin-test-key";
const SIGNED: &[(&str, &str)] = &[("authorization", "Apikey admin-test-key")];

fn config(api: &SpeakerApi, admin: &str) -> String {
    format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\napi_key = \"{KEY}\"\n\n\
         [speaker]\n{}client_secret = \"sim-secret\"\n\
         retry_initial_ms = 50\nretry_max_ms = 300\ntimeout_ms = 1000\n\n\
         [[route]]\naccount = \"*\"\nspeakers = [\"VNS-SHOP-1\"]\n\n\
         [admin]\nstall_after_secs = 2\n{admin}\n",
        plugin("sepay_webhook").display(),
        api.speaker_keys()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn readyz_fails_while_the_speaker_api_is_down_and_recovers_after() {
    let api_port = free_port();
    let mut api = SpeakerApi::start(api_port, None);
    let gw = Gateway::start(&config(&api, ""));
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    let (code, body) = gw.wait_ready(200, Duration::from_secs(10)).await;
    assert_eq!(code, 200, "{body}");

    // The API goes away; a payment arrives and cannot be announced.
    api.stop();
    let r = post(&gw.url("/hooks/sepay"), SIGNED, sepay_webhook(1, 50_000)).await;
    assert_eq!(r.status, 200, "stored while the API is down: {}", r.body);
    // Still ready within the threshold (2 s): a blip is no alarm.
    let (code, _) = gw.admin_get("/readyz").await;
    assert_eq!(code, 200, "not unready before the threshold");
    let (code, body) = gw.wait_ready(503, Duration::from_secs(15)).await;
    assert_eq!(
        code, 503,
        "unready once the outage outlasts the threshold: {body}"
    );
    let json: serde_json::Value = serde_json::from_str(&body).expect("json");
    let problems = json["problems"].to_string();
    // The speaker's lane is the sink that cannot deliver (the API is down,
    // not the speaker: its lane is named, not the speaker as offline).
    assert!(problems.contains("sink `speaker:VNS-SHOP-1`"), "{problems}");

    // The status API says the same, and the payment waits.
    let status = gw.api_status().await;
    assert_eq!(status["ready"], false);
    let speaker = admin::sink(&status, "speaker:VNS-SHOP-1").expect("the speaker's lane");
    assert_eq!(speaker["pending"], 1, "{speaker}");
    assert!(speaker["failing_since_ms"].is_number(), "{speaker}");

    // The API returns (a fresh simulator: the gateway's token is unknown to
    // it, so this also covers the token refresh); the payment goes out and
    // the gateway is ready again.
    let _back = SpeakerApi::start(api_port, None);
    let (code, body) = gw.wait_ready(200, Duration::from_secs(20)).await;
    assert_eq!(
        code,
        200,
        "ready again after the outage: {body}\n{}",
        gw.logs()
    );
    assert!(gw.wait_for_log("announcement sent", Duration::from_secs(5)));
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_parse_as_prometheus_text_and_count_what_happened() {
    let api = SpeakerApi::start(free_port(), None);
    let gw = Gateway::start(&config(&api, ""));
    for id in 1..=3 {
        let r = post(
            &gw.url("/hooks/sepay"),
            SIGNED,
            sepay_webhook(id, 10_000 * id),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let bad = post(&gw.url("/hooks/sepay"), SIGNED, "{not json").await;
    assert_eq!(bad.status, 400);
    assert!(gw.wait_for_log("announcement sent", Duration::from_secs(10)));

    let metrics = gw.metrics().await;
    assert!(
        metrics
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        metrics.content_type
    );
    let (text, scrape) = (&metrics.text, &metrics.scrape);
    let value = |name: &str, labels: &[(&str, &str)]| metrics.value(name, labels).unwrap_or(0.0);
    let ok = [("connector", "sepay"), ("status", "200")];
    assert_eq!(
        value("soundbox_webhook_responses_total", &ok),
        3.0,
        "{text}"
    );
    let bad = [("connector", "sepay"), ("status", "400")];
    assert_eq!(value("soundbox_webhook_responses_total", &bad), 1.0);
    assert_eq!(
        value("soundbox_webhook_duration_seconds", &ok),
        3.0,
        "every answered webhook timed"
    );
    assert_eq!(value("soundbox_webhook_duration_seconds", &bad), 1.0);
    let calls = [
        ("connector", "sepay"),
        ("kind", "webhook"),
        ("result", "ok"),
    ];
    assert_eq!(value("soundbox_plugin_calls_total", &calls), 3.0);
    let rejected = [("connector", "sepay"), ("result", "bad_request")];
    assert_eq!(value("soundbox_plugin_calls_total", &rejected), 1.0);
    assert_eq!(
        value(
            "soundbox_plugin_call_duration_seconds",
            &[("connector", "sepay")]
        ),
        4.0,
        "every call in the latency histogram"
    );
    assert!(value("soundbox_log_fsync_duration_seconds", &[]) >= 3.0);
    let delivered = [("sink", "speaker:VNS-SHOP-1"), ("outcome", "delivered")];
    assert!(value("soundbox_sink_outcomes_total", &delivered) >= 1.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "soundbox_queue_pending"
                && s.labels.get("sink") == Some("speaker:VNS-SHOP-1")),
        "queue depth per sink (the speaker's lane): {text}"
    );
    assert_eq!(value("soundbox_ready", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_token_guards_everything_but_health() {
    let api = SpeakerApi::start(free_port(), None);
    let token = "s3cret-admin-token-0123456789";
    let gw = Gateway::start(&config(&api, &format!("token = \"{token}\"")));
    for path in ["/", "/metrics", "/api/status", "/api/queue"] {
        assert_eq!(gw.admin_get(path).await.0, 401, "{path} without the token");
        let with = reqwest::Client::new()
            .get(gw.admin_url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("GET");
        assert_eq!(with.status(), 200, "{path} with the token");
    }
    // Never from the URL; a browser sends it as a Basic password.
    assert_eq!(gw.admin_get(&format!("/?token={token}")).await.0, 401);
    let basic = reqwest::Client::new()
        .get(gw.admin_url("/"))
        .basic_auth("staff", Some(token))
        .send()
        .await
        .expect("GET");
    assert_eq!(basic.status(), 200, "the token as a Basic password");
    assert_eq!(gw.admin_get("/healthz").await.0, 200);
    assert_eq!(gw.admin_get("/readyz").await.0, 200);
}

/// The page shop staff open, rendered by headless Chromium: the payment,
/// whether it was announced, the speaker and the connector are on it.
#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_renders_in_a_real_browser() {
    let Some(chromium) = chromium() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "chromium is missing (make test-tools installs it)"
        );
        eprintln!("skipped: no chromium");
        return;
    };
    let api = SpeakerApi::start(free_port(), None);
    let gw = Gateway::start(&config(&api, ""));
    let r = post(
        &gw.url("/hooks/sepay"),
        SIGNED,
        sepay_webhook(77, 2_277_000),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(gw.wait_for_log("announcement sent", Duration::from_secs(10)));

    let url = gw.admin_url("/");
    let shots = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page");
    std::fs::create_dir_all(&shots).expect("screenshot dir");
    let png = shots.join("status-page.png");
    let _ = std::fs::remove_file(&png);
    let profile = tempfile::tempdir().expect("profile dir");
    let browse = |extra: &[&str]| {
        Command::new(&chromium)
            .args(CHROMIUM_FLAGS)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .stderr(Stdio::null())
            .output()
            .expect("run chromium")
    };
    let dom = browse(&["--dump-dom"]);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert!(dom.contains("2.277.000 ₫"), "the payment is listed: {dom}");
    assert!(
        dom.contains("announced"),
        "and whether it was announced: {dom}"
    );
    assert!(dom.contains("VNS-SHOP-1"), "the speaker: {dom}");
    assert!(
        dom.contains("hai triệu hai trăm bảy mươi bảy nghìn đồng"),
        "what it said: {dom}"
    );
    assert!(dom.contains("sepay_webhook.wasm"), "the connector: {dom}");
    assert!(dom.contains("Everything works"), "the verdict: {dom}");

    let shot = browse(&[
        &format!("--screenshot={}", png.display()),
        "--window-size=1100,900",
        "--hide-scrollbars",
    ]);
    assert!(shot.status.success(), "chromium screenshot failed");
    let bytes = std::fs::read(&png).expect("a screenshot was written");
    assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
    // A blank page compresses to a few KB; this one has tables and colour.
    assert!(
        bytes.len() > 20_000,
        "screenshot of {} bytes looks blank",
        bytes.len()
    );
    eprintln!("status page screenshot: {}", png.display());
}

/// Chromium's flags for a closed network, as root, with no display.
const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=2000",
];

fn chromium() -> Option<std::path::PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
}

/// A poller whose bank API is unreachable fails call after call: `/readyz`
/// names the connector once the failures reach `admin.connector_failures`,
/// and the status page says so too.
#[tokio::test(flavor = "multi_thread")]
async fn readyz_names_a_connector_that_keeps_failing() {
    let closed = free_port();
    let config = format!(
        "[[connector]]\nname = \"sepay-poll\"\nplugin = \"{}\"\npoll_interval_secs = 1\n\
         allowed_hosts = [\"127.0.0.1:{closed}\"]\n\
         [connector.config]\napi_token = \"t\"\nbase_url = \"http://127.0.0.1:{closed}\"\n\n\
         [admin]\nconnector_failures = 2\n",
        plugin("sepay_poll").display()
    );
    let gw = Gateway::start(&config);
    let (code, body) = gw.wait_ready(503, Duration::from_secs(30)).await;
    assert_eq!(code, 503, "{body}\n{}", gw.logs());
    assert!(body.contains("connector `sepay-poll`"), "{body}");
    let (_, page) = gw.admin_get("/").await;
    assert!(page.contains("failing ("), "{page}");
}
