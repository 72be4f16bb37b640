//! Fake nodes managed by kwok: GPU pools that look like real ones to the scheduler (capacity
//! `nvidia.com/gpu`, GPU Feature Discovery labels, the GPU taint), and plain CPU nodes.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::{
    api::core::v1::{Node, NodeSpec, NodeStatus, NodeSystemInfo, Taint},
    apimachinery::pkg::api::resource::Quantity,
};
use kube::{Api, Client, api::PostParams};

use modelfleet_crds::constants::GPU_RESOURCE;

use crate::{Result, wait};

/// Annotation that tells kwok to manage a node (the harness starts kwok with this selector).
pub const KWOK_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// A pool of identical GPU nodes.
#[derive(Debug, Clone)]
pub struct GpuNodePool {
    /// Node names are `<prefix>-<index>`.
    pub name_prefix: String,
    /// How many nodes.
    pub count: usize,
    /// The `nvidia.com/gpu.product` label, e.g. `NVIDIA-H100-80GB-HBM3`.
    pub product: String,
    /// `nvidia.com/gpu` capacity per node.
    pub gpus_per_node: u32,
    /// The `nvidia.com/gpu.memory` label, MiB per GPU.
    pub gpu_memory_mib: u64,
}

impl Default for GpuNodePool {
    /// Four nodes of 8 × H100 80GB, as `modelfleet-e2e up` starts.
    fn default() -> Self {
        Self {
            name_prefix: "gpu-node".into(),
            count: 4,
            product: "NVIDIA-H100-80GB-HBM3".into(),
            gpus_per_node: 8,
            gpu_memory_mib: 81559,
        }
    }
}

/// Adds `count` GPU nodes with `gpus_per_node` GPUs of `product` and waits until kwok reports them Ready.
pub async fn add_gpu_nodes(
    client: &Client,
    count: usize,
    product: &str,
    gpus_per_node: u32,
    gpu_memory_mib: u64,
) -> Result<Vec<Node>> {
    let pool = GpuNodePool {
        name_prefix: format!(
            "gpu-{}",
            product
                .to_lowercase()
                .replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        ),
        count,
        product: product.to_string(),
        gpus_per_node,
        gpu_memory_mib,
    };
    add_gpu_pool(client, &pool).await
}

/// Adds a [`GpuNodePool`] and waits until every node is Ready.
pub async fn add_gpu_pool(client: &Client, pool: &GpuNodePool) -> Result<Vec<Node>> {
    let mut names = Vec::new();
    for i in 0..pool.count {
        let name = format!("{}-{i}", pool.name_prefix);
        let node = node_object(&name, pool.labels(), vec![gpu_taint()], &pool.capacity());
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await?;
        names.push(name);
    }
    wait_nodes_ready(client, &names).await
}

impl GpuNodePool {
    /// The GPU Feature Discovery labels of every node of the pool, and the pool label.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("nvidia.com/gpu.present".to_string(), "true".to_string()),
            ("nvidia.com/gpu.product".to_string(), self.product.clone()),
            (
                "nvidia.com/gpu.memory".to_string(),
                self.gpu_memory_mib.to_string(),
            ),
            ("nvidia.com/gpu.count".to_string(), self.gpus_per_node.to_string()),
            ("modelfleet.dev/e2e-pool".to_string(), self.name_prefix.clone()),
        ])
    }

    /// `nvidia.com/gpu` capacity.
    pub fn capacity(&self) -> Vec<(&'static str, String)> {
        vec![(GPU_RESOURCE, self.gpus_per_node.to_string())]
    }
}

/// The taint of every GPU node: `nvidia.com/gpu=present:NoSchedule`.
pub fn gpu_taint() -> Taint {
    Taint {
        key: GPU_RESOURCE.into(),
        value: Some("present".into()),
        effect: "NoSchedule".into(),
        ..Default::default()
    }
}

/// Adds `count` untainted CPU-only nodes named `cpu-node-<index>`.
pub async fn add_cpu_nodes(client: &Client, count: usize) -> Result<Vec<Node>> {
    let mut names = Vec::new();
    for i in 0..count {
        let name = format!("cpu-node-{i}");
        let node = node_object(&name, BTreeMap::new(), Vec::new(), &[]);
        Api::<Node>::all(client.clone())
            .create(&PostParams::default(), &node)
            .await?;
        names.push(name);
    }
    wait_nodes_ready(client, &names).await
}

/// A kwok-managed Node as a kubelet would register it: hostname, OS and arch labels, 64 CPUs,
/// 512 GiB, 110 pods, plus `extra_labels`, `taints` and `extra_capacity`.
pub fn node_object(
    name: &str,
    extra_labels: BTreeMap<String, String>,
    taints: Vec<Taint>,
    extra_capacity: &[(&str, String)],
) -> Node {
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), name.to_string()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
        ("type".to_string(), "kwok".to_string()),
    ]);
    labels.extend(extra_labels);
    let mut capacity = BTreeMap::from([
        ("cpu".to_string(), Quantity("64".into())),
        ("memory".to_string(), Quantity("512Gi".into())),
        ("pods".to_string(), Quantity("110".into())),
        ("ephemeral-storage".to_string(), Quantity("1Ti".into())),
    ]);
    for (k, v) in extra_capacity {
        capacity.insert((*k).to_string(), Quantity(v.clone()));
    }
    Node {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([
                (KWOK_ANNOTATION.to_string(), "fake".to_string()),
                ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(NodeSpec {
            taints: (!taints.is_empty()).then_some(taints),
            ..Default::default()
        }),
        // Status sent on create is kept (that is how kubelets register); kwok's node-initialize
        // stage copies capacity and allocatable as they are, so extended resources survive.
        status: Some(NodeStatus {
            allocatable: Some(capacity.clone()),
            capacity: Some(capacity),
            node_info: Some(NodeSystemInfo {
                architecture: "amd64".into(),
                kubelet_version: "fake".into(),
                kube_proxy_version: "fake".into(),
                operating_system: "linux".into(),
                ..Default::default()
            }),
            phase: Some("Running".into()),
            ..Default::default()
        }),
    }
}

/// Waits until every named node is Ready.
pub async fn wait_nodes_ready(client: &Client, names: &[String]) -> Result<Vec<Node>> {
    let api = Api::<Node>::all(client.clone());
    let mut ready = Vec::new();
    for name in names {
        ready.push(wait::wait_for(&api, name, Duration::from_secs(60), "node Ready", is_node_ready).await?);
    }
    Ok(ready)
}

/// Whether a node's Ready condition is True.
pub fn is_node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
