//! The autoscaler's evaluation of one ModelDeployment: the fleet's telemetry and the decision's
//! memory in; the replica count, `status.autoscaling` and the MetricsAvailable and
//! ScalingLimited conditions out. The decision loop in the operator calls it every tick; the
//! clock is an argument.

use std::time::Instant;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use modelfleet_crds::{
    ModelDeployment,
    constants::conditions as types,
    v1alpha1::{AutoscalingStatus, MetricValue, ScaleEvent, ScalingSpec},
};
use serde::{Deserialize, Serialize};

use crate::{
    autoscale::{
        algorithm::{Autoscaler, Decision, Observation, Params, Reason, Signals},
        idle::{self, Activity},
    },
    conditions::Desired,
    telemetry::Aggregate,
};

/// Decisions kept in `status.autoscaling.history`.
const HISTORY: usize = 5;

/// What the autoscaler decided for one ModelDeployment, as the reconcile writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outcome {
    /// Total replicas to run.
    pub replicas: i32,
    /// `status.autoscaling`.
    pub status: AutoscalingStatus,
    /// The `MetricsAvailable` condition.
    pub metrics_available: Desired,
    /// The `ScalingLimited` condition.
    pub scaling_limited: Desired,
}

impl Outcome {
    /// What makes a status write urgent: everything but the metric values.
    pub fn shape(&self) -> (i32, &[ScaleEvent], (bool, &str), (bool, &str)) {
        (
            self.replicas,
            &self.status.history,
            (self.metrics_available.status, &self.metrics_available.reason),
            (self.scaling_limited.status, &self.scaling_limited.reason),
        )
    }

    /// The reason of the newest decision, for the `Scaled` Event.
    pub fn last_reason(&self) -> Option<&str> {
        self.status.history.last().map(|e| e.reason.as_str())
    }
}

/// The ModelDeployment's uid: a deleted and re-created object of the same name starts afresh.
/// The replica count to hold before the loop has decided (a new leader, a new object): the last
/// decision recorded in status, else `minReplicas`, within the bounds.
pub fn resume_replicas(md: &ModelDeployment, scaling: &ScalingSpec) -> i32 {
    let recorded = md
        .status
        .as_ref()
        .and_then(|s| s.autoscaling.as_ref())
        .map_or(0, |a| a.desired_replicas);
    let max = scaling.max_replicas.max(scaling.min_replicas);
    if recorded > 0 {
        recorded.clamp(scaling.min_replicas, max)
    } else {
        scaling.min_replicas
    }
}

/// One ModelDeployment's memory between ticks.
#[derive(Debug)]
pub struct Memory {
    autoscaler: Autoscaler,
    current: u32,
    history: Vec<ScaleEvent>,
    last_scale_time: Option<Time>,
}

impl Memory {
    /// The memory of a ModelDeployment the loop has not seen yet: it resumes from the count and
    /// history its status records (a new leader carries on).
    pub fn resume(md: &ModelDeployment, scaling: &ScalingSpec) -> Self {
        let recorded = md.status.as_ref().and_then(|s| s.autoscaling.as_ref());
        Self {
            autoscaler: Autoscaler::default(),
            current: resume_replicas(md, scaling).max(0) as u32,
            history: recorded.map(|a| a.history.clone()).unwrap_or_default(),
            last_scale_time: recorded.and_then(|a| a.last_scale_time.clone()),
        }
    }
}

/// What the loop sees of one ModelDeployment's fleet.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct FleetView {
    /// Ready replicas over every revision.
    pub ready: u32,
    /// Telemetry over every revision.
    pub telemetry: Aggregate,
    /// Pods Pending for lack of `nvidia.com/gpu`.
    pub pods_short_of_gpu: usize,
    /// `spec.resources.gpus`.
    pub gpus_per_replica: i32,
    /// The router's newest request (the `modelfleet.dev/last-request` annotation).
    pub last_request: Option<Timestamp>,
}

/// One evaluation: the outcome to publish, and the reason when the count changed (for the
/// operator's decision counter).
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// What the reconcile writes.
    pub outcome: Outcome,
    /// Why the count changed in this evaluation, if it did.
    pub changed: Option<Reason>,
}

