//! Config hot reload with the real binary: changes applied while payments
//! flow lose and repeat nothing; a bad change is refused with its file, line
//! and key, and the gateway keeps serving on the config it had.

use std::path::Path;
use std::time::Duration;

use soundbox_e2e::{
    CountingSink, Gateway, forward_to, plugin, post, sepay_webhook, wait_until_blocking,
};

fn sepay(name: &str, extra: &str) -> String {
    format!(
        "[[connector]]\nname = \"{name}\"\nplugin = \"{}\"\n{extra}\n[connector.config]\nauth = \"none\"\nallow_unsigned = true\n\n",
        plugin("sepay_webhook").display()
    )
}

/// The gateway's own `[gateway]` table, which the harness wrote first.
fn gateway_table(path: &Path) -> String {
    let text = std::fs::read_to_string(path).expect("read config");
    let end = text.find("[[connector]]").expect("connector table");
    text[..end].to_string()
}

/// Waits until `n` log lines contain `needle`.
fn wait_for_count(gw: &Gateway, needle: &str, n: usize) -> bool {
    wait_until_blocking(Duration::from_secs(60), || {
        gw.logs().matches(needle).count() >= n
    })
}

fn wait_for_reloads(gw: &Gateway, n: usize) -> bool {
    wait_until_blocking(Duration::from_secs(60), || gw.reloads() >= n)
}

