//! Status: what the operator observed and did, and Events for what changed.

use k8s_openapi::jiff::Timestamp;
use kube_core::ResourceExt;
use modelfleet_crds::{
    ModelDeployment, ModelDeploymentStatus, ValidationErrors,
    constants::{conditions as types, labels},
    v1alpha1::{CandidateStatus, Phase, RevisionStatus},
};

use crate::{
    autoscale::Outcome,
    conditions::{self, Desired, Source},
    diagnose,
    events::EventNote,
    observed::Observed,
    plan::RevisionPlan,
    rollout::{
        engine::{RolloutPhase, RolloutReport},
        machine::HoldReason,
    },
};

/// The computed status and whether the object has settled (no faster requeue needed).
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// The new status.
    pub status: ModelDeploymentStatus,
    /// Available with no problem.
    pub settled: bool,
}

/// What the status is computed from.
#[derive(Debug, Clone, Copy)]
struct Facts<'a> {
    md: &'a ModelDeployment,
    plan: &'a RevisionPlan,
    observed: &'a Observed,
    /// `spec.model.version`.
    version: &'a str,
    /// The stable revision's version.
    stable_version: &'a str,
    /// Ready replicas of the current revision.
    current_ready: i32,
    /// Ready replicas of the stable revision.
    stable_ready: i32,
}

impl Facts<'_> {
    fn ready(&self, revision: &str) -> i32 {
        self.observed.revision(revision).map_or(0, |r| r.ready_replicas)
    }

    fn running(&self, revision: &str) -> i32 {
        self.plan.replicas.get(revision).copied().unwrap_or(0)
    }

    /// The current revision serves with every replica ready and no rollout in the way.
    fn available(&self) -> bool {
        self.plan.candidate.is_none() && self.current_ready >= self.plan.desired
    }
}

/// Computes the status from the plan, the children observed, with `spec.scaling` the
/// autoscaler's outcome, and during a rollout with steps the engine's report.
pub fn compute(
    md: &ModelDeployment,
    plan: &RevisionPlan,
    observed: &Observed,
    autoscaling: Option<&Outcome>,
    rollout: Option<&RolloutReport>,
    name_conflict: Option<&diagnose::Problem>,
    now: Timestamp,
) -> StatusReport {
    let stable_version = observed
        .revision(&plan.stable)
        .map(|r| r.version.clone())
        .unwrap_or_default();
    let facts = Facts {
        md,
        plan,
        observed,
        version: &md.spec.model.version,
        stable_version: &stable_version,
        current_ready: observed.revision(&plan.current).map_or(0, |r| r.ready_replicas),
        stable_ready: observed.revision(&plan.stable).map_or(0, |r| r.ready_replicas),
    };
    // The pods' problems first (they stop serving); a model name another ModelDeployment holds
    // stops requests from reaching this one by that name.
    let problem = diagnose::diagnose(&observed.pods, &plan.current, i64::from(md.spec.resources.gpus))
        .or_else(|| name_conflict.cloned());
    let mut said = replica_conditions(&facts, problem.as_ref());
    said.push((Source::Diagnosis, degraded(problem.as_ref())));
    said.extend(autoscaler_conditions(&facts, autoscaling));
    said.extend(spec_conditions(md));
    if let Some(report) = rollout {
        said.extend(rollout_conditions(&facts, report));
    }
    let existing = md
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let conditions = conditions::merge(existing, &conditions::resolve(&said), md.metadata.generation, now);
    let rolled_back = rollout.is_some_and(|r| matches!(r.phase, RolloutPhase::RolledBack { .. }));
    let ready_replicas: i32 = plan.replicas.keys().map(|r| facts.ready(r)).sum();
    let phase = if facts.available() && problem.is_none() {
        Phase::Available
    } else if problem.is_some() || rolled_back {
        Phase::Degraded
    } else if ready_replicas == 0 {
        Phase::Pending
    } else {
        Phase::Progressing
    };
    StatusReport {
        settled: phase == Phase::Available,
        status: assemble(&facts, autoscaling, rollout, phase, conditions),
    }
}

