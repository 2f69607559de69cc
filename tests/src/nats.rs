//! A NATS cluster for end-to-end tests: `n` real `nats-server` processes
//! (Debian's package) on loopback, with JetStream and the MQTT listener, so
//! tests can run MQTT clients against a clustered broker and kill nodes.
//!
//! Every node has its own `server_name`, JetStream store (in the cluster's
//! temp dir), cluster routes to every other node, a plain-TCP MQTT listener
//! without auth, and an HTTP monitoring port. All ports are fixed at start,
//! so a node restarted after a kill comes back on the same addresses with
//! the same store.
//!
//! MQTT on NATS is built on JetStream: the server refuses MQTT sessions
//! until JetStream has a meta leader and can create its MQTT streams, so
//! [`NatsCluster::start`] and [`NatsCluster::restart`] wait until an MQTT
//! CONNECT with a persistent session gets a CONNACK on the node, not only
//! until its port listens.
//!
//! `SOUNDBOX_NATS_TRACE=1` makes every node log every protocol message
//! (MQTT packets included), for [`NatsCluster::logs`].

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a redelivery of an unacknowledged QoS 1 message waits: the
/// `mqtt { ack_wait }` of every node. NATS's default is 30 s; tests that
/// rely on a redelivery (a PUBACK that never came) would wait that long.
pub const ACK_WAIT: Duration = Duration::from_secs(5);

/// How long [`NatsCluster::start`] and [`NatsCluster::restart`] wait for a
/// node to become usable before failing the test.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The `nats-server` binary: on PATH, or where Debian puts it.
fn nats_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nats-server"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/nats-server")).filter(|p| p.is_file()))
}

/// Whether NATS tests can run here; in CI a missing server is a failure.
pub fn nats_available() -> bool {
    let found = nats_bin().is_some();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "nats-server is not installed (apt-get install nats-server; make test-tools does it)"
    );
    if !found {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
    }
    found
}

/// Why a node did not become usable.
enum NotUsable {
    /// A node exited because one of its ports was taken.
    PortTaken(String),
    Failed(String),
}

/// One node's fixed addresses, files and process.
struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    mqtt_port: u16,
    http_port: u16,
    config: PathBuf,
    child: Option<Child>,
    /// Every stderr line of every run of this node.
    logs: Arc<Mutex<Vec<String>>>,
}

/// A NATS cluster on loopback, every node stopped on drop.
pub struct NatsCluster {
    nodes: Vec<Node>,
    /// Configs, and each node's JetStream store under `<server_name>/`.
    pub dir: tempfile::TempDir,
}

impl NatsCluster {
    /// Starts `nodes` servers and waits until the cluster is usable for MQTT
    /// on every node: JetStream has a meta leader and a persistent-session
    /// MQTT CONNECT gets a CONNACK. With three nodes or more, MQTT's streams
    /// have three replicas, so the cluster survives the loss of one node.
    pub fn start(nodes: usize) -> NatsCluster {
        assert!(nodes >= 1, "a cluster needs a node");
        // A port picked free can be taken (by another test starting a
        // cluster or a broker at the same moment) before the node binds it;
        // the node then exits. A fresh set of ports the next time.
        let mut attempt = 1;
        loop {
            match Self::try_start(nodes) {
                Ok(cluster) => return cluster,
                Err(NotUsable::PortTaken(why)) if attempt < 3 => {
                    eprintln!("NATS cluster start, attempt {attempt}: {why}; again");
                    attempt += 1;
                }
                Err(NotUsable::PortTaken(why) | NotUsable::Failed(why)) => panic!("{why}"),
            }
        }
    }

