//! Server-side apply of the desired objects, and deletion of retired revisions by label.

use std::{
    future::Future,
    hash::{Hash, Hasher},
    pin::Pin,
};

use futures::future::try_join_all;

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams},
};
use modelfleet_crds::{
    ModelDeployment,
    constants::{FIELD_MANAGER, labels},
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    Error, Result,
    reconcile::{
        build::{
            DesiredObjects,
            route::{self, HttpRoute},
        },
        fetch::{Observed, SPEC_HASH_ANNOTATION},
        memory::Written,
    },
};

/// Parameters of every server-side apply the operator sends. Field validation is off: the
/// objects are built from typed structs, so they cannot carry unknown or duplicate fields, and
/// the API server's default (`Warn`) parses each apply body a second time to look for them.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force().validation_ignore()
}

/// A stable hash of the object as the operator would write it.
fn spec_hash<K: Serialize>(obj: &K) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    serde_json::to_vec(obj).unwrap_or_default().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Applies `obj` unless the cached child already carries the same spec hash (and, for
/// Deployments, the same replica count, which others may change: an HPA on a child, a person).
async fn apply_one<K>(
    client: &Client,
    namespace: &str,
    obj: &K,
    observed: &Observed,
    replicas_drift: bool,
) -> Result<bool>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = obj.name_any();
    let hash = spec_hash(obj);
    let key = format!("{}/{name}", K::kind(&()));
    if !replicas_drift && observed.applied.get(&key) == Some(&hash) {
        return Ok(false);
    }
    let mut obj = obj.clone();
    obj.annotations_mut()
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash);
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    api.patch(
        &name,
        &apply_params(),
        &Patch::Apply(&obj),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: K::kind(&()).into_owned(),
        name,
        source,
    })?;
    Ok(true)
}

/// Applies every changed desired object, all at once. Returns how many were written. A pod
/// created before its routing ConfigMap exists waits for the kubelet to retry the mount, which
/// never happens in practice: the ConfigMap lands within the same round trip.
pub async fn apply(
    client: &Client,
    namespace: &str,
    desired: &DesiredObjects,
    observed: &Observed,
) -> Result<usize> {
    let mut writes: Vec<Pin<Box<dyn Future<Output = Result<bool>> + Send + '_>>> = vec![
        Box::pin(apply_one(client, namespace, &desired.routing, observed, false)),
        Box::pin(apply_one(client, namespace, &desired.pdb, observed, false)),
    ];
    for service in &desired.services {
        writes.push(Box::pin(apply_one(client, namespace, service, observed, false)));
    }
    for deployment in &desired.deployments {
        let revision = deployment
            .labels()
            .get(labels::REVISION)
            .cloned()
            .unwrap_or_default();
        let want = deployment.spec.as_ref().and_then(|s| s.replicas);
        let drift = observed
            .revision(&revision)
            .is_some_and(|r| Some(r.replicas) != want);
        writes.push(Box::pin(apply_one(
            client, namespace, deployment, observed, drift,
        )));
    }
    Ok(try_join_all(writes).await?.into_iter().filter(|w| *w).count())
}

/// Deletes the Deployments of retired revisions, selected by label.
pub async fn retire(client: &Client, namespace: &str, md_name: &str, revisions: &[String]) -> Result<()> {
    let api: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), namespace);
    for revision in revisions {
        let selector = format!("{}={md_name},{}={revision}", labels::DEPLOYMENT, labels::REVISION);
        api.delete_collection(
            &DeleteParams::background(),
            &ListParams::default().labels(&selector),
        )
        .await
        .map_err(|source| Error::Delete {
            revision: revision.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Applies the HTTPRoute unless this process last wrote the same one.
pub async fn apply_route(
    client: &Client,
    md: &ModelDeployment,
    route: &HttpRoute,
    written: &Written,
) -> Result<()> {
    let hash = spec_hash(route);
    if written.route_is(md, &hash) {
        return Ok(());
    }
    let namespace = md.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &route::api_resource());
    let name = route.metadata.name.clone().unwrap_or_default();
    let result = api
        .patch(
            &name,
            &apply_params(),
            &Patch::Apply(route),
        )
        .await;
    match result {
        Ok(_) => {
            written.remember_route(md, Some(hash));
            Ok(())
        }
        Err(source) => {
            written.remember_route(md, None);
            Err(Error::Apply {
                kind: "HTTPRoute (is the Gateway API installed?)".into(),
                name,
                source,
            })
        }
    }
}
