//! MQTT for end-to-end tests: a real Mosquitto broker (Debian's package) in a
//! temp dir, and a subscriber that records what it receives.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

/// The `mosquitto` binary: on PATH, or where Debian puts it.
fn mosquitto_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("mosquitto"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/mosquitto")).filter(|p| p.is_file()))
}

/// Whether MQTT tests can run here; in CI a missing broker is a failure.
pub fn mosquitto_available() -> bool {
    let found = mosquitto_bin().is_some();
    assert!(
        found || std::env::var_os("CI").is_none(),
        "mosquitto is not installed (apt-get install mosquitto; make test does it)"
    );
    if !found {
        eprintln!("skipped: mosquitto is not installed (apt-get install mosquitto)");
    }
    found
}

/// A Mosquitto broker on a loopback port, with persistence in its own temp
/// dir (so subscribers' sessions survive a restart), killed on drop.
pub struct Mosquitto {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Mosquitto {
    /// Starts a broker allowing anonymous clients on a free port.
    pub fn start() -> Mosquitto {
        Self::start_with("allow_anonymous true\n")
    }

    /// Starts a broker whose config is `listener <port> 127.0.0.1`, the
    /// persistence settings, then `extra`.
    pub fn start_with(extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let config = format!(
            "listener {port} 127.0.0.1\npersistence true\npersistence_location {}/\n\
             autosave_interval 1\nlog_dest stderr\n{}{extra}",
            dir.path().display(),
            // As root, Mosquitto would switch to its own user, who cannot
            // read this temp dir; as anyone else this line does nothing.
            "user root\n",
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).expect("write config");
        let mut broker = Mosquitto {
            port,
            dir,
            child: None,
        };
        broker.restart();
        broker
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    /// Starts (again) on the same port and persistence file.
    pub fn restart(&mut self) {
        let bin = mosquitto_bin().expect("mosquitto installed");
        let child = Command::new(bin)
            .arg("-c")
            .arg(self.dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops with SIGTERM (it saves its persistence file) and waits.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One message as received.
#[derive(Debug, Clone)]
pub struct Message {
    pub topic: String,
    pub payload: Vec<u8>,
    pub retain: bool,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// A QoS 1 subscriber to `filter` with a persistent session (it gets what
/// was published while it was away), reconnecting on its own.
pub struct Subscriber {
    received: Arc<Mutex<Vec<Message>>>,
    _client: AsyncClient,
}

impl Subscriber {
    /// Connects to `host:port`, subscribes, and waits for the SubAck.
    pub async fn connect(port: u16, filter: &str) -> Subscriber {
        let id = format!("e2e-sub-{}", crate::free_port());
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options
            .set_clean_session(false)
            .set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sink = received.clone();
        let (subscribed, ready) = tokio::sync::oneshot::channel();
        let mut subscribed = Some(subscribed);
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::SubAck(_))) => {
                        if let Some(s) = subscribed.take() {
                            let _ = s.send(());
                        }
                    }
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        sink.lock().expect("lock").push(Message {
                            topic: p.topic.clone(),
                            payload: p.payload.to_vec(),
                            retain: p.retain,
                        });
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready)
            .await
            .expect("SubAck in time")
            .expect("SubAck");
        Subscriber {
            received,
            _client: client,
        }
    }

    /// Messages received on `topic` so far.
    pub fn on(&self, topic: &str) -> Vec<Message> {
        let received = self.received.lock().expect("lock");
        received
            .iter()
            .filter(|m| m.topic == topic)
            .cloned()
            .collect()
    }

    /// Waits up to `timeout` until `done` holds for the messages on `topic`.
    pub async fn wait_until(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl Fn(&[Message]) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if done(&self.on(topic)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        done(&self.on(topic))
    }

    /// Waits up to `timeout` until the last message on `topic` reads `text`.
    pub async fn wait_for_last(&self, topic: &str, text: &str, timeout: Duration) -> bool {
        self.wait_until(topic, timeout, |m| {
            m.last().is_some_and(|m| m.text() == text)
        })
        .await
    }

    /// The distinct event `id`s received on `topic`.
    pub fn distinct_ids(&self, topic: &str) -> std::collections::BTreeSet<String> {
        self.on(topic)
            .iter()
            .filter_map(|m| m.json()["id"].as_str().map(str::to_string))
            .collect()
    }
}
