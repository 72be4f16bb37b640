//! Progressive delivery (issue #7), so far its pure core: the rollout state machine
//! ([`machine`]) and the built-in analysis checks from telemetry ([`analysis`]). It is not wired into the reconcile yet, so `spec.rollout.steps` and
//! `spec.rollout.analysis` are still reported as `FieldsNotActive`. A spec change mid-rollout is
//! the caller's to handle: a new candidate revision starts from a fresh [`machine::RolloutState`].

pub mod analysis;
pub mod machine;
