//! # soundbox-plugin-sdk
//!
//! Write a connector plugin for [soundbox-gateway]: a small WebAssembly
//! component that turns a bank's or e-wallet's webhook (or a poll of its API)
//! into [`BalanceChange`]s. The gateway stores each change durably, publishes
//! it on MQTT and has the shop's speaker announce it.
//!
//! A webhook connector is one type and one macro:
//!
//! ```
//! use soundbox_plugin_sdk::{
//!     export_webhook_connector, BalanceChange, ConnectorError, Direction, HttpRequest,
//!     HttpResponse, WebhookConnector, WebhookOutcome,
//! };
//!
//! pub struct Hello;
//!
//! impl WebhookConnector for Hello {
//!     fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError> {
//!         // The body is `<id>:<amount>`, e.g. `42:150000`.
//!         let body = std::str::from_utf8(&request.body)
//!             .map_err(|_| ConnectorError::BadRequest("body is not UTF-8".into()))?;
//!         let (id, amount) = body
//!             .split_once(':')
//!             .ok_or_else(|| ConnectorError::BadRequest("expected <id>:<amount>".into()))?;
//!         let amount = amount
//!             .trim()
//!             .parse()
//!             .map_err(|_| ConnectorError::BadRequest("amount is not an integer".into()))?;
//!         let change = BalanceChange::incoming("hello", id, "0001", amount);
//!         Ok(WebhookOutcome {
//!             changes: vec![change],
//!             reply: Some(HttpResponse::json(200, r#"{"ok":true}"#)),
//!         })
//!     }
//! }
//!
//! export_webhook_connector!(Hello);
//!
//! // Natively, `cargo test` runs the same code with the test host:
//! let outcome = soundbox_plugin_sdk::testing::TestHost::new()
//!     .run(|| Hello::handle(HttpRequest::post_json("42:150000")))
//!     .unwrap();
//! assert_eq!(outcome.changes[0].amount, 150_000);
//! ```
//!
//! Build it with `cargo build --release --target wasm32-wasip2`; the
//! `.wasm` in `target/wasm32-wasip2/release/` is the plugin.
//!
//! What a plugin may do is what the gateway grants through the imports:
//! [`log`], [`config`], [`kv`] and [`http`]. Each works natively too, backed by
//! [`testing::TestHost`], so parsing and signature checks are unit-tested with
//! plain `cargo test` and no gateway.
//!
//! [soundbox-gateway]: https://github.com/soundbox-gateway/soundbox-gateway

#[doc(hidden)]
#[path = "bindings.rs"]
pub mod __bindings;

pub mod config;
pub mod http;
pub mod kv;
pub mod log;
pub mod signature;
pub mod testing;
pub mod text;
pub mod time;
mod types;

pub use types::{
    BalanceChange, ConnectorError, Direction, HttpRequest, HttpResponse, PollOutcome,
    WebhookOutcome,
};

/// The version of the WIT contract (`soundbox:connector`) this SDK builds against.
pub const CONTRACT_VERSION: &str = "0.1.1";

/// A connector that receives webhooks: the gateway calls [`handle`](Self::handle)
/// for every `POST /hooks/<connector>`, each time in a fresh sandbox.
pub trait WebhookConnector {
    /// Verify the request, parse it, and return what it says.
    ///
    /// Return [`ConnectorError::Unauthorized`] for a bad signature,
    /// [`ConnectorError::BadRequest`] for a malformed body and
    /// [`ConnectorError::Transient`] when the sender should retry.
    fn handle(request: HttpRequest) -> Result<WebhookOutcome, ConnectorError>;
}

/// A connector that polls a provider's API on an interval.
pub trait PollingConnector {
    /// Fetch what is new since the cursor kept in [`kv`], and advance it.
    fn poll() -> Result<PollOutcome, ConnectorError>;
}

/// Exports a [`WebhookConnector`] as the plugin's `webhook` interface
/// (world `webhook-connector`). Use once per plugin crate.
#[macro_export]
macro_rules! export_webhook_connector {
    ($connector:ty) => {
        // Natively (unit tests) there is no component to export into; the
        // reference keeps the connector type from looking unused.
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn(
            $crate::HttpRequest,
        ) -> ::core::result::Result<$crate::WebhookOutcome, $crate::ConnectorError> =
            <$connector as $crate::WebhookConnector>::handle;
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __SoundboxExport;
            impl $crate::__bindings::webhook::exports::soundbox::connector::webhook::Guest
                for __SoundboxExport
            {
                fn handle(
                    request: $crate::HttpRequest,
                ) -> ::core::result::Result<$crate::WebhookOutcome, $crate::ConnectorError> {
                    <$connector as $crate::WebhookConnector>::handle(request)
                }
            }
            $crate::__bindings::webhook::__export_webhook_world!(__SoundboxExport with_types_in $crate::__bindings::webhook);
        };
    };
}

/// Exports a [`PollingConnector`] as the plugin's `poller` interface
/// (world `polling-connector`). Use once per plugin crate.
#[macro_export]
macro_rules! export_polling_connector {
    ($connector:ty) => {
        #[cfg(not(target_arch = "wasm32"))]
        const _: fn() -> ::core::result::Result<$crate::PollOutcome, $crate::ConnectorError> =
            <$connector as $crate::PollingConnector>::poll;
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __SoundboxExport;
            impl $crate::__bindings::poller::exports::soundbox::connector::poller::Guest
                for __SoundboxExport
            {
                fn poll() -> ::core::result::Result<$crate::PollOutcome, $crate::ConnectorError> {
                    <$connector as $crate::PollingConnector>::poll()
                }
            }
            $crate::__bindings::poller::__export_polling_world!(__SoundboxExport with_types_in $crate::__bindings::poller);
        };
    };
}

/// Exports a type that is both a [`WebhookConnector`] and a [`PollingConnector`]
/// (world `connector`): e.g. webhooks for speed plus a poller that fills gaps.
#[macro_export]
macro_rules! export_connector {
    ($connector:ty) => {
        $crate::export_webhook_connector!($connector);
        $crate::export_polling_connector!($connector);
    };
}
