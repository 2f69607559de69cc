//! Signed plugins (docs/security.md#signed-plugins) with the real binary,
//! as a connector author outside this repository and a shop would do it:
//! the hello connector built from a copy of the SDK and the example in a
//! folder of their own (Rust; Python with the WIT path given), a key made
//! here, `plugin sign`, and a gateway that trusts that key.
//!
//! - Signed by the trusted key: loads, answers, the status page says who
//!   signed it.
//! - One byte flipped in the wasm, or signed by another key: refused, at
//!   `check` and at `run`, with the reason.
//! - A new version whose manifest asks for a host the config does not grant:
//!   a reload holds it and the old version keeps answering; once the config
//!   grants the host, the reload runs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use soundbox_e2e::{
    Gateway, gateway_bin, post, run_cli, wait_until, wait_until_blocking, workspace,
};
use soundbox_plugin_sdk::signature::hmac_sha256_hex;

const SAMPLE: &str = include_str!("../../../examples/hello-connector/payload.json");
const SECRET: &str = "s3cret";

/// Copies `from` into `to` (files and folders), skipping build output.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let name = entry.file_name();
        if ["target", "node_modules", "__pycache__"].contains(&name.to_str().unwrap_or("")) {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            copy_tree(&path, &to.join(&name));
        } else {
            std::fs::copy(&path, to.join(&name)).expect("copy file");
        }
    }
}

/// The SDK and the Rust and Python hello connectors, copied out of the
/// repository: `<dir>/sdk`, `<dir>/hello-rust` (depending on `../sdk` by
/// path, as a vendored copy would) and `<dir>/hello-python`.
fn author_folder(dir: &Path) {
    copy_tree(&workspace().join("plugin-sdk"), &dir.join("sdk"));
    copy_tree(
        &workspace().join("examples/hello-connector/rust"),
        &dir.join("hello-rust"),
    );
    copy_tree(
        &workspace().join("examples/hello-connector/python"),
        &dir.join("hello-python"),
    );
    let manifest = dir.join("hello-rust/Cargo.toml");
    let text = std::fs::read_to_string(&manifest).expect("read Cargo.toml");
    let vendored = text.replace(
        "soundbox-plugin-sdk = { path = \"../../../plugin-sdk\" }",
        "soundbox-plugin-sdk = { path = \"../sdk\" }",
    );
    assert_ne!(text, vendored, "the example's SDK dependency line changed");
    std::fs::write(&manifest, vendored).expect("write Cargo.toml");
}

fn run(command: &mut Command, what: &str) {
    let output = command.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `cargo build` of the copied Rust example for wasm32-wasip2, with a target
/// dir of its own under the workspace's (its dependencies are cached there
/// between runs).
fn build_rust(dir: &Path) -> PathBuf {
    let target = workspace().join("target/outside-connector");
    run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(dir.join("hello-rust"))
            .args([
                "build",
                "--release",
                "--offline",
                "--target",
                "wasm32-wasip2",
            ])
            .arg("--target-dir")
            .arg(&target),
        "cargo build of the copied hello connector",
    );
    let wasm = target.join("wasm32-wasip2/release/hello_connector.wasm");
    let out = dir.join("hello_rust.wasm");
    std::fs::copy(&wasm, &out).expect("copy the wasm");
    out
}

