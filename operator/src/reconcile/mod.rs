//! The reconcile pipeline: `fetch → validate → plan/build (pure) → apply → status`.

pub mod apply;
pub mod build;
pub mod conditions;
pub mod diagnose;
pub mod fetch;
pub mod plan;
pub mod status;

use std::{sync::Arc, time::Instant};

use kube::{ResourceExt, runtime::controller::Action};
use modelfleet_crds::{ModelDeployment, revision::revision_hash, validate};

use crate::{Error, Result, controller::Context};

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
    let client = ctx.client.clone();

    if let Err(invalid) = validate(&md.spec) {
        // An invalid spec waits for a change: no retries, one Event, Degraded/InvalidSpec.
        status::report_invalid(&client, &ctx.recorder, md, &invalid).await?;
        return Ok(Action::await_change());
    }

    ctx.stores.ready().await?;
    let observed = fetch::observe(&ctx.stores, &namespace, &name);
    let current = revision_hash(&md.spec, &ctx.config.default_image);
    let recorded_stable = md
        .status
        .as_ref()
        .and_then(|s| s.stable.as_ref())
        .map(|s| s.revision.as_str());
    let decided = ctx.decisions.get(&namespace, &name);
    let desired_total = plan::desired_replicas(md, decided.as_ref().map(|o| o.replicas));
    let plan = plan::plan(desired_total, &current, recorded_stable, &observed.revisions);
    let desired = build::build(md, &plan, &ctx.config.default_image);

    apply::apply(&client, &namespace, &desired, &observed).await?;
    apply::retire(&client, &namespace, &name, &plan.retire).await?;
    let events = plan::events(&observed.revisions, &plan);
    for event in events {
        let why = decided.as_ref().and_then(|o| o.last_reason());
        status::publish(&ctx.recorder, md, event, why).await;
    }

    // Status describes what the caches show; the writes above come back as watch events and
    // trigger the next reconcile, which reports them.
    let report = status::compute(md, &plan, &observed, decided.as_ref());
    if md.status.as_ref() != Some(&report.status) {
        status::patch(&client, md, &report.status).await?;
    }
    Ok(if report.settled {
        Action::requeue(ctx.config.resync)
    } else {
        Action::requeue(std::time::Duration::from_secs(5))
    })
}
