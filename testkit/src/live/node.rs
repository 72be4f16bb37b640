//! Live nodes: Node objects that kwok leaves alone (no kwok annotation), registered as a kubelet
//! would (capacity, GPU labels and taint, podCIDR, InternalIP 127.0.0.1 and the kubelet port of
//! their runtime), kept Ready by a heartbeat of our own: the Ready condition and the node Lease.

use std::time::Duration;

use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::{DaemonEndpoint, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints},
    },
    apimachinery::pkg::apis::meta::v1::{MicroTime, Time},
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
};
use tokio::task::JoinHandle;

use crate::{GpuNodePool, Result, nodes};

/// How often a live node renews its Lease and Ready condition (kubelet: 10 s).
pub const HEARTBEAT: Duration = Duration::from_secs(10);
const LEASE_SECONDS: i32 = 40;
/// The label that marks a node run by the live runtime.
pub const LIVE_LABEL: &str = "modelfleet.dev/e2e-live";

/// What a live node looks like to the API.
#[derive(Debug, Clone)]
pub struct LiveNodeSpec {
    /// Node name.
    pub name: String,
    /// Its pool (GPU product, count, memory).
    pub pool: GpuNodePool,
    /// Its podCIDR, e.g. `10.246.0.0/24`.
    pub pod_cidr: String,
    /// The port of its kubelet endpoint on 127.0.0.1 (logs).
    pub kubelet_port: u16,
    /// A GPU node (labels, capacity, taint) or a plain CPU node.
    pub gpu: bool,
}

/// The Node object of a live node.
pub fn node_object(spec: &LiveNodeSpec) -> Node {
    let mut labels = if spec.gpu {
        spec.pool.labels()
    } else {
        Default::default()
    };
    labels.insert(LIVE_LABEL.into(), "true".into());
    labels.insert("type".into(), "live".into());
    let (taints, capacity) = if spec.gpu {
        (vec![nodes::gpu_taint()], spec.pool.capacity())
    } else {
        (Vec::new(), Vec::new())
    };
    let mut node = nodes::node_object(&spec.name, labels, taints, &capacity);
    if let Some(annotations) = node.metadata.annotations.as_mut() {
        annotations.remove(nodes::KWOK_ANNOTATION);
    }
    node.spec.get_or_insert_default().pod_cidr = Some(spec.pod_cidr.clone());
    node.spec.get_or_insert_default().pod_cidrs = Some(vec![spec.pod_cidr.clone()]);
    let status = node.status.get_or_insert_default();
    status.addresses = Some(vec![NodeAddress {
        type_: "InternalIP".into(),
        address: "127.0.0.1".into(),
    }]);
    status.daemon_endpoints = Some(NodeDaemonEndpoints {
        kubelet_endpoint: Some(DaemonEndpoint {
            port: i32::from(spec.kubelet_port),
        }),
    });
    if let Some(info) = status.node_info.as_mut() {
        info.kubelet_version = "modelfleet-live".into();
        info.container_runtime_version = "modelfleet-live://0.1".into();
    }
    status.conditions = Some(conditions(Timestamp::now()));
    node
}

fn conditions(now: Timestamp) -> Vec<NodeCondition> {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| NodeCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(Time(now)),
        last_transition_time: Some(Time(now)),
    };
    vec![
        condition(
            "Ready",
            "True",
            "KubeletReady",
            "modelfleet live runtime is posting ready status",
        ),
        condition(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "live runtime",
        ),
        condition(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "live runtime",
        ),
        condition("PIDPressure", "False", "KubeletHasSufficientPID", "live runtime"),
    ]
}

/// Registers the node (replacing a stale one of the same name) and waits until it is Ready.
pub async fn register(client: &Client, spec: &LiveNodeSpec) -> Result<()> {
    let api = Api::<Node>::all(client.clone());
    let _ = api.delete(&spec.name, &Default::default()).await;
    api.create(&PostParams::default(), &node_object(spec)).await?;
    renew(client, &spec.name).await?;
    nodes::wait_nodes_ready(client, std::slice::from_ref(&spec.name)).await?;
    Ok(())
}

/// Renews the Lease and the conditions every [`HEARTBEAT`] until aborted.
pub fn heartbeat(client: Client, name: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            if let Err(error) = renew(&client, &name).await {
                tracing::warn!(node = %name, %error, "live node heartbeat failed");
            }
        }
    })
}

async fn renew(client: &Client, name: &str) -> Result<()> {
    let now = Timestamp::now();
    let status = serde_json::json!({"status": {"conditions": conditions(now)}});
    Api::<Node>::all(client.clone())
        .patch_status(name, &PatchParams::default(), &Patch::Strategic(status))
        .await?;
    let lease = Lease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("kube-node-lease".into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(name.into()),
            lease_duration_seconds: Some(LEASE_SECONDS),
            renew_time: Some(MicroTime(now)),
            ..Default::default()
        }),
    };
    Api::<Lease>::namespaced(client.clone(), "kube-node-lease")
        .patch(
            name,
            &PatchParams::apply("modelfleet-e2e-live").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}
