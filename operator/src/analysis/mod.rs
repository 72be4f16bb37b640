//! One analysis run, the I/O before a decision: every check of `spec.rollout.analysis`, the
//! built-in ones from the telemetry store and the Prometheus ones over HTTP, concurrently and
//! bounded by a timeout. Judging the values is the core's
//! ([`modelfleet_operator_core::rollout::analysis`]).

use std::time::{Duration, Instant};

use futures::future::join_all;
use modelfleet_crds::v1alpha1::BuiltinCheck;

use modelfleet_operator_core::{
    AnalysisDue,
    rollout::{
        analysis::{check_name, evaluate_builtin, judge},
        machine::CheckOutcome,
    },
};

use crate::telemetry::TelemetryStore;

pub mod prometheus;

pub use prometheus::Placeholders;

/// How long one Prometheus query may take before it counts as inconclusive.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a run reads from.
#[derive(Debug, Clone, Copy)]
pub struct AnalysisEnv<'a> {
    /// Node-agent telemetry.
    pub telemetry: &'a TelemetryStore,
    /// The operator's `--prometheus-url`, for checks without an `address`.
    pub prometheus_url: Option<&'a str>,
    /// The ModelDeployment's namespace.
    pub namespace: &'a str,
    /// The ModelDeployment's name.
    pub deployment: &'a str,
}

/// Runs the checks that apply to the current step.
pub async fn run(due: &AnalysisDue<'_>, env: &AnalysisEnv<'_>) -> Vec<CheckOutcome> {
    let now = Instant::now();
    let p = Placeholders {
        namespace: env.namespace,
        deployment: env.deployment,
        revision: &due.revision,
        stable_revision: &due.stable_revision,
    };
    let candidate = env
        .telemetry
        .aggregate(p.namespace, p.deployment, Some(p.revision), now);
    let stable = env
        .telemetry
        .aggregate(p.namespace, p.deployment, Some(p.stable_revision), now);
    let runs = due
        .checks
        .iter()
        .filter(|c| due.shadow_step || c.builtin != Some(BuiltinCheck::OutputAgreement))
        .map(|check| {
            let (candidate, stable) = (&candidate, &stable);
            async move {
                let Some(prom) = &check.prometheus else {
                    return evaluate_builtin(check, candidate, stable);
                };
                let Some(url) = prom.address.as_deref().or(env.prometheus_url) else {
                    return CheckOutcome::Inconclusive {
                        check: check_name(check),
                        reason: "no Prometheus address: set the check's address or the operator's --prometheus-url".into(),
                    };
                };
                let query = prometheus::render(&prom.query, &p);
                match prometheus::query_value(url, &query, QUERY_TIMEOUT).await {
                    Ok(value) => judge(check, value, None),
                    Err(reason) => CheckOutcome::Inconclusive {
                        check: check_name(check),
                        reason,
                    },
                }
            }
        });
    join_all(runs).await
}
