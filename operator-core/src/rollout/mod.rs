//! Progressive delivery: shadow and canary steps, analysis, promotion and rollback.
//!
//! - [`machine`]: the state machine of one candidate (steps, failure limits, holds).
//! - [`engine`]: wraps the machine with sizing, traffic, status and Events, reading its state
//!   from the status the previous reconcile wrote.
//! - [`analysis`]: judging a check's value against its thresholds. The operator reads the values
//!   (telemetry, Prometheus) before the decision when one is due.

pub mod analysis;
pub mod engine;
pub mod machine;
pub mod state;
