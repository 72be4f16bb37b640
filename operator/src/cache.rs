//! The children of every ModelDeployment, indexed by owner and kept from the watch events, so a
//! reconcile reads its own children without scanning everyone's.
//!
//! Deployments, Services, ConfigMaps and PodDisruptionBudgets are indexed by the uid in their
//! controller owner reference: the children of a deleted ModelDeployment (still being garbage
//! collected) are never taken for those of a new one with the same name. Pods belong to
//! ReplicaSets, so they are indexed by namespace and the `modelfleet.dev/deployment` label.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, RwLock},
};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{Resource, ResourceExt, runtime::watcher};
use modelfleet_crds::constants::labels;
use modelfleet_operator_core::build::service_names;
pub use modelfleet_operator_core::observed::{
    Observed, ObservedRevision, SPEC_HASH_ANNOTATION, VERSION_ANNOTATION,
};

use crate::{Error, Result};

/// Who a child belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Owner {
    /// The ModelDeployment's uid.
    Uid(String),
    /// Namespace and ModelDeployment name (pods).
    Named(String, String),
}

/// An object's namespace and name.
type ObjectKey = (String, String);

/// One kind's objects by owner, with the relist in progress.
#[derive(Debug)]
struct KindIndex<K> {
    /// Every object by namespace and name, with its owner when it has one of ours.
    objects: HashMap<ObjectKey, (Option<Owner>, Arc<K>)>,
    by_owner: HashMap<Owner, BTreeMap<String, Arc<K>>>,
    /// Objects of a relist between `Init` and `InitDone`.
    relist: Option<Vec<K>>,
    /// The first full list arrived.
    ready: bool,
}

impl<K> Default for KindIndex<K> {
    fn default() -> Self {
        Self {
            objects: HashMap::new(),
            by_owner: HashMap::new(),
            relist: None,
            ready: false,
        }
    }
}

impl<K: Resource + Clone> KindIndex<K> {
    fn insert(&mut self, obj: K, owner_of: fn(&K) -> Option<Owner>) {
        let key = (obj.namespace().unwrap_or_default(), obj.name_any());
        self.remove(&key);
        let owner = owner_of(&obj);
        let obj = Arc::new(obj);
        if let Some(owner) = &owner {
            self.by_owner
                .entry(owner.clone())
                .or_default()
                .insert(key.1.clone(), obj.clone());
        }
        self.objects.insert(key, (owner, obj));
    }

    fn remove(&mut self, key: &ObjectKey) {
        let Some((Some(owner), _)) = self.objects.remove(key) else {
            return;
        };
        if let Some(children) = self.by_owner.get_mut(&owner) {
            children.remove(&key.1);
            if children.is_empty() {
                self.by_owner.remove(&owner);
            }
        }
    }

    /// Applies one watch event. Returns whether this kind just became ready.
    fn apply(&mut self, event: &watcher::Event<K>, owner_of: fn(&K) -> Option<Owner>) -> bool {
        match event {
            watcher::Event::Apply(obj) => self.insert(obj.clone(), owner_of),
            watcher::Event::Delete(obj) => {
                self.remove(&(obj.namespace().unwrap_or_default(), obj.name_any()))
            }
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(obj) => self.relist.get_or_insert_with(Vec::new).push(obj.clone()),
            watcher::Event::InitDone => {
                // A relist replaces everything: objects deleted while disconnected go.
                self.objects.clear();
                self.by_owner.clear();
                for obj in self.relist.take().unwrap_or_default() {
                    self.insert(obj, owner_of);
                }
                let became_ready = !self.ready;
                self.ready = true;
                return became_ready;
            }
        }
        false
    }

    fn of(&self, owner: &Owner) -> impl Iterator<Item = &Arc<K>> {
        self.by_owner.get(owner).into_iter().flat_map(|c| c.values())
    }

    fn named(&self, namespace: &str, name: &str) -> Option<&Arc<K>> {
        self.objects
            .get(&(namespace.to_string(), name.to_string()))
            .map(|(_, obj)| obj)
    }
}

/// The uid in the controller owner reference of an object the operator created.
fn owner_uid<K: Resource>(obj: &K) -> Option<Owner> {
    obj.meta()
        .owner_references
        .as_ref()?
        .iter()
        .find(|r| r.controller == Some(true) && r.kind == "ModelDeployment")
        .map(|r| Owner::Uid(r.uid.clone()))
}

