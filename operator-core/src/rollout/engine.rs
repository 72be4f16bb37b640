//! The rollout engine, pure: the spec's rollout, the recorded status, what is observed and this
//! reconcile's analysis in; the revisions to run with their traffic, the rollout's status and its
//! Events out. The state lives in `status.candidate`, `status.analysis` and `status.lastRollout`,
//! so a new leader carries on where the old one stopped.
//!
//! Sizing: the candidate runs its share of the desired total (`ceil(desired × share / 100)`, at
//! least 1, where the share is the step's weight or mirror percent) while the stable revision
//! stays at full size until promotion. After the last step the candidate grows to the full size,
//! and only once all of it is Ready does it become stable.

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use modelfleet_crds::{
    ModelDeploymentStatus,
    v1alpha1::{
        AnalysisStatus, CandidateStatus, CheckResult, RolloutResult, RolloutResultStatus, RolloutSpec,
        StepKind,
    },
};

use crate::{
    observed::ObservedRevision,
    plan::{RevisionPlan, Traffic},
    rollout::machine::{self, CheckOutcome, HoldReason, Inputs, RollbackReason, RolloutState, Verdict},
};

/// This reconcile's view of a rollout in progress.
#[derive(Debug, Clone, Copy)]
pub struct EngineInput<'a> {
    /// Now.
    pub now: Timestamp,
    /// `spec.rollout`.
    pub rollout: &'a RolloutSpec,
    /// The revision the spec asks for (the candidate).
    pub current: &'a str,
    /// `spec.model.version`.
    pub version: &'a str,
    /// The stable revision, observed.
    pub stable: &'a ObservedRevision,
    /// Total replicas the replica source asks for.
    pub desired: i32,
    /// Every observed revision.
    pub observed: &'a [ObservedRevision],
    /// The status the previous reconcile wrote.
    pub recorded: &'a ModelDeploymentStatus,
    /// This reconcile's analysis run, when one was due.
    pub analysis: Option<&'a [CheckOutcome]>,
    /// `modelfleet.dev/promote` is set.
    pub promote: bool,
    /// `modelfleet.dev/abort` is set.
    pub abort: bool,
    /// `spec.traffic.gateway` is set: weights are exact; without it they follow replica shares.
    pub gateway: bool,
}

/// Where a rollout stands after this reconcile.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum RolloutPhase {
    /// A step runs; `hold` says why it does not advance.
    Running {
        /// Index of the step (`steps.len()` while the candidate grows to full size for promotion).
        step: usize,
        /// Steps in all.
        steps: usize,
        /// Why it holds.
        hold: Option<HoldReason>,
    },
    /// The candidate became stable in this reconcile.
    Promoted,
    /// The candidate was rolled back (in this reconcile or earlier, and the spec still asks for it).
    RolledBack {
        /// PascalCase reason.
        reason: String,
        /// Human message.
        message: String,
    },
}

/// The rollout parts of the status, computed by the engine.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutReport {
    /// `status.candidate`.
    pub candidate: Option<CandidateStatus>,
    /// `status.analysis`.
    pub analysis: Option<AnalysisStatus>,
    /// `status.lastRollout`.
    pub last_rollout: Option<RolloutResultStatus>,
    /// Where it stands, for conditions and the phase.
    pub phase: RolloutPhase,
}

/// What happened, for Events.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutEvent {
    /// A step started.
    StepStarted {
        /// 1-based step number.
        number: usize,
        /// Steps in all.
        steps: usize,
        /// e.g. `canary weight 10%`.
        description: String,
    },
    /// The candidate became stable.
    Promoted {
        /// The new stable revision.
        revision: String,
        /// Its model version.
        version: String,
    },
    /// The candidate was rolled back.
    RolledBack {
        /// PascalCase reason.
        reason: String,
        /// Human message.
        message: String,
    },
}

