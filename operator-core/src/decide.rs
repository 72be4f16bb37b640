//! One reconcile's decision: [`Snapshot`] in, [`Decision`] out.

use k8s_openapi::jiff::Timestamp;
use kube_core::ResourceExt;
use modelfleet_crds::{
    ModelDeployment, ModelDeploymentStatus, constants::annotations, revision::revision_hash,
    v1alpha1::AnalysisCheck,
};
use serde::Serialize;

use crate::{
    autoscale::Outcome,
    events::{self, EventNote},
    observed::Observed,
    plan::{self, RevisionPlan},
    rollout::{
        engine::{self, EngineInput, RolloutDecision, RolloutReport},
        machine::CheckOutcome,
    },
    status,
};

/// The promote and abort annotations.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default)]
pub struct Controls {
    /// `modelfleet.dev/promote` is set.
    pub promote: bool,
    /// `modelfleet.dev/abort` is set.
    pub abort: bool,
}

impl Controls {
    /// The controls set on `md`.
    pub fn of(md: &ModelDeployment) -> Self {
        let set = |key: &str| md.annotations().contains_key(key);
        Self {
            promote: set(annotations::PROMOTE),
            abort: set(annotations::ABORT),
        }
    }

    /// Whether either is set.
    pub fn any(self) -> bool {
        self.promote || self.abort
    }
}

/// Everything one reconcile knows.
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// The ModelDeployment, carrying the status to build on (the operator's own last write while
    /// its cache lags behind it).
    pub md: &'a ModelDeployment,
    /// Its children as the caches show them.
    pub observed: &'a Observed,
    /// With `spec.scaling`, the autoscaler's latest outcome (None before its first).
    pub autoscaling: Option<&'a Outcome>,
    /// The analysis run of this reconcile, when [`analysis_due`] asked for one.
    pub analysis: Option<&'a [CheckOutcome]>,
    /// The promote and abort annotations.
    pub controls: Controls,
    /// Now.
    pub now: Timestamp,
    /// The server image for a spec without `spec.runtime.image`.
    pub default_image: &'a str,
    /// The model names every ModelDeployment of its namespace claims (empty: none known).
    pub name_claims: &'a [crate::names::NameClaim],
}

/// When the operator should look again, besides the watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Requeue {
    /// In this many seconds: a step ends, an analysis or the end of a drain is due.
    AfterSeconds(u64),
    /// Soon: the object has not settled.
    Soon,
    /// At the resync interval: settled.
    Resync,
}

/// What one reconcile decided.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// The revisions to run, their replicas and traffic, and the revisions to retire.
    pub plan: RevisionPlan,
    /// The rollout's report, during a rollout with steps (its state, candidate and analysis are
    /// in `status` too, so it is left out of the serialised decision).
    #[serde(skip)]
    pub rollout: Option<RolloutReport>,
    /// The status to write.
    pub status: ModelDeploymentStatus,
    /// Events to publish.
    pub events: Vec<EventNote>,
    /// When to look again.
    pub requeue: Requeue,
}

/// An analysis run the decision needs: the checks and what their queries are about.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisDue<'a> {
    /// The checks to run.
    pub checks: &'a [AnalysisCheck],
    /// The candidate revision.
    pub revision: String,
    /// The stable revision.
    pub stable_revision: String,
    /// The step is a shadow step (output agreement is measured only then).
    pub shadow_step: bool,
}

/// The revision the spec asks for.
fn current(snapshot: &Snapshot<'_>) -> String {
    revision_hash(&snapshot.md.spec, snapshot.default_image)
}

fn recorded<'a>(snapshot: &Snapshot<'a>) -> &'a ModelDeploymentStatus {
    static EMPTY: std::sync::OnceLock<ModelDeploymentStatus> = std::sync::OnceLock::new();
    snapshot
        .md
        .status
        .as_ref()
        .unwrap_or_else(|| EMPTY.get_or_init(ModelDeploymentStatus::default))
}

