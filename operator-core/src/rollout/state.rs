//! Where a rollout with steps stands, as one enum, and its persistence in `status.rollout`.
//!
//! Every reconcile restores the state from the status the previous one wrote, makes one
//! [`transition`] (one `match` over the state) and writes the new state back, so a new leader
//! carries on where the old one stopped. `status.candidate` and `status.analysis` only show it.

use std::collections::BTreeMap;

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use modelfleet_crds::{
    ModelDeploymentStatus,
    v1alpha1::{RolloutResult, RolloutSpec, RolloutState as Persisted, RolloutStateName},
};

use crate::rollout::machine::{self, HoldReason, Inputs, RollbackReason, StepMemory, Verdict};

/// What the analysis remembers across runs of one candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnalysisMemory {
    /// Consecutive failed runs per check.
    pub failures: BTreeMap<String, u32>,
    /// Whether the latest run passed every check (true before the first).
    pub last_passed: bool,
    /// When the latest run was (seconds).
    pub last_run: Option<i64>,
}

impl Default for AnalysisMemory {
    fn default() -> Self {
        Self {
            failures: BTreeMap::new(),
            last_passed: true,
            last_run: None,
        }
    }
}

/// Where a rollout stands. Times are wall-clock seconds.
#[derive(Debug, Clone, PartialEq)]
pub enum RolloutState {
    /// No candidate.
    Idle,
    /// The candidate's first replicas are starting; `progressDeadline` counts from `since`.
    Starting { revision: String, since: i64 },
    /// Step `index` runs since `since`; `waiting` while its replicas are not all Ready (it then
    /// holds the previous step's traffic).
    Step {
        revision: String,
        started: i64,
        index: usize,
        since: i64,
        waiting: bool,
        analysis: AnalysisMemory,
    },
    /// Every step passed: the candidate grows to full size before it becomes stable.
    Growing {
        revision: String,
        started: i64,
        since: i64,
        analysis: AnalysisMemory,
    },
    /// The candidate became stable at `at`.
    Promoted { revision: String, at: i64 },
    /// The candidate was rolled back at `at`; not tried again until the spec changes.
    RolledBack {
        revision: String,
        reason: String,
        message: String,
        at: i64,
    },
}

fn seconds(t: &Time) -> i64 {
    t.0.as_second()
}

fn time(s: i64) -> Time {
    Time(Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH))
}

impl RolloutState {
    /// The revision it is about (None: idle).
    pub fn revision(&self) -> Option<&str> {
        match self {
            RolloutState::Idle => None,
            RolloutState::Starting { revision, .. }
            | RolloutState::Step { revision, .. }
            | RolloutState::Growing { revision, .. }
            | RolloutState::Promoted { revision, .. }
            | RolloutState::RolledBack { revision, .. } => Some(revision),
        }
    }

    /// The state to continue from for `current` (the revision the spec asks for): the recorded
    /// one when it is about `current`, else a new candidate starting `now` (a spec change
    /// mid-rollout starts over).
    pub fn restore(recorded: &ModelDeploymentStatus, current: &str, now: i64) -> Self {
        let state = match &recorded.rollout {
            Some(persisted) => Self::from_status(persisted),
            None => Self::from_legacy_status(recorded, now),
        };
        match state {
            s if s.revision() == Some(current) => s,
            _ => RolloutState::Starting {
                revision: current.to_string(),
                since: now,
            },
        }
    }

    /// Reads `status.rollout`.
    pub fn from_status(p: &Persisted) -> Self {
        let revision = p.revision.clone();
        let since = p.since.as_ref().map_or(0, seconds);
        let started = p.started_at.as_ref().map_or(since, seconds);
        let analysis = AnalysisMemory {
            failures: p
                .failures
                .iter()
                .map(|(k, v)| (k.clone(), (*v).max(0) as u32))
                .collect(),
            last_passed: p.last_passed,
            last_run: p.last_analysis_at.as_ref().map(seconds),
        };
        match p.state {
            RolloutStateName::Starting => RolloutState::Starting { revision, since },
            RolloutStateName::Step => RolloutState::Step {
                revision,
                started,
                index: p.step.unwrap_or(0).max(0) as usize,
                since,
                waiting: p.waiting,
                analysis,
            },
            RolloutStateName::Growing => RolloutState::Growing {
                revision,
                started,
                since,
                analysis,
            },
            RolloutStateName::Promoted => RolloutState::Promoted { revision, at: since },
            RolloutStateName::RolledBack => RolloutState::RolledBack {
                revision,
                reason: p.reason.clone().unwrap_or_default(),
                message: p.message.clone().unwrap_or_default(),
                at: since,
            },
        }
    }

