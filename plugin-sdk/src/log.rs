//! Log lines into the gateway's log, tagged with the connector's name.
//! Natively they go to [`crate::testing::TestHost`]'s captured log and stderr.

pub use crate::__bindings::host::soundbox::connector::log::Level;

/// Logs `message` at `level`.
pub fn log(level: Level, message: &str) {
    #[cfg(target_arch = "wasm32")]
    crate::__bindings::host::soundbox::connector::log::log(level, message);
    #[cfg(not(target_arch = "wasm32"))]
    crate::testing::with_env(|env| env.log(level, message));
}

pub fn debug(message: &str) {
    log(Level::Debug, message)
}

pub fn info(message: &str) {
    log(Level::Info, message)
}

pub fn warn(message: &str) {
    log(Level::Warn, message)
}

pub fn error(message: &str) {
    log(Level::Error, message)
}
