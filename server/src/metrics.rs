//! Server metrics, each listed in docs/metrics.md. Names carry the `modelfleet_` prefix, base
//! units and `_total`/`_seconds` suffixes; labels stay low-cardinality (tier, code, reason). The
//! ones the node agent scrapes are named by modelfleet-contract's `metrics`.

mod generation;

use std::sync::{Arc, atomic::AtomicU64};

pub use generation::GenerationMetrics;

use modelfleet_contract::metrics::{self as scraped, PREFIX};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::{Registry, Unit},
};

/// Labels of a finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `openai`, `oip_http` or `oip_grpc`.
    pub api: &'static str,
    pub tier: String,
    /// HTTP status code (gRPC answers use the equivalent HTTP code).
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub tier: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RejectLabels {
    pub tier: String,
    /// `queue_full`, `tier_share`, `queue_timeout` or `draining`.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub version: String,
    pub backend: &'static str,
    pub device: String,
    /// `true` for the synthetic backend: its outputs and timings are simulated.
    pub simulated: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// Every server metric, cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<TierLabel, Histogram>,
    pub queue_duration: Family<TierLabel, Histogram>,
    pub batch_size: Histogram,
    pub batch_tokens: Histogram,
    pub batch_duration: Histogram,
    pub queue_depth: Family<TierLabel, Gauge>,
    pub queued: Gauge,
    pub running: Gauge,
    pub input_tokens: Counter,
    pub inputs: Counter,
    pub rejected: Family<RejectLabels, Counter>,
    pub cancelled: Family<TierLabel, Counter>,
    pub busy_seconds: Counter<f64, AtomicU64>,
    pub busy_ratio: FloatGauge,
    pub shadow_requests: Family<ResultLabel, Counter>,
    pub shadow_comparisons: Family<ResultLabel, Counter>,
    pub shadow_latency_ratio: Histogram,
    pub model_info: Family<ModelLabels, Gauge>,
    pub ready: Gauge,
    /// Generation metrics (zero on an embeddings server).
    pub generation: GenerationMetrics,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 65 s, doubling: wide enough for synthetic zero-cost and CPU model batches.
    Histogram::new(exponential_buckets(0.0005, 2.0, 18))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        let r = root.sub_registry_with_prefix(PREFIX);
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<TierLabel, Histogram>::new_with_constructor(latency_histogram);
        let queue_duration = Family::<TierLabel, Histogram>::new_with_constructor(latency_histogram);
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 13));
        let batch_tokens = Histogram::new(exponential_buckets(16.0, 2.0, 14));
        let batch_duration = latency_histogram();
        let queue_depth = Family::<TierLabel, Gauge>::default();
        let queued = Gauge::default();
        let running = Gauge::default();
        let input_tokens = Counter::default();
        let inputs = Counter::default();
        let rejected = Family::<RejectLabels, Counter>::default();
        let cancelled = Family::<TierLabel, Counter>::default();
        let busy_seconds = Counter::<f64, AtomicU64>::default();
        let busy_ratio = FloatGauge::default();
        let shadow_requests = Family::<ResultLabel, Counter>::default();
        let shadow_comparisons = Family::<ResultLabel, Counter>::default();
        let shadow_latency_ratio = Histogram::new(exponential_buckets(0.125, 2f64.sqrt(), 13));
        let model_info = Family::<ModelLabels, Gauge>::default();
        let ready = Gauge::default();
        let generation = GenerationMetrics::default();
        generation.register(r);

        r.register(
            scraped::REQUESTS.name,
            "Answered requests by API, tier and HTTP status code",
            requests.clone(),
        );
        r.register_with_unit(
            scraped::REQUEST_DURATION.name,
            "Time from arrival to answer, by tier",
            Unit::Seconds,
            request_duration.clone(),
        );
        r.register_with_unit(
            "queue_duration",
            "Time a request waited in the queue before its batch started, by tier",
            Unit::Seconds,
            queue_duration.clone(),
        );
        r.register(scraped::BATCH_SIZE.name, "Inputs per batch", batch_size.clone());
        r.register(
            "batch_tokens",
            "Padded tokens per batch (inputs x longest input)",
            batch_tokens.clone(),
        );
        r.register_with_unit(
            "batch_duration",
            "Time the backend took for one batch",
            Unit::Seconds,
            batch_duration.clone(),
        );
        r.register(
            scraped::QUEUE_DEPTH.name,
            "Requests waiting in the queue, by tier",
            queue_depth.clone(),
        );
        r.register(
            scraped::REQUESTS_QUEUED.name,
            "Requests waiting in the queue (Gateway API Inference Extension: total queued requests)",
            queued.clone(),
        );
        r.register(
            scraped::REQUESTS_RUNNING.name,
            "Requests in batches the backend is running (Gateway API Inference Extension: total running requests)",
            running.clone(),
        );
        r.register(
            "input_tokens",
            "Tokens embedded, without padding",
            input_tokens.clone(),
        );
        r.register("inputs", "Inputs (sentences) embedded", inputs.clone());
        r.register(
            "requests_rejected",
            "Requests shed by tier and reason (queue_full, tier_share, queue_timeout, draining)",
            rejected.clone(),
        );
        r.register(
            "requests_cancelled",
            "Requests whose client went away before compute; dropped without running, by tier",
            cancelled.clone(),
        );
        r.register_with_unit(
            "backend_busy",
            "Time the backend spent running batches",
            Unit::Seconds,
            busy_seconds.clone(),
        );
        r.register(
            scraped::BUSY_RATIO.name,
            "Share of the last second the backend was running batches (0 to 1, per concurrent batch slot)",
            busy_ratio.clone(),
        );
        r.register(
            "shadow_requests",
            "Mirrored copies by result (sent, dropped: the mirror queue was full)",
            shadow_requests.clone(),
        );
        r.register(
            scraped::SHADOW_COMPARISONS.name,
            "Shadow outputs compared with the primary ones (agree, disagree, error)",
            shadow_comparisons.clone(),
        );
        r.register(
            "shadow_latency_ratio",
            "Shadow latency divided by the primary latency, per mirrored request",
            shadow_latency_ratio.clone(),
        );
        r.register(
            "model_info",
            "1 for the served model, with its version, backend, device and whether it is simulated",
            model_info.clone(),
        );
        r.register(
            "ready",
            "1 when the model is loaded, warmed up and the server is not draining",
            ready.clone(),
        );
        register_model_server_protocol(&mut root, &queued, &running, &generation.kv_cache_usage);
        Self {
            registry: Arc::new(root),
            requests,
            request_duration,
            queue_duration,
            batch_size,
            batch_tokens,
            batch_duration,
            queue_depth,
            queued,
            running,
            input_tokens,
            inputs,
            rejected,
            cancelled,
            busy_seconds,
            busy_ratio,
            shadow_requests,
            shadow_comparisons,
            shadow_latency_ratio,
            model_info,
            ready,
            generation,
        }
    }
}

