//! The scaling decision against simulated clocks and load shapes.
use super::*;

fn params() -> Params {
    Params {
        min_replicas: 1,
        max_replicas: 20,
        queue_depth_per_replica: Some(4.0),
        in_flight_per_replica: None,
        p95_latency_seconds: None,
        gpu_utilization: None,
        ttft_p95_seconds: None,
        kv_cache_utilization: None,
        waiting_sequences_per_replica: None,
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
fn generation_targets_scale_on_ttft_kv_cache_and_waiting_sequences() {
    let t0 = Instant::now();
    let decide = |p: &Params, signals: Signals| {
        let obs = Observation {
            at: t0,
            ready_replicas: 2,
            current: 2,
            signals: Some(signals),
            capacity_exhausted: false,
            complete: true,
        };
        Autoscaler::default().decide(p, &obs).replicas
    };
    let generation = |ttft, kv, waiting| Params {
        queue_depth_per_replica: None,
        ttft_p95_seconds: ttft,
        kv_cache_utilization: kv,
        waiting_sequences_per_replica: waiting,
        ..params()
    };
    let load = Signals {
        queue_depth: 12.0,
        ttft_p95_seconds: 1.5,
        kv_cache_utilization: 0.9,
        ..Default::default()
    };
    // TTFT 1.5 s against 0.5 s on 2 replicas: 6.
    assert_eq!(decide(&generation(Some(0.5), None, None), load), 6);
    // KV cache 0.9 against 0.6: 3.
    assert_eq!(decide(&generation(None, Some(0.6), None), load), 3);
    // 12 waiting over 2 replicas against 2 per replica: 6.
    assert_eq!(decide(&generation(None, None, Some(2.0)), load), 6);
    // The largest demand wins; a TTFT at its target holds the count.
    assert_eq!(decide(&generation(Some(0.5), Some(0.6), None), load), 6);
    let calm = Signals {
        ttft_p95_seconds: 0.5,
        ..load
    };
    assert_eq!(decide(&generation(Some(0.5), None, None), calm), 2);
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
