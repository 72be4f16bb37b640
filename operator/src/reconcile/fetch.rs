//! Reading the children a ModelDeployment owns.

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, Client, ResourceExt, api::ListParams};
use modelfleet_crds::constants::labels;

use crate::{Error, Result};

/// Annotation on each revision's Deployment with the model version it serves.
pub const VERSION_ANNOTATION: &str = "modelfleet.dev/model-version";

/// One revision's Deployment as observed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObservedRevision {
    /// Revision hash.
    pub revision: String,
    /// Model version it serves.
    pub version: String,
    /// Desired replicas (its spec).
    pub replicas: i32,
    /// Ready replicas.
    pub ready_replicas: i32,
    /// GPUs each of its pods asks for.
    pub gpus_per_pod: i64,
}

/// Everything a reconcile reads.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Deployments of every revision, ordered by revision.
    pub revisions: Vec<ObservedRevision>,
    /// Serving pods of every revision.
    pub pods: Vec<Pod>,
}

impl Observed {
    /// The observed revision with this hash.
    pub fn revision(&self, revision: &str) -> Option<&ObservedRevision> {
        self.revisions.iter().find(|r| r.revision == revision)
    }
}

/// Lists the Deployments and pods labelled with this ModelDeployment.
pub async fn observe(client: &Client, namespace: &str, name: &str) -> Result<Observed> {
    let selector = ListParams::default().labels(&format!("{}={name}", labels::DEPLOYMENT));
    let deployments = Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await
        .map_err(|source| Error::Fetch {
            what: "Deployments",
            source,
        })?;
    let pods = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&selector)
        .await
        .map_err(|source| Error::Fetch { what: "Pods", source })?;
    let mut revisions: Vec<ObservedRevision> =
        deployments.items.iter().filter_map(observe_revision).collect();
    revisions.sort_by(|a, b| a.revision.cmp(&b.revision));
    Ok(Observed {
        revisions,
        pods: pods.items,
    })
}

fn observe_revision(d: &Deployment) -> Option<ObservedRevision> {
    if d.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let revision = d.labels().get(labels::REVISION)?.clone();
    let gpus_per_pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.first())
        .and_then(|c| c.resources.as_ref())
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(crate::reconcile::build::GPU_RESOURCE))
        .and_then(|q| q.0.parse().ok())
        .unwrap_or(0);
    Some(ObservedRevision {
        revision,
        version: d
            .annotations()
            .get(VERSION_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        ready_replicas: d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        gpus_per_pod,
    })
}
