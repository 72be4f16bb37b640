//! The rollout state machine, pure: the spec's steps, the candidate's readiness, the analysis
//! outcomes and the manual controls in, what to do out. Time is an argument (wall-clock
//! seconds, since the state lives in `status` and must survive a failover).
//!
//! - A candidate that is not fully ready holds at weight 0 and mirror 0; past
//!   `progressDeadline` it fails.
//! - A step lasts its `duration` counted from when it started with the candidate ready; it
//!   completes only when the latest analysis passed (an inconclusive one holds the step: never
//!   promote on missing data).
//! - A check failing `failureLimit` runs in a row rolls back at once, also when paused.
//! - `modelfleet.dev/abort` rolls back, `modelfleet.dev/promote` skips the remaining steps.
//! - `paused` freezes the step (the weight stays).
//! - After the last step: promote.

use std::collections::BTreeMap;

use modelfleet_crds::v1alpha1::{RolloutSpec, StepKind};

/// What the step machine works on: the step, its timing and the analysis counts (the
/// [`RolloutState`](crate::rollout::state::RolloutState) of a starting or stepping candidate).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepMemory {
    /// Index of the current step.
    pub step: usize,
    /// When the current step started (seconds), None while the candidate is not yet ready.
    pub step_started_at: Option<i64>,
    /// When the candidate revision first appeared (seconds): `progressDeadline` counts from here
    /// until the first step starts, then from the start of the step.
    pub created_at: i64,
    /// Consecutive failed runs per check.
    pub failures: BTreeMap<String, u32>,
    /// Whether the latest analysis run passed every check (true before the first run).
    pub last_passed: bool,
}

/// One check's result in one analysis run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum CheckOutcome {
    /// Within its thresholds.
    Passed { check: String, value: f64 },
    /// Outside a threshold; `threshold` says which, e.g. `max 0.01`.
    Failed {
        check: String,
        value: f64,
        threshold: String,
    },
    /// No answer (Prometheus unreachable, no data yet).
    Inconclusive { check: String, reason: String },
}

impl CheckOutcome {
    fn check(&self) -> &str {
        match self {
            CheckOutcome::Passed { check, .. }
            | CheckOutcome::Failed { check, .. }
            | CheckOutcome::Inconclusive { check, .. } => check,
        }
    }
}

/// This reconcile's inputs.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// Now, seconds.
    pub now: i64,
    /// `spec.rollout`.
    pub rollout: &'a RolloutSpec,
    /// Every candidate replica is Ready.
    pub candidate_ready: bool,
    /// The analysis run of this reconcile, when one was due.
    pub analysis: Option<&'a [CheckOutcome]>,
    /// `modelfleet.dev/promote` is set.
    pub promote: bool,
    /// `modelfleet.dev/abort` is set.
    pub abort: bool,
}

/// Why a rollout rolls back.
#[derive(Debug, Clone, PartialEq)]
pub enum RollbackReason {
    /// A check failed `failureLimit` times.
    AnalysisFailed {
        check: String,
        value: f64,
        threshold: String,
        failures: u32,
    },
    /// The candidate was not ready within `progressDeadline`.
    ProgressDeadlineExceeded { seconds: i64 },
    /// `modelfleet.dev/abort`.
    Aborted,
}

impl RollbackReason {
    /// The condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            RollbackReason::AnalysisFailed { .. } => "AnalysisFailed",
            RollbackReason::ProgressDeadlineExceeded { .. } => "ProgressDeadlineExceeded",
            RollbackReason::Aborted => "Aborted",
        }
    }

    /// The message for status and the Event.
    pub fn message(&self) -> String {
        match self {
            RollbackReason::AnalysisFailed {
                check,
                value,
                threshold,
                failures,
            } => format!("check {check} failed {failures} times in a row: value {value} against {threshold}"),
            RollbackReason::ProgressDeadlineExceeded { seconds } => {
                format!("the candidate's replicas were not all ready within progressDeadline ({seconds}s)")
            }
            RollbackReason::Aborted => "aborted by the modelfleet.dev/abort annotation".into(),
        }
    }
}

/// Why a rollout holds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum HoldReason {
    /// The candidate's replicas are starting.
    CandidateNotReady,
    /// `spec.rollout.paused`.
    Paused,
    /// The latest analysis had no answer for these checks.
    Inconclusive(Vec<(String, String)>),
}

/// What to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// Run step `state.step` with this traffic.
    Run {
        /// Percent of live traffic on the candidate.
        weight: i32,
        /// Percent of live traffic mirrored to the candidate.
        mirror: i32,
        /// Seconds left in the step (None while holding).
        remaining: Option<i64>,
        /// Set when the step does not advance.
        hold: Option<HoldReason>,
    },
    /// Make the candidate stable.
    Promote,
    /// Weight 0, mirror off, candidate to 0 replicas; not retried until the spec changes.
    Rollback(RollbackReason),
    /// Rolled back earlier and the spec still asks for it: stays at weight 0 and 0 replicas.
    HeldBack,
}

