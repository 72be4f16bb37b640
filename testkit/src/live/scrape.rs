//! Prometheus targets for live pods. Debian's Prometheus is built without Kubernetes service
//! discovery, so the fleet does what a PodMonitor would: every second it lists the pods on its
//! nodes and writes a `file_sd` file with each Running pod's `metrics` port at its pod IP,
//! labelled as the chart's PodMonitor labels them on a real cluster.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use modelfleet_crds::constants::labels;
use tokio::task::JoinHandle;

/// The container port Prometheus scrapes.
pub const METRICS_PORT_NAME: &str = "metrics";

/// `file_sd` groups for the Running pods of `pods` bound to one of `nodes`: one group per pod
/// with its `metrics` port, labelled `namespace`, `pod`, `node`, and `deployment`, `revision`,
/// `role` from its modelfleet labels.
pub fn pod_targets(pods: &[Pod], nodes: &[String]) -> serde_json::Value {
    let groups: Vec<serde_json::Value> = pods
        .iter()
        .filter_map(|pod| {
            let spec = pod.spec.as_ref()?;
            let status = pod.status.as_ref()?;
            let node = spec.node_name.as_ref().filter(|n| nodes.contains(n))?;
            let ip = status
                .pod_ip
                .as_ref()
                .filter(|_| status.phase.as_deref() == Some("Running"))?;
            let port = spec
                .containers
                .iter()
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(METRICS_PORT_NAME))?
                .container_port;
            let mut target_labels = BTreeMap::from([
                ("namespace", pod.metadata.namespace.clone().unwrap_or_default()),
                ("pod", pod.metadata.name.clone().unwrap_or_default()),
                ("node", node.clone()),
            ]);
            let own = pod.metadata.labels.clone().unwrap_or_default();
            for (label, target) in [
                (labels::DEPLOYMENT, "deployment"),
                (labels::REVISION, "revision"),
                (labels::ROLE, "role"),
            ] {
                if let Some(value) = own.get(label) {
                    target_labels.insert(target, value.clone());
                }
            }
            Some(serde_json::json!({"targets": [format!("{ip}:{port}")], "labels": target_labels}))
        })
        .collect();
    serde_json::Value::Array(groups)
}

/// Keeps `file` current with [`pod_targets`] of the pods on `nodes`, every second, replacing it
/// atomically when it changes.
pub fn follow_pods(client: Client, nodes: Vec<String>, file: PathBuf) -> JoinHandle<()> {
    tokio::spawn(async move {
        let pods: Api<Pod> = Api::all(client);
        let mut last = String::new();
        loop {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                let text = pod_targets(&list.items, &nodes).to_string();
                if text != last {
                    let tmp = file.with_extension("json.tmp");
                    if std::fs::write(&tmp, &text).is_ok() && std::fs::rename(&tmp, &file).is_ok() {
                        last = text;
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, node: &str, phase: &str, port_name: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {
                "modelfleet.dev/deployment": "minilm", "modelfleet.dev/revision": "abc123",
            }},
            "spec": {"nodeName": node, "containers": [{"name": "server",
                "ports": [{"name": "http", "containerPort": 8080}, {"name": port_name, "containerPort": 9090}]}]},
            "status": {"phase": phase, "podIP": "10.246.0.7"},
        }))
        .unwrap()
    }

    #[test]
    fn running_pods_on_live_nodes_are_scraped_at_their_metrics_port_with_the_revision_label() {
        let nodes = vec!["live-gpu-0".to_string()];
        let pods = [
            pod("a", "live-gpu-0", "Running", "metrics"),
            pod("pending", "live-gpu-0", "Pending", "metrics"),
            pod("kwok", "gpu-node-0", "Running", "metrics"),
            pod("no-metrics", "live-gpu-0", "Running", "other"),
        ];
        let groups = pod_targets(&pods, &nodes);
        assert_eq!(
            groups,
            serde_json::json!([{"targets": ["10.246.0.7:9090"], "labels": {
                "namespace": "ns", "pod": "a", "node": "live-gpu-0",
                "deployment": "minilm", "revision": "abc123",
            }}])
        );
    }
}
