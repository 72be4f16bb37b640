//! The decision loop: every tick, for each ModelDeployment with `spec.scaling`, turn the
//! telemetry and the watch caches into an [`Observation`], ask the [`Autoscaler`], and publish
//! the outcome in [`Decisions`]. The reconcile is the single writer: it reads the decided count
//! as its replica source, splits it over the revisions as the plan says, and writes the child
//! Deployments and `status.autoscaling`. The loop only asks for that reconcile when something a
//! user would see changed (the count, a condition, the history) or, for the metric values,
//! every [`STATUS_REFRESH`].

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use modelfleet_crds::{
    ModelDeployment,
    constants::conditions as types,
    v1alpha1::{AutoscalingStatus, MetricValue, ScaleEvent, ScalingSpec},
    validate,
};
use tokio::sync::mpsc;

use crate::{
    autoscaler::algorithm::{Autoscaler, Decision, Observation, Params, Reason, Signals},
    metrics::Metrics,
    reconcile::{conditions::Desired, diagnose, fetch},
    telemetry::{Aggregate, TelemetryStore},
};

/// How often `status.autoscaling.currentMetrics` is refreshed when nothing else changed.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);
/// Decisions kept in `status.autoscaling.history`.
const HISTORY: usize = 5;

/// What the autoscaler decided for one ModelDeployment, as the reconcile writes it.
#[derive(Debug, Clone, PartialEq)]
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
    fn shape(&self) -> (i32, &[ScaleEvent], (bool, &str), (bool, &str)) {
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
type Key = String;

/// The latest outcome per ModelDeployment, shared by the loop (writer) and the reconcile.
#[derive(Debug, Clone, Default)]
pub struct Decisions {
    inner: Arc<RwLock<HashMap<Key, Outcome>>>,
}

impl Decisions {
    /// The outcome for the ModelDeployment with this uid, if the loop has decided one.
    pub fn get(&self, uid: &str) -> Option<Outcome> {
        self.inner.read().ok()?.get(uid).cloned()
    }

    fn set(&self, key: Key, outcome: Outcome) {
        if let Ok(mut m) = self.inner.write() {
            m.insert(key, outcome);
        }
    }

    fn retain(&self, keep: impl Fn(&Key) -> bool) {
        if let Ok(mut m) = self.inner.write() {
            m.retain(|k, _| keep(k));
        }
    }
}

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

/// One ModelDeployment's memory.
#[derive(Debug)]
struct Tracked {
    autoscaler: Autoscaler,
    current: u32,
    history: Vec<ScaleEvent>,
    last_scale_time: Option<Time>,
    published: Option<(Instant, Outcome)>,
}

/// Everything the loop reads and where it publishes.
#[derive(Debug, Clone)]
pub struct LoopContext {
    /// ModelDeployments (the controller's cache).
    pub model_deployments: Store<ModelDeployment>,
    /// Children caches.
    pub stores: fetch::Stores,
    /// Node agents' telemetry.
    pub telemetry: TelemetryStore,
    /// Where outcomes go.
    pub decisions: Decisions,
    /// Asks the controller to reconcile one object.
    pub trigger: mpsc::Sender<ObjectRef<ModelDeployment>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Tick.
    pub interval: Duration,
}

/// Runs the loop until `shutdown` completes.
pub async fn run(ctx: LoopContext, shutdown: impl std::future::Future<Output = ()>) {
    let mut tracked: HashMap<Key, Tracked> = HashMap::new();
    let mut ticker = tokio::time::interval(ctx.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => return,
        }
        let started = Instant::now();
        for md in tick(&ctx, &mut tracked, started, Timestamp::now()) {
            if ctx.trigger.send(md).await.is_err() {
                return;
            }
        }
        ctx.telemetry.forget_old(started);
        ctx.metrics
            .autoscaler_tick
            .observe(started.elapsed().as_secs_f64());
    }
}

