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
    conditions::{self, Desired},
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

/// Computes the status from the plan, the children observed, with `spec.scaling` the
/// autoscaler's outcome, and during a rollout with steps the engine's report.
pub fn compute(
    md: &ModelDeployment,
    plan: &RevisionPlan,
    observed: &Observed,
    autoscaling: Option<&Outcome>,
    rollout: Option<&RolloutReport>,
    now: Timestamp,
) -> StatusReport {
    let name = md.name_any();
    let ready = |rev: &str| observed.revision(rev).map_or(0, |r| r.ready_replicas);
    let running = |rev: &str| plan.replicas.get(rev).copied().unwrap_or(0);
    let replicas: i32 = plan.replicas.values().sum();
    let ready_replicas: i32 = plan.replicas.keys().map(|r| ready(r)).sum();
    let current_ready = ready(&plan.current);
    let gpus = i64::from(md.spec.resources.gpus);
    let problem = diagnose::diagnose(&observed.pods, &plan.current, gpus);
    let available = plan.candidate.is_none() && current_ready >= plan.desired;
    let stable_version = observed
        .revision(&plan.stable)
        .map(|r| r.version.clone())
        .unwrap_or_default();
    let version = md.spec.model.version.clone();

    let (available_cond, progressing) = if available {
        (
            Desired::new(
                types::AVAILABLE,
                true,
                "AllReplicasReady",
                format!(
                    "{current_ready}/{} replicas of revision {} (version {version}) are ready",
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
            "revision {candidate} (version {version}) has {current_ready}/{} ready replicas; revision {} (version {stable_version}) keeps serving until then",
            plan.desired, plan.stable
        );
        (
            Desired::new(types::AVAILABLE, false, "RevisionRollingOut", msg.clone()),
            Desired::new(types::PROGRESSING, true, "NewRevision", msg),
        )
    } else {
        let msg = format!(
            "{current_ready}/{} replicas of revision {} are ready",
            plan.desired, plan.current
        );
        let reason = problem.as_ref().map_or("ReplicasNotReady", |p| p.reason);
        (
            Desired::new(types::AVAILABLE, false, reason, msg.clone()),
            Desired::new(types::PROGRESSING, true, "ReplicasStarting", msg),
        )
    };
    let degraded = match &problem {
        Some(p) => Desired::new(types::DEGRADED, true, p.reason, p.message.clone()),
        None => Desired::new(types::DEGRADED, false, "AsExpected", "no problem found"),
    };
    let mut desired = vec![available_cond, progressing, degraded];
    if md.spec.scaling.is_some() {
        match autoscaling {
            Some(o) => desired.extend([o.metrics_available.clone(), o.scaling_limited.clone()]),
            None => desired.push(Desired::new(
                types::METRICS_AVAILABLE,
                false,
                "AwaitingTelemetry",
                format!(
                    "the autoscaler has not evaluated this ModelDeployment yet; holding {} replicas",
                    plan.desired
                ),
            )),
        }
    }
    if md
        .spec
        .rollout
        .as_ref()
        .is_some_and(|r| r.steps.is_empty() && r.analysis.is_some())
    {
        desired.push(Desired::new(
            FIELDS_NOT_ACTIVE,
            true,
            "AnalysisWithoutSteps",
            "spec.rollout.analysis runs only during rollout steps: with no spec.rollout.steps a new revision replaces the stable one once all its replicas are ready, unchecked",
        ));
    }
    let mut rolled_back = false;
    if let Some(report) = rollout {
        rolled_back = matches!(report.phase, RolloutPhase::RolledBack { .. });
        rollout_conditions(&mut desired, report, plan, &version, &stable_version);
    }
    let existing = md
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    let conditions = conditions::merge(&existing, &desired, md.metadata.generation, now);

    let phase = if available && problem.is_none() {
        Phase::Available
    } else if problem.is_some() || rolled_back {
        Phase::Degraded
    } else if ready_replicas == 0 {
        Phase::Pending
    } else {
        Phase::Progressing
    };
    let stable = RevisionStatus {
        revision: plan.stable.clone(),
        version: if plan.stable == plan.current {
            version.clone()
        } else {
            stable_version
        },
        replicas: running(&plan.stable),
        ready_replicas: ready(&plan.stable),
    };
    let candidate = match rollout {
        Some(r) => r.candidate.clone(),
        None => plan.candidate.as_ref().map(|c| {
            let stable_ready = ready(&plan.stable);
            // Without steps the entry Service selects both revisions: traffic follows ready replicas.
            let weight = if current_ready + stable_ready > 0 {
                100 * current_ready / (current_ready + stable_ready)
            } else {
                0
            };
            CandidateStatus {
                revision: c.clone(),
                version: version.clone(),
                started_at: None,
                step: 0,
                step_started_at: None,
                step_remaining_seconds: None,
                traffic_weight: weight,
                mirror_percent: 0,
                replicas: running(c),
                ready_replicas: current_ready,
            }
        }),
    };
    let status = ModelDeploymentStatus {
        observed_generation: md.metadata.generation,
        phase: Some(phase),
        replicas,
        ready_replicas,
        ready: Some(format!("{ready_replicas}/{replicas}")),
        selector: Some(format!("{}={name}", labels::DEPLOYMENT)),
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
            None => md.status.as_ref().and_then(|s| s.last_rollout.clone()),
        },
        autoscaling: md.spec.scaling.as_ref().and(
            autoscaling
                .map(|o| o.status.clone())
                .or_else(|| md.status.as_ref().and_then(|s| s.autoscaling.clone())),
        ),
        conditions,
    };
    StatusReport {
        settled: phase == Phase::Available,
        status,
    }
}

/// Condition type: an accepted field that has no effect in this spec.
pub const FIELDS_NOT_ACTIVE: &str = "FieldsNotActive";

/// Condition type: the rollout waits (paused by the spec, or analysis without an answer).
pub const PAUSED: &str = "Paused";

/// Replaces Available, Progressing and Degraded with what the rollout says, and adds Paused.
fn rollout_conditions(
    desired: &mut Vec<Desired>,
    report: &RolloutReport,
    plan: &RevisionPlan,
    version: &str,
    stable_version: &str,
) {
    let mut set = |d: Desired| match desired.iter_mut().find(|x| x.type_ == d.type_) {
        Some(x) => *x = d,
        None => desired.push(d),
    };
    let stable = &plan.stable;
    match &report.phase {
        RolloutPhase::Running { step, steps, hold } => {
            let c = report.candidate.as_ref();
            let weight = c.map_or(0, |c| c.traffic_weight);
            let mirror = c.map_or(0, |c| c.mirror_percent);
            let at = if step < steps {
                format!("step {}/{steps}", step + 1)
            } else {
                "growing to full size for promotion".into()
            };
            let summary = format!(
                "version {version} (revision {}) is at {at}: weight {weight}%, mirror {mirror}%; version {stable_version} (revision {stable}) serves the rest",
                plan.current
            );
            set(Desired::new(
                types::AVAILABLE,
                false,
                "RolloutInProgress",
                summary.clone(),
            ));
            let (reason, paused, detail) = match hold {
                None => ("RolloutStep", None, summary),
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
                    Some("spec.rollout.paused is true; the step does not advance (a failing check still rolls back)".to_string()),
                    summary,
                ),
                Some(HoldReason::Inconclusive(checks)) => {
                    let why = checks
                        .iter()
                        .map(|(check, reason)| format!("{check}: {reason}"))
                        .collect::<Vec<_>>()
                        .join("; ");
                    (
                        "AnalysisInconclusive",
                        Some(format!("analysis has no answer, so the rollout waits and never promotes: {why}")),
                        summary,
                    )
                }
            };
            set(Desired::new(types::PROGRESSING, true, reason, detail));
            set(match paused {
                Some(message) => Desired::new(PAUSED, true, reason, message),
                None => Desired::new(PAUSED, false, "Running", "the rollout advances"),
            });
        }
        RolloutPhase::RolledBack { reason, message } => {
            let msg = format!(
                "version {version} (revision {}) was rolled back: {message}; version {stable_version} (revision {stable}) serves all traffic; change the spec to roll out again",
                plan.current
            );
            set(Desired::new(types::AVAILABLE, false, "RolledBack", msg.clone()));
            set(Desired::new(types::PROGRESSING, false, "RolledBack", msg));
            set(Desired::new(
                types::DEGRADED,
                true,
                reason.clone(),
                message.clone(),
            ));
        }
        RolloutPhase::Promoted => {}
    }
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
