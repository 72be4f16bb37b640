//! The scaling decision, pure: observations in, a replica count and its reason out. Time is an
//! argument, so tests drive it with a simulated clock.
//!
//! - Per target: desired = ceil(readyReplicas × observed / target), with a ±10% tolerance band;
//!   the overall desire is the largest.
//! - Stable window and panic window: when the panic-window desire reaches `panicThreshold` ×
//!   current, panic: scale up at once, never down, and leave after a stable window without a new
//!   trigger.
//! - Scale-down: to the highest recommendation over `scaleDownStabilization`, at most halving per
//!   step.
//! - Clamped to `minReplicas..=maxReplicas`.
//! - Capacity: while added replicas are Pending for lack of GPUs, never raise the target.
//! - Missing or stale telemetry: hold, and never scale down on missing data.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use modelfleet_crds::v1alpha1::ScalingSpec;

/// Tolerance band around a target inside which the current count is kept.
const TOLERANCE: f64 = 0.10;

/// The autoscaler's settings, from `spec.scaling`.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    pub min_replicas: u32,
    pub max_replicas: u32,
    pub queue_depth_per_replica: Option<f64>,
    pub in_flight_per_replica: Option<f64>,
    pub p95_latency_seconds: Option<f64>,
    pub gpu_utilization: Option<f64>,
    /// Generation: time to first token, 95th percentile.
    pub ttft_p95_seconds: Option<f64>,
    /// Generation: KV-cache utilisation, 0 to 1.
    pub kv_cache_utilization: Option<f64>,
    /// Generation: sequences waiting for the running batch, per replica (the server's queue).
    pub waiting_sequences_per_replica: Option<f64>,
    pub stable_window: Duration,
    pub panic_window: Duration,
    pub panic_threshold: f64,
    pub scale_down_stabilization: Duration,
    /// With `minReplicas: 0`: quiet time before the last replica goes (see `idle`).
    pub idle_period: Duration,
}

impl From<&ScalingSpec> for Params {
    fn from(s: &ScalingSpec) -> Self {
        Self {
            min_replicas: s.min_replicas.max(0) as u32,
            max_replicas: s.max_replicas.max(0) as u32,
            queue_depth_per_replica: s.targets.queue_depth_per_replica,
            in_flight_per_replica: s.targets.in_flight_per_replica,
            p95_latency_seconds: s
                .targets
                .p95_latency
                .map(|d| std::time::Duration::from(d).as_secs_f64()),
            gpu_utilization: s.targets.gpu_utilization,
            ttft_p95_seconds: s
                .targets
                .ttft_p95
                .map(|d| std::time::Duration::from(d).as_secs_f64()),
            kv_cache_utilization: s.targets.kv_cache_utilization,
            waiting_sequences_per_replica: s.targets.waiting_sequences_per_replica,
            stable_window: s.stable_window.into(),
            panic_window: s.panic_window.into(),
            panic_threshold: s.panic_threshold,
            scale_down_stabilization: s.scale_down_stabilization.into(),
            idle_period: s.idle_period.into(),
        }
    }
}

/// What the telemetry says about one ModelDeployment's serving pods at one instant (sums over
/// pods for counts, means for latency and utilization).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub queue_depth: f64,
    /// Queued plus running requests.
    pub in_flight: f64,
    pub p95_latency_seconds: f64,
    /// Mean GPU utilization, percent.
    pub gpu_utilization: f64,
    /// Generation: time to first token, 95th percentile (request-weighted mean over pods).
    pub ttft_p95_seconds: f64,
    /// Generation: mean KV-cache utilisation, 0 to 1.
    pub kv_cache_utilization: f64,
}

