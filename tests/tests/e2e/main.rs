//! End-to-end tests: the real binary, real plugins built from `plugins/`,
//! real HTTP on loopback. One test binary; a module per area.

mod cli;
mod crash;
mod durability;
mod mqtt;
mod queue;
mod sandbox;
mod speaker;
mod webhooks;