/// The engine's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RolloutDecision {
    /// Revisions to run, with the traffic.
    pub plan: RevisionPlan,
    /// The rollout's status.
    pub report: RolloutReport,
    /// Events to publish.
    pub events: Vec<RolloutEvent>,
    /// When the rollout next needs a look (a step ends, an analysis is due), in seconds.
    pub next_check_seconds: Option<i64>,
}

fn seconds(t: &Time) -> i64 {
    t.0.as_second()
}

fn time(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Whether the spec asks for a revision that was rolled back: it is not tried again until the
/// spec changes.
pub fn rolled_back<'a>(
    recorded: &'a ModelDeploymentStatus,
    current: &str,
) -> Option<&'a RolloutResultStatus> {
    recorded
        .last_rollout
        .as_ref()
        .filter(|r| r.result == RolloutResult::RolledBack && r.revision == current)
}

/// The machine's state as the previous reconcile recorded it, or a fresh one for a new candidate
/// (a spec change mid-rollout starts over).
pub fn restore(recorded: &ModelDeploymentStatus, current: &str, now: i64) -> RolloutState {
    let Some(c) = recorded.candidate.as_ref().filter(|c| c.revision == current) else {
        return RolloutState {
            created_at: now,
            last_passed: true,
            ..Default::default()
        };
    };
    let results = recorded
        .analysis
        .as_ref()
        .map(|a| a.results.as_slice())
        .unwrap_or_default();
    RolloutState {
        step: usize::try_from(c.step).unwrap_or(0),
        step_started_at: c.step_started_at.as_ref().map(seconds),
        created_at: c.started_at.as_ref().map_or(now, seconds),
        failures: results
            .iter()
            .map(|r| (r.check.clone(), r.failures.max(0) as u32))
            .collect(),
        last_passed: results.iter().all(|r| r.passed),
    }
}

/// Replicas the candidate runs at `step`: its share of `desired`, at least 1; all of `desired`
/// once past the last step.
pub fn candidate_size(rollout: &RolloutSpec, desired: i32, step: usize) -> i32 {
    if step >= rollout.steps.len() {
        return desired.max(1);
    }
    let (weight, mirror) = machine::traffic(rollout, step);
    let share = i64::from(weight.max(mirror));
    let size = (i64::from(desired.max(0)) * share + 99) / 100;
    i32::try_from(size).unwrap_or(desired).clamp(1, desired.max(1))
}

/// The step an analysis run is due for, if one is: the candidate is running a step (not before it
/// is ready, not while it grows for promotion) and `interval` has passed since the last run.
pub fn analysis_due(input: &EngineInput<'_>) -> Option<usize> {
    let spec = input.rollout.analysis.as_ref().filter(|a| !a.checks.is_empty())?;
    if rolled_back(input.recorded, input.current).is_some() {
        return None;
    }
    let state = restore(input.recorded, input.current, input.now.as_second());
    if state.step >= input.rollout.steps.len() || !candidate_ready(input, state.step) {
        return None;
    }
    let interval = std::time::Duration::from(spec.interval).as_secs() as i64;
    let last = input
        .recorded
        .analysis
        .as_ref()
        .filter(|_| {
            input
                .recorded
                .candidate
                .as_ref()
                .is_some_and(|c| c.revision == input.current)
        })
        .and_then(|a| a.last_run_at.as_ref())
        .map(seconds);
    last.is_none_or(|t| input.now.as_second() - t >= interval)
        .then_some(state.step)
}

/// Whether `step` is a shadow step (output agreement is measured only then).
pub fn is_shadow_step(rollout: &RolloutSpec, step: usize) -> bool {
    matches!(
        rollout.steps.get(step).and_then(|s| s.kind()),
        Some(StepKind::Shadow(_))
    )
}

fn observed<'a>(input: &EngineInput<'a>, revision: &str) -> Option<&'a ObservedRevision> {
    input.observed.iter().find(|r| r.revision == revision)
}

