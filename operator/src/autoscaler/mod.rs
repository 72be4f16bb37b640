//! The autoscaler's decision loop: each tick it turns the telemetry and the watch caches into a
//! fleet view per ModelDeployment, asks the core's evaluation
//! ([`modelfleet_operator_core::autoscale`]), and publishes the outcome for the reconcile, which
//! writes it (one writer for replicas).

pub mod control;

pub use control::{Decisions, LoopContext};
pub use modelfleet_operator_core::autoscale::Outcome;