/// The gauges a standard Gateway API Inference Extension picker scrapes, under the vLLM names it
/// reads by default (the same values as ours), so our pods work behind either picker.
fn register_model_server_protocol(
    root: &mut Registry,
    queued: &Gauge,
    running: &Gauge,
    kv_cache: &FloatGauge,
) {
    use modelfleet_contract::metrics::model_server_protocol as msp;
    root.register(
        msp::QUEUED,
        "Requests waiting in the queue (model-server protocol name of modelfleet_requests_queued)",
        queued.clone(),
    );
    root.register(
        msp::RUNNING,
        "Requests in running batches (model-server protocol name of modelfleet_requests_running)",
        running.clone(),
    );
    // Embeddings hold no KV cache: 0 there; a generation server sets it.
    root.register(
        msp::KV_CACHE_USAGE,
        "Share of the KV cache in use, 0 to 1 (0 for embeddings)",
        kv_cache.clone(),
    );
}

impl Metrics {
    /// Counts an answered (or refused) request and observes its duration.
    pub fn count_request(&self, api: &'static str, tier: String, code: u16, started: std::time::Instant) {
        self.request_duration
            .get_or_create(&TierLabel { tier: tier.clone() })
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels { api, tier, code })
            .inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts a shed request.
    pub fn reject(&self, tier: &str, reason: &'static str) {
        self.rejected
            .get_or_create(&RejectLabels {
                tier: tier.to_owned(),
                reason,
            })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every metric with a sample: families only appear once they have one.
    fn sampled() -> Metrics {
        let m = Metrics::default();
        m.requests
            .get_or_create(&RequestLabels {
                api: "openai",
                tier: "t".into(),
                code: 200,
            })
            .inc();
        m.request_duration
            .get_or_create(&TierLabel { tier: "t".into() })
            .observe(0.1);
        m.queue_duration
            .get_or_create(&TierLabel { tier: "t".into() })
            .observe(0.1);
        m.queue_depth
            .get_or_create(&TierLabel { tier: "t".into() })
            .set(1);
        m.reject("t", "queue_full");
        m.cancelled.get_or_create(&TierLabel { tier: "t".into() }).inc();
        m.shadow_requests
            .get_or_create(&ResultLabel { result: "queued" })
            .inc();
        m.shadow_comparisons
            .get_or_create(&ResultLabel { result: "agree" })
            .inc();
        m.generation
            .time_to_first_token
            .get_or_create(&TierLabel { tier: "t".into() })
            .observe(0.1);
        m.model_info
            .get_or_create(&ModelLabels {
                model: "m".into(),
                version: "1".into(),
                backend: "synthetic",
                device: "simulated".into(),
                simulated: "true",
            })
            .set(1);
        m
    }

    #[test]
    fn every_metric_is_documented_in_docs_metrics_md() {
        let docs = include_str!("../../docs/metrics.md");
        let text = sampled().render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() >= 20, "{names:?}");
        for name in names {
            assert!(
                docs.contains(&format!("`{name}")),
                "{name} is not in docs/metrics.md"
            );
        }
    }