/// One pass over every ModelDeployment; returns those whose outcome needs writing.
fn tick(
    ctx: &LoopContext,
    tracked: &mut HashMap<Key, Tracked>,
    now: Instant,
    wall: Timestamp,
) -> Vec<ObjectRef<ModelDeployment>> {
    let mut due = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for md in ctx.model_deployments.state() {
        let (Some(namespace), Some(scaling)) = (md.namespace(), md.spec.scaling.as_ref()) else {
            continue;
        };
        // An invalid spec is reported by the reconcile and left alone here.
        if validate(&md.spec).is_err() {
            continue;
        }
        let (name, Some(key)) = (md.name_any(), md.uid()) else {
            continue;
        };
        seen.insert(key.clone());
        let entry = tracked.entry(key.clone()).or_insert_with(|| Tracked {
            autoscaler: Autoscaler::default(),
            current: resume_replicas(&md, scaling).max(0) as u32,
            history: md
                .status
                .as_ref()
                .and_then(|s| s.autoscaling.as_ref())
                .map(|a| a.history.clone())
                .unwrap_or_default(),
            last_scale_time: md
                .status
                .as_ref()
                .and_then(|s| s.autoscaling.as_ref())
                .and_then(|a| a.last_scale_time.clone()),
            published: None,
        });
        let observed = fetch::observe(&ctx.stores, &namespace, &name);
        let view = FleetView {
            ready: observed
                .revisions
                .iter()
                .map(|r| r.ready_replicas.max(0) as u32)
                .sum(),
            telemetry: ctx.telemetry.aggregate(&namespace, &name, None, now),
            pods_short_of_gpu: diagnose::pods_short_of_gpu(&observed.pods),
            gpus_per_replica: md.spec.resources.gpus,
        };
        let outcome = evaluate(scaling, entry, &view, now, wall, &ctx.metrics);
        let urgent = entry
            .published
            .as_ref()
            .is_none_or(|(_, p)| p.shape() != outcome.shape());
        let refresh = entry
            .published
            .as_ref()
            .is_some_and(|(at, p)| *p != outcome && now.duration_since(*at) >= STATUS_REFRESH);
        ctx.decisions.set(key, outcome.clone());
        if urgent || refresh {
            entry.published = Some((now, outcome));
            due.push(ObjectRef::from_obj(md.as_ref()));
        }
    }
    tracked.retain(|k, _| seen.contains(k));
    ctx.decisions.retain(|k| seen.contains(k));
    due
}

/// What the loop sees of one ModelDeployment's fleet.
#[derive(Debug, Clone, Copy, Default)]
struct FleetView {
    /// Ready replicas over every revision.
    ready: u32,
    /// Telemetry over every revision.
    telemetry: Aggregate,
    /// Pods Pending for lack of `nvidia.com/gpu`.
    pods_short_of_gpu: usize,
    /// `spec.resources.gpus`.
    gpus_per_replica: i32,
}

/// Decides and describes one ModelDeployment: pure apart from `tracked`.
fn evaluate(
    scaling: &ScalingSpec,
    tracked: &mut Tracked,
    view: &FleetView,
    now: Instant,
    wall: Timestamp,
    metrics: &Metrics,
) -> Outcome {
    let params = Params::from(scaling);
    let t = &view.telemetry;
    let (signals, metrics_available) = if view.ready == 0 {
        (
            None,
            Desired::new(
                types::METRICS_AVAILABLE,
                false,
                "NoReadyReplicas",
                format!(
                    "no replica is ready to report load; holding {} replicas",
                    tracked.current
                ),
            ),
        )
    } else if t.fresh_pods == 0 {
        let (reason, message) = if t.stale_pods > 0 {
            (
                "TelemetryStale",
                format!(
                    "the telemetry of {} pods is older than three agent intervals; holding {} replicas and never scaling down on missing data",
                    t.stale_pods, tracked.current
                ),
            )
        } else {
            (
                "NoTelemetry",
                format!(
                    "no node agent has reported a pod of this ModelDeployment (is the node-agent DaemonSet running and reaching the operator's telemetry Service?); holding {} replicas",
                    tracked.current
                ),
            )
        };
        (
            None,
            Desired::new(types::METRICS_AVAILABLE, false, reason, message),
        )
    } else {
        // Pods without fresh data are assumed as loaded as the others.
        let scale = f64::from(view.ready.max(t.fresh_pods)) / f64::from(t.fresh_pods);
        let signals = Signals {
            queue_depth: t.queue_depth * scale,
            in_flight: (t.queue_depth + t.running) * scale,
            p95_latency_seconds: t.latency_p95,
            gpu_utilization: t.gpu_utilization.unwrap_or(0.0),
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
    };
    let current = tracked.current;
    let decision = tracked.autoscaler.decide(
        &params,
        &Observation {
            at: now,
            ready_replicas: view.ready,
            current,
            signals,
            complete: t.fresh_pods >= view.ready,
            capacity_exhausted: view.pods_short_of_gpu > 0,
        },
    );
    let current_metrics = signals
        .map(|s| current_metrics(&params, &s, view.ready))
        .unwrap_or_default();
    if decision.replicas != current {
        metrics.autoscaler_decision(decision.reason.as_str());
        tracked.history.push(ScaleEvent {
            time: Time(wall),
            from: current as i32,
            to: decision.replicas as i32,
            reason: explain(&decision, &current_metrics, &params),
        });
        if tracked.history.len() > HISTORY {
            tracked.history.remove(0);
        }
        tracked.last_scale_time = Some(Time(wall));
        tracked.current = decision.replicas;
    }
    Outcome {
        replicas: tracked.current as i32,
        status: AutoscalingStatus {
            desired_replicas: tracked.current as i32,
            last_scale_time: tracked.last_scale_time.clone(),
            current_metrics,
            history: tracked.history.clone(),
        },
        metrics_available,
        scaling_limited: limited(&decision, &params, view, tracked.current),
    }
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
