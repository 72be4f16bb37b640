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

    // The writes, the retirement of dead revisions and the status write go out together: status
    // describes what the caches show (the writes come back as watch events and trigger the next
    // reconcile, which reports them), so it need not wait for them. One round trip to the API
    // server instead of four keeps reconciles short while it is busy.
    let writes = async {
        apply::apply(&client, &namespace, &desired, &observed).await?;
        apply::retire(&client, &namespace, &name, &plan.retire).await
    };
    let report = status::compute(md, &plan, &observed, decided.as_ref());
    let status_write = async {
        if md.status.as_ref() != Some(&report.status) {
            status::patch(&client, md, &report.status).await?;
        }
        Ok(())
    };
    tokio::try_join!(writes, status_write)?;

    // Events are best effort and published in the background, as client-go's recorder does.
    let why = decided.as_ref().and_then(|o| o.last_reason()).map(str::to_owned);
    for event in plan::events(&observed.revisions, &plan) {
        let (recorder, md, why) = (ctx.recorder.clone(), md.clone(), why.clone());
        tokio::spawn(async move { status::publish(&recorder, &md, event, why.as_deref()).await });
    }
    Ok(if report.settled {
        Action::requeue(ctx.config.resync)
    } else {
        Action::requeue(std::time::Duration::from_secs(5))
    })
}