/// The traffic of step `index`: (weight, mirror).
pub fn traffic(rollout: &RolloutSpec, index: usize) -> (i32, i32) {
    match rollout.steps.get(index).and_then(|s| s.kind()) {
        Some(StepKind::Canary(c)) => (c.weight, 0),
        Some(StepKind::Shadow(s)) => {
            // A shadow step after a canary step keeps the canary's weight.
            let weight = rollout.steps[..index]
                .iter()
                .filter_map(|s| match s.kind() {
                    Some(StepKind::Canary(c)) => Some(c.weight),
                    _ => None,
                })
                .next_back()
                .unwrap_or(0);
            (weight, s.percent)
        }
        None => (0, 0),
    }
}

fn duration_seconds(rollout: &RolloutSpec, index: usize) -> i64 {
    let d = match rollout.steps.get(index).and_then(|s| s.kind()) {
        Some(StepKind::Canary(c)) => c.duration,
        Some(StepKind::Shadow(s)) => s.duration,
        None => return 0,
    };
    std::time::Duration::from(d).as_secs() as i64
}

/// The rollback when a candidate waiting for its replicas since `since` is past
/// `progressDeadline` at `now`.
pub fn deadline_exceeded(rollout: &RolloutSpec, since: i64, now: i64) -> Option<RollbackReason> {
    let deadline = std::time::Duration::from(rollout.progress_deadline).as_secs() as i64;
    (now - since >= deadline).then_some(RollbackReason::ProgressDeadlineExceeded { seconds: deadline })
}

/// Advances `state` by one reconcile.
pub fn step(state: &mut StepMemory, inputs: &Inputs<'_>) -> Verdict {
    let rollout = inputs.rollout;
    if inputs.abort {
        return Verdict::Rollback(RollbackReason::Aborted);
    }
    if inputs.promote {
        return Verdict::Promote;
    }
    // Analysis first: a failing check rolls back whatever else holds the rollout.
    if let Some(outcomes) = inputs.analysis
        && let Some(failed) = count_failures(state, rollout, outcomes)
    {
        return Verdict::Rollback(failed);
    }
    if !inputs.candidate_ready {
        return not_ready(state, inputs);
    }
    let (weight, mirror) = traffic(rollout, state.step);
    let started = *state.step_started_at.get_or_insert(inputs.now);
    let remaining = (duration_seconds(rollout, state.step) - (inputs.now - started)).max(0);
    let run = |remaining, hold| Verdict::Run {
        weight,
        mirror,
        remaining,
        hold,
    };
    if rollout.paused {
        return run(None, Some(HoldReason::Paused));
    }
    let inconclusive = inconclusive(inputs.analysis.unwrap_or_default());
    if !inconclusive.is_empty() {
        return run(Some(remaining), Some(HoldReason::Inconclusive(inconclusive)));
    }
    if remaining > 0 || !state.last_passed {
        return run(Some(remaining), None);
    }
    if state.step + 1 >= rollout.steps.len() {
        return Verdict::Promote;
    }
    state.step += 1;
    state.step_started_at = Some(inputs.now);
    let (weight, mirror) = traffic(rollout, state.step);
    Verdict::Run {
        weight,
        mirror,
        remaining: Some(duration_seconds(rollout, state.step)),
        hold: None,
    }
}

/// Counts this run's failures per check; the rollback once a check reaches `failureLimit` in a
/// row.
fn count_failures(
    state: &mut StepMemory,
    rollout: &RolloutSpec,
    outcomes: &[CheckOutcome],
) -> Option<RollbackReason> {
    let limit = rollout
        .analysis
        .as_ref()
        .map_or(1, |a| a.failure_limit.max(1) as u32);
    for outcome in outcomes {
        let failures = state.failures.entry(outcome.check().to_string()).or_default();
        match outcome {
            CheckOutcome::Failed {
                check,
                value,
                threshold,
            } => {
                *failures += 1;
                if *failures >= limit {
                    return Some(RollbackReason::AnalysisFailed {
                        check: check.clone(),
                        value: *value,
                        threshold: threshold.clone(),
                        failures: *failures,
                    });
                }
            }
            CheckOutcome::Passed { .. } => *failures = 0,
            // No data is neither a pass nor a failure: the count stands.
            CheckOutcome::Inconclusive { .. } => {}
        }
    }
    state.last_passed = outcomes.iter().all(|o| matches!(o, CheckOutcome::Passed { .. }));
    None
}

