//! The revision hash: which pod template a ModelDeployment asks for.
//!
//! A revision is identified by a hash over every field that shapes the serving pods. A change to
//! any of them creates a new revision (Deployment `<name>-<revision>`) and starts a rollout; a
//! change to anything else is applied in place.
//!
//! | In the hash | Not in the hash |
//! |---|---|
//! | `spec.model` (name, version, uri, task) | `spec.replicas` |
//! | `spec.runtime` (image, backend, device, env, args, resources) | `spec.scaling` |
//! | `spec.resources` (gpus, gpuProduct, minGpuMemoryMiB, cpu, memory) | `spec.rollout` |
//! | `spec.batching` (sizes, delay, queue, tiers) | `spec.traffic` |
//! | the effective image (the operator's default when `spec.runtime.image` is empty) | metadata, labels, annotations, status |
//!
//! The hash is SHA-256 over a canonical JSON encoding of those fields after defaults are applied
//! (so writing a default explicitly, or `90s` instead of `1m30s`, changes nothing), prefixed with a
//! format version. It is the same on every platform and run. Adding a field to one of these
//! structs changes existing hashes only if the field serializes when unset, so new fields must be
//! `Option`s or skipped at their default.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{
    ModelDeploymentSpec,
    v1alpha1::{BatchingSpec, ModelSpec, ResourcesSpec, RuntimeSpec},
};

/// Bumped only when the encoding itself changes (which rolls every ModelDeployment once).
const HASH_FORMAT: &str = "modelfleet.dev/revision/v1";

/// Length of a revision hash in hex characters.
pub const REVISION_HASH_LEN: usize = 10;

#[derive(Serialize)]
struct PodTemplateInputs<'a> {
    format: &'static str,
    image: &'a str,
    model: &'a ModelSpec,
    runtime: &'a RuntimeSpec,
    resources: &'a ResourcesSpec,
    batching: &'a BatchingSpec,
}

/// The revision of `spec` when the operator's default server image is `default_image`:
/// [`REVISION_HASH_LEN`] lowercase hex characters, usable in object names and label values.
pub fn revision_hash(spec: &ModelDeploymentSpec, default_image: &str) -> String {
    let inputs = PodTemplateInputs {
        format: HASH_FORMAT,
        image: spec.runtime.image.as_deref().unwrap_or(default_image),
        model: &spec.model,
        runtime: &spec.runtime,
        resources: &spec.resources,
        batching: &spec.batching,
    };
    // Serializing plain structs (fixed field order, BTreeMaps for maps) cannot fail.
    let canonical = serde_json::to_vec(&inputs).expect("revision inputs serialize to JSON; this is a bug");
    let digest = Sha256::digest(&canonical);
    let mut hex = hex::encode(digest);
    hex.truncate(REVISION_HASH_LEN);
    hex
}
