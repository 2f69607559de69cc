//! `plugin test`: run a built plugin once, without a gateway or config file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use base64::Engine;
use clap::Args;
use hmac::digest::KeyInit;
use hmac::digest::core_api::BlockSizeUser;
use hmac::{Mac, SimpleHmac};
use sha2::Digest;
use sha2::{Sha256, Sha512};

use crate::config::{ConnectorConfig, PluginLimits, PluginTrustConfig};
use crate::connectors::{IncomingRequest, Plugin, Runtime};
use crate::ingress::{self, StaleRule};
use crate::log::{EventLog, LogOptions, Store};

/// The connector's name in `plugin test`: webhooks go to `/hooks/test`.
const NAME: &str = "test";

#[derive(Debug, Args)]
pub struct PluginTest {
    /// The plugin (`.wasm` component).
    plugin: PathBuf,
    /// Webhook body from a file, or `-` to read it from standard input. A
    /// missing file is an error; for a body written out, use --body.
    #[arg(long, value_name = "FILE|-", conflicts_with_all = ["poll", "body"])]
    webhook: Option<PathBuf>,
    /// Webhook body as given, e.g. --body '{"id":"t1"}'.
    #[arg(long, value_name = "TEXT", conflicts_with = "poll")]
    body: Option<String>,
    /// The webhook's query string without `?` (VNPay IPNs carry their fields there).
    #[arg(long, default_value = "", conflicts_with = "poll")]
    query: String,
    /// The webhook's HTTP method.
    #[arg(long, default_value = "POST", conflicts_with = "poll")]
    method: String,
    /// Call `poll` instead of `handle`.
    #[arg(long)]
    poll: bool,
    /// A request header, `Name: value` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Sign the body as a provider would and add the header(s):
    /// `SCHEME:SECRET`, SCHEME one of hmac-sha256, hmac-sha512,
    /// hmac-sha256-base64, hmac-sha512-base64 (header X-Signature) or sepay
    /// (X-SePay-Timestamp and X-SePay-Signature).
    #[arg(long, value_name = "SCHEME:SECRET", conflicts_with = "poll")]
    sign: Option<String>,
    /// The header an hmac-* scheme signs into, e.g. generic-webhook's `hmac_header`.
    #[arg(long, value_name = "NAME", requires = "sign")]
    sign_header: Option<String>,
    /// With an hmac-* scheme: send the time (Unix seconds) in this header
    /// and sign `<time>.<body>`, as generic-webhook's `timestamp_header`.
    #[arg(long, value_name = "NAME", requires = "sign")]
    sign_timestamp_header: Option<String>,
    /// A plugin config value, `key=value` (repeatable).
    #[arg(long = "set")]
    settings: Vec<String>,
    /// Hosts the plugin may reach over HTTP (repeatable).
    #[arg(long = "allow-host")]
    allowed_hosts: Vec<String>,
}

impl PluginTest {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        // Everything about the request is checked before the plugin is
        // compiled (seconds for a Python or JavaScript one).
        let webhook = if self.poll {
            None
        } else {
            let body = resolve_body(
                self.webhook.as_deref(),
                self.body.as_deref(),
                &self.query,
                std::io::stdin().lock(),
            )?;
            let signer = self
                .sign
                .as_deref()
                .map(|spec| {
                    Signer::parse(
                        spec,
                        self.sign_header.as_deref(),
                        self.sign_timestamp_header.as_deref(),
                    )
                })
                .transpose()?;
            Some(self.request(body, signer.as_ref())?)
        };

        let mut settings = toml::Table::new();
        for pair in &self.settings {
            let (k, v) = pair
                .split_once('=')
                .with_context(|| format!("--set `{pair}`: expected key=value"))?;
            settings.insert(k.trim().to_string(), toml::Value::String(v.to_string()));
        }
        let mut connector = ConnectorConfig::ad_hoc(self.plugin.clone(), settings);
        connector.allowed_hosts = self
            .allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        // The plugin's KV lives in a throwaway store.
        let scratch = tempfile::tempdir()?;
        let log_options = LogOptions {
            min_free_disk_bytes: 0,
            segment_bytes: 1 << 20,
            ..LogOptions::default()
        };
        let stale = StaleRule::new(log_options.dedupe_retention);
        let store = Store::open(scratch.path(), log_options)?;
        let runtime = Arc::new(Runtime::new(PluginLimits::default(), None)?);
        let plugin =
            Plugin::load(runtime, &connector, &PluginTrustConfig::run_any(), &store).await?;

