//! A hostile plugin (`plugins/fixtures/hostile`) attacks every bound of the
//! sandbox at once, a few calls of each attack at a time, beside a normal
//! SePay connector, on two tokio workers: a result that would lift to
//! gigabytes, a KV flood, calls holding all the memory they may, endless
//! loops. The gateway stays up, SePay webhooks keep getting 2xx, `/healthz`
//! answers, and the process's RSS grows by less than [`RSS_BOUND_MIB`].

use std::time::{Duration, Instant};

use soundbox_e2e::{Gateway, Reply, plugin, post, rss_kib, sepay_connector, sepay_webhook};

/// What the attacks may add to the gateway's resident memory: the
/// gateway-wide plugin memory budget (`total_memory_mb = 64` below) plus
/// the slack of the allocator and of a few instances being set up and torn
/// down. Lifted whole, one `huge-result` call alone is 4 GB.
const RSS_BOUND_MIB: u64 = 160;

/// How often a webhook refused with 503 `busy` during the attacks is sent
/// again (SePay itself retries 5xx for about half an hour).
const BUSY_RETRIES: usize = 10;

fn config() -> String {
    let hostile = |name: &str, attack: &str, extra: &str| {
        format!(
            "[[connector]]\nname = \"{name}\"\nplugin = \"{}\"\n[connector.config]\nattack = \"{attack}\"\n{extra}\n",
            plugin("fixture_hostile").display()
        )
    };
    [
        "[limits]\nmemory_mb = 16\ncpu_budget_ms = 200\ntotal_memory_mb = 64\nkv_max_kb = 512\n\n"
            .to_string(),
        sepay_connector(),
        hostile("result", "huge-result", ""),
        hostile("kv", "kv-flood", ""),
        hostile("memory", "memory-sum", "hold_mb = 12"),
        hostile("spin", "spin", ""),
    ]
    .concat()
}

/// The attacks of one round: (connector, body, what its reply must say).
fn attacks(round: usize) -> Vec<(&'static str, String)> {
    let mut all = Vec::new();
    for shape in ["changes", "extra", "headers", "wide"] {
        all.push(("result", shape.to_string()));
    }
    for i in 0..3 {
        all.push(("kv", format!("r{round}c{i}")));
        all.push(("memory", "hog".to_string()));
        all.push(("spin", "spin".to_string()));
    }
    all.push(("kv", "same".to_string()));
    all
}

/// POSTs `body` as a provider would: a 503 `busy` (the other calls hold the
/// gateway-wide plugin memory for a moment) is sent again after 100 ms, up
/// to [`BUSY_RETRIES`] times. Returns the last reply and how many were busy.
async fn post_until_not_busy(url: &str, body: String) -> (Reply, usize) {
    let mut busy = 0;
    let mut reply = post(url, &[], body.clone()).await;
    while reply.status == 503 && reply.body.contains("busy") && busy < BUSY_RETRIES {
        busy += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        reply = post(url, &[], body.clone()).await;
    }
    (reply, busy)
}

