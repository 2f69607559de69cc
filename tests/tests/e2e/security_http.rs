//! Attacks over the network on the real binary: slow clients (slowloris,
//! trickled bodies, a flood of idle sockets), a browser on the LAN calling
//! the admin server (cross-origin writes, DNS rebinding), and what a sender
//! is told when something inside the gateway fails.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use soundbox_e2e::{Gateway, plugin, post, sepay_webhook, wait_until_blocking};

const KEY: &str = "k3y-security-http";
const DEVICE: &str = "VNS-SEC-1";
const LANE: &str = "speaker:VNS-SEC-1";

/// A signed SePay connector (no unsigned webhooks needed), the in-process
/// Speaker API simulator with one speaker, and `extra`.
fn config(extra: &str) -> String {
    format!(
        "[[connector]]\nname = \"sepay\"\nplugin = \"{}\"\n[connector.config]\napi_key = \"{KEY}\"\n\n\
         [speaker]\nsimulator = true\nretry_initial_ms = 10\nretry_max_ms = 100\n\
         [[speaker.sim_devices]]\nhardware_id = \"{DEVICE}\"\npaired = true\n\n\
         [[route]]\naccount = \"*\"\nspeakers = [\"{DEVICE}\"]\n\n{extra}\n",
        plugin("sepay_webhook").display()
    )
}

fn apikey() -> String {
    format!("Apikey {KEY}")
}

/// Reads until the server closes the socket, for at most `limit`: what came,
/// and whether (and when) it closed.
fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            return (String::from_utf8_lossy(&got).into_owned(), None);
        }
        stream.set_read_timeout(Some(left)).expect("read timeout");
        match stream.read(&mut buf) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(started.elapsed()),
                );
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            // A reset is closed too.
            Err(_) => {
                return (
                    String::from_utf8_lossy(&got).into_owned(),
                    Some(started.elapsed()),
                );
            }
        }
    }
}

/// The server's header timeout is 10 s and its body deadline 15 s; this
/// much more is allowed for a loaded test machine.
const SLACK: Duration = Duration::from_secs(4);

#[test]
fn slow_clients_are_cut_off_by_the_server() {
    let gw = Gateway::start(&config(""));
    std::thread::scope(|s| {
        let idle = |addr: &str| {
            let addr = addr.to_string();
            s.spawn(move || {
                let mut stream = TcpStream::connect(&addr).expect("connect");
                read_until_closed(&mut stream, Duration::from_secs(10) + SLACK)
            })
        };
        let idle_ingress = idle(&gw.addr);
        let idle_admin = idle(&gw.admin_addr);
        let half_sent = s.spawn(|| {
            let mut stream = TcpStream::connect(&gw.addr).expect("connect");
            stream
                .write_all(b"POST /hooks/sepay HTTP/1.1\r\nHost: shop\r\nContent-Ty")
                .expect("write");
            read_until_closed(&mut stream, Duration::from_secs(10) + SLACK)
        });
        let trickled = s.spawn(|| {
            let mut stream = TcpStream::connect(&gw.addr).expect("connect");
            let head = format!(
                "POST /hooks/sepay HTTP/1.1\r\nHost: shop\r\nAuthorization: {}\r\n\
                 Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n",
                apikey()
            );
            stream.write_all(head.as_bytes()).expect("write");
            let mut writer = stream.try_clone().expect("clone");
            // A byte every 200 ms: never idle long, never done.
            std::thread::spawn(move || {
                for _ in 0..200 {
                    if writer.write_all(b" ").is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            });
            read_until_closed(&mut stream, Duration::from_secs(15) + SLACK)
        });

        for (what, handle) in [
            ("an idle webhook socket", idle_ingress),
            ("an idle admin socket", idle_admin),
            ("half-sent headers", half_sent),
        ] {
            let (_, closed) = handle.join().expect("thread");
            assert!(closed.is_some(), "{what} was still open after 14 s");
        }
        let (reply, closed) = trickled.join().expect("thread");
        assert!(
            closed.is_some(),
            "a trickled body was still open after 19 s"
        );
        assert!(
            reply.starts_with("HTTP/1.1 408"),
            "a trickled body gets 408: {reply:?}"
        );
        assert!(reply.contains("request_timeout"), "{reply}");
    });
}

#[test]
fn shutdown_does_not_wait_for_idle_or_slow_clients() {
    let mut gw = Gateway::start(&config(""));
    let mut held = Vec::new();
    for addr in [&gw.addr, &gw.admin_addr] {
        held.push(TcpStream::connect(addr).expect("connect"));
        let mut half = TcpStream::connect(addr).expect("connect");
        half.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Sl")
            .expect("write");
        held.push(half);
    }
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let status = gw.shut_down();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?} for clients that send nothing",
        started.elapsed()
    );
    drop(held);
}