        let started = std::time::Instant::now();
        let Some(request) = webhook else {
            let result = plugin.poll().await?;
            if let Some(kv) = plugin.kv_batch(result.kv_writes) {
                store.append(Vec::new(), Some(kv)).await?;
            }
            let output = serde_json::json!({
                "world": plugin.world(),
                "signature": plugin.signature().to_string(),
                "manifest": plugin.manifest(),
                "changes": result.changes,
                "next_poll_ms": result.next_poll.map(|d| d.as_millis() as u64),
            });
            report_elapsed(started);
            println!("{}", serde_json::to_string_pretty(&output)?);
            return Ok(ExitCode::SUCCESS);
        };

        let (changes, reply, error, response) = match plugin.handle(request).await {
            Ok(result) => {
                if let Some(kv) = plugin.kv_batch(result.kv_writes) {
                    store.append(Vec::new(), Some(kv)).await?;
                }
                // The gateway's own replay rule, at the default dedupe window.
                let (kept, refused) =
                    stale.sift(NAME, result.changes.clone(), crate::model::now_ms());
                let response = if refused > 0 && kept.is_empty() {
                    ingress::stale_refused()
                } else {
                    ingress::answer(NAME, Ok(result.reply.clone()))
                };
                (result.changes, result.reply, None, response)
            }
            Err(e) => {
                let error = e.to_string();
                (Vec::new(), None, Some(error), ingress::answer(NAME, Err(e)))
            }
        };
        report_elapsed(started);
        let status = response.status().as_u16();
        let sent = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .context("reading the gateway's answer")?;
        let output = serde_json::json!({
            "world": plugin.world(),
            "signature": plugin.signature().to_string(),
            "manifest": plugin.manifest(),
            "changes": changes,
            "reply": reply.map(|r| serde_json::json!({
                "status": r.status,
                "body": String::from_utf8_lossy(&r.body),
            })),
            "error": error,
            "sender_gets": sender_gets(status, &sent),
        });
        println!("{}", serde_json::to_string_pretty(&output)?);
        eprintln!("{}", sender_line(status, &sent));
        // The exit status is the plugin's: a sample older than the dedupe
        // window still shows whether the plugin takes it.
        match &error {
            Some(error) => {
                eprintln!("error: {error}");
                Ok(ExitCode::FAILURE)
            }
            None => Ok(ExitCode::SUCCESS),
        }
    }

    /// The request the plugin gets: `content-type: application/json`, the
    /// `-H` headers (replacing one of the same name), then the signature's.
    fn request(&self, body: Vec<u8>, signer: Option<&Signer>) -> anyhow::Result<IncomingRequest> {
        let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
        let mut add = |name: &str, value: &str| {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
            headers.push((name.to_ascii_lowercase(), value.to_string()));
        };
        for h in &self.headers {
            let (k, v) = h
                .split_once(':')
                .with_context(|| format!("--header `{h}`: expected Name: value"))?;
            add(k.trim(), v.trim());
        }
        if let Some(signer) = signer {
            for (k, v) in signer.headers(&body, crate::model::now_ms()) {
                add(&k, &v);
            }
        }
        Ok(IncomingRequest {
            method: self.method.to_ascii_uppercase(),
            path: format!("/hooks/{NAME}"),
            query: self.query.trim_start_matches('?').to_string(),
            headers,
            body,
        })
    }
}

fn report_elapsed(started: std::time::Instant) {
    eprintln!(
        "call took {:.3} ms",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// The webhook's body: `--webhook FILE` read (a missing file is an error,
/// never the body), `--webhook -` read from `stdin`, `--body` as given, or
/// empty with only `--query`.
fn resolve_body(
    webhook: Option<&Path>,
    body: Option<&str>,
    query: &str,
    mut stdin: impl Read,
) -> anyhow::Result<Vec<u8>> {
    match (webhook, body) {
        (Some(_), Some(_)) => bail!("give the body with --webhook or --body, not both"),
        (Some(path), None) if path.as_os_str() == "-" => {
            let mut body = Vec::new();
            stdin
                .read_to_end(&mut body)
                .context("--webhook -: reading the body from standard input")?;
            Ok(body)
        }
        (Some(path), None) => std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                anyhow::anyhow!(
                    "--webhook {}: no such file (for a body written out use --body '<text>'; \
                     `--webhook -` reads standard input)",
                    path.display()
                )
            } else {
                anyhow::Error::new(e).context(format!("--webhook {}", path.display()))
            }
        }),
        (None, Some(text)) => Ok(text.as_bytes().to_vec()),
        (None, None) if !query.is_empty() => Ok(Vec::new()),
        (None, None) => bail!("give --webhook <FILE|->, --body <TEXT>, --query or --poll"),
    }
}

