//! `status`: what the operator observed and did. Written only by the operator.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a ModelDeployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// The `metadata.generation` this status describes. Older than the object's generation: the
    /// operator has not yet acted on the latest spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// One-word summary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Replicas of every revision (the scale subresource's `status.replicas`).
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas of every revision.
    #[serde(default)]
    pub ready_replicas: i32,
    /// `readyReplicas/replicas`, for the READY printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
    /// Label selector of all serving pods (the scale subresource's selector, for HPA and KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// The revision serving production traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<RevisionStatus>,
    /// Model version of the candidate, `-` when no rollout runs: feeds the CANARY printer column,
    /// which would otherwise print `<none>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<String>,
    /// Percent of traffic on the candidate, 0 when no rollout runs: feeds the WEIGHT printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_weight: Option<i32>,
    /// Where the rollout with steps stands: the operator's memory of it, so a new leader carries
    /// on where the old one stopped. `candidate` and `analysis` show the same for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutState>,
    /// The revision being rolled out, if any (display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidate: Option<CandidateStatus>,
    /// The latest rollout analysis (display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<AnalysisStatus>,
    /// How the latest rollout ended. A rolled-back revision is not tried again until the spec
    /// asks for another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout: Option<RolloutResultStatus>,
    /// What the built-in autoscaler sees and decided (only with `spec.scaling`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,
    /// What the modelfleet routers reported for this model (summed over the replicas that
    /// stream to the operator's telemetry hub; refreshed at most every 30 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingStatus>,
    /// The fleet's load as the node agents last reported it (refreshed at each reconcile,
    /// rounded to three significant digits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<LoadStatus>,
    /// Available, Progressing, Degraded, ScalingLimited and MetricsAvailable, kstatus style.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One-word summary of a ModelDeployment.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Accepted; no replica ready yet.
    Pending,
    /// A revision or the replica count is changing.
    Progressing,
    /// The current revision serves with all replicas ready.
    Available,
    /// Serving, but something needs attention (a rollback, missing GPUs); see the conditions.
    Degraded,
    /// Not serving and not expected to recover without a spec change.
    Failed,
}

/// A revision and its replicas.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// Revision hash (the `modelfleet.dev/revision` label and the Deployment suffix).
    pub revision: String,
    /// `spec.model.version` of this revision.
    pub version: String,
    /// Desired replicas of this revision.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas of this revision.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// Where a rollout with steps stands (`status.rollout`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// The state.
    pub state: RolloutStateName,
    /// The candidate revision (the promoted or rolled-back one once finished).
    pub revision: String,
    /// When the candidate first appeared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Index of the step in `spec.rollout.steps` (`Step` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<i32>,
    /// When this state (or step) began: `progressDeadline` and step durations count from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<Time>,
    /// `Step` only: the step's replicas are not all Ready yet, so it holds the previous step's
    /// traffic.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub waiting: bool,
    /// Consecutive failed analysis runs per check.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub failures: std::collections::BTreeMap<String, i32>,
    /// Whether the latest analysis run passed every check.
    #[serde(default = "passed", skip_serializing_if = "is_true")]
    pub last_passed: bool,
    /// When the analysis last ran for this candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_analysis_at: Option<Time>,
    /// `RolledBack` only: the condition reason (`AnalysisFailed`, `ProgressDeadlineExceeded`,
    /// `Aborted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `RolledBack` only: the message naming the check, value and threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn passed() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// The states of a rollout with steps.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutStateName {
    /// The candidate's first replicas are starting.
    Starting,
    /// A step runs (or waits for its replicas).
    Step,
    /// Every step passed: the candidate grows to full size before it becomes stable.
    Growing,
    /// The candidate became stable.
    Promoted,
    /// The candidate was rolled back; it is not tried again until the spec changes.
    RolledBack,
}

