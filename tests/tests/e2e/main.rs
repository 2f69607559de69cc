//! End-to-end tests: the real binary, real plugins built from `plugins/`,
//! real HTTP on loopback. One test binary; a module per area.

mod admin;
mod backfill;
mod backlog;
mod broker_guard;
mod casso_webhook;
mod chaos;
mod cli;
mod cluster_harness;
mod crash;
mod demo_bank;
mod durability;
mod fleet;
mod generic_webhook;
mod hello_connector;
mod hostile_plugin;
mod lanes;
mod momo_ipn;
mod mqtt;
mod plugin_http;
mod queue;
mod reload;
mod sandbox;
mod secrets;
mod secure_defaults;
mod security_http;
mod sepay_modes;
mod sepay_poll;
mod signed_plugins;
mod speaker;
mod stale;
mod store;
mod vnpay_ipn;
mod webhooks;
mod zalopay_callback;