/// The status fields around the conditions and the phase.
fn assemble(
    facts: &Facts<'_>,
    autoscaling: Option<&Outcome>,
    rollout: Option<&RolloutReport>,
    phase: Phase,
    conditions: Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
) -> ModelDeploymentStatus {
    let (md, plan) = (facts.md, facts.plan);
    let replicas: i32 = plan.replicas.values().sum();
    let ready_replicas: i32 = plan.replicas.keys().map(|r| facts.ready(r)).sum();
    let stable = RevisionStatus {
        revision: plan.stable.clone(),
        version: if plan.stable == plan.current {
            facts.version
        } else {
            facts.stable_version
        }
        .to_string(),
        replicas: facts.running(&plan.stable),
        ready_replicas: facts.stable_ready,
    };
    let candidate = match rollout {
        Some(r) => r.candidate.clone(),
        None => stepless_candidate(facts),
    };
    let recorded = md.status.as_ref();
    ModelDeploymentStatus {
        observed_generation: md.metadata.generation,
        phase: Some(phase),
        replicas,
        ready_replicas,
        ready: Some(format!("{ready_replicas}/{replicas}")),
        selector: Some(format!("{}={}", labels::DEPLOYMENT, md.name_any())),
        canary: Some(
            candidate
                .as_ref()
                .map_or_else(|| "-".to_owned(), |c| c.version.clone()),
        ),
        canary_weight: Some(candidate.as_ref().map_or(0, |c| c.traffic_weight)),
        stable: Some(stable),
        rollout: rollout.and_then(|r| r.state.clone()),
        candidate,
        analysis: rollout.and_then(|r| r.analysis.clone()),
        last_rollout: match rollout {
            Some(r) => r.last_rollout.clone(),
            None => recorded.and_then(|s| s.last_rollout.clone()),
        },
        autoscaling: md.spec.scaling.as_ref().and(
            autoscaling
                .map(|o| o.status.clone())
                .or_else(|| recorded.and_then(|s| s.autoscaling.clone())),
        ),
        routing: recorded.and_then(|s| s.routing.clone()),
        load: recorded.and_then(|s| s.load.clone()),
        conditions,
    }
}

/// Without rollout steps the entry Service selects both revisions: the candidate's traffic
/// follows its share of the ready replicas.
fn stepless_candidate(facts: &Facts<'_>) -> Option<CandidateStatus> {
    let candidate = facts.plan.candidate.as_ref()?;
    let ready = facts.current_ready + facts.stable_ready;
    Some(CandidateStatus {
        revision: candidate.clone(),
        version: facts.version.to_string(),
        started_at: None,
        step: 0,
        step_started_at: None,
        step_remaining_seconds: None,
        traffic_weight: if ready > 0 {
            100 * facts.current_ready / ready
        } else {
            0
        },
        mirror_percent: 0,
        replicas: facts.running(candidate),
        ready_replicas: facts.current_ready,
    })
}

/// Available and Progressing from the replica counts.
fn replica_conditions(facts: &Facts<'_>, problem: Option<&diagnose::Problem>) -> Vec<(Source, Desired)> {
    let (plan, version, ready) = (facts.plan, facts.version, facts.current_ready);
    let (available, progressing) = if facts.available() && plan.desired == 0 {
        let msg = format!(
            "no replica runs (minReplicas 0, idle): the next request through the router starts one of revision {}",
            plan.current
        );
        (
            Desired::new(types::AVAILABLE, true, "ScaledToZero", msg.clone()),
            Desired::new(types::PROGRESSING, false, "ScaledToZero", msg),
        )
    } else if facts.available() {
        (
            Desired::new(
                types::AVAILABLE,
                true,
                "AllReplicasReady",
                format!(
                    "{ready}/{} replicas of revision {} (version {version}) are ready",
                    plan.desired, plan.current
                ),
            ),
            Desired::new(
                types::PROGRESSING,
                false,
                "Complete",
                format!("revision {} is fully rolled out", plan.current),
            ),
        )
    } else if let Some(candidate) = &plan.candidate {
        let msg = format!(
            "revision {candidate} (version {version}) has {ready}/{} ready replicas; revision {} (version {}) keeps serving until then",
            plan.desired, plan.stable, facts.stable_version
        );
        (
            Desired::new(types::AVAILABLE, false, "RevisionRollingOut", msg.clone()),
            Desired::new(types::PROGRESSING, true, "NewRevision", msg),
        )
    } else {
        let msg = format!(
            "{ready}/{} replicas of revision {} are ready",
            plan.desired, plan.current
        );
        let reason = problem.map_or("ReplicasNotReady", |p| p.reason);
        (
            Desired::new(types::AVAILABLE, false, reason, msg.clone()),
            Desired::new(types::PROGRESSING, true, "ReplicasStarting", msg),
        )
    };
    vec![(Source::Replicas, available), (Source::Replicas, progressing)]
}

