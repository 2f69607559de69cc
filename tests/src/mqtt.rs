//! MQTT for end-to-end tests and benches: a real Mosquitto broker (Debian's
//! package) in a temp dir, and a subscriber that records what it receives.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rumqttc::{AsyncClient, Event, Incoming, MqttOptions, QoS};

use crate::wait::{wait_until, wait_until_blocking};

/// The `mosquitto` binary: on PATH, or where Debian puts it.
fn mosquitto_bin() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("mosquitto"))
            .find(|p| p.is_file())
    });
    on_path.or_else(|| Some(PathBuf::from("/usr/sbin/mosquitto")).filter(|p| p.is_file()))
}

/// Whether `mosquitto` is installed.
pub fn mosquitto_installed() -> bool {
    mosquitto_bin().is_some()
}

/// Whether MQTT tests can run here; in CI a missing broker is a failure.
pub fn mosquitto_available() -> bool {
    let found = mosquitto_installed();
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
        Self::start_config(true, extra)
    }

    /// Starts a broker that keeps nothing on disk (`persistence false`),
    /// whose config ends with `extra`: a bench's.
    pub fn start_without_persistence(extra: &str) -> Mosquitto {
        Self::start_config(false, extra)
    }

    fn start_config(persistence: bool, extra: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let persistence = if persistence {
            format!(
                "persistence true\npersistence_location {}/\nautosave_interval 1\n",
                dir.path().display()
            )
        } else {
            "persistence false\n".to_string()
        };
        let config = format!(
            "listener {port} 127.0.0.1\n{persistence}log_dest stderr\n{}{extra}",
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
        let port = self.port;
        let listens = wait_until_blocking(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(listens, "mosquitto did not start");
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
    /// When the subscriber got it, on both clocks.
    pub arrived: Instant,
    pub arrived_wall: SystemTime,
}

impl Message {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }
}

/// The distinct `transaction_id`s of the events in `messages` (a resent
/// event counts once).
pub fn transaction_ids(messages: &[Message]) -> BTreeSet<String> {
    messages
        .iter()
        .filter_map(|m| m.json()["transaction_id"].as_str().map(str::to_string))
        .collect()
}

/// Whether MQTT topic filter `filter` (with `+` levels, no `#`) matches `topic`.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let (mut f, mut t) = (filter.split('/'), topic.split('/'));
    loop {
        match (f.next(), t.next()) {
            (None, None) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            _ => return false,
        }
    }
}

/// What happens to each message received.
type Handler = Box<dyn FnMut(Message) + Send>;

/// What a [`Subscriber`] subscribes with: QoS 1 to its filters, a
/// persistent session (it gets what was published while it was away) and a
/// 5 s keep-alive unless told otherwise.
pub struct SubscriberOptions {
    port: u16,
    filters: Vec<String>,
    clean_session: bool,
    keep_alive: Duration,
    max_packet_size: Option<usize>,
    handler: Option<Handler>,
}

impl SubscriberOptions {
    /// One more topic filter.
    pub fn filter(mut self, filter: &str) -> Self {
        self.filters.push(filter.to_string());
        self
    }

    /// A clean session: the broker forgets it on disconnect.
    pub fn clean_session(mut self) -> Self {
        self.clean_session = true;
        self
    }

    pub fn keep_alive(mut self, keep_alive: Duration) -> Self {
        self.keep_alive = keep_alive;
        self
    }

    /// The largest packet it sends or takes, in bytes.
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.max_packet_size = Some(bytes);
        self
    }

    /// Hands each message to `handler`, on the subscriber's own thread, the
    /// moment it arrives, instead of keeping it for [`Subscriber::on`].
    pub fn on_message(mut self, handler: impl FnMut(Message) + Send + 'static) -> Self {
        self.handler = Some(Box::new(handler));
        self
    }

    /// Connects, subscribes and waits for every SubAck.
    pub async fn connect(self) -> Subscriber {
        let (subscriber, subacks, wanted) = self.spawn();
        let subscribed = wait_until(Duration::from_secs(10), async || {
            subacks.load(Ordering::SeqCst) >= wanted
        })
        .await;
        assert!(subscribed, "no SubAck from the broker in time");
        subscriber
    }

    /// [`SubscriberOptions::connect`] for code outside an async runtime.
    pub fn connect_blocking(self) -> Subscriber {
        let (subscriber, subacks, wanted) = self.spawn();
        let subscribed = wait_until_blocking(Duration::from_secs(10), || {
            subacks.load(Ordering::SeqCst) >= wanted
        });
        assert!(subscribed, "no SubAck from the broker in time");
        subscriber
    }

    /// Starts the subscriber's thread; the SubAcks it got, and how many it
    /// waits for.
    fn spawn(self) -> (Subscriber, Arc<AtomicUsize>, usize) {
        let id = format!("e2e-sub-{}", fastrand::u32(..));
        let mut options = MqttOptions::new(id, "127.0.0.1", self.port);
        options
            .set_clean_session(self.clean_session)
            .set_keep_alive(self.keep_alive);
        if let Some(bytes) = self.max_packet_size {
            options.set_max_packet_size(bytes, bytes);
        }
        let received: Arc<Mutex<Vec<Message>>> = Arc::default();
        let errors: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
        let subacks = Arc::new(AtomicUsize::new(0));
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let handler = self.handler.unwrap_or_else(|| {
            let received = received.clone();
            Box::new(move |m| received.lock().expect("lock").push(m))
        });
        let wanted = self.filters.len();
        let thread = {
            let (errors, subacks) = (errors.clone(), subacks.clone());
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("subscriber runtime");
                rt.block_on(receive(
                    options,
                    self.filters,
                    handler,
                    Receiving {
                        errors,
                        subacks,
                        stopped,
                    },
                ));
            })
        };
        let subscriber = Subscriber {
            received,
            errors,
            stop: Some(stop),
            thread: Some(thread),
        };
        (subscriber, subacks, wanted)
    }
}