/// One tick's input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    pub at: Instant,
    /// Ready replicas serving the signals.
    pub ready_replicas: u32,
    /// The replica count in force (what the last decision wrote).
    pub current: u32,
    /// None when telemetry is missing or stale.
    pub signals: Option<Signals>,
    /// False when some ready replicas have no fresh telemetry: the signals are extrapolated
    /// from the others, good enough to scale up on, never to scale down on.
    pub complete: bool,
    /// Replicas added earlier are Pending for lack of `nvidia.com/gpu`.
    pub capacity_exhausted: bool,
}

/// Why the count is what it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Within the tolerance band of every target.
    Steady,
    /// The stable-window demand is higher.
    ScaleUp,
    /// The panic-window demand crossed the threshold.
    Panic,
    /// Load fell for a whole stabilization window.
    ScaleDown,
    /// A lower count is wanted, but the stabilization window still holds a higher one.
    Stabilizing,
    /// Telemetry is missing or stale: hold.
    MetricsUnavailable,
    /// Some ready replicas have no fresh telemetry: no scale-down.
    PartialMetrics,
    /// More replicas are wanted but the cluster has no GPUs for them.
    InsufficientGpu,
    /// Clamped to minReplicas or maxReplicas.
    Bounded,
    /// `minReplicas: 0` and a request arrived: one replica.
    ScaleFromZero,
    /// `minReplicas: 0` and no request for `idlePeriod`: none.
    ScaleToZero,
    /// At zero, no request since.
    Idle,
}

impl Reason {
    /// Stable label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Steady => "steady",
            Reason::ScaleUp => "scale_up",
            Reason::Panic => "panic",
            Reason::ScaleDown => "scale_down",
            Reason::Stabilizing => "stabilizing",
            Reason::MetricsUnavailable => "metrics_unavailable",
            Reason::PartialMetrics => "partial_metrics",
            Reason::InsufficientGpu => "insufficient_gpu",
            Reason::Bounded => "bounded",
            Reason::ScaleFromZero => "scale_from_zero",
            Reason::ScaleToZero => "scale_to_zero",
            Reason::Idle => "idle",
        }
    }
}

/// One decision.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: Reason,
    /// The unclamped, unlimited demand of the deciding window.
    pub desired: u32,
    pub panicking: bool,
}

/// The autoscaler's memory of one ModelDeployment.
#[derive(Debug, Default)]
pub struct Autoscaler {
    samples: VecDeque<(Instant, Signals, u32)>,
    recommendations: VecDeque<(Instant, u32)>,
    last_panic_trigger: Option<Instant>,
    last_scale_down: Option<Instant>,
}

