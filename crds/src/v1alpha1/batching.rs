//! `spec.batching`: how the server forms batches and sheds load.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::{Duration, rules};

/// Dynamic batching and admission in each server.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::TIER_NAMES_UNIQUE)]
pub struct BatchingSpec {
    /// Most requests in one batch.
    #[serde(default = "default_max_batch_size")]
    #[x_kube(validation = rules::MAX_BATCH_SIZE)]
    pub max_batch_size: i32,
    /// Most tokens in one batch, counting padding (batch size × longest sequence).
    #[serde(default = "default_max_batch_tokens")]
    #[x_kube(validation = rules::MAX_BATCH_TOKENS)]
    pub max_batch_tokens: i32,
    /// Longest time the oldest queued request waits for a fuller batch while the backend is busy.
    #[serde(default = "default_max_queue_delay")]
    pub max_queue_delay: Duration,
    /// Most queued requests per replica; beyond it the server answers 429 with `Retry-After`.
    #[serde(default = "default_max_queue_size")]
    #[x_kube(validation = rules::MAX_QUEUE_SIZE)]
    pub max_queue_size: i32,
    /// Priority tiers, highest first. Clients pick one with the `x-modelfleet-tier` header; requests
    /// without it use the last tier. Empty: one tier named `default`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub tiers: Vec<Tier>,
}

/// One priority tier.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tier {
    /// Tier name, as sent in `x-modelfleet-tier` (a DNS label).
    #[x_kube(validation = rules::TIER_NAME)]
    #[schemars(length(max = 63))]
    pub name: String,
    /// Longest a request of this tier may wait in the queue; past it the server answers 503 with
    /// `Retry-After`. Empty: no tier timeout (the request's own deadline still applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::TIER_TIMEOUT)]
    pub timeout: Option<Duration>,
    /// Largest share of `maxQueueSize` this tier may occupy, in (0, 1]. Empty: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::TIER_QUEUE_SHARE)]
    pub max_queue_share: Option<f64>,
}

fn default_max_batch_size() -> i32 {
    32
}
fn default_max_batch_tokens() -> i32 {
    16384
}
fn default_max_queue_delay() -> Duration {
    Duration::from_millis(5)
}
fn default_max_queue_size() -> i32 {
    1024
}

impl Default for BatchingSpec {
    fn default() -> Self {
        Self {
            max_batch_size: default_max_batch_size(),
            max_batch_tokens: default_max_batch_tokens(),
            max_queue_delay: default_max_queue_delay(),
            max_queue_size: default_max_queue_size(),
            tiers: Vec::new(),
        }
    }
}
