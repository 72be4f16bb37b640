//! The engine driven like the reconcile drives it: a status carried from one decision to the
//! next.

use super::*;

fn spec() -> RolloutSpec {
    serde_yaml::from_str(
        "steps:
  - shadow: {percent: 20, duration: 60s}
  - canary: {weight: 10, duration: 60s}
  - canary: {weight: 50, duration: 60s}
analysis: {interval: 10s, failureLimit: 2, checks: [{builtin: errorRate, max: 0.01}]}
scaleDownDelay: 30s",
    )
    .expect("rollout fixture")
}

fn rev(name: &str, replicas: i32, ready: i32) -> ObservedRevision {
    ObservedRevision {
        revision: name.into(),
        version: name.into(),
        replicas,
        ready_replicas: ready,
        template: None,
    }
}

/// A cluster that makes every planned replica ready at once, and a status carried from one
/// decision to the next, as the reconcile does.
struct Sim {
    rollout: RolloutSpec,
    status: ModelDeploymentStatus,
    observed: Vec<ObservedRevision>,
    gateway: bool,
}

impl Sim {
    fn new() -> Self {
        Self {
            rollout: spec(),
            status: ModelDeploymentStatus::default(),
            observed: vec![rev("a", 10, 10)],
            gateway: true,
        }
    }

    fn decide(&mut self, t: i64, current: &str, analysis: Option<Vec<CheckOutcome>>) -> RolloutDecision {
        let stable = self
            .observed
            .iter()
            .find(|r| r.revision == "a")
            .cloned()
            .expect("stable");
        let d = decide(&EngineInput {
            now: Timestamp::from_second(1_000_000 + t).expect("time"),
            rollout: &self.rollout,
            current,
            version: current,
            stable: &stable,
            desired: 10,
            observed: &self.observed,
            recorded: &self.status,
            analysis: analysis.as_deref(),
            promote: false,
            abort: false,
            gateway: self.gateway,
        });
        self.status.candidate = d.report.candidate.clone();
        self.status.analysis = d.report.analysis.clone();
        self.status.last_rollout = d.report.last_rollout.clone();
        self.status.rollout = d.report.state.clone();
        self.observed = d.plan.replicas.iter().map(|(r, &n)| rev(r, n, n)).collect();
        d
    }
}

fn pass() -> Vec<CheckOutcome> {
    vec![CheckOutcome::Passed {
        check: "errorRate".into(),
        value: 0.0,
    }]
}

#[test]
fn the_candidate_is_sized_to_its_share_and_stable_stays_full_until_promotion() {
    let mut sim = Sim::new();
    let mut seen = Vec::new();
    let mut promoted_at = None;
    for t in (0..400).step_by(10) {
        let d = sim.decide(t, "b", Some(pass()));
        let c = d.plan.replicas.get("b").copied();
        seen.push((
            d.plan.traffic.weight,
            d.plan.traffic.mirror,
            c,
            d.plan.replicas.get("a").copied(),
        ));
        if d.report.phase == RolloutPhase::Promoted {
            promoted_at = Some(t);
            assert_eq!(d.plan.stable, "b");
            assert_eq!(
                d.events.last(),
                Some(&RolloutEvent::Promoted {
                    revision: "b".into(),
                    version: "b".into()
                })
            );
            break;
        }
    }
    seen.dedup();
    assert_eq!(
        seen,
        vec![
            (0, 0, Some(2), Some(10)),   // starting: shadow 20% of 10 → 2 replicas, no traffic
            (0, 20, Some(2), Some(10)),  // step 1: mirror 20%
            (10, 0, Some(1), Some(10)),  // step 2: canary 10% → 1 replica
            (10, 0, Some(5), Some(10)),  // step 3 waits at 10% for its 5 replicas
            (50, 0, Some(5), Some(10)),  // step 3: 50%
            (50, 0, Some(10), Some(10)), // grows to full size before the switch
            (0, 0, Some(10), Some(10)),  // promoted: the old revision drains
        ],
    );
    assert_eq!(
        promoted_at,
        Some(200),
        "ready at 10 s, three 60 s steps, 10 s to grow"
    );
}

