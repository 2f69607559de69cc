//! The CLI as a user runs it: `check` and `plugin test`.

use soundbox_e2e::{plugin, run_cli, workspace};

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn check_accepts_the_default_config() {
    let config = workspace().join("config.toml");
    let out = run_cli(&["check", "--config", config.to_str().expect("utf-8 path")]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(": ok") && stdout.contains("sepay") && stdout.contains("WebhookConnector"),
        "{stdout}"
    );
}

#[test]
fn check_names_file_line_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shop.toml");
    let cases = [
        (
            "[gateway]\nlisten = \"127.0.0.1:8080\"\nlisen = 1\n",
            "shop.toml:3:1: gateway.lisen: unknown field `lisen`",
        ),
        (
            "[[connector]]\nname = \"sepay\"\nplugin = \"missing.wasm\"\n",
            "shop.toml:3:10: connector[0].plugin: no plugin file at",
        ),
        (
            "[limits]\nmemory_mb = -1\n",
            "shop.toml:2:13: limits.memory_mb:",
        ),
    ];
    for (config, expected) in cases {
        std::fs::write(&path, config).expect("write");
        let out = run_cli(&["check", "--config", path.to_str().expect("utf-8 path")]);
        assert_eq!(out.status.code(), Some(1), "{config}");
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
    }
}

#[test]
fn check_rejects_a_file_that_is_not_a_component() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("junk.wasm"), b"not wasm").expect("write");
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        "[plugins]\nunsigned = \"allowed for local development\"\n\n\
         [[connector]]\nname = \"junk\"\nplugin = \"junk.wasm\"\n",
    )
    .expect("write");
    let out = run_cli(&["check", "--config", path.to_str().expect("utf-8 path")]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("connector `junk`") && stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );
}

#[test]
fn plugin_test_prints_the_changes() {
    let sample = workspace().join("examples/payloads/sepay-webhook.json");
    let wasm = plugin("sepay_webhook");
    let out = run_cli(&[
        "plugin",
        "test",
        wasm.to_str().expect("utf-8 path"),
        "--webhook",
        sample.to_str().expect("utf-8 path"),
        "--set",
        "api_key=k",
        "-H",
        "Authorization: Apikey k",
    ]);
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(json["world"], "webhook-connector");
    assert_eq!(json["changes"][0]["transaction_id"], "92704");
    assert_eq!(json["changes"][0]["amount"], 2_277_000);
    assert_eq!(json["changes"][0]["direction"], "in");
    assert_eq!(json["reply"]["body"], "{\"success\":true}");

    let denied = run_cli(&[
        "plugin",
        "test",
        wasm.to_str().expect("utf-8 path"),
        "--body",
        "{}",
        "--set",
        "api_key=k",
    ]);
    assert_eq!(denied.status.code(), Some(1));
    let stderr = text(&denied.stderr);
    assert!(stderr.contains("unauthorized"), "{stderr}");
    assert!(stderr.contains("sender gets HTTP 401"), "{stderr}");
}