    /// Reads the status an operator up to 0.1 wrote, which kept the state in `status.candidate`,
    /// `status.analysis` and `status.lastRollout`; read once, on upgrade.
    fn from_legacy_status(recorded: &ModelDeploymentStatus, now: i64) -> Self {
        if let Some(c) = &recorded.candidate {
            let results = recorded
                .analysis
                .as_ref()
                .map(|a| a.results.as_slice())
                .unwrap_or_default();
            let analysis = AnalysisMemory {
                failures: results
                    .iter()
                    .map(|r| (r.check.clone(), r.failures.max(0) as u32))
                    .collect(),
                last_passed: results.iter().all(|r| r.passed),
                last_run: recorded
                    .analysis
                    .as_ref()
                    .and_then(|a| a.last_run_at.as_ref())
                    .map(seconds),
            };
            let started = c.started_at.as_ref().map_or(now, seconds);
            return match c.step_started_at.as_ref().map(seconds) {
                None if c.step == 0 => RolloutState::Starting {
                    revision: c.revision.clone(),
                    since: started,
                },
                since => RolloutState::Step {
                    revision: c.revision.clone(),
                    started,
                    index: c.step.max(0) as usize,
                    since: since.unwrap_or(started),
                    waiting: c.ready_replicas < c.replicas,
                    analysis,
                },
            };
        }
        match &recorded.last_rollout {
            Some(r) if r.result == RolloutResult::RolledBack => RolloutState::RolledBack {
                revision: r.revision.clone(),
                reason: r.reason.clone(),
                message: r.message.clone(),
                at: seconds(&r.finished_at),
            },
            Some(r) => RolloutState::Promoted {
                revision: r.revision.clone(),
                at: seconds(&r.finished_at),
            },
            None => RolloutState::Idle,
        }
    }

    /// `status.rollout` (None: idle).
    pub fn to_status(&self) -> Option<Persisted> {
        let base = |state, revision: &str, since: i64| Persisted {
            state,
            revision: revision.to_string(),
            started_at: None,
            step: None,
            since: Some(time(since)),
            waiting: false,
            failures: BTreeMap::new(),
            last_passed: true,
            last_analysis_at: None,
            reason: None,
            message: None,
        };
        let with_analysis = |p: Persisted, started: i64, a: &AnalysisMemory| Persisted {
            started_at: Some(time(started)),
            failures: a.failures.iter().map(|(k, v)| (k.clone(), *v as i32)).collect(),
            last_passed: a.last_passed,
            last_analysis_at: a.last_run.map(time),
            ..p
        };
        Some(match self {
            RolloutState::Idle => return None,
            RolloutState::Starting { revision, since } => Persisted {
                started_at: Some(time(*since)),
                ..base(RolloutStateName::Starting, revision, *since)
            },
            RolloutState::Step {
                revision,
                started,
                index,
                since,
                waiting,
                analysis,
            } => Persisted {
                step: Some(*index as i32),
                waiting: *waiting,
                ..with_analysis(base(RolloutStateName::Step, revision, *since), *started, analysis)
            },
            RolloutState::Growing {
                revision,
                started,
                since,
                analysis,
            } => with_analysis(
                base(RolloutStateName::Growing, revision, *since),
                *started,
                analysis,
            ),
            RolloutState::Promoted { revision, at } => base(RolloutStateName::Promoted, revision, *at),
            RolloutState::RolledBack {
                revision,
                reason,
                message,
                at,
            } => Persisted {
                reason: Some(reason.clone()),
                message: Some(message.clone()),
                ..base(RolloutStateName::RolledBack, revision, *at)
            },
        })
    }

    /// The memory the step machine works on, for the states it runs in.
    pub fn memory(&self) -> Option<StepMemory> {
        match self {
            RolloutState::Starting { since, .. } => Some(StepMemory {
                step: 0,
                step_started_at: None,
                created_at: *since,
                failures: BTreeMap::new(),
                last_passed: true,
            }),
            RolloutState::Step {
                started,
                index,
                since,
                analysis,
                ..
            } => Some(StepMemory {
                step: *index,
                step_started_at: Some(*since),
                created_at: *started,
                failures: analysis.failures.clone(),
                last_passed: analysis.last_passed,
            }),
            _ => None,
        }
    }

