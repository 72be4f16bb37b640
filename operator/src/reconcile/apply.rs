//! Server-side apply of the desired objects, and deletion of retired revisions by label.

use std::{
    future::Future,
    hash::{Hash, Hasher},
    pin::Pin,
    time::Instant,
};

use futures::future::join_all;

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
use sha2::{Digest, Sha256};

use modelfleet_operator_core::{
    build::DesiredObjects,
    observed::{Observed, SPEC_HASH_ANNOTATION},
};

use crate::{Error, Result, memory::Written};

/// Parameters of every server-side apply the operator sends. Field validation is off: the
/// objects are built from typed structs, so they cannot carry unknown or duplicate fields, and
/// the API server's default (`Warn`) parses each apply body a second time to look for them.
pub fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force().validation_ignore()
}

/// The hash of an object as the operator would write it, kept in [`SPEC_HASH_ANNOTATION`]:
/// SHA-256 of its JSON, in hex. A cryptographic hash of a fixed encoding never changes with the
/// toolchain, so an operator upgrade does not rewrite every child.
pub fn spec_hash<K: Serialize>(obj: &K) -> String {
    hex::encode(Sha256::digest(serde_json::to_vec(obj).unwrap_or_default()))
}

/// The hash operators up to 0.1 wrote: std's `DefaultHasher` over the same JSON, 16 hex digits.
/// Its algorithm may change with any Rust release, so it is only ever compared, never written:
/// a child that carries it for what we would write now is unchanged (upgrading the operator
/// does not rewrite it) and gets the stable hash with its next real change.
pub(crate) fn legacy_spec_hash(json: &[u8]) -> String {
    let mut hasher = std::hash::DefaultHasher::new();
    json.hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

/// Whether the hash a child carries says it already is `obj` (by either hash).
fn carries<K: Serialize>(cached: Option<&str>, hash: &str, obj: &K) -> bool {
    match cached {
        Some(cached) if cached == hash => true,
        Some(cached) if cached.len() == 16 => {
            cached == legacy_spec_hash(&serde_json::to_vec(obj).unwrap_or_default())
        }
        _ => false,
    }
}

/// What the applies of one reconcile share.
#[derive(Clone, Copy)]
pub struct Target<'a> {
    /// API client.
    pub client: &'a Client,
    /// The owner's namespace.
    pub namespace: &'a str,
    /// The owner.
    pub md: &'a ModelDeployment,
    /// The children as the caches show them.
    pub observed: &'a Observed,
    /// This process's writes the caches may not show yet.
    pub written: &'a Written,
}

impl std::fmt::Debug for Target<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("namespace", &self.namespace)
            .field("md", &self.md.name_any())
            .finish_non_exhaustive()
    }
}

/// What one apply did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Written,
    /// The cached child carries the same spec hash.
    Unchanged,
    /// Our identical write has yet to reach the cache.
    AwaitingCache,
}

/// What the applies of one reconcile did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Objects written.
    pub written: usize,
    /// Writes skipped because the cache has yet to show the same write of ours: the reconcile
    /// comes back once [`CACHE_LAG_LIMIT`](crate::memory::CACHE_LAG_LIMIT) has
    /// passed, in case the cache never shows it.
    pub awaiting_cache: usize,
}

/// Applies `obj` unless the cached child already carries the same spec hash (and, for
/// Deployments, the same replica count, which others may change: an HPA on a child, a person),
/// or our identical write has yet to reach the cache.
async fn apply_one<K>(target: Target<'_>, obj: &K, replicas_drift: bool) -> Result<Outcome>
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
    let cached = target.observed.applied.get(&key).map(String::as_str);
    if !replicas_drift && carries(cached, &hash, obj) {
        return Ok(Outcome::Unchanged);
    }
    let now = Instant::now();
    if target.written.awaits_cache(target.md, &key, cached, &hash, now) {
        return Ok(Outcome::AwaitingCache);
    }
    let mut obj = obj.clone();
    obj.annotations_mut()
        .insert(SPEC_HASH_ANNOTATION.to_string(), hash.clone());
    let api: Api<K> = Api::namespaced(target.client.clone(), target.namespace);
    api.patch(&name, &apply_params(), &Patch::Apply(&obj))
        .await
        .map_err(|source| Error::Apply {
            kind: K::kind(&()).into_owned(),
            name,
            source,
        })?;
    target.written.remember_child(target.md, &key, cached, &hash, now);
    Ok(Outcome::Written)
}

