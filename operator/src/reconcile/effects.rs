//! What one reconcile does to the cluster, in a fixed order, each step a small function with its
//! own error:
//!
//! 1. the child writes (every changed child and the HTTPRoute), joined so that each one finishes
//!    even when another fails, then the retirement of dead revisions once they all succeeded;
//! 2. the status write, even when a child write failed: status reports what the caches show;
//! 3. the removal of the promote/abort annotations, only once the status recording what they
//!    caused has landed (otherwise the user's promote or abort would be lost);
//! 4. Events, in the background and best effort.
//!
//! The first error is returned once every step that may run has run.

use kube::{
    Api, ResourceExt,
    api::{Patch, PatchParams},
};
use modelfleet_crds::{ModelDeployment, ModelDeploymentStatus, constants::annotations};

use modelfleet_operator_core::{
    Controls,
    build::{DesiredObjects, pool, route},
    events::EventNote,
    observed::Observed,
};

use crate::{
    Error, Result,
    context::Context,
    reconcile::{
        apply::{self, Applied},
        status,
    },
};

/// Everything the effects of one reconcile write.
#[derive(Debug)]
pub struct Effects<'a> {
    /// The ModelDeployment (with the status the decision built on).
    pub md: &'a ModelDeployment,
    /// The children as the caches showed them.
    pub observed: &'a Observed,
    /// The children to write.
    pub desired: &'a DesiredObjects,
    /// Revisions whose Deployments go.
    pub retire: &'a [String],
    /// The new status.
    pub status: &'a ModelDeploymentStatus,
    /// The control annotations this reconcile acted on.
    pub controls: Controls,
    /// Events to publish.
    pub events: Vec<EventNote>,
}

/// Writes the effects in order; see the module documentation.
pub async fn write(ctx: &Context, effects: Effects<'_>) -> Result<Applied> {
    let md = effects.md;
    let children = write_children(ctx, &effects).await;
    let status = write_status(ctx, md, effects.status).await;
    let controls = match &status {
        Ok(()) => consume_controls(ctx, md, effects.controls).await,
        Err(_) => Ok(()),
    };
    for event in effects.events {
        let (recorder, md) = (ctx.recorder.clone(), md.clone());
        tokio::spawn(async move { status::publish(&recorder, &md, &event).await });
    }
    let applied = children?;
    status?;
    controls?;
    Ok(applied)
}

/// Step 1: every child write, each finishing; then the retirement of dead revisions.
async fn write_children(ctx: &Context, effects: &Effects<'_>) -> Result<Applied> {
    let md = effects.md;
    let namespace = md.namespace().unwrap_or_default();
    let target = apply::Target {
        client: &ctx.client,
        namespace: &namespace,
        md,
        observed: effects.observed,
        written: &ctx.written,
    };
    let route = effects.desired.route.as_ref().map(|r| apply::DynamicChild {
        object: r,
        name: r.metadata.name.clone().unwrap_or_default(),
        resource: route::api_resource(),
        kind: "HTTPRoute",
        hint: "is the Gateway API installed?",
    });
    let pool = effects.desired.pool.as_ref().map(|p| apply::DynamicChild {
        object: p,
        name: p.metadata.name.clone().unwrap_or_default(),
        resource: pool::api_resource(),
        kind: "InferencePool",
        hint: "is the Gateway API Inference Extension installed?",
    });
    let (applied, route, pool) = futures::join!(
        apply::apply(target, effects.desired),
        dynamic_child(ctx, md, route, "HTTPRouteFailed"),
        dynamic_child(ctx, md, pool, "InferencePoolFailed"),
    );
    let applied = applied?;
    route?;
    pool?;
    // A revision is retired only once what replaces it is written.
    apply::retire(&ctx.client, &namespace, &md.name_any(), effects.retire).await?;
    Ok(applied)
}

/// Applies an optional-API child, if there is one; a failure is also a Warning Event with
/// `reason`, visible in `kubectl describe mdep` (repeats aggregate), not only in the logs.
async fn dynamic_child<T: serde::Serialize + std::fmt::Debug>(
    ctx: &Context,
    md: &ModelDeployment,
    child: Option<apply::DynamicChild<'_, T>>,
    reason: &'static str,
) -> Result<()> {
    let Some(child) = child else {
        return Ok(());
    };
    let result = apply::apply_dynamic(&ctx.client, md, child, &ctx.written).await;
    if let Err(e) = &result {
        let event = EventNote {
            warning: true,
            reason,
            action: "Apply",
            note: e.to_string(),
        };
        status::publish(&ctx.recorder, md, &event).await;
    }
    result
}

/// Step 2: the status, unless it is what the object already shows.
async fn write_status(ctx: &Context, md: &ModelDeployment, new: &ModelDeploymentStatus) -> Result<()> {
    if md.status.as_ref() == Some(new) {
        return Ok(());
    }
    status::patch(&ctx.client, md, new).await?;
    ctx.written.remember_status(md, new);
    Ok(())
}

