//! The load summary the node agents' telemetry gives one ModelDeployment or revision: what the
//! autoscaler and the built-in analysis checks read. The store that computes it lives in the
//! operator (it owns the streams); this is the value that crosses into the decisions.

use std::time::Duration;

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