/// The step's replicas are not all Ready: hold, or fail past `progressDeadline`.
fn not_ready(state: &StepMemory, inputs: &Inputs<'_>) -> Verdict {
    let since = state.step_started_at.unwrap_or(state.created_at);
    if let Some(exceeded) = deadline_exceeded(inputs.rollout, since, inputs.now) {
        return Verdict::Rollback(exceeded);
    }
    // Never route weight to pods that are not Ready: before the first step none; while the
    // candidate grows for a later step, the previous step's share, which its Ready pods carry.
    let (weight, mirror) = match state.step {
        0 => (0, 0),
        n => traffic(inputs.rollout, n - 1),
    };
    Verdict::Run {
        weight,
        mirror,
        remaining: None,
        hold: Some(HoldReason::CandidateNotReady),
    }
}

/// The checks without an answer in this run, with why.
fn inconclusive(outcomes: &[CheckOutcome]) -> Vec<(String, String)> {
    outcomes
        .iter()
        .filter_map(|o| match o {
            CheckOutcome::Inconclusive { check, reason } => Some((check.clone(), reason.clone())),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(yaml: &str) -> RolloutSpec {
        serde_yaml::from_str(yaml).expect("rollout fixture")
    }

    fn three_steps() -> RolloutSpec {
        rollout(
            "steps:
  - shadow: {percent: 20, duration: 60s}
  - canary: {weight: 10, duration: 60s}
  - canary: {weight: 50, duration: 60s}
analysis: {interval: 10s, failureLimit: 2, checks: [{builtin: errorRate, max: 0.01}]}
progressDeadline: 120s",
        )
    }

    fn pass() -> Vec<CheckOutcome> {
        vec![CheckOutcome::Passed {
            check: "errorRate".into(),
            value: 0.001,
        }]
    }

    fn fail() -> Vec<CheckOutcome> {
        vec![CheckOutcome::Failed {
            check: "errorRate".into(),
            value: 0.2,
            threshold: "max 0.01".into(),
        }]
    }

    fn inconclusive() -> Vec<CheckOutcome> {
        vec![CheckOutcome::Inconclusive {
            check: "errorRate".into(),
            reason: "no telemetry".into(),
        }]
    }

    /// Runs the machine every 10 s from `t0` with `analysis(t)` and readiness `ready(t)`; returns
    /// (time, verdict) until a terminal verdict or `until`.
    fn drive(
        r: &RolloutSpec,
        until: i64,
        ready: impl Fn(i64) -> bool,
        analysis: impl Fn(i64) -> Option<Vec<CheckOutcome>>,
        controls: impl Fn(i64) -> (bool, bool),
    ) -> Vec<(i64, Verdict, usize)> {
        let mut state = StepMemory {
            last_passed: true,
            ..Default::default()
        };
        let mut out = Vec::new();
        for t in (0..=until).step_by(10) {
            let a = analysis(t);
            let (promote, abort) = controls(t);
            let v = step(
                &mut state,
                &Inputs {
                    now: t,
                    rollout: r,
                    candidate_ready: ready(t),
                    analysis: a.as_deref(),
                    promote,
                    abort,
                },
            );
            let terminal = matches!(v, Verdict::Promote | Verdict::Rollback(_));
            out.push((t, v, state.step));
            if terminal {
                break;
            }
        }
        out
    }

    fn weights(run: &[(i64, Verdict, usize)]) -> Vec<(i32, i32)> {
        let mut seen: Vec<(i32, i32)> = Vec::new();
        for (_, v, _) in run {
            if let Verdict::Run { weight, mirror, .. } = v
                && seen.last() != Some(&(*weight, *mirror))
            {
                seen.push((*weight, *mirror));
            }
        }
        seen
    }

    #[test]
    fn a_good_candidate_goes_shadow_then_10_then_50_then_promotes() {
        let r = three_steps();
        let run = drive(&r, 1000, |t| t >= 20, |_| Some(pass()), |_| (false, false));
        assert_eq!(weights(&run), vec![(0, 0), (0, 20), (10, 0), (50, 0)]);
        let (t, last, _) = run.last().expect("verdicts");
        assert_eq!(last, &Verdict::Promote);
        // Ready at 20 s, then three 60 s steps.
        assert_eq!(*t, 20 + 180);
    }

    #[test]
    fn failing_analysis_rolls_back_at_each_step_after_failure_limit_runs() {
        let r = three_steps();
        for (failing_from, step) in [(20, 0), (90, 1), (150, 2)] {
            let run = drive(
                &r,
                1000,
                |_| true,
                |t| Some(if t >= failing_from { fail() } else { pass() }),
                |_| (false, false),
            );
            let (t, last, at_step) = run.last().expect("verdicts").clone();
            assert_eq!(at_step, step, "failing from {failing_from}");
            assert_eq!(t, failing_from + 10, "two failed runs in a row");
            let Verdict::Rollback(reason) = last else {
                panic!("{last:?}")
            };
            assert_eq!(reason.reason(), "AnalysisFailed");
            assert!(reason.message().contains("errorRate") && reason.message().contains("max 0.01"));
        }
    }

    #[test]
    fn a_single_failure_between_passes_does_not_roll_back() {
        let r = three_steps();
        let run = drive(
            &r,
            1000,
            |_| true,
            |t| Some(if t % 40 == 0 { fail() } else { pass() }),
            |_| (false, false),
        );
        assert!(
            matches!(run.last().map(|r| &r.1), Some(Verdict::Promote)),
            "{run:?}"
        );
    }

    #[test]
    fn inconclusive_analysis_holds_and_never_promotes_then_resumes() {
        let r = three_steps();
        let run = drive(
            &r,
            2000,
            |_| true,
            |t| {
                Some(if (30..600).contains(&t) {
                    inconclusive()
                } else {
                    pass()
                })
            },
            |_| (false, false),
        );
        let held: Vec<i64> = run
            .iter()
            .filter(|(_, v, _)| {
                matches!(
                    v,
                    Verdict::Run {
                        hold: Some(HoldReason::Inconclusive(_)),
                        ..
                    }
                )
            })
            .map(|(t, _, _)| *t)
            .collect();
        assert_eq!(held.first(), Some(&30));
        assert!(
            run.iter()
                .filter(|(t, _, _)| *t < 600)
                .all(|(_, v, s)| *s == 0 && v != &Verdict::Promote)
        );
        assert_eq!(
            run.last().map(|r| r.1.clone()),
            Some(Verdict::Promote),
            "resumes when data is back"
        );
    }

    #[test]
    fn pause_freezes_the_step_and_resume_continues() {
        let mut r = three_steps();
        r.paused = true;
        let mut state = StepMemory {
            last_passed: true,
            ..Default::default()
        };
        fn inputs(now: i64, r: &RolloutSpec) -> Inputs<'_> {
            Inputs {
                now,
                rollout: r,
                candidate_ready: true,
                analysis: None,
                promote: false,
                abort: false,
            }
        }
        for t in [0, 100, 500] {
            let v = step(&mut state, &inputs(t, &r));
            assert_eq!(
                v,
                Verdict::Run {
                    weight: 0,
                    mirror: 20,
                    remaining: None,
                    hold: Some(HoldReason::Paused)
                }
            );
        }
        r.paused = false;
        let v = step(&mut state, &inputs(510, &r));
        assert!(
            matches!(v, Verdict::Run { weight: 10, .. }),
            "the paused step is over: {v:?}"
        );
    }

    #[test]
    fn failing_analysis_rolls_back_even_when_paused() {
        let mut r = three_steps();
        r.paused = true;
        let run = drive(&r, 100, |_| true, |_| Some(fail()), |_| (false, false));
        assert!(matches!(run.last().map(|r| &r.1), Some(Verdict::Rollback(_))));
    }

    #[test]
    fn promote_and_abort_annotations_win() {
        let r = three_steps();
        let run = drive(&r, 1000, |_| true, |_| Some(pass()), |t| (t == 30, false));
        assert_eq!(
            run.last().map(|r| (r.0, r.1.clone())),
            Some((30, Verdict::Promote))
        );
        let run = drive(&r, 1000, |_| true, |_| Some(pass()), |t| (false, t == 70));
        assert_eq!(
            run.last().map(|r| (r.0, r.1.clone())),
            Some((70, Verdict::Rollback(RollbackReason::Aborted)))
        );
    }

    #[test]
    fn a_candidate_never_ready_fails_at_the_progress_deadline_with_no_weight() {
        let r = three_steps();
        let run = drive(&r, 1000, |_| false, |_| None, |_| (false, false));
        assert!(run[..run.len() - 1].iter().all(|(_, v, _)| matches!(
            v,
            Verdict::Run {
                weight: 0,
                mirror: 0,
                ..
            }
        )));
        assert_eq!(
            run.last().map(|r| (r.0, r.1.clone())),
            Some((
                120,
                Verdict::Rollback(RollbackReason::ProgressDeadlineExceeded { seconds: 120 })
            ))
        );
    }

    #[test]
    fn a_shadow_step_after_a_canary_keeps_the_canary_weight() {
        let r = rollout(
            "steps:
  - canary: {weight: 10, duration: 30s}
  - shadow: {percent: 50, duration: 30s}",
        );
        let run = drive(&r, 1000, |_| true, |_| None, |_| (false, false));
        assert_eq!(weights(&run), vec![(10, 0), (10, 50)]);
    }
}
