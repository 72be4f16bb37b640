//! `modelfleet.dev/v1alpha1`: the ModelDeployment resource.

mod batching;
mod generation;
mod model;
mod rollout;
mod routing;
mod scaling;
mod status;
mod traffic;

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub use self::{
    batching::*, generation::*, model::*, rollout::*, routing::*, scaling::*, status::*, traffic::*,
};
use crate::rules;

/// A model served by a fleet of modelfleet-server pods, with autoscaling and progressive rollouts.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[kube(
    group = "modelfleet.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    plural = "modeldeployments",
    singular = "modeldeployment",
    shortname = "mdep",
    category = "modelfleet",
    namespaced,
    status = "ModelDeploymentStatus",
    derive = "PartialEq",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.replicas","labelSelectorPath":".status.selector"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.ready","description":"Ready replicas / replicas"}"#,
    printcolumn = r#"{"name":"Stable","type":"string","jsonPath":".status.stable.version","description":"Model version of the stable revision"}"#,
    printcolumn = r#"{"name":"Canary","type":"string","jsonPath":".status.canary","description":"Model version being rolled out"}"#,
    printcolumn = r#"{"name":"Weight","type":"integer","jsonPath":".status.canaryWeight","description":"Percent of traffic on the candidate"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"Pending, Progressing, Available, Degraded or Failed"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp","description":"Time since creation"}"#
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = rules::CUDA_NEEDS_GPU,
    validation = rules::GENERATION_NEEDS_TASK,
    validation = rules::GENERATION_TARGETS_NEED_TASK,
    validation = rules::UPSTREAM_NEEDS_ENGINE,
    validation = rules::ENGINE_NEEDS_UPSTREAM,
    validation = rules::UPSTREAM_NEEDS_GENERATION
)]
pub struct ModelDeploymentSpec {
    /// The model to serve.
    pub model: ModelSpec,
    /// The serving container. Empty: the modelfleet-server image of this release, candle backend, CUDA.
    #[serde(default)]
    pub runtime: RuntimeSpec,
    /// Hardware per replica.
    #[serde(default)]
    pub resources: ResourcesSpec,
    /// Replicas when `spec.scaling` is absent (set by hand, `kubectl scale` or an external HPA
    /// through the scale subresource). Ignored when `spec.scaling` is present.
    #[serde(default = "default_replicas")]
    #[x_kube(validation = rules::REPLICAS)]
    pub replicas: i32,
    /// Dynamic batching and admission in each server.
    #[serde(default)]
    pub batching: BatchingSpec,
    /// Text generation (`spec.model.task: generation`): context length, running batch, KV
    /// budget, default `max_tokens`. Empty: the server's defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<GenerationSpec>,
    /// Built-in autoscaling. Empty: `spec.replicas` decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scaling: Option<ScalingSpec>,
    /// How a new revision replaces the stable one. Empty: replace it once the new replicas are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutSpec>,
    /// Traffic management. Empty: canary traffic is split by replica share.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<TrafficSpec>,
    /// What the modelfleet router does with this model's requests: response cache, fallback
    /// (docs/router.md). Empty: cache on, no fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingSpec>,
}

fn default_replicas() -> i32 {
    1
}
