//! A plugin's outgoing HTTP through the real gateway: no ambient proxy, and
//! `allowed_hosts` entries that mean what they say, ports included.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use soundbox_e2e::{Gateway, plugin, post};

/// A loopback listener that counts connections and answers each with a
/// small `200` (or just closes, as a proxy that refuses).
struct Listener {
    port: u16,
    connections: Arc<AtomicUsize>,
}

impl Listener {
    fn start(answer: bool) -> Listener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let connections = Arc::new(AtomicUsize::new(0));
        let seen = connections.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                seen.fetch_add(1, Ordering::SeqCst);
                if !answer {
                    continue;
                }
                // Read the request head, then reply and close.
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            }
        });
        Listener { port, connections }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// The `http-not-allowed` fixture (it GETs the URL in the body and replies
/// `{"upstream":<status>}`) as connector `fetch`.
fn fetcher(allowed_hosts: &str) -> String {
    format!(
        "[[connector]]\nname = \"fetch\"\nplugin = \"{}\"\nallowed_hosts = {allowed_hosts}\n",
        plugin("fixture_http_not_allowed").display()
    )
}

/// `HTTPS_PROXY` and friends in the gateway's environment do not apply to
/// plugins: a proxy would resolve the name itself, out of reach of the
/// private-address check. The request goes straight to the upstream.
#[tokio::test]
async fn plugin_http_ignores_the_ambient_proxy() {
    let proxy = Listener::start(false);
    let upstream = Listener::start(true);
    let proxy_url = format!("http://127.0.0.1:{}", proxy.port);
    let gw = Gateway::builder(&fetcher(&format!("[\"127.0.0.1:{}\"]", upstream.port)))
        .envs(&[
            ("HTTPS_PROXY", &proxy_url),
            ("HTTP_PROXY", &proxy_url),
            ("ALL_PROXY", &proxy_url),
            ("https_proxy", &proxy_url),
            ("http_proxy", &proxy_url),
            ("all_proxy", &proxy_url),
            ("NO_PROXY", ""),
            ("no_proxy", ""),
        ])
        .start();
    let target = format!("http://127.0.0.1:{}/", upstream.port);
    let reply = post(&gw.url("/hooks/fetch"), &[], target).await;
    assert_eq!(reply.status, 200, "{}\n{}", reply.body, gw.logs());
    assert_eq!(reply.body, "{\"upstream\":200}");
    assert_eq!(
        proxy.connections(),
        0,
        "the plugin's request went to the proxy"
    );
    assert_eq!(upstream.connections(), 1);
}

/// A bare loopback host allows only the scheme's default port: listing
/// `127.0.0.1` or `localhost` does not hand a plugin the admin API.
#[tokio::test]
async fn a_bare_loopback_host_does_not_open_the_admin_api() {
    let gw = Gateway::start(&fetcher("[\"127.0.0.1\", \"localhost\"]"));
    let admin_port = gw.admin_addr.rsplit(':').next().unwrap_or_default();
    for (host, target) in [
        ("127.0.0.1", format!("http://{}/", gw.admin_addr)),
        ("localhost", format!("http://localhost:{admin_port}/")),
    ] {
        let refused = post(&gw.url("/hooks/fetch"), &[], target.clone()).await;
        assert_eq!(refused.status, 503, "{target}: {}", refused.body);
        // The sender only hears "retry later"; the refusal is in the log.
        assert!(
            gw.wait_for_log(
                &format!("{host}` port {admin_port} is not in this connector's allowed_hosts"),
                Duration::from_secs(5)
            ),
            "{target}: {}",
            gw.logs()
        );
    }
}