fn candidate_ready(input: &EngineInput<'_>, step: usize) -> bool {
    let ready = observed(input, input.current).map_or(0, |r| r.ready_replicas);
    ready > 0 && ready >= candidate_size(input.rollout, input.desired, step)
}

fn describe(rollout: &RolloutSpec, step: usize) -> String {
    match rollout.steps.get(step).and_then(|s| s.kind()) {
        Some(StepKind::Shadow(s)) => format!("shadow {}% of traffic", s.percent),
        Some(StepKind::Canary(c)) => format!("canary weight {}%", c.weight),
        None => "full size before promotion".into(),
    }
}

/// Decides this reconcile's step of the rollout.
pub fn decide(input: &EngineInput<'_>) -> RolloutDecision {
    let now = input.now.as_second();
    let steps = input.rollout.steps.len();
    if let Some(done) = rolled_back(input.recorded, input.current) {
        return held_back(input, done.clone());
    }
    let mut state = restore(input.recorded, input.current, now);
    // A step "starts" (an Event) when it first runs with its replicas Ready.
    let recorded = input
        .recorded
        .candidate
        .as_ref()
        .filter(|c| c.revision == input.current);
    let was_running = |step: usize| {
        recorded.is_some_and(|c| {
            c.step == step as i32 && (c.step_remaining_seconds.is_some() || c.ready_replicas >= c.replicas)
        })
    };
    let mut events = Vec::new();

    let verdict = if state.step >= steps {
        // Growing to full size for promotion: every step passed, so only an abort or a candidate
        // that cannot grow within progressDeadline (no GPUs for it) stops it now.
        let deadline = std::time::Duration::from(input.rollout.progress_deadline).as_secs() as i64;
        if input.abort {
            Verdict::Rollback(RollbackReason::Aborted)
        } else if candidate_ready(input, steps) {
            Verdict::Promote
        } else if now - state.step_started_at.unwrap_or(now) >= deadline {
            Verdict::Rollback(RollbackReason::ProgressDeadlineExceeded { seconds: deadline })
        } else {
            let (weight, mirror) = machine::traffic(input.rollout, steps.saturating_sub(1));
            Verdict::Run {
                weight,
                mirror,
                remaining: None,
                hold: Some(HoldReason::CandidateNotReady),
            }
        }
    } else {
        let before = state.step;
        let ready = candidate_ready(input, before);
        let verdict = machine::step(
            &mut state,
            &Inputs {
                now,
                rollout: input.rollout,
                candidate_ready: ready,
                analysis: input.analysis,
                promote: input.promote,
                abort: input.abort,
            },
        );
        match verdict {
            // The next step needs more candidate replicas: its weight waits until they are Ready.
            Verdict::Run { hold: None, .. }
                if state.step != before && !candidate_ready(input, state.step) =>
            {
                let (weight, mirror) = machine::traffic(input.rollout, before);
                Verdict::Run {
                    weight,
                    mirror,
                    remaining: None,
                    hold: Some(HoldReason::CandidateNotReady),
                }
            }
            v => v,
        }
    };
    let analysis = analysis_status(input, &state);

    match verdict {
        Verdict::Rollback(reason) => {
            let result = RolloutResultStatus {
                revision: input.current.to_string(),
                version: input.version.to_string(),
                result: RolloutResult::RolledBack,
                reason: reason.reason().to_string(),
                message: reason.message(),
                previous_stable: Some(input.stable.revision.clone()),
                finished_at: time(now),
            };
            events.push(RolloutEvent::RolledBack {
                reason: result.reason.clone(),
                message: result.message.clone(),
            });
            let mut decision = held_back(input, result);
            decision.report.analysis = analysis;
            decision.events = events;
            decision
        }
        Verdict::Promote if !candidate_ready(input, steps) => {
            // Every step passed (or `modelfleet.dev/promote`): grow to full size first, so the
            // switch never lowers the capacity serving production traffic.
            state.step = steps;
            state.step_started_at = Some(now);
            let (weight, mirror) = machine::traffic(input.rollout, steps.saturating_sub(1));
            let step = RunningStep {
                weight,
                mirror,
                remaining: None,
                hold: Some(HoldReason::CandidateNotReady),
            };
            running(input, &state, step, analysis, events)
        }
        Verdict::Promote => promoted(input, analysis),
        Verdict::Run {
            weight,
            mirror,
            remaining,
            hold,
        } => {
            if hold.is_none() && !was_running(state.step) {
                events.push(RolloutEvent::StepStarted {
                    number: state.step + 1,
                    steps,
                    description: describe(input.rollout, state.step),
                });
            }
            let step = RunningStep {
                weight,
                mirror,
                remaining,
                hold,
            };
            running(input, &state, step, analysis, events)
        }
    }
}

