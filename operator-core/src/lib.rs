//! modelfleet-operator-core: what one reconcile of a ModelDeployment decides, as pure functions.
//!
//! The operator (crate `modelfleet-operator`) is the shell around this crate: it reads its watch
//! caches into a [`Snapshot`], runs the rollout analysis when [`analysis_due`] says one is due,
//! calls [`decide`], builds the children with [`build::build`] and writes the effects. Nothing
//! here has a Kubernetes client or an async runtime (the crate depends on neither), and time is
//! always an argument, so every behaviour is a table test.
//!
//! - [`observed`]: what the caches show; [`diagnose`]: pod problems a person must act on.
//! - [`plan`]: which revisions run with how many replicas (the replica source, step-less
//!   replacement, the drain after a promotion).
//! - [`rollout`]: shadow and canary steps, analysis judging, promotion and rollback.
//! - [`autoscale`]: the autoscaler's algorithm and its evaluation of a fleet.
//! - [`conditions`], [`status`], [`events`]: what the user reads.
//! - [`build`]: every child object.

pub mod autoscale;
pub mod build;
pub mod conditions;
pub mod decide;
pub mod diagnose;
pub mod events;
pub mod names;
pub mod observed;
pub mod plan;
pub mod rollout;
pub mod status;
pub mod telemetry;

pub use decide::{AnalysisDue, Controls, Decision, Requeue, Snapshot, analysis_due, decide};
