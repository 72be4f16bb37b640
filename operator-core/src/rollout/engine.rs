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
    rollout::{
        machine::{self, CheckOutcome, HoldReason, Verdict},
        state::{AnalysisMemory, Facts, RolloutState, transition},
    },
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
    /// `status.rollout`: the state the next reconcile continues from.
    pub state: Option<modelfleet_crds::v1alpha1::RolloutState>,
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

/// The step an analysis run is due for, if one is: the candidate is running a step with its
/// replicas ready (not before, not while it grows for promotion) and `interval` has passed since
/// the last run.
pub fn analysis_due(input: &EngineInput<'_>) -> Option<usize> {
    let spec = input.rollout.analysis.as_ref().filter(|a| !a.checks.is_empty())?;
    let state = RolloutState::restore(input.recorded, input.current, input.now.as_second());
    let RolloutState::Step { index, analysis, .. } = state else {
        return None;
    };
    if index >= input.rollout.steps.len() || !candidate_ready(input, index) {
        return None;
    }
    let interval = std::time::Duration::from(spec.interval).as_secs() as i64;
    analysis
        .last_run
        .is_none_or(|t| input.now.as_second() - t >= interval)
        .then_some(index)
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
    let state = RolloutState::restore(input.recorded, input.current, now);
    let ready: Vec<bool> = (0..=input.rollout.steps.len())
        .map(|step| candidate_ready(input, step))
        .collect();
    let facts = Facts {
        now,
        rollout: input.rollout,
        ready: &ready,
        analysis: input.analysis,
        promote: input.promote,
        abort: input.abort,
    };
    let (next, verdict) = transition(&state, &facts);
    let analysis = analysis_status(input, &next.analysis());
    let mut decision = match verdict {
        Verdict::HeldBack => held_back(input, recorded_rollback(input, &next)),
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
            let event = RolloutEvent::RolledBack {
                reason: result.reason.clone(),
                message: result.message.clone(),
            };
            let mut decision = held_back(input, result);
            decision.report.analysis = analysis;
            decision.events = vec![event];
            decision
        }
        Verdict::Promote => promoted(input, analysis),
        Verdict::Run {
            weight,
            mirror,
            remaining,
            hold,
        } => {
            let mut events = Vec::new();
            if let RolloutState::Step { index, .. } = &next
                && hold.is_none()
                && !matches!(&state, RolloutState::Step { index: was, waiting: false, .. } if was == index)
            {
                events.push(RolloutEvent::StepStarted {
                    number: index + 1,
                    steps: input.rollout.steps.len(),
                    description: describe(input.rollout, *index),
                });
            }
            let step = RunningStep {
                weight,
                mirror,
                remaining,
                hold,
            };
            running(input, &next, step, analysis, events)
        }
    };
    decision.report.state = next.to_status();
    decision
}

/// How the rollout of the current revision ended, as `status.lastRollout` records it (rebuilt
/// from the state when the record is missing).
fn recorded_rollback(input: &EngineInput<'_>, state: &RolloutState) -> RolloutResultStatus {
    if let Some(done) = rolled_back(input.recorded, input.current) {
        return done.clone();
    }
    let (reason, message, at) = match state {
        RolloutState::RolledBack {
            reason, message, at, ..
        } => (reason.clone(), message.clone(), *at),
        _ => (String::new(), String::new(), input.now.as_second()),
    };
    RolloutResultStatus {
        revision: input.current.to_string(),
        version: input.version.to_string(),
        result: RolloutResult::RolledBack,
        reason,
        message,
        previous_stable: Some(input.stable.revision.clone()),
        finished_at: time(at),
    }
}

fn analysis_status(input: &EngineInput<'_>, memory: &AnalysisMemory) -> Option<AnalysisStatus> {
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
                failures: memory.failures.get(check).copied().unwrap_or(0) as i32,
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
    let (index, started, since) = match state {
        RolloutState::Starting { since, .. } => (0, *since, None),
        RolloutState::Step {
            index,
            started,
            since,
            ..
        } => (*index, *started, Some(*since)),
        RolloutState::Growing { started, since, .. } => (steps, *started, Some(*since)),
        RolloutState::Idle | RolloutState::Promoted { .. } | RolloutState::RolledBack { .. } => {
            (0, input.now.as_second(), None)
        }
    };
    let size = candidate_size(input.rollout, input.desired, index);
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
        started_at: Some(time(started)),
        step: index as i32,
        step_started_at: since.map(time),
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
                step: index,
                steps,
                hold,
            },
            state: None,
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
            state: None,
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
            state: None,
        },
        events: vec![RolloutEvent::Promoted {
            revision: input.current.to_string(),
            version: input.version.to_string(),
        }],
        next_check_seconds: Some(std::time::Duration::from(input.rollout.scale_down_delay).as_secs() as i64),
    }
}

#[cfg(test)]
mod tests;
