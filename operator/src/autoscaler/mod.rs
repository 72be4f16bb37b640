//! The built-in autoscaler (issue #6). So far: the decision algorithm, a pure function of
//! observations and an injected clock. The telemetry hub and the decision loop that feed it and
//! write the child Deployments come next.

pub mod algorithm;

pub use algorithm::{Autoscaler, Decision, Observation, Params, Reason, Signals};
