//! The agent against the real local control plane: an unreachable operator, and a server
//! answering garbage. Attribution and scraping of a real modelfleet-server are tested in
//! e2e/tests/agent_scrape.rs (the server is another crate).

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::PostParams};
use modelfleet_contract::annotations::SCRAPE_ADDRESS;
use modelfleet_node_agent::run;
use modelfleet_testkit::{
    GpuNodePool, nodes,
    testing::{TestNamespace, shared_cluster},
};
use serde_json::json;

async fn gpu_node(client: &Client, prefix: &str) -> String {
    let pool = GpuNodePool {
        name_prefix: prefix.into(),
        count: 1,
        ..Default::default()
    };
    let nodes = nodes::add_gpu_pool(client, &pool).await.expect("a GPU node");
    nodes[0].metadata.name.clone().expect("a node name")
}

/// A pod bound to `node` (kwok runs it), requesting `gpus`.
async fn bound_pod(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    gpus: u32,
    labels: BTreeMap<&str, &str>,
    scrape: Option<String>,
) {
    let mut annotations = BTreeMap::new();
    if let Some(addr) = scrape {
        annotations.insert(SCRAPE_ADDRESS, addr);
    }
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                            {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "server", "image": "modelfleet/server:test",
                            "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}}]
        }
    }))
    .expect("a pod");
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod created");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_operator_bounds_the_buffer_and_reports_resume_when_it_returns() {
    let cluster = shared_cluster();
    let client = cluster.client().await.expect("client");
    let ns = TestNamespace::create(cluster, &client, "agent-outage")
        .await
        .expect("namespace");
    let node = gpu_node(&client, &format!("{}-n", ns.name())).await;
    // A garbage "server": the agent logs and counts it, never crashes.
    let garbage = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let garbage_addr = garbage.local_addr().expect("address");
    tokio::spawn(async move {
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(|| async { "<html>\u{0}not metrics{{{</html>" }),
        );
        let _ = axum::serve(garbage, app).await;
    });
    let labels = BTreeMap::from([
        ("modelfleet.dev/deployment", "broken"),
        ("modelfleet.dev/revision", "r1"),
    ]);
    bound_pod(
        &client,
        ns.name(),
        "broken-0",
        &node,
        1,
        labels,
        Some(garbage_addr.to_string()),
    )
    .await;

    let operator = free_port();
    let mut config = agent_config(&node, format!("http://{operator}"), "/nonexistent/token".into());
    config.interval = Duration::from_millis(50);
    config.report_buffer = 10;
    let running = run::start(config, client, std::future::pending())
        .await
        .expect("the agent starts");

    // 3 s without an operator: sampling goes on, the buffer holds at most 10, the rest is dropped.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let samples = running.metrics.samples.get();
    assert!(samples >= 30, "only {samples} rounds in 3 s");
    assert!(
        running.outbox.len() <= 10,
        "buffer grew to {}",
        running.outbox.len()
    );
    assert!(
        running.outbox.dropped() >= 20,
        "dropped {}",
        running.outbox.dropped()
    );
    let text = running.metrics.render();
    assert!(
        text.contains(r#"modelfleet_node_scrape_errors_total{reason="garbage"}"#),
        "{text}"
    );

    // The operator comes back on the same address: the agent reconnects (backoff ≤ 30 s, jittered).
    let hub = start_hub(operator).await;
    let resumed = hub
        .wait_for(Duration::from_secs(40), |r| r.dropped_reports >= 20)
        .await
        .expect("reports resume after the outage");
    assert!(
        resumed.servers.iter().all(|s| !s.scraped),
        "garbage is never reported as a scrape"
    );
}