/// More idle connections than the caps, with the gateway's descriptors
/// limited to 512: without a cap it runs out of them and stops accepting.
#[test]
fn a_flood_of_idle_connections_leaves_webhooks_and_health_answered() {
    const INGRESS_FLOOD: usize = 256 + 200;
    const ADMIN_FLOOD: usize = 64 + 50;
    let gw = Gateway::builder(&config(""))
        .wrapper(&["sh", "-c", "ulimit -n 512 && exec \"$0\" \"$@\""])
        .start();
    let mut flood = Vec::new();
    for _ in 0..INGRESS_FLOOD {
        flood.push(TcpStream::connect(&gw.addr).expect("connect"));
    }
    for _ in 0..ADMIN_FLOOD {
        flood.push(TcpStream::connect(&gw.admin_addr).expect("connect"));
    }
    // Give the gateway a moment to take them all in.
    std::thread::sleep(Duration::from_millis(500));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        let webhook = client
            .post(gw.url("/hooks/sepay"))
            .header("Authorization", apikey())
            .body(sepay_webhook(1, 10_000))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(
            webhook.as_ref().ok(),
            Some(&200),
            "a webhook during the flood: {webhook:?}"
        );
        let health = client
            .get(format!("http://{}/healthz", gw.admin_addr))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert_eq!(
            health.as_ref().ok(),
            Some(&200),
            "/healthz during the flood: {health:?}"
        );
    });
    drop(flood);
}

/// Sends `request` as is on a new connection and returns the status code
/// and the whole reply.
fn raw(addr: &str, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.write_all(request.as_bytes()).expect("write");
    let (reply, _) = read_until_closed(&mut stream, Duration::from_secs(5));
    let status = reply
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, reply)
}