#[tokio::test(flavor = "multi_thread")]
async fn reloads_while_200_payments_flow_deliver_each_once() {
    let sink = CountingSink::start();
    let gw = Gateway::start(&format!("{}{}", sepay("sepay", ""), forward_to(&sink.url)));
    let path = gw.config_path();
    let head = gateway_table(&path);

    let url = gw.url("/hooks/sepay");
    let sender = tokio::spawn(async move {
        let mut failures = Vec::new();
        for id in 1..=200u64 {
            let r = post(&url, &[], sepay_webhook(id, 1_000 + id)).await;
            if r.status != 200 {
                failures.push((id, r.status, r.body));
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
        failures
    });

    // 1: the connector's settings change (its plugin is reloaded) and a
    // second connector appears.
    tokio::time::sleep(Duration::from_millis(600)).await;
    gw.write_config(&format!(
        "{head}{}{}{}",
        sepay("sepay", "allowed_hosts = [\"example.vn\"]"),
        sepay("sepay-two", ""),
        forward_to(&sink.url)
    ));
    assert!(wait_for_reloads(&gw, 1), "{}", gw.logs());
    // 2: the forward's settings change: that sink restarts from its cursor.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let slower_retry = forward_to(&sink.url).replace("retry_max_ms = 100", "retry_max_ms = 200");
    gw.write_config(&format!(
        "{head}{}{}{slower_retry}",
        sepay("sepay", "allowed_hosts = [\"example.vn\"]"),
        sepay("sepay-two", ""),
    ));
    assert!(wait_for_reloads(&gw, 2), "{}", gw.logs());
    assert!(gw.logs().contains("restarting sink with new settings"));

    let failures = sender.await.expect("sender");
    assert!(
        failures.is_empty(),
        "webhooks failed across reloads: {failures:?}"
    );
    // The new connector takes webhooks too.
    let r = post(&gw.url("/hooks/sepay-two"), &[], sepay_webhook(201, 7_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);

    assert!(
        sink.wait_for(201, Duration::from_secs(60)),
        "{} of 201 arrived\n{}",
        sink.arrivals().len(),
        gw.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(sink.arrivals().len(), 201);
    assert_eq!(sink.deliveries(), 201, "each payment delivered once");
    let seqs: Vec<u64> = sink.arrivals().iter().map(|a| a.seq).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "delivered in log order: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_change_is_refused_and_the_old_config_keeps_serving() {
    let sink = CountingSink::start();
    let gw = Gateway::start(&format!("{}{}", sepay("sepay", ""), forward_to(&sink.url)));
    let path = gw.config_path();
    let head = gateway_table(&path);
    let good = format!("{}{}", sepay("sepay", ""), forward_to(&sink.url));
    let wait_refusals = |gw: &Gateway, n: usize| wait_for_count(gw, "config change refused", n);

    // An unknown key: refused, naming the file, line and key.
    gw.write_config(&format!("{head}{good}\n[speaker]\nsimulater = true\n"));
    assert!(wait_refusals(&gw, 1), "{}", gw.logs());
    let logs = gw.logs();
    let refusal = logs
        .lines()
        .find(|l| l.contains("config change refused"))
        .expect("refusal line");
    let line_of_key = head.lines().count() + good.lines().count() + 3;
    assert!(
        refusal.contains(&format!("config.toml:{line_of_key}:")) && refusal.contains("simulater"),
        "file, line {line_of_key} and key: {refusal}"
    );

    // A plugin that is not a component: refused before anything changes.
    let broken = gw.dir.path().join("broken.wasm");
    std::fs::write(&broken, b"\0asm not really").expect("write broken plugin");
    gw.write_config(&format!(
        "{head}{good}[[connector]]\nname = \"broken\"\nplugin = \"{}\"\n",
        broken.display()
    ));
    assert!(wait_refusals(&gw, 2), "{}", gw.logs());
    assert!(gw.logs().contains("a plugin would not load"));

    // Through both, the running config serves.
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(1, 10_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = post(&gw.url("/hooks/broken"), &[], "{}").await;
    assert_eq!(r.status, 404, "the refused connector was not added");
    assert!(sink.wait_for(1, Duration::from_secs(20)));
    assert_eq!(gw.reloads(), 0, "nothing was applied");

    // A good change after the bad ones applies.
    gw.write_config(&format!("{head}{good}{}", sepay("sepay-two", "")));
    assert!(wait_for_reloads(&gw, 1), "{}", gw.logs());
    let r = post(&gw.url("/hooks/sepay-two"), &[], sepay_webhook(2, 20_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(sink.wait_for(2, Duration::from_secs(20)));
}

/// `systemctl reload` sends SIGHUP: the config is read again.
#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_the_config() {
    let sink = CountingSink::start();
    let gw = Gateway::start(&format!("{}{}", sepay("sepay", ""), forward_to(&sink.url)));
    let path = gw.config_path();
    let text = std::fs::read_to_string(&path).expect("read");
    // Written in place, then signalled (the watcher may see it first; either
    // way it is applied once).
    std::fs::write(&path, format!("{text}\n{}", sepay("sepay-two", ""))).expect("write");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status();
    assert!(wait_for_reloads(&gw, 1), "{}", gw.logs());
    let r = post(&gw.url("/hooks/sepay-two"), &[], sepay_webhook(3, 30_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A rebuilt plugin file is picked up: the connector is replaced, and a
/// file that is not a component is refused with the old one kept.
#[tokio::test(flavor = "multi_thread")]
async fn a_changed_plugin_file_replaces_the_connector() {
    let sink = CountingSink::start();
    let dir = tempfile::tempdir().expect("plugin dir");
    let wasm = dir.path().join("sepay_webhook.wasm");
    let original = std::fs::read(plugin("sepay_webhook")).expect("plugin");
    std::fs::write(&wasm, &original).expect("copy plugin");
    let config = format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\nauth = \"none\"\nallow_unsigned = true\n\n{}",
        wasm.display(),
        forward_to(&sink.url)
    );
    let gw = Gateway::start(&config);

    // The same component with one more custom section: new bytes, same code.
    let mut rebuilt = original.clone();
    let name = b"rebuilt";
    rebuilt.extend_from_slice(&[0, (1 + name.len() + 4) as u8, name.len() as u8]);
    rebuilt.extend_from_slice(name);
    rebuilt.extend_from_slice(b"v2.0");
    let tmp = dir.path().join("sepay_webhook.wasm.tmp");
    std::fs::write(&tmp, &rebuilt).expect("write rebuilt");
    std::fs::rename(&tmp, &wasm).expect("replace plugin");
    assert!(wait_for_reloads(&gw, 1), "{}", gw.logs());
    assert!(
        gw.logs().contains(r#""replaced":"[\"sepay\"]""#),
        "{}",
        gw.logs()
    );
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(1, 10_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The old build's compiled code left the cache; the new one is in it.
    let cached: Vec<_> = std::fs::read_dir(gw.dir.path().join("data/plugin-cache"))
        .expect("plugin cache")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(cached.len(), 1, "{cached:?}");

    // A broken build: refused, the rebuilt plugin keeps serving.
    std::fs::write(&tmp, b"\0asm broken").expect("write broken");
    std::fs::rename(&tmp, &wasm).expect("replace plugin");
    assert!(
        wait_for_count(&gw, "a plugin would not load", 1),
        "{}",
        gw.logs()
    );
    let r = post(&gw.url("/hooks/sepay"), &[], sepay_webhook(2, 20_000)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(sink.wait_for(2, Duration::from_secs(20)));
    assert_eq!(gw.reloads(), 1);
}
