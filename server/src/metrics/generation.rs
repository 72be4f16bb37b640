//! The metrics of a generation server (docs/metrics.md): token timing, tokens, sequences, the
//! KV cache and preemptions. Sequences waiting and running are the server's `requests_queued`
//! and `requests_running`, so the router and a standard picker read generation load the same
//! way as embeddings load.

use prometheus_client::{
    metrics::{
        counter::Counter,
        family::Family,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

use modelfleet_contract::metrics;

use super::{FloatGauge, TierLabel};

/// Generation metrics (registered on every server; zero on an embeddings server).
#[derive(Debug, Clone)]
pub struct GenerationMetrics {
    /// Arrival to first generated token, by tier.
    pub time_to_first_token: Family<TierLabel, Histogram>,
    /// Between consecutive tokens of one stream.
    pub inter_token_latency: Histogram,
    /// Prompt tokens of admitted requests.
    pub prompt_tokens: Counter,
    /// Tokens generated.
    pub generated_tokens: Counter,
    /// Share of the KV budget reserved, 0 to 1 (also `vllm:kv_cache_usage_perc`).
    pub kv_cache_usage: FloatGauge,
    /// Running sequences preempted (their KV freed, recomputed later).
    pub preemptions: Counter,
    /// Sequences whose client went away; their KV freed at once.
    pub cancelled_sequences: Counter,
    /// Forward passes of the scheduler.
    pub steps: Counter,
    /// Sequences summed over forward passes (÷ `steps`: the mean batch).
    pub step_sequences: Counter,
}

impl Default for GenerationMetrics {
    fn default() -> Self {
        Self {
            // 1 ms to about 130 s, doubling.
            time_to_first_token: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 18))
            }),
            // 0.5 ms to about 4 s, doubling.
            inter_token_latency: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            prompt_tokens: Counter::default(),
            generated_tokens: Counter::default(),
            kv_cache_usage: FloatGauge::default(),
            preemptions: Counter::default(),
            cancelled_sequences: Counter::default(),
            steps: Counter::default(),
            step_sequences: Counter::default(),
        }
    }
}

impl GenerationMetrics {
    /// Registers every metric under `r` (the `modelfleet_` registry).
    pub fn register(&self, r: &mut Registry) {
        r.register_with_unit(
            metrics::TIME_TO_FIRST_TOKEN.name,
            "Time from arrival to the first generated token, by tier",
            Unit::Seconds,
            self.time_to_first_token.clone(),
        );
        r.register_with_unit(
            "inter_token_latency",
            "Time between consecutive generated tokens of one sequence",
            Unit::Seconds,
            self.inter_token_latency.clone(),
        );
        r.register(
            "prompt_tokens",
            "Prompt tokens of admitted generation requests",
            self.prompt_tokens.clone(),
        );
        r.register(
            metrics::GENERATED_TOKENS.name,
            "Tokens generated",
            self.generated_tokens.clone(),
        );
        r.register(
            metrics::KV_CACHE_USAGE.name,
            "Share of the KV-cache token budget reserved by running sequences, 0 to 1",
            self.kv_cache_usage.clone(),
        );
        r.register(
            "preemptions",
            "Running sequences preempted for a higher tier (KV freed, recomputed later)",
            self.preemptions.clone(),
        );
        r.register(
            "sequences_cancelled",
            "Generating sequences whose client went away (KV freed at once)",
            self.cancelled_sequences.clone(),
        );
        r.register(
            "generation_steps",
            "Forward passes of the generation scheduler",
            self.steps.clone(),
        );
        r.register(
            "step_sequences",
            "Sequences summed over forward passes (divided by generation_steps: the mean batch)",
            self.step_sequences.clone(),
        );
    }
}
