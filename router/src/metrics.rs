//! The router's metrics (docs/metrics.md, "Router"): requests by model, tier and code; picks by
//! endpoint; retries; cache hits and misses; held requests; fallbacks.

use std::sync::Arc;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

/// A finished request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `namespace/name` of the ModelDeployment that answered (`unknown` when none did).
    pub model: String,
    /// The tier the server was asked for (`none` for models without tiers).
    pub tier: String,
    /// The HTTP status code returned to the client.
    pub code: u16,
}

/// A model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// `namespace/name`.
    pub model: String,
}

/// A pick.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PickLabels {
    /// `namespace/name`.
    pub model: String,
    /// The revision picked.
    pub revision: String,
    /// The pod picked.
    pub endpoint: String,
}

/// A cache lookup.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `namespace/name`.
    pub model: String,
    /// `hit` or `miss` (the exact cache), `semantic_hit` or `semantic_miss`.
    pub result: &'static str,
}

/// A fallback.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FallbackLabels {
    /// The model the request named.
    pub model: String,
    /// The model that answered.
    pub to: String,
    /// `tier`, `prompt_tokens`, `overloaded` or `unavailable`.
    pub reason: &'static str,
}

/// Every router metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Requests answered.
    pub requests: Family<RequestLabels, Counter>,
    /// Time from arrival to the response head.
    pub duration: Family<ModelLabel, Histogram>,
    /// Endpoints picked.
    pub picks: Family<PickLabels, Counter>,
    /// Requests sent again to another endpoint.
    pub retries: Family<ModelLabel, Counter>,
    /// Cache lookups.
    pub cache: Family<CacheLabels, Counter>,
    /// Requests waiting for a model with no Ready endpoint.
    pub held: Family<ModelLabel, Gauge>,
    /// Requests answered by a fallback model.
    pub fallbacks: Family<FallbackLabels, Counter>,
    /// The Endpoint Picker's decisions.
    pub epp: EppMetrics,
    /// Bytes in the response cache.
    pub cache_bytes: Gauge,
    /// Bytes in the semantic cache.
    pub semantic_cache_bytes: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("modelfleet_router");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register("requests", "Requests answered", requests.clone());
        let duration = Family::<ModelLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
        });
        registry.register_with_unit(
            "request_duration",
            "Time from a request's arrival to its response head",
            Unit::Seconds,
            duration.clone(),
        );
        let picks = Family::<PickLabels, Counter>::default();
        registry.register("picks", "Endpoints picked", picks.clone());
        let retries = Family::<ModelLabel, Counter>::default();
        registry.register(
            "retries",
            "Requests sent again to another endpoint",
            retries.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register("cache_lookups", "Response-cache lookups by result", cache.clone());
        let held = Family::<ModelLabel, Gauge>::default();
        registry.register(
            "held_requests",
            "Requests waiting for a Ready endpoint",
            held.clone(),
        );
        let fallbacks = Family::<FallbackLabels, Counter>::default();
        registry.register(
            "fallbacks",
            "Requests answered by a fallback model",
            fallbacks.clone(),
        );
        let cache_bytes = Gauge::default();
        registry.register_with_unit(
            "cache",
            "Bytes in the response cache",
            Unit::Bytes,
            cache_bytes.clone(),
        );
        let semantic_cache_bytes = Gauge::default();
        registry.register_with_unit(
            "semantic_cache",
            "Bytes in the semantic cache (answers and prompt embeddings)",
            Unit::Bytes,
            semantic_cache_bytes.clone(),
        );
        let epp = EppMetrics::default();
        epp.register(&mut registry);
        Self {
            registry: Arc::new(registry),
            requests,
            duration,
            picks,
            retries,
            cache,
            held,
            fallbacks,
            cache_bytes,
            semantic_cache_bytes,
            epp,
        }
    }
}

impl Metrics {
    /// The text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Counts one model label.
    pub fn model(key: &str) -> ModelLabel {
        ModelLabel {
            model: key.to_owned(),
        }
    }
}

/// `modelfleet_router_epp_decisions_total{result}`: what the Endpoint Picker answered. Picks are
/// also counted in `modelfleet_router_picks_total`, as on the HTTP path; this adds the refusals.
/// One Endpoint Picker decision's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EppDecisionLabels {
    /// `picked`, or the refusal's error code (`model_not_found`, `model_unavailable`,
    /// `model_overloaded`, `invalid_request`, `request_too_large`, `picker_misconfigured`).
    pub result: &'static str,
}

/// The picker's metrics; cheap to clone (clones count into the same series).
#[derive(Debug, Clone, Default)]
pub struct EppMetrics {
    /// Decisions by result.
    pub decisions: Family<EppDecisionLabels, Counter>,
}

impl EppMetrics {
    /// Adds the picker's families to `registry` (the router's, prefixed `modelfleet_router`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "epp_decisions",
            "Endpoint Picker decisions by result",
            self.decisions.clone(),
        );
    }

    /// Counts one decision.
    pub fn count(&self, result: &'static str) {
        self.decisions.get_or_create(&EppDecisionLabels { result }).inc();
    }

    /// Decisions with `result` so far.
    pub fn get(&self, result: &'static str) -> u64 {
        self.decisions.get_or_create(&EppDecisionLabels { result }).get()
    }
}
