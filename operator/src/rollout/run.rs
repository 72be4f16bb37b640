//! One analysis run: every check of `spec.rollout.analysis`, the built-in ones from the telemetry
//! store and the Prometheus ones over HTTP, concurrently and bounded by a timeout.

use std::time::{Duration, Instant};

use futures::future::join_all;
use modelfleet_crds::v1alpha1::{AnalysisCheck, BuiltinCheck};

use crate::{
    rollout::{
        analysis::{check_name, evaluate_builtin, judge},
        machine::CheckOutcome,
        prometheus::{self, Placeholders},
    },
    telemetry::TelemetryStore,
};

/// How long one Prometheus query may take before it counts as inconclusive.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a run reads from.
#[derive(Debug, Clone, Copy)]
pub struct AnalysisEnv<'a> {
    /// Node-agent telemetry.
    pub telemetry: &'a TelemetryStore,
    /// The operator's `--prometheus-url`, for checks without an `address`.
    pub prometheus_url: Option<&'a str>,
    /// Query placeholders (namespace, deployment, candidate and stable revisions).
    pub placeholders: Placeholders<'a>,
    /// The current step mirrors traffic: `outputAgreement` is measured only then.
    pub shadow_step: bool,
}

/// Runs the checks that apply to the current step.
pub async fn run(checks: &[AnalysisCheck], env: &AnalysisEnv<'_>) -> Vec<CheckOutcome> {
    let now = Instant::now();
    let p = env.placeholders;
    let candidate = env
        .telemetry
        .aggregate(p.namespace, p.deployment, Some(p.revision), now);
    let stable = env
        .telemetry
        .aggregate(p.namespace, p.deployment, Some(p.stable_revision), now);
    let runs = checks
        .iter()
        .filter(|c| env.shadow_step || c.builtin != Some(BuiltinCheck::OutputAgreement))
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
