//! The load summary the node agents' telemetry gives one ModelDeployment or revision: what the
//! autoscaler and the built-in analysis checks read. The store that computes it lives in the
//! operator (it owns the streams); this is the value that crosses into the decisions.

use std::time::Duration;

use modelfleet_crds::v1alpha1::{LoadStatus, ModelTask};
use serde::{Deserialize, Serialize};

/// Aggregated load of the fresh pods of one ModelDeployment (or one of its revisions).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Aggregate {
    /// Pods with fresh data.
    pub fresh_pods: u32,
    /// Pods whose data is stale.
    pub stale_pods: u32,
    /// Sums over the fresh pods.
    pub queue_depth: f64,
    /// Sum over the fresh pods.
    pub running: f64,
    /// Requests per second, summed.
    pub request_rate: f64,
    /// Failed requests per second, summed.
    pub error_rate: f64,
    /// The request-weighted mean of the pods' p95 latencies (the plain mean without requests).
    pub latency_p95: f64,
    /// Generation: the request-weighted mean of the pods' time-to-first-token p95, seconds.
    pub ttft_p95: f64,
    /// Generation: generated tokens per second, summed.
    pub generated_tokens_rate: f64,
    /// Generation: mean KV-cache utilisation over the fresh pods, 0 to 1.
    pub kv_cache_utilization: f64,
    /// Mean GPU utilization over the fresh pods that hold GPUs, percent.
    pub gpu_utilization: Option<f64>,
    /// Shadow comparison counts over the window: agreeing, disagreeing and failed mirrors.
    pub shadow_agree: u64,
    /// See `shadow_agree`.
    pub shadow_disagree: u64,
    /// See `shadow_agree`.
    pub shadow_error: u64,
    /// Age of the newest sample among all pods, if any.
    pub newest_age: Option<Duration>,
}

impl Aggregate {
    /// Failed share of requests (0 without requests).
    pub fn error_ratio(&self) -> f64 {
        if self.request_rate > 0.0 {
            (self.error_rate / self.request_rate).min(1.0)
        } else {
            0.0
        }
    }
}

/// `x` to three significant digits: a status that changes only when the load does.
fn round3(x: f64) -> f64 {
    if !x.is_finite() || x == 0.0 {
        return 0.0;
    }
    let scale = 10f64.powi(2 - x.abs().log10().floor() as i32);
    (x * scale).round() / scale
}

/// `status.load` from the fleet's aggregate; None without fresh telemetry. Generation models
/// add time to first token, tokens per second and KV-cache utilisation.
pub fn load_status(task: ModelTask, a: &Aggregate) -> Option<LoadStatus> {
    if a.fresh_pods == 0 {
        return None;
    }
    let generation = task == ModelTask::Generation;
    let only_generation = |v: f64| generation.then(|| round3(v));
    Some(LoadStatus {
        requests_per_second: round3(a.request_rate),
        p95_latency_seconds: round3(a.latency_p95),
        ttft_p95_seconds: only_generation(a.ttft_p95),
        tokens_per_second: only_generation(a.generated_tokens_rate),
        kv_cache_utilization: only_generation(a.kv_cache_utilization),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_status_rounds_and_shows_generation_figures_for_generation_models() {
        let a = Aggregate {
            fresh_pods: 2,
            request_rate: 12.345_67,
            latency_p95: 0.212_34,
            ttft_p95: 0.812_9,
            generated_tokens_rate: 1_423.7,
            kv_cache_utilization: 0.371_5,
            ..Default::default()
        };
        let g = load_status(ModelTask::Generation, &a).expect("fresh pods");
        assert_eq!((g.requests_per_second, g.p95_latency_seconds), (12.3, 0.212));
        assert_eq!(
            (g.ttft_p95_seconds, g.tokens_per_second, g.kv_cache_utilization),
            (Some(0.813), Some(1420.0), Some(0.372))
        );
        let e = load_status(ModelTask::Embedding, &a).expect("fresh pods");
        assert_eq!((e.ttft_p95_seconds, e.tokens_per_second), (None, None));
        assert_eq!(load_status(ModelTask::Generation, &Aggregate::default()), None);
    }
}