/// What the receiving loop reports to the [`Subscriber`], and its stop.
struct Receiving {
    errors: Arc<Mutex<Vec<(Instant, String)>>>,
    subacks: Arc<AtomicUsize>,
    /// Resolves when the [`Subscriber`] is dropped.
    stopped: tokio::sync::oneshot::Receiver<()>,
}

/// Subscribes to `filters` and hands every message to `handler` until
/// stopped; reconnects on its own after an error (100 ms).
async fn receive(
    options: MqttOptions,
    filters: Vec<String>,
    mut handler: Handler,
    mut receiving: Receiving,
) {
    let (client, mut eventloop) = AsyncClient::new(options, 100);
    for filter in &filters {
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }
    loop {
        let event = tokio::select! {
            _ = &mut receiving.stopped => return,
            event = eventloop.poll() => event,
        };
        let (arrived, arrived_wall) = (Instant::now(), SystemTime::now());
        match event {
            Ok(Event::Incoming(Incoming::SubAck(_))) => {
                receiving.subacks.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Event::Incoming(Incoming::Publish(p))) => handler(Message {
                topic: p.topic.clone(),
                payload: p.payload.to_vec(),
                retain: p.retain,
                arrived,
                arrived_wall,
            }),
            Ok(_) => {}
            Err(error) => {
                let failed = (arrived, error.to_string());
                receiving.errors.lock().expect("lock").push(failed);
                tokio::select! {
                    _ = &mut receiving.stopped => return,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

/// A QoS 1 subscriber on a thread and runtime of its own (so a busy test
/// or load generator does not delay it), reconnecting on its own; stopped
/// on drop.
pub struct Subscriber {
    received: Arc<Mutex<Vec<Message>>>,
    errors: Arc<Mutex<Vec<(Instant, String)>>>,
    /// Dropped to stop the thread.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Subscriber {
    /// What to subscribe to the broker on `127.0.0.1:port` with.
    pub fn options(port: u16) -> SubscriberOptions {
        SubscriberOptions {
            port,
            filters: Vec::new(),
            clean_session: false,
            keep_alive: Duration::from_secs(5),
            max_packet_size: None,
            handler: None,
        }
    }

    /// Connects to `127.0.0.1:port` with a persistent session, subscribes
    /// to `filter`, and waits for the SubAck.
    pub async fn connect(port: u16, filter: &str) -> Subscriber {
        Self::options(port).filter(filter).connect().await
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

    /// When the connection failed, and why, so far.
    pub fn connection_errors(&self) -> Vec<(Instant, String)> {
        self.errors.lock().expect("lock").clone()
    }

    /// Waits up to `timeout` until `done` holds for the messages on `topic`.
    pub async fn wait_until(
        &self,
        topic: &str,
        timeout: Duration,
        done: impl Fn(&[Message]) -> bool,
    ) -> bool {
        wait_until(timeout, async || done(&self.on(topic))).await
    }

    /// Waits up to `timeout` until the last message on `topic` reads `text`.
    pub async fn wait_for_last(&self, topic: &str, text: &str, timeout: Duration) -> bool {
        self.wait_until(topic, timeout, |m| {
            m.last().is_some_and(|m| m.text() == text)
        })
        .await
    }

    /// The distinct event `id`s received on `topic`.
    pub fn distinct_ids(&self, topic: &str) -> BTreeSet<String> {
        self.on(topic)
            .iter()
            .filter_map(|m| m.json()["id"].as_str().map(str::to_string))
            .collect()
    }

    /// The distinct `transaction_id`s of the events received on `topic`.
    pub fn transaction_ids(&self, topic: &str) -> BTreeSet<String> {
        transaction_ids(&self.on(topic))
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