/// The copied Python example built with `SOUNDBOX_WIT` pointing at the
/// copied SDK's WIT, by componentize-py from `make hello-connectors`' venv.
/// None when that venv is missing (and CI is not set).
fn build_python(dir: &Path) -> Option<PathBuf> {
    let venv_bin = workspace().join("target/hello-connector/venv/bin");
    if !venv_bin.join("componentize-py").is_file() {
        assert!(
            std::env::var_os("CI").is_none(),
            "componentize-py missing: run `make hello-connectors` (make test does)"
        );
        eprintln!("skipping the Python build: no componentize-py");
        return None;
    }
    let out = dir.join("hello_python.wasm");
    let path = format!(
        "{}:{}",
        venv_bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    run(
        Command::new("sh")
            .arg(dir.join("hello-python/build.sh"))
            .arg(&out)
            .env("SOUNDBOX_WIT", dir.join("sdk/wit"))
            .env("PATH", path),
        "build.sh of the copied Python hello connector",
    );
    Some(out)
}

fn cli(args: &[&str]) -> String {
    let output = run_cli(args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{args:?} failed: {text}");
    text
}

fn sign(wasm: &Path, key: &Path, version: &str, hosts: &[&str]) {
    let (wasm, key) = (wasm.display().to_string(), key.display().to_string());
    let mut args = vec![
        "plugin",
        "sign",
        &wasm,
        "--key",
        &key,
        "--version",
        version,
        "--publisher",
        "Hello Bank",
        "--name",
        "hello",
    ];
    for host in hosts {
        args.extend(["--host", host]);
    }
    cli(&args);
}

/// A `[[connector]]` table for `wasm` and the `[plugins]` table trusting `key`.
fn config(name: &str, wasm: &Path, allowed_hosts: &str, key: &Path) -> String {
    format!(
        "[limits]\nmemory_mb = 32\ncpu_budget_ms = 1000\n\n\
         [plugins]\ntrusted_keys = [\"{}\"]\n\n\
         [[connector]]\nname = \"{name}\"\nplugin = \"{}\"\n{allowed_hosts}\
         [connector.config]\nsecret = \"{SECRET}\"\n\n",
        key.display(),
        wasm.display()
    )
}

/// Runs `soundbox-gateway run` on a config of its own and waits for it to
/// exit (it must refuse to start); its stderr.
fn refused_start(dir: &Path, config: &str) -> String {
    let path = dir.join("refused.toml");
    std::fs::write(
        &path,
        format!("[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = \"refused-data\"\n\n{config}"),
    )
    .expect("write config");
    let mut child = Command::new(gateway_bin())
        .args(["run", "--config"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the gateway");
    let mut exited = None;
    wait_until_blocking(Duration::from_secs(120), || {
        exited = child.try_wait().expect("wait");
        exited.is_some()
    });
    let Some(status) = exited else {
        let _ = child.kill();
        panic!("the gateway started with a plugin it must refuse");
    };
    assert!(!status.success(), "the gateway exited with success");
    let mut stderr = String::new();
    use std::io::Read;
    if let Some(mut pipe) = child.stderr.take() {
        let _ = pipe.read_to_string(&mut stderr);
    }
    stderr
}

/// `check --config` on `config` (with a `[gateway]` table): fails, with
/// its output.
fn refused_check(dir: &Path, config: &str) -> String {
    let path = dir.join("check.toml");
    std::fs::write(
        &path,
        format!("[gateway]\ndata_dir = \"check-data\"\n\n{config}"),
    )
    .expect("write config");
    let output = run_cli(&["check", "--config", &path.display().to_string()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "check accepted it: {text}");
    text
}

async fn signed_sample(url: &str) -> u16 {
    let signature = hmac_sha256_hex(SECRET.as_bytes(), SAMPLE.as_bytes());
    post(url, &[("X-Signature", &signature)], SAMPLE)
        .await
        .status
}

/// `wasm` copied alone (no manifest, no signature) into `folder`.
fn copy_into(wasm: &Path, folder: &Path) -> PathBuf {
    std::fs::create_dir_all(folder).expect("mkdir");
    let copy = folder.join(wasm.file_name().expect("a file name"));
    std::fs::copy(wasm, &copy).expect("copy wasm");
    copy
}

/// The connector's entry in `/api/status`, if it runs.
async fn connector_status(gw: &Gateway, name: &str) -> Option<serde_json::Value> {
    let status = gw.api_status().await;
    status["connectors"]
        .as_array()
        .and_then(|all| all.iter().find(|c| c["name"] == name).cloned())
}

/// Waits until connector `name`'s row says `want` of a refused file on disk.
async fn wait_for_on_disk(gw: &Gateway, name: &str, want: Option<&str>) {
    let mut row = serde_json::Value::Null;
    let shown = wait_until(Duration::from_secs(60), async || {
        row = connector_status(gw, name)
            .await
            .expect("the connector runs");
        row["on_disk"].as_str() == want
    })
    .await;
    assert!(
        shown,
        "{name}'s file on disk never showed as {want:?}: {row}\n{}",
        gw.logs()
    );
}

/// `/api/status`'s warnings, as one text.
async fn status_warnings(gw: &Gateway) -> String {
    gw.api_status().await["warnings"].to_string()
}

/// The version `/api/status` shows for connector `name`.
async fn version(gw: &Gateway, name: &str) -> Option<String> {
    let status = connector_status(gw, name).await?;
    status["version"].as_str().map(str::to_string)
}

/// Waits until `/api/status` shows `name` at `want`.
async fn wait_for_version(gw: &Gateway, name: &str, want: &str) {
    let mut now = None;
    let reached = wait_until(Duration::from_secs(240), async || {
        now = version(gw, name).await;
        now.as_deref() == Some(want)
    })
    .await;
    assert!(
        reached,
        "{name} never reached {want} (at {now:?}):\n{}",
        gw.logs()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_signed_outside_the_repo_runs_tampered_or_foreign_ones_do_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    author_folder(dir);
    let rust = build_rust(dir);
    let python = build_python(dir);

    // The author's key, and someone else's.
    let keys = dir.join("keys");
    cli(&[
        "plugin",
        "keygen",
        &keys.join("hello-bank").display().to_string(),
    ]);
    cli(&[
        "plugin",
        "keygen",
        &keys.join("stranger").display().to_string(),
    ]);
    let (key, public) = (keys.join("hello-bank.key"), keys.join("hello-bank.pub"));

    sign(&rust, &key, "1.0.0", &[]);
    let inspect = cli(&[
        "plugin",
        "inspect",
        &rust.display().to_string(),
        "--trust",
        &public.display().to_string(),
    ]);
    assert!(inspect.contains("Hello Bank"), "{inspect}");

    // The same file with one byte flipped.
    let flipped = copy_into(&rust, &dir.join("flipped"));
    let mut bytes = std::fs::read(&rust).expect("read wasm");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&flipped, bytes).expect("write flipped");
    for sidecar in ["manifest.toml", "manifest.toml.minisig"] {
        std::fs::copy(
            rust.with_extension(sidecar),
            flipped.with_extension(sidecar),
        )
        .expect("copy the manifest and signature");
    }
    let refused = refused_check(dir, &config("hello", &flipped, "", &public));
    assert!(
        refused.contains("is not the file its manifest") && refused.contains("SHA-256"),
        "{refused}"
    );
    let refused = refused_start(dir, &config("hello", &flipped, "", &public));
    assert!(
        refused.contains("is not the file its manifest"),
        "{refused}"
    );

    // Signed by a key the shop does not trust.
    let foreign = copy_into(&rust, &dir.join("foreign"));
    sign(&foreign, &keys.join("stranger.key"), "1.0.0", &[]);
    let refused = refused_start(dir, &config("hello", &foreign, "", &public));
    assert!(
        refused.contains("not one of the trusted publisher keys"),
        "{refused}"
    );
    // Unsigned, with no word from the config.
    let unsigned = copy_into(&rust, &dir.join("unsigned"));
    let refused = refused_check(dir, &config("hello", &unsigned, "", &public));
    assert!(refused.contains("is unsigned"), "{refused}");

    // The signed one runs.
    let gw = Gateway::start(&config("hello", &rust, "", &public));
    let url = gw.url("/hooks/hello");
    assert_eq!(signed_sample(&url).await, 200, "{}", gw.logs());
    let status = connector_status(&gw, "hello").await.expect("hello runs");
    assert_eq!(status["version"], "hello 1.0.0", "{status}");
    assert!(
        status["signature"]
            .as_str()
            .is_some_and(|s| s.starts_with("signed by Hello Bank")),
        "{status}"
    );

    // Version 2 asks to reach a host: signed, but held until granted.
    sign(&rust, &key, "2.0.0", &["api.hello-bank.example"]);
    assert!(
        gw.wait_for_log("api.hello-bank.example", Duration::from_secs(60)),
        "the reload did not say why it held version 2: {}",
        gw.logs()
    );
    assert_eq!(version(&gw, "hello").await.as_deref(), Some("hello 1.0.0"));
    assert_eq!(signed_sample(&url).await, 200, "the old version answers");
    let warnings = status_warnings(&gw).await;
    assert!(
        warnings.contains("refused") && warnings.contains("api.hello-bank.example"),
        "the status page says why version 2 is held: {warnings}"
    );
    let row = connector_status(&gw, "hello").await.expect("hello runs");
    assert_eq!(
        row["on_disk"], "held: asks to reach api.hello-bank.example, not granted",
        "{row}"
    );

    let path = gw.config_path();
    gw.edit_config(
        "[connector.config]",
        "allowed_hosts = [\"api.hello-bank.example\"]\n[connector.config]",
    );
    wait_for_version(&gw, "hello", "hello 2.0.0").await;
    assert_eq!(signed_sample(&url).await, 200, "version 2 answers");
    let warnings = status_warnings(&gw).await;
    assert!(!warnings.contains("refused"), "{warnings}");

    // The running file changed on disk (one byte): the reload refuses it,
    // the connector's row says so, version 2 keeps answering; put back,
    // the warning goes.
    let original = std::fs::read(&rust).expect("read wasm");
    let mut tampered = original.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 0x01;
    std::fs::write(&rust, &tampered).expect("tamper");
    wait_for_on_disk(&gw, "hello", Some("modified")).await;
    assert_eq!(signed_sample(&url).await, 200, "version 2 still answers");
    std::fs::write(&rust, &original).expect("put back");
    wait_for_on_disk(&gw, "hello", None).await;
    let warnings = status_warnings(&gw).await;
    assert!(!warnings.contains("refused"), "{warnings}");

    // The Python build, signed by the same author, beside it.
    if let Some(python) = python {
        sign(&python, &key, "1.0.0", &[]);
        let text = std::fs::read_to_string(&path).expect("read config");
        let python_table = format!(
            "[[connector]]\nname = \"hello-python\"\nplugin = \"{}\"\n[connector.config]\nsecret = \"{SECRET}\"\n\n",
            python.display()
        );
        std::fs::write(&path, format!("{text}\n{python_table}")).expect("write config");
        wait_for_version(&gw, "hello-python", "hello 1.0.0").await;
        assert_eq!(
            signed_sample(&gw.url("/hooks/hello-python")).await,
            200,
            "{}",
            gw.logs()
        );
    }
}