    fn try_start(nodes: usize) -> Result<NatsCluster, NotUsable> {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ports = std::collections::BTreeSet::new();
        let mut port = || loop {
            let port = crate::free_port();
            if ports.insert(port) {
                return port;
            }
        };
        let mut cluster = NatsCluster {
            nodes: (0..nodes)
                .map(|i| Node {
                    name: format!("n{i}"),
                    client_port: port(),
                    cluster_port: port(),
                    mqtt_port: port(),
                    http_port: port(),
                    config: dir.path().join(format!("n{i}.conf")),
                    child: None,
                    logs: Arc::default(),
                })
                .collect(),
            dir,
        };
        for i in 0..nodes {
            let config = cluster.config_text(i);
            std::fs::write(&cluster.nodes[i].config, config).expect("write nats config");
        }
        // All at once: a node alone cannot elect a JetStream meta leader.
        for i in 0..nodes {
            cluster.spawn(i);
        }
        for i in 0..nodes {
            cluster.wait_usable(i)?;
        }
        Ok(cluster)
    }

    /// The number of nodes, running or not.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// The configuration file of node `i`, as written by [`NatsCluster::start`].
    pub fn config_text(&self, i: usize) -> String {
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name);
        let clustered = self.nodes.len() > 1;
        let cluster = if clustered {
            let routes: Vec<String> = self
                .nodes
                .iter()
                .filter(|other| other.name != node.name)
                .map(|other| format!("\"nats-route://127.0.0.1:{}\"", other.cluster_port))
                .collect();
            format!(
                "cluster {{\n  name: \"soundbox-test\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                node.cluster_port,
                routes.join(", ")
            )
        } else {
            String::new()
        };
        let replicas = self.nodes.len().min(3);
        format!(
            "# Node {i} of {size}: written by the soundbox-e2e harness.\n\
             {trace}server_name: \"{name}\"\n\
             listen: \"127.0.0.1:{client}\"\n\
             http: \"127.0.0.1:{http}\"\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_memory_store: 64MB\n  max_file_store: 1GB\n}}\n\
             {cluster}\
             mqtt {{\n\
             \x20 listen: \"127.0.0.1:{mqtt}\"\n\
             \x20 # MQTT's JetStream streams (sessions, messages, retained) with\n\
             \x20 # a replica on every node of a three-node cluster. Left unset,\n\
             \x20 # NATS counts the route URLs (two here, not counting this node)\n\
             \x20 # and would make them R2.\n\
             \x20 stream_replicas: {replicas}\n\
             \x20 # Each QoS 1 subscription is a durable JetStream consumer; as\n\
             \x20 # many replicas as the stream, so a subscription survives a node.\n\
             \x20 consumer_replicas: {replicas}\n\
             \x20 # A QoS 1 message not PUBACKed within this is sent again (with\n\
             \x20 # DUP), on the same connection or the next one of the session.\n\
             \x20 # NATS's default is 30s; 5s keeps the tests that wait for a\n\
             \x20 # redelivery short, and stays well above a PUBACK's round trip\n\
             \x20 # on a loaded machine, so nothing is redelivered by accident.\n\
             \x20 ack_wait: \"{ack_wait}s\"\n\
             \x20 # QoS 1 messages in flight per subscription (NATS's default).\n\
             \x20 max_ack_pending: 1024\n\
             }}\n",
            size = self.nodes.len(),
            name = node.name,
            client = node.client_port,
            http = node.http_port,
            store = store.display(),
            mqtt = node.mqtt_port,
            ack_wait = ACK_WAIT.as_secs(),
            trace = if std::env::var_os("SOUNDBOX_NATS_TRACE").is_some_and(|v| v == "1") {
                "# SOUNDBOX_NATS_TRACE=1: every MQTT packet in the log.\ndebug: true\ntrace: true\n"
            } else {
                ""
            },
        )
    }

    /// The MQTT port of node `i`.
    pub fn mqtt_port(&self, i: usize) -> u16 {
        self.nodes[i].mqtt_port
    }

    /// `mqtt://127.0.0.1:<port>` of node `i`.
    pub fn mqtt_url(&self, i: usize) -> String {
        format!("mqtt://127.0.0.1:{}", self.mqtt_port(i))
    }

    /// Every node's MQTT URL, in node order.
    pub fn mqtt_urls(&self) -> Vec<String> {
        (0..self.size()).map(|i| self.mqtt_url(i)).collect()
    }

    /// The NATS client port of node `i`.
    pub fn client_port(&self, i: usize) -> u16 {
        self.nodes[i].client_port
    }

    /// The HTTP monitoring port of node `i` (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_port(&self, i: usize) -> u16 {
        self.nodes[i].http_port
    }

    /// The process id of node `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].child.as_ref().map(Child::id)
    }

    /// SIGKILLs node `i` (no shutdown code runs) and leaves it dead.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again (killing it first if it runs) on the same
    /// ports, config and store, and waits until it is usable for MQTT.
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.nodes[i]
            .logs
            .lock()
            .expect("log lock")
            .push("--- harness: restarted ---".to_string());
        self.spawn(i);
        if let Err(NotUsable::PortTaken(why) | NotUsable::Failed(why)) = self.wait_usable(i) {
            panic!("restarting {}: {why}", self.nodes[i].name);
        }
    }

    /// SIGKILLs every node.
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }

    /// Every log line of node `i` so far, over all its runs.
    pub fn logs(&self, i: usize) -> String {
        self.nodes[i].logs.lock().expect("log lock").join("\n")
    }

    /// Every node's log, each under a header: for assertion messages.
    pub fn all_logs(&self) -> String {
        (0..self.size())
            .map(|i| format!("=== {} ===\n{}", self.nodes[i].name, self.logs(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A monitoring endpoint of node `i` (`/jsz`, `/varz`...) as JSON, or
    /// `None` if the node does not answer.
    pub fn monitor(&self, i: usize, path: &str) -> Option<serde_json::Value> {
        let (status, body) = http_get(self.monitor_port(i), path)?;
        if status != 200 {
            return None;
        }
        serde_json::from_str(&body).ok()
    }

    /// The JetStream meta leader as node `i` sees it, if it knows one.
    pub fn meta_leader(&self, i: usize) -> Option<String> {
        let jsz = self.monitor(i, "/jsz")?;
        let leader = jsz["meta_cluster"]["leader"].as_str()?;
        (!leader.is_empty()).then(|| leader.to_string())
    }

    /// QoS 1 messages delivered to MQTT subscribers and not PUBACKed yet,
    /// over every subscription of every session, as each JetStream
    /// consumer's leader counts them (`/jsz`; a follower's count lags).
    /// Nodes that do not answer are left out.
    pub fn mqtt_unacked(&self) -> u64 {
        let mut unacked = 0;
        for i in 0..self.size() {
            let Some(jsz) = self.monitor(i, "/jsz?consumers=true") else {
                continue;
            };
            let name = self.nodes[i].name.as_str();
            let streams = jsz["account_details"]
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|account| account["stream_detail"].as_array().into_iter().flatten());
            for stream in streams.filter(|s| s["name"] == "$MQTT_msgs") {
                let consumers = stream["consumer_detail"].as_array().into_iter().flatten();
                for consumer in consumers {
                    let leader = consumer["cluster"]["leader"].as_str();
                    // Unclustered, there is no leader to ask.
                    if leader.is_none_or(|leader| leader == name) {
                        unacked += consumer["num_ack_pending"].as_u64().unwrap_or(0);
                    }
                }
            }
        }
        unacked
    }

    /// Whether node `i` is usable for MQTT right now: it knows a JetStream
    /// meta leader (when clustered), and an MQTT CONNECT with a persistent
    /// session (a new client id each time) gets CONNACK 0.
    ///
    /// `/healthz` is not asked: on a node restarted after a SIGKILL, NATS
    /// 2.9 reports another node's retained-messages consumer (`$MQTT_rmsgs_
    /// <server hash>`, a push consumer without acks) as "not current" for
    /// a minute or more, while MQTT works.
    pub fn usable(&self, i: usize) -> Result<(), String> {
        if self.monitor(i, "/varz").is_none() {
            return Err("monitoring port does not answer".into());
        }
        if self.size() > 1 && self.meta_leader(i).is_none() {
            return Err("no JetStream meta leader yet".into());
        }
        static PROBES: AtomicU64 = AtomicU64::new(0);
        let client_id = format!(
            "harness-probe-{}-{}-{}",
            self.nodes[i].name,
            std::process::id(),
            PROBES.fetch_add(1, Ordering::Relaxed)
        );
        mqtt_probe(self.mqtt_port(i), &client_id)
    }

    /// Waits until node `i` is [usable](NatsCluster::usable), up to
    /// [`READY_TIMEOUT`]; fails at once if any started node exits.
    fn wait_usable(&mut self, i: usize) -> Result<(), NotUsable> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let last = match self.usable(i) {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            for n in 0..self.nodes.len() {
                let Some(child) = self.nodes[n].child.as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    self.nodes[n].child = None;
                    let log = self.logs(n);
                    let why = format!(
                        "nats-server {} exited ({status}); log:\n{log}",
                        self.nodes[n].name
                    );
                    return Err(if log.contains("address already in use") {
                        NotUsable::PortTaken(why)
                    } else {
                        NotUsable::Failed(why)
                    });
                }
            }
            if Instant::now() >= deadline {
                return Err(NotUsable::Failed(format!(
                    "nats-server {} not usable for MQTT after {READY_TIMEOUT:?} ({last}); logs:\n{}",
                    self.nodes[i].name,
                    self.all_logs()
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts node `i`'s process on its config; its stderr goes to its log.
    fn spawn(&mut self, i: usize) {
        let bin = nats_bin().expect("nats-server installed");
        let node = &mut self.nodes[i];
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&node.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nats-server");
        let stderr = child.stderr.take().expect("stderr");
        let sink = node.logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().expect("log lock").push(line);
            }
        });
        node.child = Some(child);
    }

    /// The directory of node `i`'s JetStream store.
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.nodes[i].name)
    }

    /// The config file of node `i`.
    pub fn config_path(&self, i: usize) -> &Path {
        &self.nodes[i].config
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `GET path` on a loopback HTTP port: status and body, or `None` if the
/// port does not answer within a couple of seconds.
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// An MQTT 3.1.1 CONNECT with clean session off as `client_id` on a
/// loopback port: `Ok` on CONNACK 0 (then DISCONNECT), else why not. Raw
/// bytes, so it needs no async runtime.
fn mqtt_probe(port: u16, client_id: &str) -> Result<(), String> {
    let mut stream = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    )
    .map_err(|e| format!("MQTT connect: {e}"))?;
    // NATS answers within its JetStream API timeout (4 s) when JetStream
    // is not ready; a bit longer than that.
    stream
        .set_read_timeout(Some(Duration::from_secs(6)))
        .map_err(|e| e.to_string())?;
    let id = client_id.as_bytes();
    assert!(id.len() < 100, "probe client id too long");
    // Variable header: protocol name "MQTT", level 4, flags 0 (clean
    // session off, no will, no credentials), keep-alive 60 s.
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0, 0, 60];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10, body.len() as u8];
    packet.extend_from_slice(&body);
    stream
        .write_all(&packet)
        .map_err(|e| format!("MQTT CONNECT: {e}"))?;
    let mut connack = [0u8; 4];
    stream
        .read_exact(&mut connack)
        .map_err(|e| format!("no CONNACK: {e}"))?;
    if connack[0] != 0x20 || connack[1] != 2 {
        return Err(format!("not a CONNACK: {connack:?}"));
    }
    if connack[3] != 0 {
        return Err(format!("CONNACK return code {}", connack[3]));
    }
    let _ = stream.write_all(&[0xE0, 0]);
    Ok(())
}