    /// The analysis memory (empty outside a running candidate).
    pub fn analysis(&self) -> AnalysisMemory {
        match self {
            RolloutState::Step { analysis, .. } | RolloutState::Growing { analysis, .. } => analysis.clone(),
            _ => AnalysisMemory::default(),
        }
    }
}

/// What one reconcile knows about the candidate, for [`transition`].
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Now, seconds.
    pub now: i64,
    /// `spec.rollout`.
    pub rollout: &'a RolloutSpec,
    /// Per step `n`, whether the candidate has the Ready replicas it needs (the last entry,
    /// `n == steps.len()`: full size).
    pub ready: &'a [bool],
    /// The analysis run of this reconcile, when one was due.
    pub analysis: Option<&'a [machine::CheckOutcome]>,
    /// `modelfleet.dev/promote` is set.
    pub promote: bool,
    /// `modelfleet.dev/abort` is set.
    pub abort: bool,
}

impl Facts<'_> {
    fn ready_for(&self, step: usize) -> bool {
        self.ready.get(step).copied().unwrap_or(false)
    }
}

/// One reconcile's step of the rollout: the next state and what to do.
pub fn transition(state: &RolloutState, facts: &Facts<'_>) -> (RolloutState, Verdict) {
    let revision = state.revision().unwrap_or_default().to_string();
    match state {
        RolloutState::RolledBack { .. } => (state.clone(), Verdict::HeldBack),
        RolloutState::Growing {
            started,
            since,
            analysis,
            ..
        } => grow(revision, *started, *since, analysis.clone(), facts),
        RolloutState::Starting { .. } | RolloutState::Step { .. } => {
            let mut memory = state.memory().unwrap_or_default();
            let mut analysis = state.analysis();
            let verdict = run_step(&mut memory, facts);
            analysis.failures = memory.failures.clone();
            analysis.last_passed = memory.last_passed;
            if facts.analysis.is_some() {
                analysis.last_run = Some(facts.now);
            }
            after_step(revision, memory, analysis, verdict, facts)
        }
        RolloutState::Idle | RolloutState::Promoted { .. } => {
            let fresh = RolloutState::Starting {
                revision,
                since: facts.now,
            };
            transition(&fresh, facts)
        }
    }
}

/// The step machine, holding the previous step's traffic while the next step's replicas start.
fn run_step(memory: &mut StepMemory, facts: &Facts<'_>) -> Verdict {
    let before = memory.step;
    let inputs = Inputs {
        now: facts.now,
        rollout: facts.rollout,
        candidate_ready: facts.ready_for(before),
        analysis: facts.analysis,
        promote: facts.promote,
        abort: facts.abort,
    };
    match machine::step(memory, &inputs) {
        Verdict::Run { hold: None, .. } if memory.step != before && !facts.ready_for(memory.step) => {
            let (weight, mirror) = machine::traffic(facts.rollout, before);
            Verdict::Run {
                weight,
                mirror,
                remaining: None,
                hold: Some(HoldReason::CandidateNotReady),
            }
        }
        verdict => verdict,
    }
}

/// The state after a step's verdict.
fn after_step(
    revision: String,
    memory: StepMemory,
    analysis: AnalysisMemory,
    verdict: Verdict,
    facts: &Facts<'_>,
) -> (RolloutState, Verdict) {
    let steps = facts.rollout.steps.len();
    match verdict {
        Verdict::Rollback(reason) => (
            rolled_back(revision, &reason, facts.now),
            Verdict::Rollback(reason),
        ),
        // Every step passed (or `modelfleet.dev/promote`): grow to full size first, so the switch
        // never lowers the capacity serving production traffic.
        Verdict::Promote if !facts.ready_for(steps) => {
            grow(revision, memory.created_at, facts.now, analysis, facts)
        }
        Verdict::Promote => (
            RolloutState::Promoted {
                revision,
                at: facts.now,
            },
            Verdict::Promote,
        ),
        // The step machine never holds a candidate back; that is the rolled-back state's.
        Verdict::Run { .. } | Verdict::HeldBack => {
            let waiting = matches!(
                verdict,
                Verdict::Run {
                    hold: Some(HoldReason::CandidateNotReady),
                    ..
                }
            );
            let state = match memory.step_started_at {
                None => RolloutState::Starting {
                    revision,
                    since: memory.created_at,
                },
                Some(since) => RolloutState::Step {
                    revision,
                    started: memory.created_at,
                    index: memory.step,
                    since,
                    waiting,
                    analysis,
                },
            };
            (state, verdict)
        }
    }
}