/// Applies every changed desired object, all at once, and waits for every write to finish: one
/// failed write neither cancels the others nor hides them (the first error is returned once all
/// are done). A pod created before its routing ConfigMap exists waits for the kubelet to retry
/// the mount, which never happens in practice: the ConfigMap lands within the same round trip.
pub async fn apply(target: Target<'_>, desired: &DesiredObjects) -> Result<Applied> {
    let mut writes: Vec<Pin<Box<dyn Future<Output = Result<Outcome>> + Send + '_>>> = vec![
        Box::pin(apply_one(target, &desired.routing, false)),
        Box::pin(apply_one(target, &desired.pdb, false)),
    ];
    for service in &desired.services {
        writes.push(Box::pin(apply_one(target, service, false)));
    }
    for deployment in &desired.deployments {
        let revision = deployment
            .labels()
            .get(labels::REVISION)
            .cloned()
            .unwrap_or_default();
        let want = deployment.spec.as_ref().and_then(|s| s.replicas);
        let drift = target
            .observed
            .revision(&revision)
            .is_some_and(|r| Some(r.replicas) != want);
        writes.push(Box::pin(apply_one(target, deployment, drift)));
    }
    let outcomes = join_all(writes).await.into_iter().collect::<Result<Vec<_>>>()?;
    let count = |o: Outcome| outcomes.iter().filter(|x| **x == o).count();
    Ok(Applied {
        written: count(Outcome::Written),
        awaiting_cache: count(Outcome::AwaitingCache),
    })
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

/// An object of an optional API (Gateway API, Inference Extension) the operator applies as a
/// dynamic object: no watch cache, so this process's last write is what it compares against.
#[derive(Debug)]
pub struct DynamicChild<'a, T> {
    /// The object.
    pub object: &'a T,
    /// Its name.
    pub name: String,
    /// Its API resource.
    pub resource: kube::core::ApiResource,
    /// Its kind, as memory and errors name it.
    pub kind: &'static str,
    /// What to check when the write fails, for the error.
    pub hint: &'static str,
}

/// Applies `child` unless this process last wrote the same one.
pub async fn apply_dynamic<T: Serialize + std::fmt::Debug>(
    client: &Client,
    md: &ModelDeployment,
    child: DynamicChild<'_, T>,
    written: &Written,
) -> Result<()> {
    let hash = spec_hash(child.object);
    if written.dynamic_is(md, child.kind, &hash) {
        return Ok(());
    }
    let namespace = md.namespace().unwrap_or_default();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &child.resource);
    let result = api
        .patch(&child.name, &apply_params(), &Patch::Apply(child.object))
        .await;
    match result {
        Ok(_) => {
            written.remember_dynamic(md, child.kind, Some(hash));
            Ok(())
        }
        Err(source) => {
            written.remember_dynamic(md, child.kind, None);
            Err(Error::Apply {
                kind: format!("{} ({})", child.kind, child.hint),
                name: child.name,
                source,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_hash_is_sha256_of_the_json_and_never_changes() {
        let obj = serde_json::json!({"kind": "ConfigMap", "data": {"a": "1"}});
        // A fixed value: a change here rewrites every child of every user on upgrade.
        assert_eq!(
            spec_hash(&obj),
            "c048185b46f86d7f1fabe35bd41ee3efbd9d51e9846fb6bf5b91b6581888a050"
        );
    }

    #[test]
    fn a_child_carrying_the_legacy_hash_of_the_same_object_is_unchanged() {
        let obj = serde_json::json!({"kind": "ConfigMap", "data": {"a": "1"}});
        let other = serde_json::json!({"kind": "ConfigMap", "data": {"a": "2"}});
        let hash = spec_hash(&obj);
        let legacy = legacy_spec_hash(&serde_json::to_vec(&obj).expect("json"));
        assert!(carries(Some(&hash), &hash, &obj));
        assert!(
            carries(Some(&legacy), &hash, &obj),
            "written by 0.1: not rewritten"
        );
        assert!(
            !carries(Some(&legacy), &spec_hash(&other), &other),
            "a real change is written"
        );
        assert!(!carries(None, &hash, &obj));
    }
}
