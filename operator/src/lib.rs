//! modelfleet-operator: reconciles `ModelDeployment`s into serving workloads.
//!
//! Each reconcile is a pipeline, one module per step: [`reconcile::fetch`] reads the object's
//! children, [`modelfleet_crds::validate`] checks the spec, [`reconcile::plan`] and
//! [`reconcile::build`] compute the desired objects as pure functions, [`reconcile::apply`]
//! writes them with server-side apply, and [`reconcile::status`] reports what happened.

pub mod autoscaler;
pub mod backoff;
pub mod config;
pub mod controller;
mod error;
#[cfg(test)]
mod fake_api;
pub mod http;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod rollout;
pub mod telemetry;

pub use config::OperatorConfig;
pub use error::{Error, Result, Retry};