/// What the webhook's sender gets, for the JSON output.
fn sender_gets(status: u16, body: &[u8]) -> serde_json::Value {
    serde_json::json!({
        "status": status,
        "body": String::from_utf8_lossy(body),
    })
}

/// The longest reply body [`sender_line`] shows, in characters.
const MAX_SHOWN_BODY: usize = 300;

/// One line for the terminal: `sender gets HTTP 401 Unauthorized: {…}`, the
/// body clipped and without control characters.
fn sender_line(status: u16, body: &[u8]) -> String {
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .map(|r| format!(" {r}"))
        .unwrap_or_default();
    let text = String::from_utf8_lossy(body);
    let mut shown: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if let Some((cut, _)) = shown.char_indices().nth(MAX_SHOWN_BODY) {
        shown.truncate(cut);
        shown.push('…');
    }
    if shown.trim().is_empty() {
        format!("sender gets HTTP {status}{reason} (no body)")
    } else {
        format!("sender gets HTTP {status}{reason}: {}", shown.trim())
    }
}

/// How a provider signs its webhooks, for `--sign`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// `X-Signature: hex or base64 of HMAC-SHA256/512(secret, body)`: the
    /// hello connector, generic-webhook (`auth = "hmac"`, `hmac_algorithm`,
    /// `hmac_encoding`).
    Hmac { sha512: bool, base64: bool },
    /// SePay (`auth = "hmac"`): `X-SePay-Timestamp: <Unix seconds>` and
    /// `X-SePay-Signature: sha256=hex(HMAC-SHA256(secret, "<timestamp>.<body>"))`.
    Sepay,
}

/// The schemes by the name `--sign` takes.
const SCHEMES: [(&str, Scheme); 5] = [
    (
        "hmac-sha256",
        Scheme::Hmac {
            sha512: false,
            base64: false,
        },
    ),
    (
        "hmac-sha512",
        Scheme::Hmac {
            sha512: true,
            base64: false,
        },
    ),
    (
        "hmac-sha256-base64",
        Scheme::Hmac {
            sha512: false,
            base64: true,
        },
    ),
    (
        "hmac-sha512-base64",
        Scheme::Hmac {
            sha512: true,
            base64: true,
        },
    ),
    ("sepay", Scheme::Sepay),
];

/// The header the hmac-* schemes sign into unless told otherwise.
const DEFAULT_SIGNATURE_HEADER: &str = "x-signature";

/// Signs a body with a key, as `--sign SCHEME:SECRET` asks.
#[derive(Debug)]
struct Signer {
    scheme: Scheme,
    secret: String,
    /// For the hmac-* schemes.
    header: String,
    /// For the hmac-* schemes: sign `<Unix seconds>.<body>`, the time in this header.
    timestamp_header: Option<String>,
}

/// A header name given on the command line, lower-cased.
fn header_name(flag: &str, name: &str) -> anyhow::Result<String> {
    let name = name.trim();
    if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
        bail!("{flag} `{name}`: expected a header name");
    }
    Ok(name.to_ascii_lowercase())
}