#[test]
fn a_rolled_back_revision_stays_at_zero_until_the_spec_changes_and_a_new_candidate_starts_over() {
    let mut sim = Sim::new();
    let fail = || {
        Some(vec![CheckOutcome::Failed {
            check: "errorRate".into(),
            value: 0.3,
            threshold: "max 0.01".into(),
        }])
    };
    sim.decide(0, "b", None);
    sim.decide(10, "b", fail());
    let d = sim.decide(20, "b", fail());
    let RolloutPhase::RolledBack { reason, message } = &d.report.phase else {
        panic!("{:?}", d.report.phase)
    };
    assert_eq!(reason, "AnalysisFailed");
    assert!(message.contains("errorRate") && message.contains("0.3") && message.contains("max 0.01"));
    assert_eq!(d.plan.replicas.get("b"), Some(&0));
    assert_eq!(d.plan.traffic.weight, 0);
    assert!(matches!(d.events.as_slice(), [RolloutEvent::RolledBack { .. }]));
    // Later reconciles hold it there, with no new Event.
    let d = sim.decide(100, "b", None);
    assert_eq!((d.plan.replicas.get("b"), d.events.len()), (Some(&0), 0));
    let due = analysis_due(&EngineInput {
        now: Timestamp::from_second(1_000_200).expect("time"),
        rollout: &sim.rollout,
        current: "b",
        version: "b",
        stable: &rev("a", 10, 10),
        desired: 10,
        observed: &sim.observed,
        recorded: &sim.status,
        analysis: None,
        promote: false,
        abort: false,
        gateway: true,
    });
    assert_eq!(due, None, "no analysis of a rolled-back revision");
    // A new version starts at step 0 and the rolled-back one is retired.
    let d = sim.decide(110, "c", None);
    assert_eq!(
        d.report.candidate.as_ref().map(|c| (c.revision.as_str(), c.step)),
        Some(("c", 0))
    );
    assert_eq!(d.plan.retire, vec!["b".to_string()]);
}

#[test]
fn a_spec_change_mid_rollout_starts_over_with_the_new_candidate() {
    let mut sim = Sim::new();
    for t in (0..100).step_by(10) {
        sim.decide(t, "b", Some(pass()));
    }
    assert_eq!(sim.status.candidate.as_ref().map(|c| c.step), Some(1));
    let d = sim.decide(100, "c", None);
    let c = d.report.candidate.expect("candidate");
    assert_eq!((c.revision.as_str(), c.step, c.traffic_weight), ("c", 0, 0));
    assert!(
        d.report.analysis.is_none(),
        "the old candidate's analysis is dropped"
    );
    assert_eq!(d.plan.retire, vec!["b".to_string()]);
}

#[test]
fn without_a_gateway_the_reported_weight_is_the_ready_replica_share() {
    let mut sim = Sim::new();
    sim.gateway = false;
    for t in (0..90).step_by(10) {
        sim.decide(t, "b", Some(pass()));
    }
    let c = sim.status.candidate.clone().expect("candidate");
    // Canary 10% of 10 desired: 1 candidate replica next to 10 stable ones.
    assert_eq!((c.step, c.replicas, c.traffic_weight), (1, 1, 9));
}

#[test]
fn sizes_round_up_and_never_exceed_the_total() {
    let r = spec();
    assert_eq!(candidate_size(&r, 3, 0), 1, "20% of 3");
    assert_eq!(candidate_size(&r, 3, 2), 2, "50% of 3");
    assert_eq!(candidate_size(&r, 3, 3), 3, "promotion");
    assert_eq!(candidate_size(&r, 0, 1), 1, "at least 1");
}

#[test]
fn a_candidate_that_cannot_grow_to_full_size_fails_at_the_progress_deadline() {
    let mut sim = Sim::new();
    sim.rollout.progress_deadline = modelfleet_crds::Duration::from_secs(60);
    let mut last = None;
    for t in (0..400).step_by(10) {
        let d = sim.decide(t, "b", Some(pass()));
        // No GPUs beyond 5 candidate replicas.
        for r in sim.observed.iter_mut().filter(|r| r.revision == "b") {
            r.ready_replicas = r.ready_replicas.min(5);
        }
        if let RolloutPhase::RolledBack { reason, .. } = &d.report.phase {
            last = Some((t, reason.clone()));
            break;
        }
        assert_ne!(d.report.phase, RolloutPhase::Promoted, "at {t}");
    }
    // The last step ends at 190 s; growth starts then and fails 60 s later.
    assert_eq!(last, Some((250, "ProgressDeadlineExceeded".to_string())));
}
