//! Misbehaving plugins are contained: each bad call fails alone, the next
//! call works, and other connectors never notice.

use std::time::Duration;

use soundbox_e2e::{Gateway, plugin, post};

const SAMPLE: &str = include_str!("../../../examples/payloads/sepay-webhook.json");

fn gateway() -> Gateway {
    let connector = |name: &str, file: &str, extra: &str| {
        format!(
            "[[connector]]\nname = \"{name}\"\nplugin = \"{}\"\n{extra}\n",
            plugin(file).display()
        )
    };
    let config = [
        "[limits]\nmemory_mb = 16\ncpu_budget_ms = 100\n".to_string(),
        connector(
            "sepay",
            "sepay_webhook",
            "[connector.config]\nauth = \"none\"\nallow_unsigned = true",
        ),
        connector("looping", "fixture_endless_loop", ""),
        connector("bomb", "fixture_memory_bomb", ""),
        connector("panicky", "fixture_panicking", ""),
        connector("nohttp", "fixture_http_not_allowed", ""),
        connector(
            "old",
            "fixture_old_contract",
            "[connector.config]\ntag = \"counter-2\"",
        ),
    ]
    .concat();
    Gateway::start(&config)
}

async fn sepay_still_works(gw: &Gateway) {
    let ok = post(&gw.url("/hooks/sepay"), &[], SAMPLE).await;
    assert_eq!(
        ok.status, 200,
        "sepay after a misbehaving plugin: {}",
        ok.body
    );
}

#[tokio::test]
async fn endless_loop_hits_the_cpu_deadline_and_the_next_call_works() {
    let gw = gateway();
    let url = gw.url("/hooks/looping");
    let started = std::time::Instant::now();
    let stuck = post(&url, &[], "loop").await;
    assert_eq!(stuck.status, 500, "{}", stuck.body);
    assert!(
        stuck.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("CPU budget"),
        "{}",
        stuck.body
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "deadline enforced, not the 30 s call timeout"
    );
    let next = post(&url, &[], "fine").await;
    assert_eq!(next.status, 200, "{}", next.body);
    sepay_still_works(&gw).await;
}

#[tokio::test]
async fn memory_bomb_hits_the_cap_and_the_next_call_works() {
    let gw = gateway();
    let url = gw.url("/hooks/bomb");
    let blown = post(&url, &[], "bomb").await;
    assert_eq!(blown.status, 500, "{}", blown.body);
    assert!(
        blown.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("memory cap"),
        "{}",
        blown.body
    );
    let next = post(&url, &[], "fine").await;
    assert_eq!(next.status, 200, "{}", next.body);
    sepay_still_works(&gw).await;
}

#[tokio::test]
async fn panic_is_a_500_with_the_message_in_the_log() {
    let gw = gateway();
    let url = gw.url("/hooks/panicky");
    let panicked = post(&url, &[], "panic").await;
    assert_eq!(panicked.status, 500, "{}", panicked.body);
    assert_eq!(panicked.json()["error"], "connector_failed");
    assert!(
        gw.wait_for_log("fixture panicked on purpose", Duration::from_secs(5)),
        "guest stderr reaches the log: {}",
        gw.logs()
    );
    let next = post(&url, &[], "fine").await;
    assert_eq!(next.status, 200, "{}", next.body);
    sepay_still_works(&gw).await;
}

#[tokio::test]
async fn http_client_refuses_hosts_not_allowed() {
    let gw = gateway();
    let url = gw.url("/hooks/nohttp");
    for target in [
        "https://example.com/",
        "http://127.0.0.1:1/",
        "https://10.0.0.1/",
    ] {
        let refused = post(&url, &[], target).await;
        assert_eq!(refused.status, 503, "{target}: {}", refused.body);
        let reason = refused.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        // The sender is told to retry; which host was refused is ours to know.
        assert!(
            reason.contains("retry later") && !reason.contains(target),
            "{target}: {reason}"
        );
    }
    assert!(
        gw.wait_for_log("allowed_hosts", Duration::from_secs(5)),
        "the refusal is logged: {}",
        gw.logs()
    );
    sepay_still_works(&gw).await;
}

#[tokio::test]
async fn plugin_built_against_contract_0_1_0_still_loads() {
    let gw = gateway();
    let reply = post(&gw.url("/hooks/old"), &[], "150000").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(
        gw.wait_for_log("old contract, tag counter-2", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    assert!(
        gw.wait_for_log("\"transaction_id\":\"old-150000\"", Duration::from_secs(5)),
        "{}",
        gw.logs()
    );
    let bad = post(&gw.url("/hooks/old"), &[], "lots").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
}

#[tokio::test]
async fn concurrent_misbehaviour_does_not_disturb_good_traffic() {
    let gw = gateway();
    let mut bad = Vec::new();
    for (path, body) in [("looping", "loop"), ("bomb", "bomb"), ("panicky", "panic")] {
        for _ in 0..3 {
            bad.push(tokio::spawn(post(
                gw.url(&format!("/hooks/{path}")).leak(),
                &[],
                body,
            )));
        }
    }
    for _ in 0..20 {
        sepay_still_works(&gw).await;
    }
    for task in bad {
        let reply = task.await.expect("task");
        assert_eq!(reply.status, 500, "{}", reply.body);
    }
}
