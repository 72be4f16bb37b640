//! What every reconcile shares.

use kube::{
    Client,
    runtime::{events::Recorder, reflector::Store},
};
use modelfleet_crds::ModelDeployment;

use crate::{
    OperatorConfig, autoscaler::Decisions, backoff::Failures, cache::Index, memory::Written,
    metrics::Metrics, telemetry::TelemetryStore,
};

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// The one Event recorder (it aggregates repeated Events).
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Settings.
    pub config: OperatorConfig,
    /// The children of every ModelDeployment, by owner.
    pub children: Index,
    /// The autoscaler's latest outcomes (the replica source with `spec.scaling`).
    pub decisions: Decisions,
    /// Node-agent telemetry (the built-in analysis checks read it).
    pub telemetry: TelemetryStore,
    /// What this process last wrote (its own status, the HTTPRoute).
    pub written: Written,
    /// Consecutive failures per object, for the retry backoff.
    pub failures: Failures,
    /// Every ModelDeployment (the controller's cache), for the model names others claim.
    pub model_deployments: Store<ModelDeployment>,
}

impl Context {
    /// Drops every memory of the ModelDeployments for which `live` (uid) does not hold.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        self.written.retain(&live);
        self.failures.retain(&live);
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
