//! SePay webhook in → the in-process Speaker API simulator plays the amount
//! on the routed speaker, with the real binary.

use std::time::Duration;

use soundbox_e2e::{
    Gateway, SpeakerApi, free_port, post, sepay_connector, sepay_webhook, wait_until,
    wait_until_blocking,
};

fn config(extra: &str) -> String {
    format!(
        "{}\
         [speaker]\nsimulator = true\nretry_initial_ms = 10\nretry_max_ms = 100\n{extra}\n\
         [[speaker.sim_devices]]\nhardware_id = \"VNS-SHOP-1\"\npaired = true\n\
         [[speaker.sim_devices]]\nhardware_id = \"VNS-OTHER\"\npaired = true\n\n\
         [[route]]\naccount = \"0123499999\"\nspeakers = [\"VNS-SHOP-1\"]\n",
        sepay_connector()
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sepay_webhook_is_spoken_by_the_routed_speaker() {
    let gw = Gateway::start(&config(""));
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(4242, 150_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The same webhook again (a provider retry) is not announced twice.
    let again = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(4242, 150_000)).await;
    assert_eq!(again.status, 200);

    let mut played = Vec::new();
    wait_until(Duration::from_secs(20), async || {
        played = gw.simulator().plays().await;
        !played.is_empty()
    })
    .await;
    assert_eq!(played.len(), 1, "{played:?}\n{}", gw.logs());
    assert_eq!(played[0]["hardware_id"], "VNS-SHOP-1");
    assert_eq!(played[0]["amount"], 150_000);
    assert_eq!(played[0]["words"], "một trăm năm mươi nghìn đồng");
    assert!(gw.wait_for_log("announcement sent", Duration::from_secs(5)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gw.simulator().plays().await.len(), 1, "announced once");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_hour_old_payment_is_kept_but_not_announced() {
    let gw = Gateway::start(&config("max_age_secs = 300"));
    let mut body: serde_json::Value =
        serde_json::from_str(&sepay_webhook(7, 99_000)).expect("json");
    body["transactionDate"] = serde_json::json!("2020-01-01 08:00:00");
    let r = post(&gw.url("/hooks/sepay"), &[], body.to_string()).await;
    assert_eq!(r.status, 200);
    assert!(
        gw.wait_for_log("entry expired, not delivered", Duration::from_secs(10)),
        "{}",
        gw.logs()
    );
    assert!(gw.simulator().plays().await.is_empty());
}

/// `speaker-sim` standalone, and the `speaker` commands a shop owner uses.
#[tokio::test(flavor = "multi_thread")]
async fn speaker_commands_pair_with_the_spoken_code_and_notify() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let sim = SpeakerApi::builder(free_port())
        .devices(&["VNS-A", "VNS-B:paired:offline"])
        .args(&["--play-ms", "0"])
        .start();
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "").expect("config");
    // `speaker <args>` against the simulator, credentials from the environment.
    let speaker = |args: &[&str]| {
        let mut command = Command::new(soundbox_e2e::gateway_bin());
        command
            .arg("speaker")
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("SEPAY_SPEAKER_BASE_URL", sim.url("/devices/v1"))
            .env("SEPAY_SPEAKER_CLIENT_ID", "sim-client")
            .env("SEPAY_SPEAKER_CLIENT_SECRET", "sim-secret")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    };
    let run = |args: &[&str]| {
        let out = speaker(args).output().expect("speaker cli");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let mut checked = (None, String::new(), String::new());
    wait_until_blocking(Duration::from_secs(10), || {
        checked = run(&["check", "VNS-A"]);
        checked.0 == Some(0)
    });
    let (code, out, err) = checked;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("not paired") && out.contains("online"),
        "{out}"
    );

    // Interactive pairing: the code the speaker "reads aloud" is typed in.
    let mut pair = speaker(&["pair", "VNS-A"]).spawn().expect("pair");
    let otp_url = sim.url("/_sim/otp/VNS-A");
    let mut otp = None;
    wait_until(Duration::from_secs(10), async || {
        if let Ok(r) = reqwest::get(&otp_url).await
            && r.status().is_success()
        {
            let v: serde_json::Value = r.json().await.expect("json");
            otp = Some(v["otp"].as_str().expect("otp").to_string());
        }
        otp.is_some()
    })
    .await;
    let otp = otp.expect("no OTP was spoken");
    let wrong = if otp == "0000" { "1111" } else { "0000" };
    writeln!(pair.stdin.as_mut().expect("stdin"), "{wrong}\n{otp}").expect("type otp");
    let out = pair.wait_with_output().expect("pair result");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    // SePay's own message for the wrong code, then a second try.
    assert!(stderr.contains("Mã OTP không đúng"), "{stderr}");
    assert!(stdout.contains("paired at"), "{stdout}");

    let (code, out, err) = run(&[
        "notify",
        "VNS-A",
        "--amount",
        "150000",
        "--request-id",
        "r-1",
    ]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("SENT"), "{out}");
    let (code, out, _) = run(&["check-notify", "r-1"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("SUCCESS"), "{out}");

    let (code, _, err) = run(&["pair", "VNS-B", "--otp", "1234"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("offline"), "{err}");
}
