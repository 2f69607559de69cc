//! The durability rule checked on the real binary's system calls: every
//! webhook answered 200 for a new payment is preceded by an `fdatasync` (or
//! `fsync`/`syncfs`) that completed after the previous answer. sled's own
//! `flush()` is only `sync_file_range`, which a power cut can undo, so it
//! does not count. A repeat of a payment writes nothing: its 200 rests on the
//! sync that preceded the first one's.

use soundbox_e2e::{Gateway, plugin, post, sepay_webhook};

const WEBHOOKS: u64 = 12;

fn strace_available() -> bool {
    std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread")]
async fn every_acknowledged_webhook_was_synced_to_disk_first() {
    if !strace_available() {
        // `.ci/run` installs strace and sets CI, so CI never skips this.
        assert!(std::env::var_os("CI").is_none(), "strace is required in CI");
        eprintln!("SKIPPED: strace is not installed (apt-get install strace)");
        return;
    }
    let trace_dir = tempfile::tempdir().expect("tempdir");
    let trace = trace_dir.path().join("trace.txt");
    let trace_arg = trace.to_str().expect("utf-8 path").to_string();
    let config = format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\nauth = \"none\"\nallow_unsigned = true\n",
        plugin("sepay_webhook").display()
    );
    let gw = Gateway::builder(&config)
        .wrapper(&[
            "strace",
            "-f",
            "-qq",
            "-s",
            "16",
            "-e",
            "trace=fdatasync,fsync,syncfs,sync_file_range,write,writev,sendto,sendmsg",
            "-o",
            &trace_arg,
        ])
        .start();
    let url = gw.url("/hooks/sepay");
    for id in 1..=WEBHOOKS {
        // The last one twice: the repeat is acknowledged without a write.
        let body = sepay_webhook(id.min(WEBHOOKS - 1), 10_000 * id);
        let r = post(&url, &[], body).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // SIGTERM to the gateway itself (strace's child); strace exits with it
    // and has written the whole trace once `stop` returns.
    let _ = std::process::Command::new("pkill")
        .args(["-TERM", "-P", &gw.pid().to_string()])
        .status();
    gw.stop();

    let text = std::fs::read_to_string(&trace).expect("read trace");
    let mut synced = false;
    let mut acks = 0;
    let mut syncs = 0;
    for line in text.lines() {
        let completed_sync = ["fdatasync", "fsync", "syncfs"].iter().any(|s| {
            (line.contains(&format!(" {s}(")) || line.contains(&format!("<... {s} resumed>")))
                && line.trim_end().ends_with("= 0")
        });
        if completed_sync {
            synced = true;
            syncs += 1;
        }
        if line.contains("\"HTTP/1.1 200") {
            let repeat = acks == WEBHOOKS - 1;
            assert!(
                synced || repeat,
                "a 200 went out with no completed sync since the previous one:\n{line}"
            );
            synced = false;
            acks += 1;
        }
    }
    assert_eq!(acks, WEBHOOKS, "every 200 seen in the trace");
    assert!(syncs >= acks - 1, "{syncs} syncs for {acks} acks");
}
