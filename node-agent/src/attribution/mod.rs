//! Which pod holds which GPU. The kubelet's PodResources API is the truth on real nodes; without
//! its socket (kwok nodes, simulated mode) the agent assigns GPUs to the GPU-requesting pods bound
//! to the node, in a deterministic order.

mod podresources;

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use modelfleet_contract::{annotations, ports};
use modelfleet_crds::constants::{GPU_RESOURCE, labels};
pub use podresources::{PodResourcesError, list_gpu_devices};

/// A pod, namespaced, with the container that holds the GPU.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    pub container: String,
}

/// What the agent needs to know about a pod bound to its node.
#[derive(Debug, Clone, PartialEq)]
pub struct NodePod {
    pub pod: PodRef,
    /// `nvidia.com/gpu` limit summed over containers.
    pub gpus: u32,
    /// `modelfleet.dev/deployment` label (servers only).
    pub deployment: Option<String>,
    pub revision: Option<String>,
    /// Where to scrape `/metrics`: the `modelfleet.dev/scrape-address` annotation, else
    /// `podIP:9090`.
    pub scrape_address: Option<String>,
    /// Creation time, RFC 3339, for a stable order.
    pub created: String,
}

impl NodePod {
    /// Reads a Pod; None for finished pods (they hold no GPU).
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let status = pod.status.as_ref();
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        if matches!(phase, "Succeeded" | "Failed") || pod.metadata.deletion_timestamp.is_some() {
            return None;
        }
        let spec = pod.spec.as_ref()?;
        let mut gpus = 0;
        let mut container = spec
            .containers
            .first()
            .map(|c| c.name.clone())
            .unwrap_or_default();
        for c in &spec.containers {
            let n = c
                .resources
                .as_ref()
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get(GPU_RESOURCE))
                .and_then(|q| q.0.parse::<u32>().ok())
                .unwrap_or(0);
            if n > 0 && gpus == 0 {
                container = c.name.clone();
            }
            gpus += n;
        }
        let pod_labels = pod.labels();
        let annotation = pod.annotations().get(annotations::SCRAPE_ADDRESS).cloned();
        let pod_ip = status.and_then(|s| s.pod_ip.clone());
        Some(Self {
            pod: PodRef {
                namespace: pod.namespace().unwrap_or_default(),
                name: pod.name_any(),
                container,
            },
            gpus,
            deployment: pod_labels.get(labels::DEPLOYMENT).cloned(),
            revision: pod_labels.get(labels::REVISION).cloned(),
            scrape_address: annotation.or_else(|| pod_ip.map(|ip| format!("{ip}:{}", ports::METRICS))),
            created: pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default(),
        })
    }
}

/// Fallback attribution: GPU-requesting pods in creation order (then namespace and name) take
/// the node's GPUs in index order, as many as each requests. Deterministic across agents and
/// restarts, so reports do not jump between GPUs.
pub fn assign_in_order(pods: &[NodePod], gpu_uuids: &[String]) -> HashMap<String, PodRef> {
    let mut ordered: Vec<&NodePod> = pods.iter().filter(|p| p.gpus > 0).collect();
    ordered.sort_by(|a, b| (&a.created, &a.pod).cmp(&(&b.created, &b.pod)));
    let mut free = gpu_uuids.iter();
    let mut out = HashMap::new();
    for pod in ordered {
        for _ in 0..pod.gpus {
            match free.next() {
                Some(uuid) => {
                    out.insert(uuid.clone(), pod.pod.clone());
                }
                None => return out,
            }
        }
    }
    out
}

/// PodResources attribution: device ids are GPU UUIDs (`GPU-…`, with `::n` replicas under
/// time-slicing).
pub fn assign_from_devices(devices: &[(PodRef, Vec<String>)]) -> HashMap<String, PodRef> {
    let mut out = BTreeMap::new();
    for (pod, ids) in devices {
        for id in ids {
            let uuid = id.split("::").next().unwrap_or(id);
            out.entry(uuid.to_owned()).or_insert_with(|| pod.clone());
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, gpus: u32, created: &str) -> NodePod {
        NodePod {
            pod: PodRef {
                namespace: "ns".into(),
                name: name.into(),
                container: "server".into(),
            },
            gpus,
            deployment: None,
            revision: None,
            scrape_address: None,
            created: created.into(),
        }
    }

    #[test]
    fn pods_take_gpus_in_creation_order() {
        let uuids: Vec<String> = (0..4).map(|i| format!("GPU-{i}")).collect();
        let pods = [
            pod("b", 2, "2026-01-02"),
            pod("cpu", 0, "2026-01-01"),
            pod("a", 1, "2026-01-01"),
            pod("c", 2, "2026-01-03"),
        ];
        let m = assign_in_order(&pods, &uuids);
        assert_eq!(m["GPU-0"].name, "a");
        assert_eq!((m["GPU-1"].name.as_str(), m["GPU-2"].name.as_str()), ("b", "b"));
        assert_eq!(m["GPU-3"].name, "c", "c gets the one GPU left of its two");
        assert_eq!(m.len(), 4);
    }

    #[test]
    fn device_ids_map_to_uuids_without_replica_suffixes() {
        let p = pod("a", 1, "").pod;
        let m = assign_from_devices(&[(p.clone(), vec!["GPU-abc::1".into(), "GPU-def".into()])]);
        assert_eq!(m.get("GPU-abc"), Some(&p));
        assert_eq!(m.get("GPU-def"), Some(&p));
    }
}