impl Autoscaler {
    /// Decides the replica count for `obs`.
    pub fn decide(&mut self, p: &Params, obs: &Observation) -> Decision {
        let now = obs.at;
        let Some(signals) = obs.signals else {
            return Decision {
                replicas: obs
                    .current
                    .clamp(p.min_replicas, p.max_replicas.max(p.min_replicas)),
                reason: Reason::MetricsUnavailable,
                desired: obs.current,
                panicking: self.panicking(p, now),
            };
        };
        self.samples.push_back((now, signals, obs.ready_replicas));
        while self
            .samples
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) >= p.stable_window)
        {
            self.samples.pop_front();
        }
        let current = obs.current;
        let stable = self.desired_over(p, now, p.stable_window, current);
        let panic = self.desired_over(p, now, p.panic_window, current);
        if f64::from(panic) >= p.panic_threshold * f64::from(current.max(1)) && panic > current {
            self.last_panic_trigger = Some(now);
        }
        let panicking = self.panicking(p, now);
        let (mut want, mut reason) = if panicking {
            let want = panic.max(stable).max(current);
            (
                want,
                if want > current {
                    Reason::Panic
                } else {
                    Reason::Steady
                },
            )
        } else if stable > current {
            (stable, Reason::ScaleUp)
        } else if stable < current {
            (stable, Reason::ScaleDown)
        } else {
            (stable, Reason::Steady)
        };

        (want, reason) = self.stabilize(p, now, current, want, reason);

        let bounded = want.clamp(p.min_replicas, p.max_replicas.max(p.min_replicas));
        if bounded != want {
            (want, reason) = (bounded, Reason::Bounded);
        }
        // Never shrink on a partial view of the fleet.
        if !obs.complete && want < current {
            (want, reason) = (current, Reason::PartialMetrics);
        }
        // No GPUs for replicas already asked for: do not ask for more, and say so.
        if obs.capacity_exhausted && want >= current {
            (want, reason) = (current, Reason::InsufficientGpu);
        }
        if want < current {
            self.last_scale_down = Some(now);
        }
        let desired = if panicking { panic.max(stable) } else { stable };
        Decision {
            replicas: want,
            reason,
            desired,
            panicking,
        }
    }

    /// Scale-down stabilization: the highest recommendation of the window, at most halving, and
    /// at most one scale-down per window (a fleet that just shrank waits before shrinking
    /// again).
    fn stabilize(
        &mut self,
        p: &Params,
        now: Instant,
        current: u32,
        want: u32,
        reason: Reason,
    ) -> (u32, Reason) {
        self.recommendations.push_back((now, want));
        while self
            .recommendations
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > p.scale_down_stabilization)
        {
            self.recommendations.pop_front();
        }
        if want >= current {
            return (want, reason);
        }
        let highest = self.recommendations.iter().map(|(_, r)| *r).max().unwrap_or(want);
        let stabilized = highest.max(current.div_ceil(2)).min(current);
        let recently = self
            .last_scale_down
            .is_some_and(|t| now.duration_since(t) < p.scale_down_stabilization);
        if stabilized >= current || recently {
            (current, Reason::Stabilizing)
        } else {
            (stabilized, reason)
        }
    }

    fn panicking(&self, p: &Params, now: Instant) -> bool {
        self.last_panic_trigger
            .is_some_and(|t| now.duration_since(t) < p.stable_window)
    }

    /// The largest per-target demand over the samples of the last `window`; within the
    /// tolerance band of a target, that target asks for `current`.
    fn desired_over(&self, p: &Params, now: Instant, window: Duration, current: u32) -> u32 {
        let recent: Vec<&(Instant, Signals, u32)> = self
            .samples
            .iter()
            .filter(|(t, _, _)| now.duration_since(*t) < window)
            .collect();
        if recent.is_empty() {
            return 0;
        }
        let n = recent.len() as f64;
        let mean = |f: fn(&Signals) -> f64| recent.iter().map(|(_, s, _)| f(s)).sum::<f64>() / n;
        let ready = (recent.iter().map(|(_, _, r)| f64::from(*r)).sum::<f64>() / n).max(1.0);
        let avg = Signals {
            queue_depth: mean(|s| s.queue_depth),
            in_flight: mean(|s| s.in_flight),
            p95_latency_seconds: mean(|s| s.p95_latency_seconds),
            gpu_utilization: mean(|s| s.gpu_utilization),
            ttft_p95_seconds: mean(|s| s.ttft_p95_seconds),
            kv_cache_utilization: mean(|s| s.kv_cache_utilization),
        };
        let targets = [
            // Counts are sums over pods: per replica = total / ready.
            (p.queue_depth_per_replica, avg.queue_depth / ready),
            (p.in_flight_per_replica, avg.in_flight / ready),
            (p.p95_latency_seconds, avg.p95_latency_seconds),
            (p.gpu_utilization, avg.gpu_utilization),
            (p.ttft_p95_seconds, avg.ttft_p95_seconds),
            (p.kv_cache_utilization, avg.kv_cache_utilization),
            // A generation server's queue is its waiting sequences.
            (p.waiting_sequences_per_replica, avg.queue_depth / ready),
        ];
        targets
            .into_iter()
            .filter_map(|(target, observed)| target.filter(|t| *t > 0.0).map(|t| observed / t))
            .map(|ratio| {
                if (ratio - 1.0).abs() <= TOLERANCE {
                    current
                } else {
                    (ready * ratio).ceil() as u32
                }
            })
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests;
