//! `spec.model`, `spec.runtime` and `spec.resources`: what is served, by which server, on what hardware.

use k8s_openapi::{
    api::core::v1::{EnvVar, ResourceRequirements},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules;

/// The model to serve.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::MODEL_ALIAS_NOT_NAME)]
pub struct ModelSpec {
    /// Served model name: the `model` field clients send in OpenAI requests and the OIP v2 model name.
    #[x_kube(validation = rules::MODEL_NAME)]
    #[schemars(length(max = 128))]
    pub name: String,
    /// Model version. Changing it (or anything else in the pod template) starts a rollout of a new
    /// revision; `status.stable.version` and `status.candidate.version` report it.
    #[x_kube(validation = rules::MODEL_VERSION)]
    #[schemars(length(max = 63))]
    pub version: String,
    /// Where the weights come from: `hf://org/name`, `file:///path/in/pod`, `pvc://claim/path`
    /// (mounted read-only) or `s3://bucket/key`.
    #[x_kube(validation = rules::MODEL_URI)]
    #[schemars(length(max = 2048))]
    pub uri: String,
    /// What the model does; selects the server's API surface.
    #[serde(default)]
    pub task: ModelTask,
    /// Other names clients may send as `model` to reach this ModelDeployment through the router.
    /// Unique within the namespace across names and aliases: where two ModelDeployments claim one
    /// name, the older one keeps it and the newer reports `Degraded` with reason `ModelNameConflict`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = rules::MODEL_ALIASES)]
    #[schemars(length(max = 8), inner(length(min = 1, max = 128)))]
    pub aliases: Vec<String>,
    /// Size of the weights (a quantity such as `98Mi` or `140Gi`): sizes the start-up probe, so a
    /// large model gets the time it needs to download and load (docs/operator.md). Empty: up
    /// to 15 minutes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<Quantity>,
}

impl ModelSpec {
    /// The served name, then the aliases: every `model` value that selects this ModelDeployment.
    pub fn served_names(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.aliases.iter().map(String::as_str))
    }
}

/// The kind of model.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[cfg_attr(feature = "value-enum", derive(clap::ValueEnum))]
#[serde(rename_all = "camelCase")]
pub enum ModelTask {
    /// Sentence embeddings (`/v1/embeddings`).
    #[default]
    Embedding,
    /// Text generation.
    Generation,
    /// Sequence classification.
    Classification,
}

/// The serving container. Everything here shapes the pod template.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeSpec {
    /// Server image. Empty: the modelfleet-server image of the operator's release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Inference backend inside modelfleet-server.
    #[serde(default)]
    pub backend: Backend,
    /// `backend: upstream`: the engine modelfleet-server fronts, a second container in the same
    /// pod (vLLM, llama.cpp's server, TGI) that it reaches on localhost. It gets the GPUs and
    /// the model volume; modelfleet-server keeps admission, tiers, deadlines, mirroring and
    /// metrics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream: Option<UpstreamSpec>,
    /// Compute device the backend runs on.
    #[serde(default)]
    pub device: Device,
    /// Extra environment variables for the server container (escape hatch, passed through as is).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
    /// Extra command-line arguments appended after the ones the operator derives (escape hatch).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,
    /// Container resources merged over the ones derived from `spec.resources` (escape hatch):
    /// a key set here wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The engine container of `backend: upstream`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamSpec {
    /// Engine image (for example `ghcr.io/ggml-org/llama.cpp:server` or `vllm/vllm-openai`).
    #[x_kube(validation = rules::UPSTREAM_IMAGE)]
    #[schemars(length(max = 512))]
    pub image: String,
    /// The engine's command-line arguments. It must serve the OpenAI API and `/health` on
    /// 127.0.0.1 at `port`; a `pvc://` model is mounted read-only at `/var/lib/modelfleet/models`
    /// (an emptyDir cache there otherwise).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub args: Vec<String>,
    /// The engine's HTTP port inside the pod.
    #[serde(default = "default_upstream_port")]
    #[x_kube(validation = rules::UPSTREAM_PORT)]
    pub port: i32,
    /// Environment variables of the engine container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub env: Vec<EnvVar>,
}

fn default_upstream_port() -> i32 {
    8000
}

/// Inference backend.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[cfg_attr(feature = "value-enum", derive(clap::ValueEnum))]
#[serde(rename_all = "camelCase")]
pub enum Backend {
    /// Real models with candle (safetensors + tokenizer.json).
    #[default]
    Candle,
    /// A simulation: deterministic pseudo-outputs and a GPU latency model, for load tests.
    Synthetic,
    /// Generation only: forward requests to the engine of `spec.runtime.upstream` in the same pod.
    Upstream,
}

/// Compute device.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[cfg_attr(feature = "value-enum", derive(clap::ValueEnum))]
#[serde(rename_all = "camelCase")]
pub enum Device {
    /// NVIDIA GPU through CUDA; needs `spec.resources.gpus >= 1`.
    #[default]
    Cuda,
    /// CPU only.
    Cpu,
}

/// Hardware per replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// GPUs per replica: the `nvidia.com/gpu` request and limit. 0 for CPU serving.
    #[serde(default = "default_gpus")]
    #[x_kube(validation = rules::GPUS)]
    pub gpus: i32,
    /// Required GPU product (the `nvidia.com/gpu.product` node label, e.g. `NVIDIA-H100-80GB-HBM3`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_product: Option<String>,
    /// Minimum memory per GPU in MiB (matched against the `nvidia.com/gpu.memory` node label).
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "minGpuMemoryMiB")]
    #[x_kube(validation = rules::MIN_GPU_MEMORY)]
    pub min_gpu_memory_mib: Option<i64>,
    /// CPU request per replica (a Kubernetes quantity such as `4` or `500m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request and limit per replica (a Kubernetes quantity such as `16Gi`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
}

fn default_gpus() -> i32 {
    1
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            gpus: default_gpus(),
            gpu_product: None,
            min_gpu_memory_mib: None,
            cpu: None,
            memory: None,
        }
    }
}
