//! The node agent against the real local control plane and a real modelfleet-server: pods of a
//! ModelDeployment on a fake GPU node get GPUs attributed, the server (synthetic backend, in
//! process, on loopback) is scraped, and the NodeReports the recording hub receives show the
//! queue rising under load and falling after.

mod common;

use std::{collections::BTreeMap, time::Duration};

use common::*;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::PostParams};
use modelfleet_node_agent::run;
use modelfleet_testkit::{
    GpuNodePool, nodes,
    testing::{TestNamespace, shared_cluster},
};
use serde_json::json;

/// One input per 40 ms batch, so a modest load builds a queue.
async fn start_server() -> modelfleet_server::Listening {
    start_synthetic_server(&["--max-batch-size=1", "--synthetic-batch-cost=40ms"]).await
}

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
        annotations.insert("modelfleet.dev/scrape-address", addr);
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

async fn load(url: String, until: std::time::Instant) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    while std::time::Instant::now() < until {
        let request = http::Request::post(format!("{url}/v1/embeddings"))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                br#"{"input":"load"}"#,
            )))
            .expect("request");
        let _ = client.request(request).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_attribute_gpus_and_follow_server_load() {
    let cluster = shared_cluster();
    let client = cluster.client().await.expect("client");
    let ns = TestNamespace::create(cluster, &client, "agent")
        .await
        .expect("namespace");
    let node = gpu_node(&client, &format!("{}-n", ns.name())).await;
    let server = start_server().await;

    let server_labels = BTreeMap::from([
        ("modelfleet.dev/deployment", "embed"),
        ("modelfleet.dev/revision", "abc123"),
    ]);
    bound_pod(
        &client,
        ns.name(),
        "embed-0",
        &node,
        2,
        server_labels,
        Some(server.metrics.to_string()),
    )
    .await;
    bound_pod(&client, ns.name(), "other", &node, 1, BTreeMap::new(), None).await;

    let hub = start_hub("127.0.0.1:0".parse().expect("address")).await;
    let token = tempfile::NamedTempFile::new().expect("token file");
    std::fs::write(token.path(), "test-token\n").expect("token");
    let running = run::start(
        agent_config(&node, hub.url(), token.path().into()),
        client.clone(),
        std::future::pending(),
    )
    .await
    .expect("the agent starts");

    // Attribution: the server pod holds two GPUs, the other pod one; the server is scraped.
    let attributed = hub
        .wait_for(Duration::from_secs(15), |r| {
            let held = |name: &str| {
                r.gpus
                    .iter()
                    .filter(|g| g.pod.as_ref().is_some_and(|p| p.name == name))
                    .count()
            };
            held("embed-0") == 2 && held("other") == 1 && r.servers.iter().any(|s| s.scraped)
        })
        .await
        .expect("a report with both pods attributed and the server scraped");
    assert_eq!(attributed.node, node);
    assert!(attributed.simulated);
    assert_eq!(attributed.gpus.len(), 8);
    let s = &attributed.servers[0];
    assert_eq!((s.deployment.as_str(), s.revision.as_str()), ("embed", "abc123"));
    assert_eq!(
        hub.authorizations().first().map(String::as_str),
        Some("Bearer test-token")
    );

    // Load: 16 clients on a server that runs one 40 ms input at a time.
    let url = format!("http://{}", server.http);
    let until = std::time::Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..16).map(|_| tokio::spawn(load(url.clone(), until))).collect();
    // Simulated GPUs follow the busy ratio of the server holding them.
    let loaded = hub
        .wait_for(Duration::from_secs(5), |r| {
            r.servers.iter().any(|s| s.queue_depth >= 5.0)
                && r.gpus
                    .iter()
                    .any(|g| g.pod.as_ref().is_some_and(|p| p.name == "embed-0") && g.utilization_gpu >= 50.0)
        })
        .await
        .expect("a report with the queue risen and the server's GPUs busy");
    let dcgm = http_text(&format!("http://{}/metrics", running.metrics_addr)).await;
    assert!(dcgm.contains("DCGM_FI_DEV_GPU_UTIL{"), "{dcgm}");
    assert!(dcgm.contains(r#"pod="embed-0""#), "{dcgm}");
    for c in clients {
        let _ = c.await;
    }
    let before = hub.reports();
    let drained = hub
        .wait_for(Duration::from_secs(5), |r| {
            r.sequence as usize > before && r.servers.iter().all(|s| s.scraped && s.queue_depth == 0.0)
        })
        .await;
    assert!(drained.is_some(), "the queue depth never fell back to 0");
    let reported_rate = loaded.servers[0].request_rate;
    assert!(reported_rate > 5.0, "request rate under load: {reported_rate}");
}

async fn http_text(url: &str) -> String {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let response = client.get(url.parse().expect("uri")).await.expect("answer");
    use http_body_util::BodyExt;
    let body = response.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}