/// Step 3: removes the control annotations acted on, so they fire once.
async fn consume_controls(ctx: &Context, md: &ModelDeployment, controls: Controls) -> Result<()> {
    if !controls.any() {
        return Ok(());
    }
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &md.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {"annotations": {
        annotations::PROMOTE: serde_json::Value::Null,
        annotations::ABORT: serde_json::Value::Null,
    }}});
    api.patch(&md.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(Error::Annotations)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{
        Error,
        fake_api::{self, FailRule, Seen},
        reconcile::reconcile,
    };

    fn model_deployment(annotation: Option<&str>) -> modelfleet_crds::ModelDeployment {
        let yaml = "model: {name: m, version: '1', uri: 'hf://o/m'}\nresources: {gpus: 1}";
        let mut md = modelfleet_crds::ModelDeployment::new("m", serde_yaml::from_str(yaml).expect("fixture"));
        md.metadata.namespace = Some("ns".into());
        md.metadata.uid = Some("uid-1".into());
        md.metadata.generation = Some(1);
        if let Some(key) = annotation {
            md.metadata.annotations = Some([(key.to_string(), "true".to_string())].into());
        }
        md
    }

    async fn reconcile_with(annotation: Option<&str>, fail: FailRule) -> (crate::Result<()>, Vec<Seen>) {
        let md = model_deployment(annotation);
        let (client, log) = fake_api::client(&md, fail);
        let result = reconcile(Arc::new(md), fake_api::context(client))
            .await
            .map(|_| ());
        let seen = log.lock().expect("log").clone();
        (result, seen)
    }

    #[tokio::test]
    async fn the_promote_annotation_stays_when_the_status_write_fails() {
        let promote = Some(modelfleet_crds::constants::annotations::PROMOTE);
        let (result, seen) =
            reconcile_with(promote, Arc::new(|s: &Seen| s.is_status_write().then_some(500))).await;
        assert!(matches!(result, Err(Error::Status(_))), "{result:?}");
        assert!(
            seen.iter().any(Seen::is_status_write),
            "the status write was tried"
        );
        assert!(
            !seen.iter().any(Seen::is_annotation_patch),
            "the promote annotation was removed although the status recording it failed: {seen:#?}"
        );
    }

    #[tokio::test]
    async fn the_control_annotations_are_consumed_after_the_status_landed() {
        let abort = Some(modelfleet_crds::constants::annotations::ABORT);
        let (result, seen) = reconcile_with(abort, Arc::new(|_: &Seen| None)).await;
        result.expect("reconcile");
        let status = seen
            .iter()
            .position(Seen::is_status_write)
            .expect("status written");
        let consumed = seen
            .iter()
            .position(Seen::is_annotation_patch)
            .expect("annotations consumed");
        assert!(status < consumed, "{seen:#?}");
    }

    #[tokio::test]
    async fn a_failed_child_write_stops_neither_the_other_writes_nor_the_status() {
        let deployments_fail =
            |s: &Seen| (s.method == "PATCH" && s.path.contains("/deployments/")).then_some(500);
        let (result, seen) = reconcile_with(None, Arc::new(deployments_fail)).await;
        assert!(
            matches!(&result, Err(Error::Apply { kind, .. }) if kind == "Deployment"),
            "{result:?}"
        );
        for child in ["/configmaps/", "/services/", "/poddisruptionbudgets/"] {
            assert!(
                seen.iter().any(|s| s.path.contains(child)),
                "{child} not written: {seen:#?}"
            );
        }
        assert!(
            seen.iter().any(Seen::is_status_write),
            "status not written: {seen:#?}"
        );
    }

    #[tokio::test]
    async fn children_written_with_the_legacy_hash_are_not_rewritten_after_an_upgrade() {
        use modelfleet_operator_core::{build, observed::Observed, plan};

        use crate::reconcile::apply::legacy_spec_hash;
        use kube::{Resource, ResourceExt};

        let md = model_deployment(None);
        let revision =
            modelfleet_crds::revision::revision_hash(&md.spec, crate::config::DEFAULT_SERVER_IMAGE);
        let plan = plan::plan(1, &revision, None, &[]);
        let desired = build::build(
            &md,
            &plan,
            &Observed::default(),
            crate::config::DEFAULT_SERVER_IMAGE,
        );
        // What an operator of 0.1 wrote on each child: the same objects, the DefaultHasher value.
        fn legacy<K: Resource<DynamicType = ()> + serde::Serialize>(obj: &K) -> (String, String) {
            let key = format!("{}/{}", K::kind(&()), obj.name_any());
            (key, legacy_spec_hash(&serde_json::to_vec(obj).expect("json")))
        }
        let mut applied: Vec<_> = desired.services.iter().map(legacy).collect();
        applied.extend(desired.deployments.iter().map(legacy));
        applied.push(legacy(&desired.routing));
        applied.push(legacy(&desired.pdb));
        let observed = Observed {
            applied: applied.into_iter().collect(),
            ..Default::default()
        };
        let (client, log) = fake_api::client(&md, Arc::new(|_: &Seen| None));
        let ctx = fake_api::context(client);
        let effects = super::Effects {
            md: &md,
            observed: &observed,
            desired: &desired,
            retire: &[],
            status: &Default::default(),
            controls: Default::default(),
            events: Vec::new(),
        };
        let applied = super::write(&ctx, effects).await.expect("effects");
        let seen = log.lock().expect("log").clone();
        let rewritten: Vec<_> = seen
            .iter()
            .filter(|s| s.content_type.starts_with("application/apply-patch") && !s.is_status_write())
            .collect();
        assert!(
            rewritten.is_empty(),
            "children rewritten after the hash change: {rewritten:#?}"
        );
        assert_eq!(applied.written, 0);
    }
}
