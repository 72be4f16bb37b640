//! `spec.rollout`: how a new revision replaces the stable one.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, rules};

/// Progressive delivery of a new revision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::CANARY_WEIGHTS_ORDER)]
pub struct RolloutSpec {
    /// Steps run in order. Empty: the new revision replaces the stable one as soon as all its
    /// replicas are ready.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub steps: Vec<RolloutStep>,
    /// Checks run while steps progress; failing ones roll the candidate back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisSpec>,
    /// A candidate whose replicas are not all ready within this time fails the rollout.
    #[serde(default = "default_progress_deadline")]
    #[x_kube(validation = rules::PROGRESS_DEADLINE)]
    pub progress_deadline: Duration,
    /// How long the old revision keeps running after promotion, for in-flight requests.
    #[serde(default = "default_scale_down_delay")]
    pub scale_down_delay: Duration,
    /// Freeze the rollout at its current step: no promotion, no step change (rollback on failing
    /// analysis still happens).
    #[serde(default)]
    pub paused: bool,
}

/// One rollout step: exactly one of `shadow` or `canary`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::STEP_ONE_KIND)]
pub struct RolloutStep {
    /// Mirror a share of live traffic to the candidate; its answers are compared, never returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<ShadowStep>,
    /// Route a weight of live traffic to the candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStep>,
}

/// A shadow step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ShadowStep {
    /// Percent of requests mirrored to the candidate, 1 to 100.
    #[x_kube(validation = rules::SHADOW_PERCENT)]
    pub percent: i32,
    /// How long the step lasts while its checks pass.
    #[x_kube(validation = rules::SHADOW_DURATION)]
    pub duration: Duration,
}

/// A canary step.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStep {
    /// Percent of live traffic routed to the candidate, 1 to 100; never lower than an earlier step.
    #[x_kube(validation = rules::CANARY_WEIGHT)]
    pub weight: i32,
    /// How long the step lasts while its checks pass.
    #[x_kube(validation = rules::CANARY_DURATION)]
    pub duration: Duration,
}

/// The kind of a step, borrowed from a [`RolloutStep`] that passed validation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StepKind<'a> {
    /// A shadow step.
    Shadow(&'a ShadowStep),
    /// A canary step.
    Canary(&'a CanaryStep),
}

impl RolloutStep {
    /// The step's kind; `None` when it sets both or neither (which validation rejects).
    pub fn kind(&self) -> Option<StepKind<'_>> {
        match (&self.shadow, &self.canary) {
            (Some(s), None) => Some(StepKind::Shadow(s)),
            (None, Some(c)) => Some(StepKind::Canary(c)),
            _ => None,
        }
    }
}

/// Analysis run during the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisSpec {
    /// Time between two analysis runs.
    #[serde(default = "default_analysis_interval")]
    #[x_kube(validation = rules::ANALYSIS_INTERVAL)]
    pub interval: Duration,
    /// Failed runs of one check that trigger a rollback.
    #[serde(default = "default_failure_limit")]
    #[x_kube(validation = rules::FAILURE_LIMIT)]
    pub failure_limit: i32,
    /// The checks. All must pass for a step to complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub checks: Vec<AnalysisCheck>,
}

/// One analysis check: exactly one source (`builtin` or `prometheus`) and at least one threshold.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rules::CHECK_ONE_SOURCE,
    validation = rules::CHECK_THRESHOLD,
    validation = rules::CHECK_RATIO_BUILTIN,
    validation = rules::CHECK_MIN_RATIO_BUILTIN,
    validation = rules::CHECK_PROMETHEUS_NAME
)]
pub struct AnalysisCheck {
    /// Name shown in status and Events. Required for `prometheus` checks; defaults to the builtin name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub name: Option<String>,
    /// A check computed from node-agent telemetry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<BuiltinCheck>,
    /// A check computed by a PromQL query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusCheck>,
    /// The check fails when the value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// The check fails when the value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Built-in checks only: the check fails when the candidate's value exceeds the stable
    /// revision's value times this ratio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ratio_to_stable: Option<f64>,
    /// Built-in checks only: the check fails when the candidate's value is below the stable
    /// revision's value times this ratio (for values where more is better, such as
    /// `tokensPerSecond`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_ratio_to_stable: Option<f64>,
}

/// Checks computed by the operator from node-agent telemetry.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum BuiltinCheck {
    /// Share of the candidate's requests that failed (0 to 1).
    ErrorRate,
    /// The candidate's 95th percentile latency in seconds.
    P95Latency,
    /// Shadow steps: share of mirrored requests whose outputs agree with the stable revision's
    /// (0 to 1). Embeddings agree by cosine similarity; generated text by exact match of greedy
    /// or seeded requests, or the server's `--shadow-text-agreement` similarity.
    OutputAgreement,
    /// Generation: the candidate's 95th percentile time to first token in seconds.
    TtftP95,
    /// Generation: the candidate's generated tokens per second per ready replica (bounded below
    /// with `min` or `minRatioToStable`).
    TokensPerSecond,
}

/// A PromQL check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusCheck {
    /// PromQL returning a scalar or a one-sample vector. Placeholders: `{{namespace}}`,
    /// `{{deployment}}`, `{{revision}}`, `{{stableRevision}}`.
    #[x_kube(validation = rules::PROMETHEUS_QUERY)]
    #[schemars(length(max = 4096))]
    pub query: String,
    /// Prometheus base URL. Empty: the operator's `--prometheus-url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

fn default_progress_deadline() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_scale_down_delay() -> Duration {
    Duration::from_secs(30)
}
fn default_analysis_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_failure_limit() -> i32 {
    2
}
