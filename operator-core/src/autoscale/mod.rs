//! The built-in autoscaler: the decision [`algorithm`] (windows, panic mode, stabilisation) and
//! its [`evaluate`]ion of one ModelDeployment's fleet. The operator's decision loop feeds both
//! telemetry each tick and publishes the outcome for the reconcile, the one writer of replicas.

pub mod algorithm;
pub mod evaluate;
pub mod idle;

pub use algorithm::{Autoscaler, Decision, Observation, Params, Reason, Signals};
pub use evaluate::{Evaluation, FleetView, Memory, Outcome, evaluate, resume_replicas};
