//! Reading the children a ModelDeployment owns.

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, PodTemplateSpec, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{Resource, ResourceExt, runtime::reflector::Store};
use modelfleet_crds::constants::labels;

use crate::{Error, Result};

/// Annotation on each revision's Deployment with the model version it serves.
pub const VERSION_ANNOTATION: &str = "modelfleet.dev/model-version";
/// Annotation on every child: a hash of what the operator last applied, to skip identical writes.
pub const SPEC_HASH_ANNOTATION: &str = "modelfleet.dev/spec-hash";

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
    /// The pod template it runs: a revision other than the current one keeps its own, never the
    /// current spec's.
    pub template: Option<Box<PodTemplateSpec>>,
}

/// Everything a reconcile reads.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// Deployments of every revision, ordered by revision.
    pub revisions: Vec<ObservedRevision>,
    /// Serving pods of every revision.
    pub pods: Vec<Pod>,
    /// `Kind/name` → the spec hash annotation of each existing child, so unchanged objects are
    /// not written again.
    pub applied: BTreeMap<String, String>,
    /// Service name → its `spec.clusterIP` (`None` when headless), for the existing Services.
    pub cluster_ips: BTreeMap<String, String>,
}

impl Observed {
    /// The observed revision with this hash.
    pub fn revision(&self, revision: &str) -> Option<&ObservedRevision> {
        self.revisions.iter().find(|r| r.revision == revision)
    }
}

/// Watch caches of every child kind, filled by the controller's watches.
#[derive(Debug, Clone)]
pub struct Stores {
    /// Revision Deployments.
    pub deployments: Store<Deployment>,
    /// Serving pods.
    pub pods: Store<Pod>,
    /// Services.
    pub services: Store<Service>,
    /// Routing ConfigMaps.
    pub config_maps: Store<ConfigMap>,
    /// PodDisruptionBudgets.
    pub pdbs: Store<PodDisruptionBudget>,
    /// Set once every cache is ready.
    pub ready: Arc<tokio::sync::OnceCell<()>>,
}

impl Stores {
    /// Waits until every cache has its initial list, so a reconcile never mistakes a cold cache
    /// for missing children.
    pub async fn ready(&self) -> Result<()> {
        // One waiter at a time: `Store::wait_until_ready` (kube-runtime 5.0) wakes only the last
        // of several concurrent waiters (a oneshot receiver shared behind a mutex), which left
        // reconciles hanging. The OnceCell queues the others and wakes them all.
        self.ready.get_or_try_init(|| self.wait_all()).await.map(|_| ())
    }

    async fn wait_all(&self) -> Result<()> {
        let dropped = |_| Error::CacheClosed;
        self.deployments.wait_until_ready().await.map_err(dropped)?;
        self.pods.wait_until_ready().await.map_err(dropped)?;
        self.services.wait_until_ready().await.map_err(dropped)?;
        self.config_maps.wait_until_ready().await.map_err(dropped)?;
        self.pdbs.wait_until_ready().await.map_err(dropped)
    }
}

fn mine<K: Resource>(obj: &K, namespace: &str, name: &str) -> bool {
    obj.meta().namespace.as_deref() == Some(namespace)
        && obj
            .meta()
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::DEPLOYMENT))
            .map(String::as_str)
            == Some(name)
}

fn record<K: Resource<DynamicType = ()>>(
    applied: &mut BTreeMap<String, String>,
    objs: &[Arc<K>],
    namespace: &str,
    name: &str,
) {
    for obj in objs.iter().filter(|o| mine(o.as_ref(), namespace, name)) {
        if let Some(hash) = obj.annotations().get(SPEC_HASH_ANNOTATION) {
            applied.insert(format!("{}/{}", K::kind(&()), obj.name_any()), hash.clone());
        }
    }
}

/// Reads the children labelled with this ModelDeployment from the watch caches.
pub fn observe(stores: &Stores, namespace: &str, name: &str) -> Observed {
    let deployments = stores.deployments.state();
    let mut revisions: Vec<ObservedRevision> = deployments
        .iter()
        .filter(|d| mine(d.as_ref(), namespace, name))
        .filter_map(|d| observe_revision(d))
        .collect();
    revisions.sort_by(|a, b| a.revision.cmp(&b.revision));
    let pods = stores
        .pods
        .state()
        .iter()
        .filter(|p| mine(p.as_ref(), namespace, name))
        .map(|p| (**p).clone())
        .collect();
    let mut applied = BTreeMap::new();
    // One pass over every cached Service; the spec hashes and cluster IPs read only ours.
    let services: Vec<_> = stores
        .services
        .state()
        .into_iter()
        .filter(|s| mine(s.as_ref(), namespace, name))
        .collect();
    let cluster_ips = services
        .iter()
        .filter_map(|s| Some((s.name_any(), s.spec.as_ref()?.cluster_ip.clone()?)))
        .collect();
    record(&mut applied, &deployments, namespace, name);
    record(&mut applied, &services, namespace, name);
    record(&mut applied, &stores.config_maps.state(), namespace, name);
    record(&mut applied, &stores.pdbs.state(), namespace, name);
    Observed {
        revisions,
        pods,
        applied,
        cluster_ips,
    }
}

fn observe_revision(d: &Deployment) -> Option<ObservedRevision> {
    if d.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let revision = d.labels().get(labels::REVISION)?.clone();
    Some(ObservedRevision {
        revision,
        version: d
            .annotations()
            .get(VERSION_ANNOTATION)
            .cloned()
            .unwrap_or_default(),
        replicas: d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0),
        ready_replicas: d.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        template: d.spec.as_ref().map(|s| Box::new(s.template.clone())),
    })
}