fn owner_label(pod: &Pod) -> Option<Owner> {
    let name = pod.labels().get(labels::DEPLOYMENT)?;
    Some(Owner::Named(pod.namespace()?, name.clone()))
}

#[derive(Debug, Default)]
pub(crate) struct Children {
    deployments: KindIndex<Deployment>,
    services: KindIndex<Service>,
    config_maps: KindIndex<ConfigMap>,
    pdbs: KindIndex<PodDisruptionBudget>,
    pods: KindIndex<Pod>,
}

/// Kinds the index waits for before it is ready.
const KINDS: usize = 5;

/// The index of every kind of child; cheap to clone.
#[derive(Debug, Clone)]
pub struct Index {
    children: Arc<RwLock<Children>>,
    /// How many kinds have had their first full list.
    ready: Arc<tokio::sync::watch::Sender<usize>>,
}

impl Default for Index {
    fn default() -> Self {
        Self {
            children: Arc::default(),
            ready: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }
}

/// A kind of child the index holds.
pub(crate) trait Child: Resource + Clone + Send + Sync + 'static {
    /// Applies one event to this kind's index; returns whether the kind just became ready.
    fn apply(children: &mut Children, event: &watcher::Event<Self>) -> bool;
}

macro_rules! child {
    ($kind:ty, $field:ident, $owner:expr) => {
        impl Child for $kind {
            fn apply(children: &mut Children, event: &watcher::Event<Self>) -> bool {
                children.$field.apply(event, $owner)
            }
        }
    };
}
child!(Deployment, deployments, owner_uid::<Deployment>);
child!(Service, services, owner_uid::<Service>);
child!(ConfigMap, config_maps, owner_uid::<ConfigMap>);
child!(PodDisruptionBudget, pdbs, owner_uid::<PodDisruptionBudget>);
child!(Pod, pods, owner_label);

impl Index {
    /// Applies one watch event of any child kind.
    pub(crate) fn apply<K: Child>(&self, event: &watcher::Event<K>) {
        let became_ready = self.children.write().is_ok_and(|mut c| K::apply(&mut c, event));
        if became_ready {
            self.ready.send_modify(|n| *n += 1);
        }
    }

    /// Waits until every kind has had its first full list, so a reconcile never mistakes a cold
    /// cache for missing children.
    pub async fn ready(&self) -> Result<()> {
        let mut ready = self.ready.subscribe();
        ready
            .wait_for(|n| *n >= KINDS)
            .await
            .map(|_| ())
            .map_err(|_| Error::CacheClosed)
    }

    /// Marks every kind ready (tests that feed the index by hand).
    #[cfg(test)]
    pub fn mark_ready(&self) {
        self.ready.send_replace(KINDS);
    }

    /// The children of the ModelDeployment `namespace/name` with this uid.
    pub fn observe(&self, uid: &str, namespace: &str, name: &str) -> Observed {
        let Ok(c) = self.children.read() else {
            return Observed::default();
        };
        let owner = Owner::Uid(uid.to_string());
        let mut applied = BTreeMap::new();
        record(&mut applied, c.deployments.of(&owner));
        record(&mut applied, c.services.of(&owner));
        record(&mut applied, c.config_maps.of(&owner));
        record(&mut applied, c.pdbs.of(&owner));
        let mut revisions: Vec<ObservedRevision> = c
            .deployments
            .of(&owner)
            .filter_map(|d| observe_revision(d))
            .collect();
        revisions.sort_by(|a, b| a.revision.cmp(&b.revision));
        let pods_owner = Owner::Named(namespace.to_string(), name.to_string());
        Observed {
            revisions,
            pods: c.pods.of(&pods_owner).map(|p| (**p).clone()).collect(),
            applied,
            // By name, owned or not: `spec.clusterIP` is immutable, so a Service of that name
            // keeps its cluster IP (or none) whoever created it.
            cluster_ips: service_names(name)
                .iter()
                .filter_map(|n| c.services.named(namespace, n))
                .filter_map(|s| Some((s.name_any(), s.spec.as_ref()?.cluster_ip.clone()?)))
                .collect(),
        }
    }
}

fn record<'a, K: Resource<DynamicType = ()> + 'a>(
    applied: &mut BTreeMap<String, String>,
    objs: impl Iterator<Item = &'a Arc<K>>,
) {
    for obj in objs {
        if let Some(hash) = obj.annotations().get(SPEC_HASH_ANNOTATION) {
            applied.insert(format!("{}/{}", K::kind(&()), obj.name_any()), hash.clone());
        }
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

#[cfg(test)]
mod tests;
