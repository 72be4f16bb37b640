//! What one reconcile read of a ModelDeployment's children, from the operator's caches.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use serde::{Deserialize, Serialize};

/// Annotation on each revision's Deployment with the model version it serves.
pub use modelfleet_contract::annotations::MODEL_VERSION as VERSION_ANNOTATION;
/// Annotation on every child: a hash of what the operator last applied, to skip identical writes.
pub use modelfleet_contract::annotations::SPEC_HASH as SPEC_HASH_ANNOTATION;

/// One revision's Deployment as observed.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
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
    #[serde(skip_serializing_if = "Option::is_none")]
    pub template: Option<Box<PodTemplateSpec>>,
}

/// Everything a reconcile reads of the children.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
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