impl Signer {
    fn parse(
        spec: &str,
        header: Option<&str>,
        timestamp_header: Option<&str>,
    ) -> anyhow::Result<Signer> {
        let names = || SCHEMES.map(|(n, _)| n).join(", ");
        let (name, secret) = spec
            .split_once(':')
            .with_context(|| format!("--sign: expected SCHEME:SECRET (schemes: {})", names()))?;
        let scheme = SCHEMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.trim()))
            .map(|(_, s)| *s)
            .with_context(|| format!("--sign: no scheme `{name}` (schemes: {})", names()))?;
        if secret.is_empty() {
            bail!("--sign {name}: the secret is empty");
        }
        if scheme == Scheme::Sepay && (header.is_some() || timestamp_header.is_some()) {
            bail!(
                "--sign sepay: its headers are fixed (X-SePay-Timestamp, X-SePay-Signature); \
                 --sign-header and --sign-timestamp-header are for the hmac-* schemes"
            );
        }
        Ok(Signer {
            scheme,
            secret: secret.to_string(),
            header: match header {
                Some(h) => header_name("--sign-header", h)?,
                None => DEFAULT_SIGNATURE_HEADER.to_string(),
            },
            timestamp_header: timestamp_header
                .map(|h| header_name("--sign-timestamp-header", h))
                .transpose()?,
        })
    }

    /// The headers carrying the signature of `body` at `now_ms`.
    fn headers(&self, body: &[u8], now_ms: i64) -> Vec<(String, String)> {
        let key = self.secret.as_bytes();
        let ts = now_ms.div_euclid(1000).to_string();
        let dotted = || [ts.as_bytes(), b".", body].concat();
        match self.scheme {
            Scheme::Sepay => {
                let mac = hex::encode(hmac::<Sha256>(key, &dotted()));
                vec![
                    ("x-sepay-timestamp".into(), ts),
                    ("x-sepay-signature".into(), format!("sha256={mac}")),
                ]
            }
            Scheme::Hmac { sha512, base64 } => {
                let signed = match &self.timestamp_header {
                    Some(_) => dotted(),
                    None => body.to_vec(),
                };
                let mac = if sha512 {
                    hmac::<Sha512>(key, &signed)
                } else {
                    hmac::<Sha256>(key, &signed)
                };
                let value = if base64 {
                    base64::engine::general_purpose::STANDARD.encode(mac)
                } else {
                    hex::encode(mac)
                };
                let mut headers = vec![(self.header.clone(), value)];
                if let Some(name) = &self.timestamp_header {
                    headers.push((name.clone(), ts));
                }
                headers
            }
        }
    }
}

