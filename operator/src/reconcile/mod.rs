//! The reconcile: a straight line from the caches to the cluster.
//!
//! snapshot (the caches, this process's last status, the autoscaler's outcome, the control
//! annotations, the clock) → the analysis run when one is due (the only I/O before deciding) →
//! [`decide`] (pure) → [`build`](modelfleet_operator_core::build::build) (pure) →
//! [`effects::write`] (children, then status, then the annotations, then Events) → when to look
//! again.

pub mod apply;
pub mod effects;
pub mod status;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use kube::{ResourceExt, runtime::controller::Action};
use modelfleet_crds::{ModelDeployment, validate};
use modelfleet_operator_core::{Controls, Requeue, Snapshot, analysis_due, build, decide, names::NameClaim};

use crate::{
    Error, Result,
    analysis::{self, AnalysisEnv},
    context::Context,
    reconcile::effects::Effects,
};

/// How soon an object that has not settled is looked at again.
const SOON: Duration = Duration::from_secs(5);

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
    let key = Key::of(md)?;
    if let Err(invalid) = validate(&md.spec) {
        // An invalid spec waits for a change: no retries, one Event, Degraded/InvalidSpec.
        status::report_invalid(&ctx.client, &ctx.recorder, md, &invalid).await?;
        return Ok(Action::await_change());
    }
    ctx.children.ready().await?;
    let mut own_time = Stopwatch::start();
    // Build on our own last status while the cache has not caught up with it.
    let md = ModelDeployment {
        status: ctx.written.status_of(md),
        ..md.clone()
    };
    let observed = ctx.children.observe(&key.uid, &key.namespace, &key.name);
    let autoscaling = ctx.decisions.get(&key.uid);
    let name_claims: Vec<NameClaim> = ctx
        .model_deployments
        .state()
        .iter()
        .filter(|m| m.namespace().as_deref() == Some(key.namespace.as_str()))
        .map(|m| NameClaim::of(m))
        .collect();
    let mut snapshot = Snapshot {
        md: &md,
        observed: &observed,
        autoscaling: autoscaling.as_ref(),
        analysis: None,
        controls: Controls::of(&md),
        now: Timestamp::now(),
        default_image: &ctx.config.default_image,
        name_claims: &name_claims,
    };
    let analysis = match analysis_due(&snapshot) {
        Some(due) => Some(
            own_time
                .paused(analysis::run(&due, &analysis_env(ctx, &key)))
                .await,
        ),
        None => None,
    };
    snapshot.analysis = analysis.as_deref();
    let mut decision = decide(&snapshot);
    // What the routers report, as it stands (refreshed at most every 30 s, so traffic does not
    // turn every reconcile into a status write).
    let now = std::time::Instant::now();
    decision.status.routing = ctx.telemetry.routing(&key.namespace, &key.name, now);
    decision.status.load = modelfleet_operator_core::telemetry::load_status(
        md.spec.model.task,
        &ctx.telemetry.aggregate(&key.namespace, &key.name, None, now),
    );
    let routed = ctx.telemetry.routers_reporting(now);
    let desired = build::build(&md, &decision.plan, &observed, &ctx.config.default_image);
    ctx.metrics.decision.observe(own_time.elapsed().as_secs_f64());
    let effects = Effects {
        md: &md,
        observed: &observed,
        desired: &desired,
        retire: &decision.plan.retire,
        status: &decision.status,
        controls: snapshot.controls,
        events: decision.events,
    };
    let applied = effects::write(ctx, effects).await?;
    tracing::debug!(
        written = applied.written,
        awaiting_cache = applied.awaiting_cache,
        "children applied"
    );
    Ok(next_action(
        ctx,
        decision.requeue,
        applied.awaiting_cache > 0,
        routed,
    ))
}

/// Who a reconcile is about.
struct Key {
    namespace: String,
    name: String,
    uid: String,
}

impl Key {
    fn of(md: &ModelDeployment) -> Result<Self> {
        Ok(Self {
            namespace: md
                .namespace()
                .ok_or(Error::MissingObjectKey(".metadata.namespace"))?,
            name: md
                .metadata
                .name
                .clone()
                .ok_or(Error::MissingObjectKey(".metadata.name"))?,
            uid: md.uid().ok_or(Error::MissingObjectKey(".metadata.uid"))?,
        })
    }
}

/// The operator's own time in a reconcile: it stops while the reconcile waits on I/O.
struct Stopwatch {
    spent: Duration,
    since: Instant,
}

impl Stopwatch {
    fn start() -> Self {
        Self {
            spent: Duration::ZERO,
            since: Instant::now(),
        }
    }

    /// Awaits `io` with the watch stopped.
    async fn paused<T>(&mut self, io: impl std::future::Future<Output = T>) -> T {
        self.spent += self.since.elapsed();
        let out = io.await;
        self.since = Instant::now();
        out
    }

    fn elapsed(&self) -> Duration {
        self.spent + self.since.elapsed()
    }
}

fn analysis_env<'a>(ctx: &'a Context, key: &'a Key) -> AnalysisEnv<'a> {
    AnalysisEnv {
        telemetry: &ctx.telemetry,
        prometheus_url: ctx.config.prometheus_url.as_deref(),
        namespace: &key.namespace,
        deployment: &key.name,
    }
}

/// When to look again: as the decision says, and soon while a write of ours has yet to show in
/// the cache (past [`CACHE_LAG_LIMIT`](crate::memory::CACHE_LAG_LIMIT) it is written again).
fn next_action(ctx: &Context, requeue: Requeue, awaiting_cache: bool, routed: bool) -> Action {
    let mut after = match requeue {
        Requeue::AfterSeconds(seconds) => Duration::from_secs(seconds).min(SOON),
        Requeue::Soon => SOON,
        Requeue::Resync => ctx.config.resync,
    };
    if awaiting_cache {
        after = after.min(SOON);
    }
    // Routers report: look again when the published counts may refresh (or first appear).
    if routed {
        after = after.min(crate::telemetry::routers::STATUS_REFRESH);
    }
    Action::requeue(after)
}
