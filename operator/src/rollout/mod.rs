//! Progressive delivery: shadow and canary steps, analysis, promotion and rollback.
//!
//! - [`machine`]: the pure state machine of one candidate (steps, failure limits, holds).
//! - [`engine`]: pure too; wraps the machine with sizing, traffic, status and Events, reading its
//!   state from the status the previous reconcile wrote.
//! - [`analysis`] (pure) and [`prometheus`] + [`run`] (I/O): the checks.

pub mod analysis;
pub mod engine;
pub mod machine;
pub mod prometheus;
pub mod run;