/// Total replicas from the replica source: `spec.replicas`, or the autoscaler's decision.
fn desired(snapshot: &Snapshot<'_>) -> i32 {
    plan::desired_replicas(snapshot.md, snapshot.autoscaling.map(|o| o.replicas))
}

/// The rollout engine's input, with rollout steps and a stable revision to protect (None: the
/// step-less plan applies).
fn engine_input<'a>(snapshot: &Snapshot<'a>, current: &'a str) -> Option<EngineInput<'a>> {
    let md = snapshot.md;
    let rollout = md.spec.rollout.as_ref().filter(|r| !r.steps.is_empty())?;
    let recorded = recorded(snapshot);
    let stable = recorded
        .stable
        .as_ref()
        .filter(|s| s.revision != current)
        .and_then(|s| snapshot.observed.revision(&s.revision))?;
    Some(EngineInput {
        now: snapshot.now,
        rollout,
        current,
        version: &md.spec.model.version,
        stable,
        desired: desired(snapshot),
        observed: &snapshot.observed.revisions,
        recorded,
        analysis: snapshot.analysis,
        promote: snapshot.controls.promote,
        abort: snapshot.controls.abort,
        gateway: md.spec.traffic.as_ref().is_some_and(|t| t.gateway.is_some()),
    })
}

/// The analysis run this reconcile needs before [`decide`], if one is due.
pub fn analysis_due<'a>(snapshot: &Snapshot<'a>) -> Option<AnalysisDue<'a>> {
    let rollout = snapshot.md.spec.rollout.as_ref()?;
    let checks = rollout.analysis.as_ref().map(|a| a.checks.as_slice())?;
    let current = current(snapshot);
    let input = engine_input(snapshot, &current)?;
    let step = engine::analysis_due(&input)?;
    Some(AnalysisDue {
        checks,
        stable_revision: input.stable.revision.clone(),
        revision: current.clone(),
        shadow_step: engine::is_shadow_step(rollout, step),
    })
}

/// Decides one reconcile.
pub fn decide(snapshot: &Snapshot<'_>) -> Decision {
    let md = snapshot.md;
    let recorded = recorded(snapshot);
    let current = current(snapshot);
    let desired = desired(snapshot);
    let rollout: Option<RolloutDecision> =
        engine_input(snapshot, &current).map(|input| engine::decide(&input));
    let mut plan = match &rollout {
        Some(decision) => decision.plan.clone(),
        None => {
            let stable = recorded.stable.as_ref().map(|s| s.revision.as_str());
            plan::plan(desired, &current, stable, &snapshot.observed.revisions)
        }
    };
    let drain_left = plan::drain_after_promotion(md, recorded, snapshot.observed, &mut plan, snapshot.now);
    let report = rollout.as_ref().map(|d| &d.report);
    let conflict = crate::names::conflict(md, snapshot.name_claims);
    let computed = status::compute(
        md,
        &plan,
        snapshot.observed,
        snapshot.autoscaling,
        report,
        conflict.as_ref(),
        snapshot.now,
    );
    let why = snapshot.autoscaling.and_then(|o| o.last_reason());
    let plan_events = plan::events(&snapshot.observed.revisions, &plan);
    let plan_events = plan_events.into_iter().map(|e| events::plan_event(md, e, why));
    let rollout_events = rollout.iter().flat_map(|d| d.events.clone());
    let events = plan_events
        .chain(rollout_events.map(|e| events::rollout_event(md, e)))
        .collect();
    let next = [rollout.as_ref().and_then(|d| d.next_check_seconds), drain_left]
        .into_iter()
        .flatten()
        .min();
    let requeue = match next {
        Some(seconds) => Requeue::AfterSeconds(seconds.max(1) as u64),
        None if computed.settled => Requeue::Resync,
        None => Requeue::Soon,
    };
    Decision {
        plan,
        rollout: rollout.map(|d| d.report),
        status: computed.status,
        events,
        requeue,
    }
}
