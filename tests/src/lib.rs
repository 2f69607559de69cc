//! Harness for end-to-end tests and the end-to-end bench: starts the real
//! `soundbox-gateway` binary in a temp dir with real plugins, on free
//! loopback ports, and talks to it over loopback.
//!
//! One of each: [`Gateway`] (the process, started by a [`GatewayBuilder`]),
//! its admin API ([`admin`]), [`SpeakerApi`] (the standalone Speaker API
//! simulator), [`mqtt::Subscriber`], [`free_port`], [`wait_until`].
//!
//! The binary and the plugins must be built first; `make test` does both.

pub mod admin;
pub mod gateway;
pub mod mqtt;
pub mod nats;
pub mod net;
pub mod sepay_api;
pub mod sink;
pub mod speaker_sim;
pub mod tls;
pub mod wait;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use gateway::{Gateway, GatewayBuilder};
pub use net::free_port;
pub use sink::{Arrival, CountingSink};
pub use speaker_sim::{SimControl, SpeakerApi, SpeakerApiBuilder};
pub use wait::{wait_until, wait_until_blocking};

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The gateway binary under test (`SOUNDBOX_BIN` overrides).
pub fn gateway_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("SOUNDBOX_BIN") {
        return PathBuf::from(bin);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), PathBuf::from);
    let bin = target.join("debug").join("soundbox-gateway");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build -p soundbox-gateway` (make test does)",
        bin.display()
    );
    bin
}

/// A built plugin or fixture, by crate name with underscores (`sepay_webhook`).
pub fn plugin(name: &str) -> PathBuf {
    let path = workspace()
        .join("plugins/target/wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.is_file(),
        "{} is missing: run `make plugins` (make test does)",
        path.display()
    );
    path
}

/// The `[[connector]]` table of the SePay webhook plugin taking unsigned
/// webhooks (`auth = "none"`): [`sepay_webhook`] bodies need no signature.
pub fn sepay_connector() -> String {
    format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\nauth = \"none\"\nallow_unsigned = true\n\n",
        plugin("sepay_webhook").display()
    )
}

/// Whether the long chaos variants run (`SOUNDBOX_CHAOS_LONG=1`): more
/// cycles, longer outages, more payments. CI runs the short ones.
pub fn chaos_long() -> bool {
    std::env::var("SOUNDBOX_CHAOS_LONG").is_ok_and(|v| v == "1")
}

/// `short` normally, `long` under `SOUNDBOX_CHAOS_LONG=1`.
pub fn chaos_size<T>(short: T, long: T) -> T {
    if chaos_long() { long } else { short }
}

/// The `[[forward]]` table (sink `pos`) that POSTs every payment to `url`,
/// retrying quickly, as most tests want.
pub fn forward_to(url: &str) -> String {
    format!(
        "[[forward]]\nname = \"pos\"\nurl = \"{url}\"\nretry_initial_ms = 10\nretry_max_ms = 100\n"
    )
}

/// A reply: status and body text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("reply is not JSON ({e}): {}", self.body))
    }
}

/// POSTs `body` as JSON with `headers`.
pub async fn post(url: &str, headers: &[(&str, &str)], body: impl Into<reqwest::Body>) -> Reply {
    post_as(url, "application/json", headers, body).await
}

/// POSTs `body` as `content_type` with `headers`.
pub async fn post_as(
    url: &str,
    content_type: &str,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> Reply {
    let client = reqwest::Client::new();
    let mut request = client
        .post(url)
        .header("content-type", content_type)
        .body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let body = response.text().await.expect("body");
    Reply { status, body }
}

/// POSTs `body` as JSON to `url` until it gets a 2xx, the way a provider
/// retries: a 5xx or a failed request (a gateway killed mid-request, or
/// restarting) is tried again after 20 ms; any other status fails the test,
/// naming `what`.
pub async fn post_until_2xx(
    client: &reqwest::Client,
    url: &str,
    body: &str,
    what: &(dyn std::fmt::Debug + Sync),
) {
    loop {
        let sent = client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => return,
            Ok(r) => assert!(
                r.status().is_server_error(),
                "payment {what:?}: unexpected {}",
                r.status()
            ),
            Err(_) => {} // killed mid-request, or restarting
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs the gateway binary with `args` to completion.
pub fn run_cli(args: &[&str]) -> std::process::Output {
    Command::new(gateway_bin())
        .args(args)
        .output()
        .expect("run gateway cli")
}

/// Now in Vietnam (UTC+7) as SePay writes `transactionDate`.
pub fn vietnam_now() -> String {
    let at = std::time::SystemTime::now() + Duration::from_secs(7 * 3600);
    humantime::format_rfc3339_seconds(at)
        .to_string()
        .trim_end_matches('Z')
        .replacen('T', " ", 1)
}

/// The account [`sepay_webhook`] pays into.
pub const SEPAY_ACCOUNT: &str = "0123499999";

/// A SePay webhook body for transaction `id` of `amount` VND, made now, into
/// [`SEPAY_ACCOUNT`]. Its bank reference is `MBVCB.<id>`, so distinct ids
/// are distinct payments.
pub fn sepay_webhook(id: u64, amount: u64) -> String {
    sepay_webhook_to(SEPAY_ACCOUNT, id, amount)
}

/// [`sepay_webhook`] into bank account `account` (what `[[route]] account`
/// matches).
pub fn sepay_webhook_to(account: &str, id: u64, amount: u64) -> String {
    serde_json::json!({
        "id": id,
        "gateway": "Vietcombank",
        "transactionDate": vietnam_now(),
        "accountNumber": account,
        "code": null,
        "content": format!("thanh toan don {id}"),
        "transferType": "in",
        "transferAmount": amount,
        "accumulated": 19_077_000,
        "subAccount": null,
        "referenceCode": format!("MBVCB.{id}"),
        "description": ""
    })
    .to_string()
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`); 0 once the
/// process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// Resident memory of process `pid` (`VmRSS`), KiB; 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// The peak resident memory of a process, sampled on a thread of its own.
pub struct RssPeak {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssPeak {
    /// Samples [`rss_kib`]`(pid)` every `every` until [`RssPeak::finish`].
    pub fn watch(pid: u32, every: Duration) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !stopped.load(Ordering::SeqCst) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(every);
            }
            peak.max(rss_kib(pid))
        });
        RssPeak { stop, thread }
    }

    /// Stops sampling (one last sample now); the largest, KiB.
    pub fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().expect("RSS sampler")
    }
}

/// The transaction id the gateway stores for [`sepay_webhook`]`(id, _)`:
/// SePay's own integer id (see `plugins/sepay-common`).
pub fn sepay_transaction_id(id: u64) -> String {
    id.to_string()
}

/// The `id` given to [`sepay_webhook`], back from a stored transaction id.
pub fn sepay_webhook_id(transaction_id: &str) -> Option<u64> {
    transaction_id.parse().ok()
}
