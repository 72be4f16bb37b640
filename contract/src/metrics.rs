//! The server metrics the node agent scrapes. The server registers each under [`PREFIX`] by
//! [`ServerMetric::name`]; prometheus-client adds the unit and `_total` suffixes, and the agent
//! matches the resulting [`ServerMetric::sample`]. A test in the server checks that every one is
//! in its exposition.

/// Prefix of every server metric (the server's registry prefix).
pub const PREFIX: &str = "modelfleet";

/// One server metric as both sides name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerMetric {
    /// The name the server registers under [`PREFIX`], before unit and type suffixes.
    pub name: &'static str,
    /// The sample name in the exposition: `modelfleet_<name>`, plus `_seconds` for durations
    /// and `_total` for counters. A histogram's samples add `_bucket`, `_sum` and `_count`.
    pub sample: &'static str,
}

impl ServerMetric {
    /// A histogram's bucket samples.
    pub fn bucket(&self) -> String {
        format!("{}_bucket", self.sample)
    }

    /// A histogram's sum sample.
    pub fn sum(&self) -> String {
        format!("{}_sum", self.sample)
    }

    /// A histogram's count sample.
    pub fn count(&self) -> String {
        format!("{}_count", self.sample)
    }
}

/// `concat!` needs literals, so the prefix is spelled here once more; a test checks it is
/// [`PREFIX`].
macro_rules! metric {
    ($name:literal, $suffix:literal) => {
        ServerMetric {
            name: $name,
            sample: concat!("modelfleet_", $name, $suffix),
        }
    };
}

/// Counter of answered requests, labels `api`, [`labels::TIER`], [`labels::CODE`].
pub const REQUESTS: ServerMetric = metric!("requests", "_total");
/// Histogram of the time from arrival to answer, label [`labels::TIER`].
pub const REQUEST_DURATION: ServerMetric = metric!("request_duration", "_seconds");
/// Gauge of requests waiting in the queue, label [`labels::TIER`].
pub const QUEUE_DEPTH: ServerMetric = metric!("queue_depth", "");
/// Gauge of requests waiting in the queue, all tiers.
pub const REQUESTS_QUEUED: ServerMetric = metric!("requests_queued", "");
/// Gauge of requests in batches the backend is running.
pub const REQUESTS_RUNNING: ServerMetric = metric!("requests_running", "");
/// Histogram of inputs per batch.
pub const BATCH_SIZE: ServerMetric = metric!("batch_size", "");
/// Gauge: share of the last second the backend was running batches.
pub const BUSY_RATIO: ServerMetric = metric!("busy_ratio", "");
/// Counter of shadow outputs compared with the primary ones, label [`labels::RESULT`] (one of
/// [`shadow_result`]).
pub const SHADOW_COMPARISONS: ServerMetric = metric!("shadow_comparisons", "_total");

/// Generation servers: histogram of the time from arrival to the first generated token, label
/// [`labels::TIER`].
pub const TIME_TO_FIRST_TOKEN: ServerMetric = metric!("time_to_first_token", "_seconds");
/// Generation servers: counter of generated tokens.
pub const GENERATED_TOKENS: ServerMetric = metric!("generated_tokens", "_total");
/// Generation servers: gauge of the share of the KV-cache budget reserved by running
/// sequences, 0 to 1.
pub const KV_CACHE_USAGE: ServerMetric = metric!("kv_cache_usage_ratio", "");

/// Every metric above.
pub const SCRAPED: [ServerMetric; 11] = [
    REQUESTS,
    REQUEST_DURATION,
    QUEUE_DEPTH,
    REQUESTS_QUEUED,
    REQUESTS_RUNNING,
    BATCH_SIZE,
    BUSY_RATIO,
    SHADOW_COMPARISONS,
    TIME_TO_FIRST_TOKEN,
    GENERATED_TOKENS,
    KV_CACHE_USAGE,
];

/// The Gateway API Inference Extension's model-server protocol (its proposal 003): the gauges a
/// standard Endpoint Picker scrapes, under the vLLM names it reads by default, so that picker
/// works with modelfleet-server pods unconfigured. The server exports them beside its own.
pub mod model_server_protocol {
    /// TotalQueuedRequests: the same value as [`super::REQUESTS_QUEUED`].
    pub const QUEUED: &str = "vllm:num_requests_waiting";
    /// TotalRunningRequests: the same value as [`super::REQUESTS_RUNNING`].
    pub const RUNNING: &str = "vllm:num_requests_running";
    /// KVCacheUtilization, 0 to 1 (generation servers; embeddings servers report 0).
    pub const KV_CACHE_USAGE: &str = "vllm:kv_cache_usage_perc";
}

/// Label names the agent reads.
pub mod labels {
    /// The priority tier.
    pub const TIER: &str = "tier";
    /// The HTTP status code of an answer (gRPC answers use the equivalent HTTP code).
    pub const CODE: &str = "code";
    /// The outcome of a shadow comparison.
    pub const RESULT: &str = "result";
}

/// Values of [`labels::RESULT`] on [`SHADOW_COMPARISONS`].
pub mod shadow_result {
    /// The shadow's outputs are within the agreement threshold of the primary ones.
    pub const AGREE: &str = "agree";
    /// They are not.
    pub const DISAGREE: &str = "disagree";
    /// The shadow request failed or timed out.
    pub const ERROR: &str = "error";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_the_prefixed_names() {
        for m in SCRAPED {
            let rest = m.sample.strip_prefix(PREFIX).and_then(|s| s.strip_prefix('_'));
            assert!(rest.is_some_and(|r| r.starts_with(m.name)), "{m:?}");
        }
        assert_eq!(
            REQUEST_DURATION.bucket(),
            "modelfleet_request_duration_seconds_bucket"
        );
    }
}