async fn healthz(gw: &Gateway) -> u16 {
    reqwest::Client::new()
        .get(format!("http://{}/healthz", gw.admin_addr))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Checks what one attack got back (the detail is in the gateway's log).
fn check_attack(connector: &str, body: &str, status: u16, reply: &str) {
    match connector {
        "kv" => {
            assert_eq!(status, 200, "{body}: {reply}");
            assert!(
                reply.contains("per call") || reply.contains("KV quota"),
                "{body}: {reply}"
            );
        }
        // Refused, nothing stored: by the attack's own bound (500: too
        // large, CPU budget, memory cap), or, while the other attacks hold
        // the gateway-wide plugin memory, by that budget (503, retry later).
        _ => assert!(
            status == 500 || status == 503,
            "{connector} {body}: {status} {reply}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugin_attacks_leave_the_gateway_and_its_neighbours_alone() {
    let gw = Gateway::builder(&config())
        .env("TOKIO_WORKER_THREADS", "2")
        .start();
    let sepay = gw.url("/hooks/sepay");
    let mut id = 7_000_000;
    // Warm up: every plugin compiled and called once, so the baseline holds
    // what a gateway with these connectors holds anyway.
    for connector in ["result", "kv", "memory", "spin"] {
        let fine = post(&gw.url(&format!("/hooks/{connector}")), &[], "fine").await;
        assert_eq!(fine.status, 200, "{connector}: {} {}", fine.body, gw.logs());
    }
    let mut normal = Vec::new();
    for _ in 0..5 {
        id += 1;
        let started = Instant::now();
        let ok = post(&sepay, &[], sepay_webhook(id, 150_000)).await;
        assert_eq!(ok.status, 200, "{} {}", ok.body, gw.logs());
        normal.push(started.elapsed());
    }
    let baseline_kib = rss_kib(gw.pid());
    let mut peak_kib = baseline_kib;

    let mut during = Vec::new();
    let mut busy = 0;
    let mut health = Vec::new();
    for round in 0..2 {
        let calls: Vec<_> = attacks(round)
            .into_iter()
            .map(|(connector, body)| {
                let url = gw.url(&format!("/hooks/{connector}"));
                tokio::spawn(async move {
                    // The KV attack must meet its own quota, so it is sent
                    // again while the memory attacks hold the budget.
                    let reply = if connector == "kv" {
                        post_until_not_busy(&url, body.clone()).await.0
                    } else {
                        post(&url, &[], body.clone()).await
                    };
                    (connector, body, reply)
                })
            })
            .collect();
        while calls.iter().any(|c| !c.is_finished()) {
            id += 1;
            let started = Instant::now();
            // The attacks may hold the whole gateway-wide plugin memory for
            // a moment: SePay then gets 503 `busy` and retries, as it does
            // for any 5xx. Taken within a few retries, nothing else.
            let (ok, refused) = post_until_not_busy(&sepay, sepay_webhook(id, 150_000)).await;
            busy += refused;
            assert!(
                (200..300).contains(&ok.status),
                "SePay during the attack: {} {}",
                ok.status,
                ok.body
            );
            during.push(started.elapsed());
            let started = Instant::now();
            assert_eq!(healthz(&gw).await, 200, "/healthz during the attack");
            health.push(started.elapsed());
            peak_kib = peak_kib.max(rss_kib(gw.pid()));
        }
        for call in calls {
            let (connector, body, reply) = call.await.expect("attack task");
            check_attack(connector, &body, reply.status, &reply.body);
        }
        peak_kib = peak_kib.max(rss_kib(gw.pid()));
    }

    // Still up, still working, its neighbours none the worse.
    assert!(
        gw.logs().contains("connector returned too much"),
        "detail in the log"
    );
    id += 1;
    let after = post(&sepay, &[], sepay_webhook(id, 150_000)).await;
    assert_eq!(after.status, 200, "{}", after.body);
    assert_eq!(healthz(&gw).await, 200);
    for connector in ["result", "kv", "memory", "spin"] {
        let fine = post(&gw.url(&format!("/hooks/{connector}")), &[], "fine").await;
        assert_eq!(
            fine.status, 200,
            "{connector} after its attacks: {}",
            fine.body
        );
    }
    let max = |v: &[Duration]| v.iter().max().copied().unwrap_or_default();
    println!(
        "SePay: {} calls before, max {:?}; {} during the attacks, max {:?}, {busy} answered 503 busy and retried; /healthz max {:?}",
        normal.len(),
        max(&normal),
        during.len(),
        max(&during),
        max(&health)
    );
    let grown_mib = peak_kib.saturating_sub(baseline_kib) / 1024;
    println!(
        "RSS: {} MiB before the attacks, peak {} MiB (+{grown_mib} MiB, bound {RSS_BOUND_MIB} MiB)",
        baseline_kib / 1024,
        peak_kib / 1024
    );
    assert!(
        grown_mib < RSS_BOUND_MIB,
        "RSS grew {grown_mib} MiB under attack"
    );
}
