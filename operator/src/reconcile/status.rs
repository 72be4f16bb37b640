//! Status: what the operator observed and did, and Events for what changed.

use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::Patch,
    runtime::events::{Event, EventType, Recorder},
};
use modelfleet_crds::{
    ModelDeployment, ModelDeploymentStatus, ValidationErrors,
    constants::{conditions as types, labels},
    v1alpha1::{CandidateStatus, Phase, RevisionStatus},
};
use serde_json::json;

use crate::{
    Error, Result,
    autoscaler::Outcome,
    reconcile::{
        conditions::{self, Desired},
        diagnose,
        fetch::Observed,
        plan::{PlanEvent, RevisionPlan},
    },
    rollout::{
        engine::{RolloutEvent, RolloutPhase, RolloutReport},
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
    let conditions = conditions::merge(&existing, &desired, md.metadata.generation, Timestamp::now());

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

/// Writes the status with server-side apply on the status subresource.
pub async fn patch(client: &Client, md: &ModelDeployment, status: &ModelDeploymentStatus) -> Result<()> {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &md.namespace().unwrap_or_default());
    let body = json!({
        "apiVersion": ModelDeployment::api_version(&()),
        "kind": ModelDeployment::kind(&()),
        "status": status,
    });
    api.patch_status(
        &md.name_any(),
        &crate::reconcile::apply::apply_params(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::Status)?;
    Ok(())
}

/// Degraded/InvalidSpec with the validation message; children are left as they are.
pub async fn report_invalid(
    client: &Client,
    recorder: &Recorder,
    md: &ModelDeployment,
    invalid: &ValidationErrors,
) -> Result<()> {
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
        conditions: conditions::merge(
            &previous.conditions,
            &desired,
            md.metadata.generation,
            Timestamp::now(),
        ),
        ..previous
    };
    patch(client, md, &status).await?;
    if !already {
        let event = EventNote {
            warning: true,
            reason: "InvalidSpec",
            action: "Validate",
            note: message,
        };
        publish(recorder, md, &event).await;
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// One Event to publish, as data: the reconcile decides it, the shell sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventNote {
    /// Warning rather than Normal.
    pub warning: bool,
    /// `reason` (CamelCase, stable).
    pub reason: &'static str,
    /// `action`.
    pub action: &'static str,
    /// Human-readable note (cut to the API's 1 KiB when sent).
    pub note: String,
}

/// The Event for a plan change; `scale_reason` explains an autoscaler's change.
pub fn plan_event(md: &ModelDeployment, change: PlanEvent, scale_reason: Option<&str>) -> EventNote {
    let (reason, action, note) = match change {
        PlanEvent::RevisionCreated { revision, replicas } => (
            "RevisionCreated",
            "Create",
            format!(
                "created revision {revision} (version {}) with {replicas} replicas",
                md.spec.model.version
            ),
        ),
        PlanEvent::Scaled { revision, from, to } => (
            "Scaled",
            "Scale",
            match scale_reason {
                Some(why) => format!("scaled revision {revision} from {from} to {to} replicas: {why}"),
                None => format!("scaled revision {revision} from {from} to {to} replicas"),
            },
        ),
        PlanEvent::RevisionReplaced { revision, retired } => (
            "RevisionReplaced",
            "Replace",
            format!("revision {revision} is ready; retired {}", retired.join(", ")),
        ),
    };
    EventNote {
        warning: false,
        reason,
        action,
        note,
    }
}

/// The Event for a rollout change.
pub fn rollout_event(md: &ModelDeployment, change: RolloutEvent) -> EventNote {
    let (warning, reason, action, note) = match change {
        RolloutEvent::StepStarted {
            number,
            steps,
            description,
        } => (
            false,
            "RolloutStep",
            "Rollout",
            format!(
                "version {}: step {number}/{steps} started: {description}",
                md.spec.model.version
            ),
        ),
        RolloutEvent::Promoted { revision, version } => (
            false,
            "Promoted",
            "Promote",
            format!("version {version} (revision {revision}) passed every step and is now stable"),
        ),
        RolloutEvent::RolledBack { reason, message } => (
            true,
            "RolledBack",
            "Rollback",
            format!(
                "version {} rolled back ({reason}): {message}",
                md.spec.model.version
            ),
        ),
    };
    EventNote {
        warning,
        reason,
        action,
        note,
    }
}

/// Publishes one Event about `md`, its note cut to the API's 1 KiB. Event failures are logged,
/// never fatal.
pub async fn publish(recorder: &Recorder, md: &ModelDeployment, event: &EventNote) {
    let sent = Event {
        type_: if event.warning {
            EventType::Warning
        } else {
            EventType::Normal
        },
        reason: event.reason.into(),
        note: Some(truncate(&event.note, 1000)),
        action: event.action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&sent, &md.object_ref(&())).await {
        tracing::warn!(error = %e, reason = event.reason, "cannot publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::plan::plan;

    #[test]
    fn analysis_without_steps_is_reported_not_ignored() {
        let spec = |rollout: &str| -> ModelDeployment {
            let yaml = format!("model: {{name: m, version: '1', uri: 'hf://o/m'}}\nrollout: {rollout}");
            ModelDeployment::new("m", serde_yaml::from_str(&yaml).expect("fixture"))
        };
        let fields_not_active = |md: &ModelDeployment| {
            let report = compute(md, &plan(1, "a", None, &[]), &Observed::default(), None, None);
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
