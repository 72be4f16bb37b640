//! The reconcile pipeline: `fetch → validate → plan/build (pure) → apply → status`.

pub mod apply;
pub mod build;
pub mod conditions;
pub mod diagnose;
pub mod effects;
pub mod fetch;
pub mod memory;
pub mod plan;
pub mod status;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use kube::{ResourceExt, runtime::controller::Action};
use modelfleet_crds::{
    ModelDeployment, ModelDeploymentStatus, revision::revision_hash, v1alpha1::RolloutResult, validate,
};

use crate::{
    Error, Result,
    controller::Context,
    reconcile::{
        effects::{Controls, Effects},
        fetch::Observed,
        plan::RevisionPlan,
    },
    rollout::{
        engine::{self, EngineInput, RolloutDecision},
        prometheus::Placeholders,
        run::{self, AnalysisEnv},
    },
};

/// Reconciles one ModelDeployment.
#[tracing::instrument(skip_all, fields(namespace = md.namespace().unwrap_or_default(), name = md.name_any()))]
pub async fn reconcile(md: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    tracing::debug!("reconcile started");
    let result = run(&md, &ctx).await;
    let took = started.elapsed();
    tracing::debug!(
        took_ms = took.as_millis() as u64,
        ok = result.is_ok(),
        "reconcile finished"
    );
    ctx.metrics.observe_reconcile(took, result.as_ref().err());
    if result.is_ok() {
        ctx.failures.succeeded(&md.uid().unwrap_or_default());
    }
    result
}

async fn run(md: &ModelDeployment, ctx: &Context) -> Result<Action> {
    let namespace = md
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let name = md
        .metadata
        .name
        .clone()
        .ok_or(Error::MissingObjectKey(".metadata.name"))?;
    if let Err(invalid) = validate(&md.spec) {
        // An invalid spec waits for a change: no retries, one Event, Degraded/InvalidSpec.
        status::report_invalid(&ctx.client, &ctx.recorder, md, &invalid).await?;
        return Ok(Action::await_change());
    }
    ctx.stores.ready().await?;
    // Build on our own last status while the cache has not caught up with it.
    let mut md = md.clone();
    md.status = ctx.written.status_of(&md);
    let md = &md;
    let recorded = md.status.clone().unwrap_or_default();
    let observed = fetch::observe(&ctx.stores, &namespace, &name);
    let decided = md.uid().and_then(|uid| ctx.decisions.get(&uid));
    let view = View {
        md,
        namespace: &namespace,
        name: &name,
        observed: &observed,
        recorded: &recorded,
        current: &revision_hash(&md.spec, &ctx.config.default_image),
        desired: plan::desired_replicas(md, decided.as_ref().map(|o| o.replicas)),
        now: Timestamp::now(),
    };
    let controls = Controls::of(md);
    let rollout = progressive(&view, ctx, controls).await;
    let recorded_stable = recorded.stable.as_ref().map(|s| s.revision.as_str());
    let mut plan = match &rollout {
        Some(decision) => decision.plan.clone(),
        None => plan::plan(view.desired, view.current, recorded_stable, &observed.revisions),
    };
    let drain_left = drain_after_promotion(&view, &mut plan);
    let desired = build::build(md, &plan, &observed, &ctx.config.default_image);
    let report = status::compute(
        md,
        &plan,
        &observed,
        decided.as_ref(),
        rollout.as_ref().map(|d| &d.report),
    );
    let why = decided.as_ref().and_then(|o| o.last_reason());
    let plan_events = plan::events(&observed.revisions, &plan)
        .into_iter()
        .map(|e| status::plan_event(md, e, why));
    let rollout_events = rollout
        .iter()
        .flat_map(|d| d.events.clone())
        .map(|e| status::rollout_event(md, e));
    let effects = Effects {
        md,
        observed: &observed,
        desired: &desired,
        retire: &plan.retire,
        status: &report.status,
        controls,
        events: plan_events.chain(rollout_events).collect(),
    };
    let applied = effects::write(ctx, effects).await?;
    tracing::debug!(
        written = applied.written,
        awaiting_cache = applied.awaiting_cache,
        "children applied"
    );
    Ok(next_action(ctx, &rollout, drain_left, applied, report.settled))
}