/// Degraded from the pods' problems.
fn degraded(problem: Option<&diagnose::Problem>) -> Desired {
    match problem {
        Some(p) => Desired::new(types::DEGRADED, true, p.reason, p.message.clone()),
        None => Desired::new(types::DEGRADED, false, "AsExpected", "no problem found"),
    }
}

/// MetricsAvailable and ScalingLimited, with `spec.scaling`.
fn autoscaler_conditions(facts: &Facts<'_>, autoscaling: Option<&Outcome>) -> Vec<(Source, Desired)> {
    if facts.md.spec.scaling.is_none() {
        return Vec::new();
    }
    let said = match autoscaling {
        Some(o) => vec![o.metrics_available.clone(), o.scaling_limited.clone()],
        None => vec![Desired::new(
            types::METRICS_AVAILABLE,
            false,
            "AwaitingTelemetry",
            format!(
                "the autoscaler has not evaluated this ModelDeployment yet; holding {} replicas",
                facts.plan.desired
            ),
        )],
    };
    said.into_iter().map(|d| (Source::Autoscaler, d)).collect()
}

/// FieldsNotActive for accepted fields that do nothing in this spec.
fn spec_conditions(md: &ModelDeployment) -> Vec<(Source, Desired)> {
    let analysis_without_steps = md
        .spec
        .rollout
        .as_ref()
        .is_some_and(|r| r.steps.is_empty() && r.analysis.is_some());
    let said = analysis_without_steps.then(|| {
        Desired::new(
            FIELDS_NOT_ACTIVE,
            true,
            "AnalysisWithoutSteps",
            "spec.rollout.analysis runs only during rollout steps: with no spec.rollout.steps a new revision replaces the stable one once all its replicas are ready, unchecked",
        )
    });
    said.into_iter().map(|d| (Source::Spec, d)).collect()
}

/// Condition type: an accepted field that has no effect in this spec.
pub const FIELDS_NOT_ACTIVE: &str = "FieldsNotActive";

/// Condition type: the rollout waits (paused by the spec, or analysis without an answer).
pub const PAUSED: &str = "Paused";

/// Available, Progressing and Degraded as the rollout tells them, and Paused.
fn rollout_conditions(facts: &Facts<'_>, report: &RolloutReport) -> Vec<(Source, Desired)> {
    let said = match &report.phase {
        RolloutPhase::Running { step, steps, hold } => {
            running_conditions(facts, report, *step, *steps, hold.as_ref())
        }
        RolloutPhase::RolledBack { reason, message } => {
            let msg = format!(
                "version {} (revision {}) was rolled back: {message}; version {} (revision {}) serves all traffic; change the spec to roll out again",
                facts.version, facts.plan.current, facts.stable_version, facts.plan.stable
            );
            vec![
                Desired::new(types::AVAILABLE, false, "RolledBack", msg.clone()),
                Desired::new(types::PROGRESSING, false, "RolledBack", msg),
                Desired::new(types::DEGRADED, true, reason.clone(), message.clone()),
            ]
        }
        RolloutPhase::Promoted => Vec::new(),
    };
    said.into_iter().map(|d| (Source::Rollout, d)).collect()
}

