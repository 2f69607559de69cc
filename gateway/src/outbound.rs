//! The HTTP client for calls the gateway makes itself (the forward sinks,
//! the Speaker API), as opposed to a plugin's `http-client`.

use std::time::Duration;

/// The HTTP client every outbound sink uses: a whole-request `timeout`, no
/// redirects (a redirect is a configuration error, not something to follow
/// with credentials attached), and the gateway's user agent.
pub fn outbound_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("soundbox-gateway/", env!("CARGO_PKG_VERSION")))
        .build()
}