/// When to look again: soon while a rollout step, a drain or a write the cache has yet to show
/// waits on time, at the resync interval once settled.
fn next_action(
    ctx: &Context,
    rollout: &Option<RolloutDecision>,
    drain_left: Option<i64>,
    applied: apply::Applied,
    settled: bool,
) -> Action {
    let soon = Duration::from_secs(5);
    let awaiting = (applied.awaiting_cache > 0).then_some(memory::CACHE_LAG_LIMIT.as_secs() as i64);
    let next = [
        rollout.as_ref().and_then(|d| d.next_check_seconds),
        drain_left,
        awaiting,
    ]
    .into_iter()
    .flatten()
    .map(|s| Duration::from_secs(s.max(1) as u64))
    .min();
    match next {
        Some(next) => Action::requeue(next.min(soon)),
        None if settled => Action::requeue(ctx.config.resync),
        None => Action::requeue(soon),
    }
}

/// What one reconcile read, for the rollout steps of planning.
struct View<'a> {
    md: &'a ModelDeployment,
    namespace: &'a str,
    name: &'a str,
    observed: &'a Observed,
    /// The status to build on (ours while the cache lags behind it).
    recorded: &'a ModelDeploymentStatus,
    /// The revision the spec asks for.
    current: &'a str,
    /// Total replicas from the replica source.
    desired: i32,
    now: Timestamp,
}

/// With rollout steps and a stable revision to protect, the rollout engine plans the revisions
/// (running an analysis first when one is due). None: the step-less plan applies.
async fn progressive(view: &View<'_>, ctx: &Context, controls: Controls) -> Option<RolloutDecision> {
    let md = view.md;
    let rollout = md.spec.rollout.as_ref().filter(|r| !r.steps.is_empty())?;
    let stable = view
        .recorded
        .stable
        .as_ref()
        .filter(|s| s.revision != view.current)
        .and_then(|s| view.observed.revision(&s.revision))?;
    let mut input = EngineInput {
        now: view.now,
        rollout,
        current: view.current,
        version: &md.spec.model.version,
        stable,
        desired: view.desired,
        observed: &view.observed.revisions,
        recorded: view.recorded,
        analysis: None,
        promote: controls.promote,
        abort: controls.abort,
        gateway: md.spec.traffic.as_ref().is_some_and(|t| t.gateway.is_some()),
    };
    let outcomes = match (rollout.analysis.as_ref(), engine::analysis_due(&input)) {
        (Some(spec), Some(step)) => {
            let env = AnalysisEnv {
                telemetry: &ctx.telemetry,
                prometheus_url: ctx.config.prometheus_url.as_deref(),
                placeholders: Placeholders {
                    namespace: view.namespace,
                    deployment: view.name,
                    revision: view.current,
                    stable_revision: &stable.revision,
                },
                shadow_step: engine::is_shadow_step(rollout, step),
            };
            Some(run::run(&spec.checks, &env).await)
        }
        _ => None,
    };
    input.analysis = outcomes.as_deref();
    Some(engine::decide(&input))
}

/// After a promotion the previous stable revision drains for `scaleDownDelay`; returns the
/// seconds left when it still runs.
fn drain_after_promotion(view: &View<'_>, plan: &mut RevisionPlan) -> Option<i64> {
    let last = view
        .recorded
        .last_rollout
        .as_ref()
        .filter(|r| r.result == RolloutResult::Promoted && r.revision == plan.stable)?;
    let previous = view.observed.revision(last.previous_stable.as_deref()?)?;
    let delay = view.md.spec.rollout.as_ref().map_or(0, |r| {
        std::time::Duration::from(r.scale_down_delay).as_secs() as i64
    });
    let left = last.finished_at.0.as_second() + delay - view.now.as_second();
    let stable_ready = view
        .observed
        .revision(&plan.stable)
        .is_some_and(|r| r.ready_replicas >= plan.desired);
    plan::drain(plan, previous, left <= 0, stable_ready);
    plan.replicas
        .contains_key(&previous.revision)
        .then_some(left.max(1))
}
