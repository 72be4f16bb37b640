//! Server-side apply of the desired objects, and deletion of retired revisions by label.

use k8s_openapi::NamespaceResourceScope;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams},
};
use modelfleet_crds::constants::{FIELD_MANAGER, labels};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result, reconcile::build::DesiredObjects};

async fn apply_one<K>(client: &Client, namespace: &str, obj: &K) -> Result<()>
where
    K: Resource<Scope = NamespaceResourceScope> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let name = obj.name_any();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
    .map_err(|source| Error::Apply {
        kind: kind_of::<K>(),
        name,
        source,
    })?;
    Ok(())
}

fn kind_of<K: Resource>() -> &'static str
where
    K::DynamicType: Default,
{
    match K::kind(&K::DynamicType::default()).as_ref() {
        "Deployment" => "Deployment",
        "Service" => "Service",
        "ConfigMap" => "ConfigMap",
        "PodDisruptionBudget" => "PodDisruptionBudget",
        _ => "object",
    }
}

/// Applies every desired object (ConfigMap first: the pods mount it).
pub async fn apply(client: &Client, namespace: &str, desired: &DesiredObjects) -> Result<()> {
    apply_one(client, namespace, &desired.routing).await?;
    for service in &desired.services {
        apply_one(client, namespace, service).await?;
    }
    for deployment in &desired.deployments {
        apply_one(client, namespace, deployment).await?;
    }
    apply_one(client, namespace, &desired.pdb).await
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
