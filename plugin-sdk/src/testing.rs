//! A native stand-in for the gateway, so a connector's parsing and signature
//! checks are unit-tested with `cargo test` and no gateway.
//!
//! ```
//! use soundbox_plugin_sdk::{config, testing::TestHost};
//!
//! let host = TestHost::new().config("api_key", "secret");
//! let key = host.run(|| config::get("api_key"));
//! assert_eq!(key.as_deref(), Some("secret"));
//! ```
//!
//! Inside a plugin built for `wasm32`, the same functions call the gateway.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::http::HttpError;
use crate::log::Level;
use crate::{HttpRequest, HttpResponse};

type Responder = Rc<dyn Fn(&HttpRequest) -> Result<HttpResponse, HttpError>>;

/// What the test host provides: config, KV, outgoing HTTP and captured logs.
#[derive(Clone, Default)]
pub struct TestHost {
    pub(crate) config: BTreeMap<String, String>,
    pub(crate) kv: BTreeMap<String, Vec<u8>>,
    logs: Vec<(Level, String)>,
    sent: Vec<HttpRequest>,
    responder: Option<Responder>,
}

impl std::fmt::Debug for TestHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestHost")
            .field("config", &self.config.keys().collect::<Vec<_>>())
            .field("kv", &self.kv.keys().collect::<Vec<_>>())
            .field("logs", &self.logs.len())
            .finish()
    }
}

thread_local! {
    static CURRENT: RefCell<TestHost> = RefCell::new(TestHost::default());
}

/// Runs `f` against the test host active on this thread.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub(crate) fn with_env<R>(f: impl FnOnce(&mut TestHost) -> R) -> R {
    CURRENT.with(|cell| f(&mut cell.borrow_mut()))
}

#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
impl TestHost {
    /// An empty host: no config, empty KV, outgoing HTTP refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a config key as `[connector.config]` would.
    pub fn config(mut self, key: &str, value: &str) -> Self {
        self.config.insert(key.into(), value.into());
        self
    }

    /// Pre-loads a KV entry.
    pub fn kv(mut self, key: &str, value: &[u8]) -> Self {
        self.kv.insert(key.into(), value.to_vec());
        self
    }

    /// Answers the connector's outgoing HTTP with `responder`.
    pub fn http(
        mut self,
        responder: impl Fn(&HttpRequest) -> Result<HttpResponse, HttpError> + 'static,
    ) -> Self {
        self.responder = Some(Rc::new(responder));
        self
    }

    /// Runs `f` (a call into the connector) with this host active, and keeps
    /// the host's state (KV, logs, sent requests) for the next call.
    pub fn run<R>(&self, f: impl FnOnce() -> R) -> R {
        let previous = CURRENT.with(|cell| cell.replace(self.clone()));
        let result = f();
        CURRENT.with(|cell| cell.replace(previous));
        result
    }

    /// Like [`run`](Self::run), and returns the host as the call left it.
    pub fn run_and_keep<R>(self, f: impl FnOnce() -> R) -> (R, TestHost) {
        let previous = CURRENT.with(|cell| cell.replace(self));
        let result = f();
        let after = CURRENT.with(|cell| cell.replace(previous));
        (result, after)
    }

    /// Log lines the connector wrote.
    pub fn logs(&self) -> &[(Level, String)] {
        &self.logs
    }

    /// Requests the connector sent.
    pub fn sent(&self) -> &[HttpRequest] {
        &self.sent
    }

    /// A KV value as the connector left it.
    pub fn kv_value(&self, key: &str) -> Option<&[u8]> {
        self.kv.get(key).map(Vec::as_slice)
    }

    pub(crate) fn log(&mut self, level: Level, message: &str) {
        eprintln!("[plugin {level:?}] {message}");
        self.logs.push((level, message.to_string()));
    }

    pub(crate) fn send(&mut self, request: &HttpRequest) -> Result<HttpResponse, HttpError> {
        self.sent.push(request.clone());
        match &self.responder {
            Some(responder) => responder(request),
            None => Err(HttpError::NotAllowed(
                "the test host has no HTTP responder".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config, kv, log};

    #[test]
    fn host_state_is_scoped_to_run() {
        let host = TestHost::new().config("a", "1").kv("cursor", b"5");
        let (seen, after) = host.run_and_keep(|| {
            log::info("hello");
            assert!(kv::compare_and_swap("cursor", Some(b"5"), b"6").unwrap());
            assert!(!kv::compare_and_swap("cursor", Some(b"5"), b"7").unwrap());
            config::get("a")
        });
        assert_eq!(seen.as_deref(), Some("1"));
        assert_eq!(after.kv_value("cursor"), Some(&b"6"[..]));
        assert_eq!(after.logs().len(), 1);
        // Outside `run` the default, empty host answers.
        assert_eq!(config::get("a"), None);
    }

    #[test]
    fn http_goes_to_the_responder() {
        let host = TestHost::new().http(|req| Ok(HttpResponse::json(200, req.path.clone())));
        let (reply, after) =
            host.run_and_keep(|| crate::http::get("https://example.test/x", &[("A", "b")]));
        assert_eq!(reply.unwrap().text(), "https://example.test/x");
        assert_eq!(after.sent()[0].headers[0], ("a".into(), "b".into()));
        let refused = TestHost::new().run(|| crate::http::get("https://x.test", &[]));
        assert!(matches!(refused, Err(HttpError::NotAllowed(_))));
    }
}