fn analysis_status(input: &EngineInput<'_>, state: &RolloutState) -> Option<AnalysisStatus> {
    let recorded = input.recorded.analysis.clone().filter(|_| {
        input
            .recorded
            .candidate
            .as_ref()
            .is_some_and(|c| c.revision == input.current)
    });
    let Some(outcomes) = input.analysis else {
        return recorded;
    };
    let failed_run = outcomes.iter().any(|o| matches!(o, CheckOutcome::Failed { .. }));
    let results = outcomes
        .iter()
        .map(|o| {
            let (check, value, passed, message, inconclusive) = match o {
                CheckOutcome::Passed { check, value } => (check, Some(*value), true, None, false),
                CheckOutcome::Failed {
                    check,
                    value,
                    threshold,
                } => (
                    check,
                    Some(*value),
                    false,
                    Some(format!("{value} against {threshold}")),
                    false,
                ),
                CheckOutcome::Inconclusive { check, reason } => {
                    (check, None, false, Some(reason.clone()), true)
                }
            };
            CheckResult {
                check: check.clone(),
                value,
                passed,
                failures: state.failures.get(check).copied().unwrap_or(0) as i32,
                inconclusive,
                message,
            }
        })
        .collect();
    Some(AnalysisStatus {
        last_run_at: Some(time(input.now.as_second())),
        failures: recorded.map_or(0, |a| a.failures) + i32::from(failed_run),
        results,
    })
}

/// The share of live traffic the candidate really gets: the weight through a gateway, the
/// share of Ready replicas through the entry Service without one.
fn effective_weight(input: &EngineInput<'_>, weight: i32) -> i32 {
    if input.gateway || weight == 0 {
        return weight;
    }
    let candidate = observed(input, input.current).map_or(0, |r| r.ready_replicas);
    let total = candidate + input.stable.ready_replicas;
    if total == 0 { 0 } else { 100 * candidate / total }
}

/// The step that runs in this reconcile: the fields of [`Verdict::Run`].
struct RunningStep {
    weight: i32,
    mirror: i32,
    remaining: Option<i64>,
    hold: Option<HoldReason>,
}

fn running(
    input: &EngineInput<'_>,
    state: &RolloutState,
    step: RunningStep,
    analysis: Option<AnalysisStatus>,
    events: Vec<RolloutEvent>,
) -> RolloutDecision {
    let RunningStep {
        weight,
        mirror,
        remaining,
        hold,
    } = step;
    let steps = input.rollout.steps.len();
    let size = candidate_size(input.rollout, input.desired, state.step);
    let mut plan = base_plan(input, size);
    plan.traffic = Traffic {
        weight,
        mirror,
        entry_stable_only: weight == 0,
    };
    let now = input.now.as_second();
    let candidate = CandidateStatus {
        revision: input.current.to_string(),
        version: input.version.to_string(),
        started_at: Some(time(state.created_at)),
        step: state.step as i32,
        step_started_at: state.step_started_at.map(time),
        step_remaining_seconds: remaining.filter(|_| hold.is_none()),
        traffic_weight: effective_weight(input, weight),
        mirror_percent: mirror,
        replicas: size,
        ready_replicas: observed(input, input.current).map_or(0, |r| r.ready_replicas),
    };
    let next_analysis = input.rollout.analysis.as_ref().and_then(|a| {
        let last = analysis.as_ref()?.last_run_at.as_ref().map(seconds)?;
        Some(last + std::time::Duration::from(a.interval).as_secs() as i64 - now)
    });
    let next_check_seconds = [remaining.filter(|_| hold.is_none()), next_analysis]
        .into_iter()
        .flatten()
        .min()
        .map(|s| s.max(1));
    RolloutDecision {
        plan,
        report: RolloutReport {
            candidate: Some(candidate),
            analysis,
            last_rollout: input.recorded.last_rollout.clone(),
            phase: RolloutPhase::Running {
                step: state.step,
                steps,
                hold,
            },
        },
        events,
        next_check_seconds,
    }
}