/// HMAC of `message` under `key` with SHA-256 or SHA-512.
fn hmac<D: Digest + BlockSizeUser>(key: &[u8], message: &[u8]) -> Vec<u8> {
    // Any key length is valid for HMAC: `new_from_slice` cannot fail here.
    let mut mac =
        <SimpleHmac<D> as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::{CallError, Rejection, Reply};
    use soundbox_plugin_sdk::signature;

    const BODY: &[u8] = br#"{"id":"t1","account":"0001","amount":150000}"#;

    fn no_stdin() -> &'static [u8] {
        b"stdin must not be read"
    }

    #[test]
    fn a_missing_body_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let typo = dir.path().join("samples/paylaod.json");
        let error = resolve_body(Some(&typo), None, "", no_stdin()).expect_err("no such file");
        let text = format!("{error:#}");
        assert!(text.contains(&typo.display().to_string()), "{text}");
        assert!(
            text.contains("no such file") && text.contains("--body"),
            "{text}"
        );
    }

    #[test]
    fn a_body_file_is_read_and_a_folder_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("payload.json");
        std::fs::write(&file, BODY).expect("write");
        let body = resolve_body(Some(&file), None, "", no_stdin()).expect("read");
        assert_eq!(body, BODY);
        let error = resolve_body(Some(dir.path()), None, "", no_stdin()).expect_err("a folder");
        assert!(
            format!("{error:#}").contains(&dir.path().display().to_string()),
            "{error:#}"
        );
    }

    #[test]
    fn dash_reads_the_body_from_stdin() {
        let body = resolve_body(Some(Path::new("-")), None, "", BODY).expect("stdin");
        assert_eq!(body, BODY);
    }

    #[test]
    fn body_is_the_literal_text_and_query_alone_is_an_empty_body() {
        let body = resolve_body(None, Some("{}"), "", no_stdin()).expect("literal");
        assert_eq!(body, b"{}");
        let body = resolve_body(None, None, "vnp_Amount=100", no_stdin()).expect("query only");
        assert!(body.is_empty());
        let error = resolve_body(None, None, "", no_stdin()).expect_err("nothing to send");
        assert!(error.to_string().contains("--webhook"), "{error}");
        assert!(resolve_body(Some(Path::new("-")), Some("{}"), "", no_stdin()).is_err());
    }

    /// `plugin test`'s arguments as clap parses them (after `plugin test`).
    fn parse_args(args: &[&str]) -> Result<PluginTest, clap::Error> {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            test: PluginTest,
        }
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|cli| cli.test)
    }

    #[test]
    fn clap_takes_the_new_flags() {
        let test = parse_args(&[
            "p.wasm",
            "--webhook",
            "-",
            "--sign",
            "hmac-sha256:s3cret",
            "--sign-header",
            "X-VDB-Signature",
        ])
        .expect("parses");
        assert_eq!(test.webhook.as_deref(), Some(Path::new("-")));
        assert_eq!(test.sign.as_deref(), Some("hmac-sha256:s3cret"));
        assert!(parse_args(&["p.wasm", "--webhook", "a", "--body", "{}"]).is_err());
        assert!(parse_args(&["p.wasm", "--sign-header", "X-Sig"]).is_err());
        assert!(parse_args(&["p.wasm", "--poll", "--body", "{}"]).is_err());
    }

    /// What the ingress answers, as `run` reads and prints it.
    async fn printed(response: axum::response::Response) -> (u16, String, serde_json::Value) {
        let status = response.status().as_u16();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (
            status,
            sender_line(status, &body),
            sender_gets(status, &body),
        )
    }

    #[tokio::test]
    async fn the_senders_status_is_printed() {
        let (status, line, json) = printed(ingress::answer(NAME, Ok(None))).await;
        assert_eq!(status, 200);
        assert_eq!(line, r#"sender gets HTTP 200 OK: {"ok":true}"#);
        assert_eq!(json["status"], 200);
        assert_eq!(json["body"], r#"{"ok":true}"#);

        let denied = Err(CallError::Rejected(Rejection::Unauthorized(
            "bad signature".into(),
        )));
        let (status, line, json) = printed(ingress::answer(NAME, denied)).await;
        assert_eq!(status, 401);
        assert_eq!(
            line,
            r#"sender gets HTTP 401 Unauthorized: {"error":"unauthorized","reason":"bad signature"}"#
        );
        assert_eq!(json["status"], 401);

        let retry = Err(CallError::Rejected(Rejection::Transient(
            "bank down".into(),
        )));
        let (status, line, _) = printed(ingress::answer(NAME, retry)).await;
        assert_eq!(status, 503);
        assert!(
            line.starts_with("sender gets HTTP 503 Service Unavailable: "),
            "{line}"
        );

        let reply = Reply {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        };
        let (status, line, _) = printed(ingress::answer(NAME, Ok(Some(reply)))).await;
        assert_eq!(status, 204);
        assert_eq!(line, "sender gets HTTP 204 No Content (no body)");

        let (status, line, _) = printed(ingress::stale_refused()).await;
        assert_eq!(status, 400);
        assert!(line.contains("stale"), "{line}");
    }

    #[test]
    fn the_sender_line_is_one_clipped_line() {
        let line = sender_line(299, format!("a\r\nb{}", "é".repeat(1000)).as_bytes());
        assert!(line.starts_with("sender gets HTTP 299: a  b"), "{line}");
        assert!(!line.contains('\n') && line.ends_with('…'), "{line}");
        assert!(line.chars().count() < MAX_SHOWN_BODY + 40);
    }

    #[test]
    fn hmac_matches_rfc_4231_and_the_sdk_for_any_key_length() {
        // RFC 4231 test case 2.
        assert_eq!(
            hex::encode(hmac::<Sha256>(b"Jefe", b"what do ya want for nothing?")),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        for len in [0, 1, 63, 64, 65, 127, 128, 129, 300] {
            let key = vec![0xa5u8; len];
            assert_eq!(
                hmac::<Sha256>(&key, BODY),
                signature::hmac_sha256(&key, BODY),
                "{len}"
            );
            assert_eq!(
                hmac::<Sha512>(&key, BODY),
                signature::hmac_sha512(&key, BODY),
                "{len}"
            );
        }
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> &'a str {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
    }

    #[test]
    fn hmac_signatures_pass_the_sdks_verifier() {
        let hex256 = Signer::parse("hmac-sha256:s3cret", None, None).expect("scheme");
        let headers = hex256.headers(BODY, 0);
        let given = header(&headers, "x-signature");
        assert!(signature::verify_hex(
            given,
            &signature::hmac_sha256(b"s3cret", BODY)
        ));
        assert!(!signature::verify_hex(
            given,
            &signature::hmac_sha256(b"other", BODY)
        ));

        // The sample of examples/hello-connector, signed with `s3cret`.
        let sample = include_bytes!("../../../examples/hello-connector/payload.json");
        assert_eq!(
            header(&hex256.headers(sample, 0), "x-signature"),
            "2caa8b8650813f6db94b45aee2e03cedf32b161d9d06565b374a57aa798009c0"
        );

        let hex512 = Signer::parse("HMAC-SHA512:k:with:colons", Some("X-VDB-Signature"), None)
            .expect("scheme");
        let headers = hex512.headers(BODY, 0);
        assert!(signature::verify_hex(
            header(&headers, "x-vdb-signature"),
            &signature::hmac_sha512(b"k:with:colons", BODY)
        ));

        let engine = base64::engine::general_purpose::STANDARD;
        for (spec, expected) in [
            (
                "hmac-sha256-base64:k",
                signature::hmac_sha256(b"k", BODY).to_vec(),
            ),
            (
                "hmac-sha512-base64:k",
                signature::hmac_sha512(b"k", BODY).to_vec(),
            ),
        ] {
            let headers = Signer::parse(spec, None, None)
                .expect("scheme")
                .headers(BODY, 0);
            let given = engine
                .decode(header(&headers, "x-signature"))
                .expect("base64");
            assert!(signature::constant_time_eq(&given, &expected), "{spec}");
        }
    }

    #[test]
    fn a_timestamp_header_signs_time_dot_body() {
        let signer =
            Signer::parse("hmac-sha512-base64:k", None, Some("X-Timestamp")).expect("scheme");
        let headers = signer.headers(BODY, 1_721_890_957_999);
        assert_eq!(header(&headers, "x-timestamp"), "1721890957");
        let given = base64::engine::general_purpose::STANDARD
            .decode(header(&headers, "x-signature"))
            .expect("base64");
        let signed = [b"1721890957.".as_slice(), BODY].concat();
        assert!(signature::constant_time_eq(
            &given,
            &signature::hmac_sha512(b"k", &signed)
        ));
    }

    #[test]
    fn sepay_signatures_pass_the_sepay_plugins_check() {
        let sample = include_bytes!("../../../examples/payloads/sepay-webhook.json");
        let now_ms = 1_760_000_000_123;
        let signer = Signer::parse("sepay:s3cret", None, None).expect("scheme");
        let headers = signer.headers(sample, now_ms);
        assert_eq!(header(&headers, "x-sepay-timestamp"), "1760000000");
        let mut request = soundbox_plugin_sdk::HttpRequest::post_json(sample.to_vec());
        for (k, v) in &headers {
            request = request.with_header(k, v);
        }
        let host = || {
            soundbox_plugin_sdk::testing::TestHost::new()
                .config("auth", "hmac")
                .config("hmac_secret", "s3cret")
        };
        let now_secs = now_ms / 1000;
        host()
            .run(|| sepay_webhook::authenticate(&request, now_secs))
            .expect("the plugin accepts it");
        let wrong_key = soundbox_plugin_sdk::testing::TestHost::new()
            .config("auth", "hmac")
            .config("hmac_secret", "other");
        assert!(
            wrong_key
                .run(|| sepay_webhook::authenticate(&request, now_secs))
                .is_err()
        );
    }

    #[test]
    fn bad_sign_specs_are_errors() {
        for (spec, header, timestamp, says) in [
            ("hmac-sha256", None, None, "SCHEME:SECRET"),
            ("hmac-md5:k", None, None, "no scheme `hmac-md5`"),
            ("hmac-sha256:", None, None, "empty"),
            ("sepay:k", Some("X-Sig"), None, "fixed"),
            ("sepay:k", None, Some("X-Ts"), "fixed"),
            ("hmac-sha256:k", Some("X-Sig: v"), None, "header name"),
            ("hmac-sha256:k", None, Some(" "), "header name"),
        ] {
            let error = Signer::parse(spec, header, timestamp).expect_err(spec);
            assert!(error.to_string().contains(says), "{spec}: {error}");
        }
    }

    #[test]
    fn the_signature_replaces_a_header_given_with_h() {
        let test = parse_args(&[
            "p.wasm",
            "--body",
            "{}",
            "-H",
            "X-Signature: stale",
            "-H",
            "X-Other: 1",
        ])
        .expect("parses");
        let signer = Signer::parse("hmac-sha256:k", None, None).expect("scheme");
        let request = test
            .request(b"{}".to_vec(), Some(&signer))
            .expect("request");
        let signatures: Vec<_> = request
            .headers
            .iter()
            .filter(|(k, _)| k == "x-signature")
            .collect();
        assert_eq!(signatures.len(), 1, "{:?}", request.headers);
        assert_eq!(
            signatures[0].1,
            hex::encode(signature::hmac_sha256(b"k", b"{}"))
        );
        assert_eq!(header(&request.headers, "x-other"), "1");
        assert_eq!(header(&request.headers, "content-type"), "application/json");
    }
}
