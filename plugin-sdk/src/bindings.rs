//! Generated guest bindings, one module per world. The `host` world holds the
//! imports and the shared types; the three connector worlds reuse them through
//! `with`, so every world speaks the same Rust types.
//!
//! Each export macro is public (`pub_export_macro`) so a plugin crate emits its
//! own world's type section: a webhook-only plugin exports `webhook` and nothing
//! else. A plugin that invokes both macros gets the union of the two worlds,
//! which is the `connector` world.

#![allow(missing_docs, clippy::all, unsafe_code)]

pub mod host {
    wit_bindgen::generate!({
        path: "wit",
        world: "host",
        additional_derives: [PartialEq, Eq],
        default_bindings_module: "soundbox_plugin_sdk::__bindings::host",
    });
}

pub mod webhook {
    wit_bindgen::generate!({
        path: "wit",
        world: "webhook-connector",
        with: {
            "soundbox:connector/types@0.1.1": crate::__bindings::host::soundbox::connector::types,
            "soundbox:connector/log@0.1.1": crate::__bindings::host::soundbox::connector::log,
            "soundbox:connector/config@0.1.1": crate::__bindings::host::soundbox::connector::config,
            "soundbox:connector/kv@0.1.1": crate::__bindings::host::soundbox::connector::kv,
            "soundbox:connector/http-client@0.1.1": crate::__bindings::host::soundbox::connector::http_client,
        },
        pub_export_macro: true,
        export_macro_name: "__export_webhook_world",
        default_bindings_module: "soundbox_plugin_sdk::__bindings::webhook",
    });
}

pub mod poller {
    wit_bindgen::generate!({
        path: "wit",
        world: "polling-connector",
        with: {
            "soundbox:connector/types@0.1.1": crate::__bindings::host::soundbox::connector::types,
            "soundbox:connector/log@0.1.1": crate::__bindings::host::soundbox::connector::log,
            "soundbox:connector/config@0.1.1": crate::__bindings::host::soundbox::connector::config,
            "soundbox:connector/kv@0.1.1": crate::__bindings::host::soundbox::connector::kv,
            "soundbox:connector/http-client@0.1.1": crate::__bindings::host::soundbox::connector::http_client,
        },
        pub_export_macro: true,
        export_macro_name: "__export_polling_world",
        default_bindings_module: "soundbox_plugin_sdk::__bindings::poller",
    });
}
