//! modelfleet-operator: the shell around [`modelfleet_operator_core`], which decides. This crate
//! watches (the caches in [`cache`]), runs the rollout [`analysis`] when one is due, calls the
//! core's `decide`, and writes the effects in a fixed order ([`reconcile::effects`]). It also
//! runs the autoscaler's decision loop ([`autoscaler`]), the telemetry hub ([`telemetry`]) and
//! leader election ([`leader`]).
//!
//! Module dependencies point one way: [`controller`] → [`reconcile`] → {[`context`], [`cache`],
//! [`memory`], [`analysis`]} → the core; [`autoscaler`] → {[`cache`], [`telemetry`]}; nothing
//! imports [`controller`]. `tests/layout.rs` fails on a cycle.

pub mod analysis;
pub mod autoscaler;
pub mod backoff;
pub mod cache;
pub mod config;
pub mod context;
pub mod controller;
mod error;
#[cfg(test)]
mod fake_api;
pub mod http;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod reconcile;
pub mod telemetry;

pub use config::OperatorConfig;
pub use error::{Error, Result, Retry};
