//! The chart's node-agent DaemonSet lands on GPU nodes, and its least-privilege RBAC is enough:
//! the agent, as the chart's ServiceAccount, watches its node's pods and attributes their GPUs.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::{apps::v1::DaemonSet, core::v1::Pod};
use kube::{Api, Client, api::PostParams};
use modelfleet_node_agent::run;
use modelfleet_testkit::{
    ClusterConfig, GpuNodePool, LocalCluster, nodes, testing::helm_install_chart, wait::wait_for,
};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemonset_runs_on_gpu_nodes_and_its_rbac_suffices() {
    let cluster = LocalCluster::start(ClusterConfig::default())
        .await
        .expect("a cluster");
    helm_install_chart(&cluster);

    let admin = cluster.client().await.expect("client");
    let gpu_nodes = nodes::add_gpu_pool(
        &admin,
        &GpuNodePool {
            count: 2,
            ..Default::default()
        },
    )
    .await
    .expect("GPU nodes");
    nodes::add_cpu_nodes(&admin, 1).await.expect("a CPU node");
    let daemonsets: Api<DaemonSet> = Api::namespaced(admin.clone(), "modelfleet-system");
    wait_for(
        &daemonsets,
        "modelfleet-node-agent",
        Duration::from_secs(60),
        "scheduled on the 2 GPU nodes only",
        |d: &DaemonSet| {
            d.status
                .as_ref()
                .is_some_and(|s| s.desired_number_scheduled == 2 && s.current_number_scheduled == 2)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // The agent with exactly the chart's permissions.
    let mut config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(cluster.kubeconfig_path()).expect("kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("config");
    config.auth_info.impersonate =
        Some("system:serviceaccount:modelfleet-system:modelfleet-node-agent".into());
    let as_agent = Client::try_from(config).expect("client");
    let node = gpu_nodes[0].metadata.name.clone().expect("name");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "holder", "namespace": "default"},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "x",
                 "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
    }))
    .expect("pod");
    Api::<Pod>::namespaced(admin, "default")
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod created");

    let hub = start_hub("127.0.0.1:0".parse().expect("address")).await;
    let _running = run::start(
        agent_config(&node, hub.url(), "/nonexistent".into()),
        as_agent,
        std::future::pending(),
    )
    .await
    .expect("the agent starts");
    let report = hub
        .wait_for(Duration::from_secs(20), |r| {
            r.gpus
                .iter()
                .any(|g| g.pod.as_ref().is_some_and(|p| p.name == "holder"))
        })
        .await;
    assert!(
        report.is_some(),
        "the agent never saw its node's pod with the chart's RBAC"
    );
}