/// Decides and describes one ModelDeployment at `now` (`wall`: the same instant as a timestamp,
/// for status).
pub fn evaluate(
    scaling: &ScalingSpec,
    memory: &mut Memory,
    view: &FleetView,
    now: Instant,
    wall: Timestamp,
) -> Evaluation {
    let params = Params::from(scaling);
    let t = &view.telemetry;
    let (signals, metrics_available) = read_signals(view, memory.current);
    let current = memory.current;
    let complete = t.fresh_pods >= view.ready;
    // With minReplicas 0 the idle rule owns zero; the algorithm keeps at least one replica.
    let zero = (scaling.min_replicas == 0)
        .then(|| {
            idle::to_or_from_zero(
                &Activity {
                    idle_period: scaling.idle_period.into(),
                    last_request: view.last_request,
                    last_scale: memory.last_scale_time.as_ref().map(|t| t.0),
                    current,
                    load: signals.filter(|_| complete),
                    request_rate: t.request_rate,
                },
                wall,
            )
        })
        .flatten();
    let decision = zero.unwrap_or_else(|| {
        memory.autoscaler.decide(
            &Params {
                min_replicas: params.min_replicas.max(1),
                ..params.clone()
            },
            &Observation {
                at: now,
                ready_replicas: view.ready,
                current,
                signals,
                complete,
                capacity_exhausted: view.pods_short_of_gpu > 0,
            },
        )
    });
    let current_metrics = signals
        .map(|s| current_metrics(&params, &s, view.ready))
        .unwrap_or_default();
    let changed = (decision.replicas != current).then_some(decision.reason);
    if changed.is_some() {
        memory.history.push(ScaleEvent {
            time: Time(wall),
            from: current as i32,
            to: decision.replicas as i32,
            reason: explain(&decision, &current_metrics, &params),
        });
        if memory.history.len() > HISTORY {
            memory.history.remove(0);
        }
        memory.last_scale_time = Some(Time(wall));
        memory.current = decision.replicas;
    }
    let outcome = Outcome {
        replicas: memory.current as i32,
        status: AutoscalingStatus {
            desired_replicas: memory.current as i32,
            last_scale_time: memory.last_scale_time.clone(),
            current_metrics,
            history: memory.history.clone(),
        },
        metrics_available,
        scaling_limited: limited(&decision, &params, view, memory.current),
    };
    Evaluation { outcome, changed }
}

/// The load signals, when there is data to decide on, and the MetricsAvailable condition that
/// says which case holds.
fn read_signals(view: &FleetView, holding: u32) -> (Option<Signals>, Desired) {
    let t = &view.telemetry;
    let unavailable = |reason: &str, message: String| {
        (
            None,
            Desired::new(types::METRICS_AVAILABLE, false, reason, message),
        )
    };
    if view.ready == 0 && holding == 0 {
        return unavailable(
            "ScaledToZero",
            "no replica runs (minReplicas 0, idle); a request through the router starts one".into(),
        );
    }
    if view.ready == 0 {
        return unavailable(
            "NoReadyReplicas",
            format!("no replica is ready to report load; holding {holding} replicas"),
        );
    }
    if t.fresh_pods == 0 && t.stale_pods > 0 {
        return unavailable(
            "TelemetryStale",
            format!(
                "the telemetry of {} pods is older than three agent intervals; holding {holding} replicas and never scaling down on missing data",
                t.stale_pods
            ),
        );
    }
    if t.fresh_pods == 0 {
        return unavailable(
            "NoTelemetry",
            format!(
                "no node agent has reported a pod of this ModelDeployment (is the node-agent DaemonSet running and reaching the operator's telemetry Service?); holding {holding} replicas"
            ),
        );
    }
    // Pods without fresh data are assumed as loaded as the others.
    let scale = f64::from(view.ready.max(t.fresh_pods)) / f64::from(t.fresh_pods);
    let signals = Signals {
        queue_depth: t.queue_depth * scale,
        in_flight: (t.queue_depth + t.running) * scale,
        p95_latency_seconds: t.latency_p95,
        gpu_utilization: t.gpu_utilization.unwrap_or(0.0),
        ttft_p95_seconds: t.ttft_p95,
        kv_cache_utilization: t.kv_cache_utilization,
    };
    let (reason, message) = if t.fresh_pods >= view.ready {
        (
            "TelemetryFresh",
            format!(
                "fresh telemetry from {} of {} ready replicas",
                t.fresh_pods, view.ready
            ),
        )
    } else {
        (
            "PartialTelemetry",
            format!(
                "fresh telemetry from {} of {} ready replicas: scaling up on an extrapolation, never down",
                t.fresh_pods, view.ready
            ),
        )
    };
    (
        Some(signals),
        Desired::new(types::METRICS_AVAILABLE, true, reason, message),
    )
}