/// A request on `addr` with `Host` and extra header lines; the body, if
/// any, is JSON.
fn request(method: &str, path: &str, host: &str, headers: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{headers}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn the_admin_server_refuses_foreign_hosts_and_cross_origin_writes() {
    let gw = Gateway::start(&config(""));
    let admin = gw.admin_addr.as_str();
    let port = admin.rsplit(':').next().expect("port");
    let localhost = format!("localhost:{port}");
    let get = |path: &str, host: &str| raw(admin, &request("GET", path, host, "", ""));

    // DNS rebinding: the attacker's name, pointed at this address.
    for path in ["/", "/api/status", "/healthz", "/speaker-sim/_sim/plays"] {
        let (status, reply) = get(path, &format!("attacker.example:{port}"));
        assert_eq!(status, 421, "{path} for a foreign Host: {reply}");
    }
    assert_eq!(get("/healthz", admin).0, 200, "by IP");
    assert_eq!(get("/api/status", &localhost).0, 200, "localhost");

    // A page elsewhere makes the browser POST here.
    let retry = format!("/api/queue/{LANE}/retry?dead=true");
    for header in [
        "Origin: http://attacker.example\r\n",
        "Origin: null\r\n",
        "Sec-Fetch-Site: cross-site\r\n",
        &format!("Origin: http://127.0.0.1:{}\r\n", soundbox_e2e::free_port()),
    ] {
        let (status, reply) = raw(admin, &request("POST", &retry, admin, header, ""));
        assert_eq!(status, 403, "retry with {header:?}: {reply}");
    }
    let own = format!("Origin: http://{admin}\r\nSec-Fetch-Site: same-origin\r\n");
    let (status, reply) = raw(admin, &request("POST", &retry, admin, &own, ""));
    assert_eq!(status, 200, "retry from the admin's own page: {reply}");
    let (status, reply) = raw(admin, &request("POST", &retry, admin, "", ""));
    assert_eq!(status, 200, "retry from a program: {reply}");

    // The simulator's routes are behind the same guard.
    let offline = format!("/speaker-sim/_sim/devices/{DEVICE}/online");
    let foreign = "Origin: http://attacker.example\r\n";
    let (status, reply) = raw(admin, &request("PUT", &offline, admin, foreign, "false"));
    assert_eq!(status, 403, "a cross-origin /_sim PUT: {reply}");
    let (_, devices) = get("/speaker-sim/_sim/devices", admin);
    assert!(
        devices.contains("\"online\":true"),
        "the speaker is still online: {devices}"
    );
    let token = "/speaker-sim/devices/v1/token/create";
    let (status, reply) = raw(admin, &request("POST", token, admin, foreign, ""));
    assert_eq!(status, 403, "a cross-origin Speaker API call: {reply}");
}

#[test]
fn an_admin_token_is_taken_from_the_header_only_and_guards_the_simulator() {
    let token = "s3cret-admin-token-security";
    let gw = Gateway::start(&config(&format!("[admin]\ntoken = \"{token}\"\n")));
    let admin = gw.admin_addr.as_str();
    let bearer = format!("Authorization: Bearer {token}\r\n");
    let foreign = "Origin: http://attacker.example\r\nSec-Fetch-Site: cross-site\r\n";
    let retry = format!("/api/queue/{LANE}/retry?dead=true");

    let (status, reply) = raw(admin, &request("POST", &retry, admin, foreign, ""));
    assert_eq!(status, 401, "cross-origin retry without the token: {reply}");
    let with = format!("{bearer}{foreign}");
    let (status, reply) = raw(admin, &request("POST", &retry, admin, &with, ""));
    assert_eq!(status, 200, "retry with the token in the header: {reply}");

    // Never from the URL.
    let (status, reply) = raw(
        admin,
        &request("GET", &format!("/api/queue?token={token}"), admin, "", ""),
    );
    assert_eq!(status, 401, "the token in the query string: {reply}");
    assert!(reply.contains("WWW-Authenticate") || reply.contains("www-authenticate"));

    // A browser's Basic credentials: fine for reading, not for a
    // cross-origin write (the browser would send them anyway).
    let basic = "Authorization: Basic c3RhZmY6czNjcmV0LWFkbWluLXRva2VuLXNlY3VyaXR5\r\n";
    assert_eq!(raw(admin, &request("GET", "/", admin, basic, "")).0, 200);
    let with = format!("{basic}{foreign}");
    let (status, reply) = raw(admin, &request("POST", &retry, admin, &with, ""));
    assert_eq!(
        status, 403,
        "cross-origin retry with Basic credentials: {reply}"
    );

    // The simulator's control routes need the token too.
    let plays = "/speaker-sim/_sim/plays";
    assert_eq!(raw(admin, &request("GET", plays, admin, "", "")).0, 401);
    assert_eq!(
        raw(admin, &request("GET", plays, admin, &bearer, "")).0,
        200
    );
    let offline = format!("/speaker-sim/_sim/devices/{DEVICE}/online");
    let (status, _) = raw(admin, &request("PUT", &offline, admin, "", "false"));
    assert_eq!(status, 401, "a /_sim PUT without the token");

    // The gateway's own Speaker API client, which has no admin token, still
    // gets through: the payment is played.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let r = rt.block_on(post(
        &gw.url("/hooks/sepay"),
        &[("Authorization", &apikey())],
        sepay_webhook(2, 20_000),
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let mut reply = String::new();
    let played = wait_until_blocking(Duration::from_secs(20), || {
        reply = raw(admin, &request("GET", plays, admin, &bearer, "")).1;
        reply.contains(DEVICE)
    });
    assert!(played, "never played: {reply}\n{}", gw.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_storage_failure_tells_the_sender_to_retry_without_the_detail() {
    // Far more free space than any machine has: every append is refused.
    let gw = Gateway::start(&config("[log]\nmin_free_disk_mb = 1000000000\n"));
    let r = post(
        &gw.url("/hooks/sepay"),
        &[("Authorization", &apikey())],
        sepay_webhook(3, 30_000),
    )
    .await;
    assert_eq!(r.status, 503, "{}\n{}", r.body, gw.logs());
    assert_eq!(r.json()["error"], "log_full");
    for detail in ["MiB", "min_free", "max_disk", "data", "/"] {
        assert!(!r.body.contains(detail), "{detail:?} in {}", r.body);
    }
    assert!(
        gw.wait_for_log("MiB free", Duration::from_secs(5)),
        "the detail is in the log: {}",
        gw.logs()
    );
}