/// Stable at full size, the candidate at `candidate_replicas`, every other revision retired.
fn base_plan(input: &EngineInput<'_>, candidate_replicas: i32) -> RevisionPlan {
    let stable = input.stable.revision.clone();
    let replicas = [
        (stable.clone(), input.desired),
        (input.current.to_string(), candidate_replicas),
    ]
    .into_iter()
    .collect::<std::collections::BTreeMap<_, _>>();
    RevisionPlan {
        current: input.current.to_string(),
        stable,
        candidate: Some(input.current.to_string()),
        retire: input
            .observed
            .iter()
            .filter(|r| !replicas.contains_key(&r.revision))
            .map(|r| r.revision.clone())
            .collect(),
        replicas,
        desired: input.desired,
        traffic: Traffic {
            weight: 0,
            mirror: 0,
            entry_stable_only: true,
        },
    }
}

/// After a rollback: all traffic on stable, the candidate's Deployment kept at 0 replicas for
/// inspection, until the spec asks for another revision.
fn held_back(input: &EngineInput<'_>, result: RolloutResultStatus) -> RolloutDecision {
    let mut plan = base_plan(input, 0);
    plan.candidate = None;
    RolloutDecision {
        plan,
        report: RolloutReport {
            candidate: None,
            analysis: input.recorded.analysis.clone(),
            phase: RolloutPhase::RolledBack {
                reason: result.reason.clone(),
                message: result.message.clone(),
            },
            last_rollout: Some(result),
        },
        events: Vec::new(),
        next_check_seconds: None,
    }
}

/// The candidate becomes stable; the old stable revision keeps its replicas for `scaleDownDelay`
/// (see [`crate::plan::drain`]).
fn promoted(input: &EngineInput<'_>, analysis: Option<AnalysisStatus>) -> RolloutDecision {
    let now = input.now.as_second();
    let mut plan = base_plan(input, input.desired);
    plan.stable = input.current.to_string();
    plan.candidate = None;
    plan.replicas
        .insert(input.stable.revision.clone(), input.stable.replicas);
    let result = RolloutResultStatus {
        revision: input.current.to_string(),
        version: input.version.to_string(),
        result: RolloutResult::Promoted,
        reason: "Promoted".into(),
        message: format!(
            "version {} (revision {}) passed every step and serves all traffic; revision {} scales down after scaleDownDelay",
            input.version, input.current, input.stable.revision
        ),
        previous_stable: Some(input.stable.revision.clone()),
        finished_at: time(now),
    };
    RolloutDecision {
        plan,
        report: RolloutReport {
            candidate: None,
            analysis,
            last_rollout: Some(result),
            phase: RolloutPhase::Promoted,
        },
        events: vec![RolloutEvent::Promoted {
            revision: input.current.to_string(),
            version: input.version.to_string(),
        }],
        next_check_seconds: Some(std::time::Duration::from(input.rollout.scale_down_delay).as_secs() as i64),
    }
}

#[cfg(test)]
mod tests {
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
}
