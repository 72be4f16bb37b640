//! Operator metrics (documented in docs/metrics.md).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use crate::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CategoryLabel {
    category: &'static str,
}

/// Upper bounds (seconds) of the reconcile duration histogram's buckets.
pub const RECONCILE_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Upper bounds (seconds) of the decision duration histogram's buckets: the decision is
/// microseconds to milliseconds of CPU.
pub const DECISION_BUCKETS: [f64; 12] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

/// The operator's metrics and their registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Mutex<Registry>>,
    reconciles: Family<ResultLabel, Counter>,
    errors: Family<CategoryLabel, Counter>,
    duration: Histogram,
    /// The operator's own work in one reconcile: reading its index, deciding and building the
    /// children (no API call and no wait inside, so wall time is CPU time).
    pub decision: Histogram,
    /// 1 while this replica holds the leader Lease.
    pub leader: Gauge,
    /// Node reports received by the telemetry hub.
    pub telemetry_reports: Counter,
    /// Open telemetry streams.
    pub telemetry_streams: Gauge,
    telemetry_rejected: Family<CategoryLabel, Counter>,
    autoscaler_decisions: Family<ReasonLabel, Counter>,
    /// Duration of one autoscaler tick over every ModelDeployment.
    pub autoscaler_tick: Histogram,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            registry: Arc::default(),
            reconciles: Family::default(),
            errors: Family::default(),
            // 1 ms to 10 s, with an edge at the 50 ms goal so a p99 against it is read from a
            // bucket boundary, not interpolated across one.
            duration: Histogram::new(RECONCILE_BUCKETS.iter().copied()),
            decision: Histogram::new(DECISION_BUCKETS.iter().copied()),
            leader: Gauge::default(),
            telemetry_reports: Counter::default(),
            telemetry_streams: Gauge::default(),
            telemetry_rejected: Family::default(),
            autoscaler_decisions: Family::default(),
            autoscaler_tick: Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
                0.0001, 2.0, 14,
            )),
        };
        let mut registry = Registry::with_prefix("modelfleet_operator");
        metrics.register(&mut registry);
        if let Ok(mut held) = metrics.registry.lock() {
            *held = registry;
        }
        metrics
    }
}

impl Metrics {
    /// Registers every metric, with its help text, in `registry`.
    fn register(&self, registry: &mut Registry) {
        registry.register(
            "reconciles",
            "Reconciles by result (ok, error)",
            self.reconciles.clone(),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by error category",
            self.errors.clone(),
        );
        registry.register_with_unit(
            "reconcile_duration",
            "Time of one reconcile",
            Unit::Seconds,
            self.duration.clone(),
        );
        registry.register_with_unit(
            "decision_duration",
            "The operator's own time in one reconcile: reading its index, deciding, building the children (no API call inside)",
            Unit::Seconds,
            self.decision.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease",
            self.leader.clone(),
        );
        registry.register(
            "telemetry_reports",
            "Node reports received by the telemetry hub",
            self.telemetry_reports.clone(),
        );
        registry.register(
            "telemetry_streams",
            "Open telemetry streams from node agents",
            self.telemetry_streams.clone(),
        );
        registry.register(
            "telemetry_rejected_streams",
            "Telemetry streams refused, by category (missing, rejected, review_failed)",
            self.telemetry_rejected.clone(),
        );
        registry.register(
            "autoscaler_decisions",
            "Autoscaler decisions that changed a replica count, by reason",
            self.autoscaler_decisions.clone(),
        );
        registry.register_with_unit(
            "autoscaler_tick_duration",
            "Time of one autoscaler tick over every ModelDeployment",
            Unit::Seconds,
            self.autoscaler_tick.clone(),
        );
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&Error>) {
        self.duration.observe(took.as_secs_f64());
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.get_or_create(&ResultLabel { result }).inc();
        if let Some(e) = error {
            self.errors
                .get_or_create(&CategoryLabel {
                    category: e.category(),
                })
                .inc();
        }
    }

    /// Counts a refused telemetry stream.
    pub fn telemetry_rejected(&self, category: &'static str) {
        self.telemetry_rejected
            .get_or_create(&CategoryLabel { category })
            .inc();
    }

    /// Counts a scaling decision that changed the replica count.
    pub fn autoscaler_decision(&self, reason: &'static str) {
        self.autoscaler_decisions
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Ok(registry) = self.registry.lock() {
            let _ = encode(&mut out, &registry);
        }
        out
    }
}