/// Growing to full size for promotion: every step passed, so only an abort or a candidate that
/// cannot grow within `progressDeadline` (no GPUs for it) stops it now.
fn grow(
    revision: String,
    started: i64,
    since: i64,
    analysis: AnalysisMemory,
    facts: &Facts<'_>,
) -> (RolloutState, Verdict) {
    let steps = facts.rollout.steps.len();
    let verdict = if facts.abort {
        Verdict::Rollback(RollbackReason::Aborted)
    } else if facts.ready_for(steps) {
        Verdict::Promote
    } else if let Some(exceeded) = machine::deadline_exceeded(facts.rollout, since, facts.now) {
        Verdict::Rollback(exceeded)
    } else {
        let (weight, mirror) = machine::traffic(facts.rollout, steps.saturating_sub(1));
        Verdict::Run {
            weight,
            mirror,
            remaining: None,
            hold: Some(HoldReason::CandidateNotReady),
        }
    };
    let state = match &verdict {
        Verdict::Rollback(reason) => rolled_back(revision, reason, facts.now),
        Verdict::Promote => RolloutState::Promoted {
            revision,
            at: facts.now,
        },
        Verdict::Run { .. } | Verdict::HeldBack => RolloutState::Growing {
            revision,
            started,
            since,
            analysis,
        },
    };
    (state, verdict)
}

fn rolled_back(revision: String, reason: &RollbackReason, now: i64) -> RolloutState {
    RolloutState::RolledBack {
        revision,
        reason: reason.reason().to_string(),
        message: reason.message(),
        at: now,
    }
}

#[cfg(test)]
mod tests {
    use modelfleet_crds::v1alpha1::{CandidateStatus, RolloutResultStatus};

    use super::*;

    fn analysis() -> AnalysisMemory {
        AnalysisMemory {
            failures: [("errorRate".to_string(), 1)].into(),
            last_passed: false,
            last_run: Some(1_000_050),
        }
    }

    #[test]
    fn every_state_survives_the_status_round_trip() {
        let states = [
            RolloutState::Starting {
                revision: "b".into(),
                since: 1_000_000,
            },
            RolloutState::Step {
                revision: "b".into(),
                started: 1_000_000,
                index: 2,
                since: 1_000_040,
                waiting: true,
                analysis: analysis(),
            },
            RolloutState::Growing {
                revision: "b".into(),
                started: 1_000_000,
                since: 1_000_090,
                analysis: analysis(),
            },
            RolloutState::Promoted {
                revision: "b".into(),
                at: 1_000_100,
            },
            RolloutState::RolledBack {
                revision: "b".into(),
                reason: "AnalysisFailed".into(),
                message: "check errorRate failed".into(),
                at: 1_000_100,
            },
        ];
        for state in states {
            let persisted = state.to_status().expect("persisted");
            let yaml = serde_json::to_value(&persisted).expect("json");
            let back: Persisted = serde_json::from_value(yaml).expect("reads back");
            assert_eq!(RolloutState::from_status(&back), state);
        }
        assert_eq!(RolloutState::Idle.to_status(), None);
    }

    #[test]
    fn a_status_written_before_status_rollout_existed_continues_where_it_was() {
        let at = |s: i64| Some(time(s));
        let legacy = ModelDeploymentStatus {
            candidate: Some(CandidateStatus {
                revision: "b".into(),
                started_at: at(1_000_000),
                step: 1,
                step_started_at: at(1_000_060),
                replicas: 1,
                ready_replicas: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        let restored = RolloutState::restore(&legacy, "b", 1_000_070);
        assert!(
            matches!(
                restored,
                RolloutState::Step {
                    index: 1,
                    since: 1_000_060,
                    waiting: false,
                    ..
                }
            ),
            "{restored:?}"
        );
        assert!(
            matches!(
                RolloutState::restore(&legacy, "c", 1_000_070),
                RolloutState::Starting { since: 1_000_070, .. }
            ),
            "another revision starts over"
        );
        let rolled_back = ModelDeploymentStatus {
            last_rollout: Some(RolloutResultStatus {
                revision: "b".into(),
                version: "2".into(),
                result: RolloutResult::RolledBack,
                reason: "Aborted".into(),
                message: "aborted".into(),
                previous_stable: Some("a".into()),
                finished_at: time(1_000_010),
            }),
            ..Default::default()
        };
        assert!(matches!(
            RolloutState::restore(&rolled_back, "b", 1_000_070),
            RolloutState::RolledBack { at: 1_000_010, .. }
        ));
    }
}
