//! The telemetry hub: node agents stream `NodeReport`s to it ([`hub`]), after authenticating
//! with a TokenReview ([`auth`]); the reports land in per-pod sliding windows ([`store`]) that the
//! autoscaler (and the rollout analysis) aggregate per ModelDeployment and revision. Routers
//! stream `RouterReport`s to the same hub; their sums become `status.routing` ([`routers`]).

pub mod auth;
pub mod hub;
pub mod routers;
pub mod store;

pub use auth::{AuthError, Authenticator};
pub use hub::Hub;
pub use store::{Aggregate, PodKey, PodSample, TelemetryStore};