/// The revision being rolled out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CandidateStatus {
    /// Revision hash.
    pub revision: String,
    /// `spec.model.version` of this revision.
    pub version: String,
    /// When this revision became the candidate (its `progressDeadline` counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// Index of the current step in `spec.rollout.steps` (0-based).
    #[serde(default)]
    pub step: i32,
    /// Seconds left in the current step; empty while the step waits (candidate starting,
    /// paused, inconclusive analysis).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_remaining_seconds: Option<i64>,
    /// When the current step started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Percent of live traffic routed to this revision.
    #[serde(default)]
    pub traffic_weight: i32,
    /// Percent of live traffic mirrored to this revision.
    #[serde(default)]
    pub mirror_percent: i32,
    /// Desired replicas of this revision.
    #[serde(default)]
    pub replicas: i32,
    /// Ready replicas of this revision.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// Result of the latest analysis run.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStatus {
    /// When the analysis last ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<Time>,
    /// Failed runs so far in this rollout.
    #[serde(default)]
    pub failures: i32,
    /// One entry per check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<CheckResult>,
}

/// The outcome of one check.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// Check name.
    pub check: String,
    /// Measured value; empty when there was no data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    /// Whether the value is within the thresholds.
    pub passed: bool,
    /// Failed runs of this check in a row; `failureLimit` of them roll the candidate back.
    #[serde(default)]
    pub failures: i32,
    /// No answer (Prometheus unreachable, no data yet): neither a pass nor a failure.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inconclusive: bool,
    /// Why it failed or was inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// How a rollout ended.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutResultStatus {
    /// The candidate revision.
    pub revision: String,
    /// `spec.model.version` of the candidate.
    pub version: String,
    /// Promoted or RolledBack.
    pub result: RolloutResult,
    /// PascalCase reason: `Promoted`, `AnalysisFailed`, `ProgressDeadlineExceeded`, `Aborted`.
    pub reason: String,
    /// What happened, naming the check, its value and its threshold on a failed analysis.
    pub message: String,
    /// The revision that was stable before; after a promotion it keeps running for
    /// `scaleDownDelay`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_stable: Option<String>,
    /// When the rollout ended.
    pub finished_at: Time,
}

/// The end of a rollout.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RolloutResult {
    /// The candidate became stable.
    Promoted,
    /// The candidate was scaled to zero and its traffic returned to the stable revision.
    RolledBack,
}

/// The autoscaler's view.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// Replicas the autoscaler wants now.
    #[serde(default)]
    pub desired_replicas: i32,
    /// When the replica count last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// Observed value of each target.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current_metrics: Vec<MetricValue>,
    /// The last five scaling decisions, newest last.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 5))]
    pub history: Vec<ScaleEvent>,
}

/// The fleet's load, summed or averaged over the pods with fresh telemetry.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadStatus {
    /// Requests answered per second.
    pub requests_per_second: f64,
    /// 95th percentile request latency, seconds.
    pub p95_latency_seconds: f64,
    /// Generation: 95th percentile time to first token, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p95_seconds: Option<f64>,
    /// Generation: generated tokens per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_second: Option<f64>,
    /// Generation: mean KV-cache utilisation, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_utilization: Option<f64>,
}

/// An observed metric against its target.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricValue {
    /// Target name, as in `spec.scaling.targets`.
    pub name: String,
    /// Observed value per replica (seconds for latency, percent for GPU utilization).
    pub value: f64,
    /// The target.
    pub target: f64,
}

/// One scaling decision.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScaleEvent {
    /// When it was made.
    pub time: Time,
    /// Replicas before.
    pub from: i32,
    /// Replicas after.
    pub to: i32,
    /// Why, e.g. `queueDepthPerReplica 31.2 > 16`.
    pub reason: String,
}

/// The routers' view of one model, summed over every router replica that reported in the last
/// minute.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingStatus {
    /// Router replicas reporting.
    #[serde(default)]
    pub routers: i32,
    /// Requests the routers received for this model since they started.
    #[serde(default)]
    pub requests: i64,
    /// Share of cacheable requests answered from the response cache, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_hit_ratio: Option<f64>,
    /// Requests sent to `spec.routing.fallback` instead of this model.
    #[serde(default)]
    pub fallbacks: i64,
    /// Requests held now, waiting for a replica (scale from zero).
    #[serde(default)]
    pub held_requests: i32,
    /// When the last request for this model arrived at a router.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_request_time: Option<Time>,
}
