//! The watch caches of the children, and reading one ModelDeployment's children from them.

use std::{collections::BTreeMap, sync::Arc};

pub use modelfleet_operator_core::observed::{
    Observed, ObservedRevision, SPEC_HASH_ANNOTATION, VERSION_ANNOTATION,
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{Resource, ResourceExt, runtime::reflector::Store};
use modelfleet_crds::constants::labels;

use crate::{Error, Result};

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