    #[test]
    fn a_standard_picker_reads_the_queue_and_running_requests_under_the_vllm_names() {
        use modelfleet_contract::metrics::model_server_protocol as msp;
        let m = Metrics::default();
        m.queued.set(7);
        m.running.set(3);
        let text = m.render();
        let sample = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        assert_eq!(sample(msp::QUEUED), Some(7.0), "{text}");
        assert_eq!(sample(msp::RUNNING), Some(3.0), "{text}");
        assert_eq!(sample(msp::KV_CACHE_USAGE), Some(0.0), "{text}");
        assert_eq!(
            sample(scraped::REQUESTS_QUEUED.sample),
            Some(7.0),
            "ours stay: {text}"
        );
    }

    #[test]
    fn every_scraped_metric_is_exposed_as_the_contract_names_it() {
        use modelfleet_contract::metrics::{SCRAPED, labels, shadow_result};
        let text = sampled().render();
        for m in SCRAPED {
            assert!(
                text.lines().any(|l| l.starts_with(m.sample)),
                "{} is not in the exposition:\n{text}",
                m.sample
            );
        }
        let has = |sample: &str, label: &str| {
            text.lines()
                .any(|l| l.starts_with(sample) && l.contains(&format!("{label}=")))
        };
        assert!(has(scraped::QUEUE_DEPTH.sample, labels::TIER));
        assert!(has(scraped::REQUESTS.sample, labels::CODE));
        assert!(has(&scraped::REQUEST_DURATION.bucket(), "le"));
        let agree = format!("{}=\"{}\"", labels::RESULT, shadow_result::AGREE);
        assert!(text.contains(&agree), "{text}");
    }
}
