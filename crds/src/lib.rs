//! modelfleet's API: the `ModelDeployment` custom resource (`modelfleet.dev/v1alpha1`), its
//! validation rules, the revision hash, and the names every part shares.
//!
//! This crate has no Kubernetes client or runtime dependency, so the operator, the node agent,
//! the server, the kubectl plugin and tests can all use it cheaply.

pub mod constants;
pub mod docs;
mod duration;
pub mod manifest;
pub mod revision;
pub mod rules;
pub mod v1alpha1;
mod validation;

pub use duration::{DURATION_MAX_LENGTH, DURATION_PATTERN, Duration, DurationError, parse_std_duration};
pub use v1alpha1::{ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus};
pub use validation::{FieldError, ValidationErrors, validate};