/// Per-target observed values, as `status.autoscaling.currentMetrics` shows them.
fn current_metrics(p: &Params, s: &Signals, ready: u32) -> Vec<MetricValue> {
    let ready = f64::from(ready.max(1));
    [
        (
            "queueDepthPerReplica",
            p.queue_depth_per_replica,
            s.queue_depth / ready,
        ),
        ("inFlightPerReplica", p.in_flight_per_replica, s.in_flight / ready),
        ("p95Latency", p.p95_latency_seconds, s.p95_latency_seconds),
        ("gpuUtilization", p.gpu_utilization, s.gpu_utilization),
        ("ttftP95", p.ttft_p95_seconds, s.ttft_p95_seconds),
        (
            "kvCacheUtilization",
            p.kv_cache_utilization,
            s.kv_cache_utilization,
        ),
        (
            "waitingSequencesPerReplica",
            p.waiting_sequences_per_replica,
            s.queue_depth / ready,
        ),
    ]
    .into_iter()
    .filter_map(|(name, target, value)| {
        target.map(|target| MetricValue {
            name: name.into(),
            value: (value * 1000.0).round() / 1000.0,
            target,
        })
    })
    .collect()
}

/// The human reason of a change, naming the deciding target: `queueDepthPerReplica 31.2 > 16`.
fn explain(d: &Decision, metrics: &[MetricValue], p: &Params) -> String {
    let top = metrics
        .iter()
        .filter(|m| m.target > 0.0)
        .max_by(|a, b| (a.value / a.target).total_cmp(&(b.value / b.target)));
    let versus = |m: &MetricValue, op: &str| format!("{} {} {op} {}", m.name, m.value, m.target);
    match (d.reason, top) {
        (Reason::Panic, Some(m)) => format!(
            "panic: {} (panic window demand {} replicas)",
            versus(m, ">"),
            d.desired
        ),
        (Reason::ScaleUp, Some(m)) => versus(m, ">"),
        (Reason::ScaleDown, Some(m)) => format!(
            "{} for {}s (at most halving per step)",
            versus(m, "<"),
            p.scale_down_stabilization.as_secs()
        ),
        (Reason::ScaleFromZero, _) => "a request arrived through the router at zero replicas".into(),
        (Reason::ScaleToZero, _) => format!(
            "no request and nothing in flight for idlePeriod {}s",
            p.idle_period.as_secs()
        ),
        (Reason::Bounded, _) => format!(
            "demand {} clamped to minReplicas..maxReplicas {}..{}",
            d.desired, p.min_replicas, p.max_replicas
        ),
        (reason, _) => format!("{} (demand {} replicas)", reason.as_str(), d.desired),
    }
}

fn limited(d: &Decision, p: &Params, view: &FleetView, replicas: u32) -> Desired {
    let short = view.pods_short_of_gpu;
    if d.reason == Reason::InsufficientGpu || short > 0 {
        return Desired::new(
            types::SCALING_LIMITED,
            true,
            "InsufficientGPU",
            format!(
                "{short} replicas are Pending for lack of nvidia.com/gpu ({} per replica); holding {replicas} replicas until GPUs free up (demand {})",
                view.gpus_per_replica, d.desired
            ),
        );
    }
    if d.desired > p.max_replicas {
        return Desired::new(
            types::SCALING_LIMITED,
            true,
            "TooManyReplicas",
            format!("demand {} is above maxReplicas {}", d.desired, p.max_replicas),
        );
    }
    if d.desired < p.min_replicas && d.reason != Reason::MetricsUnavailable {
        return Desired::new(
            types::SCALING_LIMITED,
            true,
            "TooFewReplicas",
            format!("demand {} is below minReplicas {}", d.desired, p.min_replicas),
        );
    }
    Desired::new(
        types::SCALING_LIMITED,
        false,
        "DesiredWithinRange",
        format!(
            "{replicas} replicas within minReplicas..maxReplicas {}..{}",
            p.min_replicas, p.max_replicas
        ),
    )
}