fn running_conditions(
    facts: &Facts<'_>,
    report: &RolloutReport,
    step: usize,
    steps: usize,
    hold: Option<&HoldReason>,
) -> Vec<Desired> {
    let c = report.candidate.as_ref();
    let (weight, mirror) = (
        c.map_or(0, |c| c.traffic_weight),
        c.map_or(0, |c| c.mirror_percent),
    );
    let at = if step < steps {
        format!("step {}/{steps}", step + 1)
    } else {
        "growing to full size for promotion".into()
    };
    let summary = format!(
        "version {} (revision {}) is at {at}: weight {weight}%, mirror {mirror}%; version {} (revision {}) serves the rest",
        facts.version, facts.plan.current, facts.stable_version, facts.plan.stable
    );
    let (reason, paused, detail) = match hold {
        None => ("RolloutStep", None, summary.clone()),
        Some(HoldReason::CandidateNotReady) => (
            "CandidateStarting",
            None,
            format!(
                "{summary}; waiting for {}/{} candidate replicas to be ready",
                c.map_or(0, |c| c.ready_replicas),
                c.map_or(0, |c| c.replicas)
            ),
        ),
        Some(HoldReason::Paused) => (
            "RolloutPaused",
            Some(
                "spec.rollout.paused is true; the step does not advance (a failing check still rolls back)"
                    .to_string(),
            ),
            summary.clone(),
        ),
        Some(HoldReason::Inconclusive(checks)) => {
            let why: Vec<String> = checks
                .iter()
                .map(|(check, reason)| format!("{check}: {reason}"))
                .collect();
            let message = format!(
                "analysis has no answer, so the rollout waits and never promotes: {}",
                why.join("; ")
            );
            ("AnalysisInconclusive", Some(message), summary.clone())
        }
    };
    vec![
        Desired::new(types::AVAILABLE, false, "RolloutInProgress", summary),
        Desired::new(types::PROGRESSING, true, reason, detail),
        match paused {
            Some(message) => Desired::new(PAUSED, true, reason, message),
            None => Desired::new(PAUSED, false, "Running", "the rollout advances"),
        },
    ]
}

/// The status for a spec that fails validation: Degraded/InvalidSpec with the message, the
/// rest as recorded (children are left as they are); and the Event to publish when the message
/// is new.
pub fn invalid_status(
    md: &ModelDeployment,
    invalid: &ValidationErrors,
    now: Timestamp,
) -> (ModelDeploymentStatus, Option<EventNote>) {
    let message = invalid.to_string();
    let previous = md.status.clone().unwrap_or_default();
    let already = previous
        .conditions
        .iter()
        .any(|c| c.type_ == types::DEGRADED && c.reason == "InvalidSpec" && c.message == message);
    let desired = [
        Desired::new(
            types::AVAILABLE,
            previous.ready_replicas > 0 && previous.phase == Some(Phase::Available),
            "InvalidSpec",
            message.clone(),
        ),
        Desired::new(
            types::PROGRESSING,
            false,
            "InvalidSpec",
            "waiting for a valid spec",
        ),
        Desired::new(types::DEGRADED, true, "InvalidSpec", message.clone()),
    ];
    let status = ModelDeploymentStatus {
        observed_generation: md.metadata.generation,
        phase: Some(if previous.ready_replicas > 0 {
            Phase::Degraded
        } else {
            Phase::Failed
        }),
        conditions: conditions::merge(&previous.conditions, &desired, md.metadata.generation, now),
        ..previous
    };
    let event = (!already).then_some(EventNote {
        warning: true,
        reason: "InvalidSpec",
        action: "Validate",
        note: message,
    });
    (status, event)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::plan;

    #[test]
    fn analysis_without_steps_is_reported_not_ignored() {
        let spec = |rollout: &str| -> ModelDeployment {
            let yaml = format!("model: {{name: m, version: '1', uri: 'hf://o/m'}}\nrollout: {rollout}");
            ModelDeployment::new("m", serde_yaml::from_str(&yaml).expect("fixture"))
        };
        let fields_not_active = |md: &ModelDeployment| {
            let report = compute(
                md,
                &plan(1, "a", None, &[]),
                &Observed::default(),
                None,
                None,
                None,
                Timestamp::UNIX_EPOCH,
            );
            report
                .status
                .conditions
                .into_iter()
                .find(|c| c.type_ == FIELDS_NOT_ACTIVE)
                .map(|c| c.reason)
        };
        let md = spec("{analysis: {checks: [{builtin: errorRate, max: 0.01}]}}");
        assert_eq!(fields_not_active(&md).as_deref(), Some("AnalysisWithoutSteps"));
        let md = spec(
            "{steps: [{canary: {weight: 10, duration: 1m}}], analysis: {checks: [{builtin: errorRate, max: 0.01}]}}",
        );
        assert_eq!(fields_not_active(&md), None);
    }
}
