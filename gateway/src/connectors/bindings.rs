//! Host bindings of the WIT contract, all generated in one place.
//!
//! Bindings are generated for the `connector` world (both exports); a plugin
//! that exports only one of them is detected through the per-interface
//! `GuestIndices`, which fail for a missing export.

wasmtime::component::bindgen!({
    path: "../plugin-sdk/wit",
    world: "connector",
    imports: {
        "soundbox:connector/http-client.send": async,
        default: trappable,
    },
    exports: { default: async },
});

pub use exports::soundbox::connector::{poller, webhook};
pub use soundbox::connector::types;
