//! The built-in autoscaler: the decision [`algorithm`] (pure, injected clock) and the decision
//! loop ([`control`]) that feeds it telemetry and publishes its outcomes for the reconcile,
//! which writes them (one writer for replicas).

pub mod algorithm;
pub mod control;

pub use algorithm::{Autoscaler, Decision, Observation, Params, Reason, Signals};
pub use control::{Decisions, LoopContext, Outcome, resume_replicas};
