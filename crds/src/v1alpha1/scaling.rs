//! `spec.scaling`: the built-in autoscaler.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, rules};

/// Built-in autoscaling. When present, the operator's autoscaler owns the replica count: it writes
/// the child Deployments and `status.autoscaling`, never this object's spec (no GitOps drift), and
/// `spec.replicas` is ignored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::SCALING_MIN_LE_MAX, validation = rules::PANIC_WINDOW_LE_STABLE)]
pub struct ScalingSpec {
    /// Fewest replicas. 0: scale to zero after `idlePeriod` without a request through the
    /// router, and back to one when a request arrives (the router holds it meanwhile).
    #[serde(default = "default_min_replicas")]
    #[x_kube(validation = rules::SCALING_MIN)]
    pub min_replicas: i32,
    /// Most replicas.
    #[x_kube(validation = rules::SCALING_MAX)]
    pub max_replicas: i32,
    /// Per-replica targets. The autoscaler keeps each observed value at or below its target; the
    /// largest replica demand among them wins.
    pub targets: ScalingTargets,
    /// Window over which the steady-state demand is averaged.
    #[serde(default = "default_stable_window")]
    #[x_kube(validation = rules::STABLE_WINDOW)]
    pub stable_window: Duration,
    /// Short window used to detect a spike.
    #[serde(default = "default_panic_window")]
    #[x_kube(validation = rules::PANIC_WINDOW)]
    pub panic_window: Duration,
    /// Enter panic mode (scale up at once, no scale-down) when the panic-window demand reaches
    /// this multiple of the current replicas.
    #[serde(default = "default_panic_threshold")]
    #[x_kube(validation = rules::PANIC_THRESHOLD)]
    pub panic_threshold: f64,
    /// Scale down only to the highest recommendation seen over this window.
    #[serde(default = "default_scale_down_stabilization")]
    pub scale_down_stabilization: Duration,
    /// With `minReplicas: 0`, how long without a request (as the router reports it in the
    /// `modelfleet.dev/last-request` annotation) and without work in flight before the last
    /// replica goes.
    #[serde(default = "default_idle_period")]
    #[x_kube(validation = rules::IDLE_PERIOD)]
    pub idle_period: Duration,
}

/// Scaling targets per ready replica. At least one must be set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::SCALING_TARGETS)]
pub struct ScalingTargets {
    /// Queued requests per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::TARGET_QUEUE_DEPTH)]
    pub queue_depth_per_replica: Option<f64>,
    /// Requests in flight (queued and running) per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::TARGET_IN_FLIGHT)]
    pub in_flight_per_replica: Option<f64>,
    /// 95th percentile request latency.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::TARGET_P95_LATENCY)]
    pub p95_latency: Option<Duration>,
    /// GPU utilization in percent. A guard rather than the main signal: utilization saturates with a
    /// single request in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::TARGET_GPU_UTILIZATION)]
    pub gpu_utilization: Option<f64>,
    /// Generation: 95th percentile time to first token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::TARGET_TTFT_P95)]
    pub ttft_p95: Option<Duration>,
    /// Generation: share of the KV-cache budget in use, 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::TARGET_KV_CACHE)]
    pub kv_cache_utilization: Option<f64>,
    /// Generation: sequences waiting for a place in the running batch, per replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::TARGET_WAITING_SEQUENCES)]
    pub waiting_sequences_per_replica: Option<f64>,
}

impl ScalingTargets {
    /// True when a target that only generation servers report is set.
    pub fn has_generation_targets(&self) -> bool {
        self.ttft_p95.is_some()
            || self.kv_cache_utilization.is_some()
            || self.waiting_sequences_per_replica.is_some()
    }
}

fn default_min_replicas() -> i32 {
    1
}
fn default_stable_window() -> Duration {
    Duration::from_secs(60)
}
fn default_panic_window() -> Duration {
    Duration::from_secs(6)
}
fn default_panic_threshold() -> f64 {
    2.0
}
fn default_scale_down_stabilization() -> Duration {
    Duration::from_secs(300)
}
fn default_idle_period() -> Duration {
    Duration::from_secs(900)
}

impl ScalingSpec {
    /// A spec with the given bounds and targets and every other field at its default.
    pub fn new(min_replicas: i32, max_replicas: i32, targets: ScalingTargets) -> Self {
        Self {
            min_replicas,
            max_replicas,
            targets,
            stable_window: default_stable_window(),
            panic_window: default_panic_window(),
            panic_threshold: default_panic_threshold(),
            scale_down_stabilization: default_scale_down_stabilization(),
            idle_period: default_idle_period(),
        }
    }
}
