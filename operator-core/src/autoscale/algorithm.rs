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
        };
        let targets = [
            // Counts are sums over pods: per replica = total / ready.
            (p.queue_depth_per_replica, avg.queue_depth / ready),
            (p.in_flight_per_replica, avg.in_flight / ready),
            (p.p95_latency_seconds, avg.p95_latency_seconds),
            (p.gpu_utilization, avg.gpu_utilization),
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
mod tests {
    use super::*;

    fn params() -> Params {
        Params {
            min_replicas: 1,
            max_replicas: 20,
            queue_depth_per_replica: Some(4.0),
            in_flight_per_replica: None,
            p95_latency_seconds: None,
            gpu_utilization: None,
            stable_window: Duration::from_secs(60),
            panic_window: Duration::from_secs(6),
            panic_threshold: 2.0,
            scale_down_stabilization: Duration::from_secs(300),
            idle_period: Duration::from_secs(900),
        }
    }

    /// Drives the autoscaler every 2 s (the decision tick) with a queue-depth function of time;
    /// replicas become ready at once, up to `gpu_room` of them (the rest stay Pending). Returns
    /// (second, replicas, reason) per tick.
    fn run(
        p: &Params,
        seconds: u64,
        start: u32,
        queue: impl Fn(u64) -> Option<f64>,
        gpu_room: Option<u32>,
    ) -> Vec<(u64, u32, Reason)> {
        let t0 = Instant::now();
        let mut a = Autoscaler::default();
        let mut current = start;
        let mut out = Vec::new();
        for s in (0..=seconds).step_by(2) {
            let room = gpu_room.unwrap_or(u32::MAX);
            let obs = Observation {
                at: t0 + Duration::from_secs(s),
                ready_replicas: current.min(room),
                current,
                signals: queue(s).map(|q| Signals {
                    queue_depth: q,
                    ..Default::default()
                }),
                capacity_exhausted: current > room,
                complete: true,
            };
            let d = a.decide(p, &obs);
            current = d.replicas;
            out.push((s, current, d.reason));
        }
        out
    }

    #[test]
    fn a_load_step_scales_up_within_one_tick_in_panic() {
        // 2 replicas at the target (8 queued), then a 5x step at t=100 s.
        let ticks = run(
            &params(),
            110,
            2,
            |s| Some(if s < 100 { 8.0 } else { 40.0 }),
            None,
        );
        let at = |second: u64| {
            ticks
                .iter()
                .find(|(s, _, _)| *s == second)
                .copied()
                .expect("tick")
        };
        let (_, replicas, reason) = at(100);
        assert_eq!(reason, Reason::Panic, "the first tick after the step panics");
        assert!(replicas >= 4, "more than doubled at once: {replicas}");
        assert_eq!(
            at(104).1,
            10,
            "40 queued / 4 per replica once the panic window holds the step"
        );
        assert!(ticks.iter().filter(|(s, _, _)| *s < 100).all(|(_, r, _)| *r == 2));
    }

    #[test]
    fn an_oscillating_load_does_not_flap() {
        // Load alternates between 32 and 4 queued every 20 s for 15 minutes.
        let ticks = run(
            &params(),
            900,
            8,
            |s| Some(if (s / 20) % 2 == 0 { 32.0 } else { 4.0 }),
            None,
        );
        let downs: Vec<u64> = ticks
            .windows(2)
            .filter(|w| w[1].1 < w[0].1)
            .map(|w| w[1].0)
            .collect();
        assert!(
            !downs.is_empty(),
            "the mean demand (about 5) is below 8: it must come down once"
        );
        for pair in downs.windows(2) {
            assert!(
                pair[1] - pair[0] >= 300,
                "two scale-downs within one stabilization window: {downs:?}"
            );
        }
        let late: Vec<u32> = ticks
            .iter()
            .filter(|(s, _, _)| *s >= 600)
            .map(|(_, r, _)| *r)
            .collect();
        let changes = late.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 1, "still moving after 10 minutes: {late:?}");
    }

    #[test]
    fn a_gradual_decline_scales_down_stepwise_after_the_window() {
        // 40 queued at first, then falling by 4 every minute to 4.
        let queue = |s: u64| Some((40.0 - 4.0 * (s / 60) as f64).max(4.0));
        let ticks = run(&params(), 1500, 10, queue, None);
        let first_down = ticks
            .iter()
            .find(|(_, r, _)| *r < 10)
            .map(|(s, _, _)| *s)
            .expect("it scales down");
        assert!(
            first_down >= 300,
            "scaled down at {first_down} s, inside the first stabilization window"
        );
        let counts: Vec<u32> = ticks.iter().map(|(_, r, _)| *r).collect();
        assert!(
            counts.windows(2).all(|w| w[1] <= w[0]),
            "never up on a decline: {counts:?}"
        );
        assert!(
            counts.windows(2).all(|w| w[1] * 2 >= w[0]),
            "at most halving per step"
        );
        assert!(*counts.last().expect("ticks") < 10);
    }

    #[test]
    fn stale_data_holds_and_never_scales_down() {
        // High load, then telemetry stops for 10 minutes.
        let ticks = run(
            &params(),
            700,
            1,
            |s| if s < 60 { Some(40.0) } else { None },
            None,
        );
        let at_60 = ticks
            .iter()
            .find(|(s, _, _)| *s == 60)
            .map(|(_, r, _)| *r)
            .expect("tick");
        assert!(
            ticks
                .iter()
                .filter(|(s, _, _)| *s >= 60)
                .all(|(_, r, reason)| *r == at_60 && *reason == Reason::MetricsUnavailable)
        );
    }

    #[test]
    fn exhausted_capacity_stops_the_count_and_says_why() {
        // Demand for 20 replicas; the cluster has GPUs for 6.
        let ticks = run(&params(), 30, 2, |_| Some(80.0), Some(6));
        let first = ticks[0].1;
        assert!(first > 6, "the first decision cannot know the capacity: {first}");
        assert!(
            ticks[1..]
                .iter()
                .all(|(_, r, reason)| *r == first && *reason == Reason::InsufficientGpu),
            "{ticks:?}"
        );
    }

    #[test]
    fn a_partial_view_scales_up_but_never_down() {
        let p = params();
        let t0 = Instant::now();
        let mut a = Autoscaler::default();
        let obs = |s: u64, q: f64, current: u32| Observation {
            at: t0 + Duration::from_secs(s),
            ready_replicas: current,
            current,
            signals: Some(Signals {
                queue_depth: q,
                ..Default::default()
            }),
            capacity_exhausted: false,
            complete: false,
        };
        let up = a.decide(&p, &obs(0, 80.0, 4));
        assert!(up.replicas > 4, "{up:?}");
        let mut current = up.replicas;
        for s in (2..900).step_by(2) {
            let d = a.decide(&p, &obs(s, 0.0, current));
            assert!(
                d.replicas >= current,
                "scaled down at {s} s on partial data: {d:?}"
            );
            current = d.replicas;
        }
    }

    #[test]
    fn within_the_tolerance_band_the_count_stays() {
        // 4 replicas, 17 queued: 4.25 per replica is within 10% of 4.
        let ticks = run(&params(), 120, 4, |_| Some(17.0), None);
        assert!(ticks.iter().all(|(_, r, _)| *r == 4), "{ticks:?}");
    }

    #[test]
    fn counts_are_clamped_to_the_bounds() {
        let mut p = params();
        p.max_replicas = 5;
        let ticks = run(&p, 10, 1, |_| Some(400.0), None);
        assert!(ticks.iter().all(|(_, r, _)| *r <= 5));
        assert!(ticks.iter().any(|(_, _, reason)| *reason == Reason::Bounded));
        let idle = run(&params(), 900, 3, |_| Some(0.0), None);
        assert_eq!(
            idle.last().map(|(_, r, _)| *r),
            Some(1),
            "never below minReplicas"
        );
    }
}
