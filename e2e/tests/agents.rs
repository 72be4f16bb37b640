//! Real node agents on the fake GPU nodes, scraping simulated server pods and streaming to a
//! telemetry service: what the operator's autoscaler will see.

use std::time::Duration;

use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, Client,
    api::{DeleteParams, PostParams},
};
use modelfleet_proto::telemetry::{NodeReport, ServerSample};
use modelfleet_testkit::{
    agents::{AgentToken, AgentsConfig, LoadSimulator, NodeAgents, PodLoad, SCRAPE_ADDRESS_ANNOTATION},
    http,
    process::is_alive,
    telemetry_hub::{RecordingHub, TokenPolicy},
    testing::{shared_cluster, shared_namespace},
    wait::{poll_until, wait_for},
};
use serde_json::json;

/// The shared cluster's GPU nodes.
const GPU_NODES: [&str; 2] = ["gpu-node-0", "gpu-node-1"];

/// Bounds every wait of these tests.
const WAIT: Duration = Duration::from_secs(60);

/// The last `n` samples of `pod` the hub received, for failure messages.
fn last_samples(hub: &RecordingHub, namespace: &str, pod: &str, n: usize) -> Vec<(String, ServerSample)> {
    hub.with_reports(|reports| {
        let mut out: Vec<(String, ServerSample)> = reports
            .iter()
            .rev()
            .filter_map(|r| server_sample(r, namespace, pod).map(|s| (r.node.clone(), s.clone())))
            .take(n)
            .collect();
        out.reverse();
        out
    })
}

/// The hub on a free loopback port, refusing streams without a token as the operator does.
async fn start_hub() -> RecordingHub {
    RecordingHub::start(([127, 0, 0, 1], 0).into(), TokenPolicy::RequireBearer).await
}

fn server_sample<'a>(report: &'a NodeReport, namespace: &str, pod: &str) -> Option<&'a ServerSample> {
    report.servers.iter().find(|s| {
        s.pod
            .as_ref()
            .is_some_and(|p| p.namespace == namespace && p.name == pod)
    })
}

fn within(value: f64, expected: f64, share: f64) -> bool {
    (value - expected).abs() <= expected * share
}

/// A Deployment of one pod labelled as server pods of ModelDeployment `name`, holding one GPU
/// (toleration and node selector of the GPU nodes), so the scheduler binds it to a GPU node.
async fn create_gpu_deployment(client: &Client, namespace: &str, name: &str) {
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"modelfleet.dev/deployment": name}},
            "template": {
                "metadata": {"labels": {"modelfleet.dev/deployment": name}},
                "spec": {
                    "containers": [{
                        "name": "server",
                        "image": "ghcr.io/modelfleet/server:test",
                        "resources": {"limits": {"nvidia.com/gpu": "1"}}
                    }],
                    "nodeSelector": {"nvidia.com/gpu.present": "true"},
                    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
                }
            }
        }
    }))
    .expect("a valid Deployment");
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create the Deployment");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agents_report_the_simulated_load_of_a_gpu_pod_and_follow_its_changes() {
    let (client, ns) = shared_namespace("agents").await;
    let ns = ns.name().to_string();
    let sim = LoadSimulator::start(client.clone(), Some(ns.clone()))
        .await
        .unwrap();
    sim.set_deployment_load(
        &ns,
        "sim",
        PodLoad {
            queued: 12.0,
            running: 3.0,
            request_rate: 50.0,
            latency_seconds: 0.2,
            busy_ratio: 0.5,
            ..Default::default()
        },
    );
    create_gpu_deployment(&client, &ns, "sim").await;
    let pod = sim.wait_pods(&ns, "sim", 1, WAIT).await.unwrap().remove(0);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let bound = wait_for(&pods, &pod.name, WAIT, "bound to a node", |p| {
        p.spec.as_ref().is_some_and(|s| s.node_name.is_some())
    })
    .await
    .unwrap();
    let node = bound.spec.and_then(|s| s.node_name).unwrap();
    assert!(GPU_NODES.contains(&node.as_str()), "scheduled on {node}");
    assert_eq!(
        bound.metadata.annotations.unwrap_or_default()[SCRAPE_ADDRESS_ANNOTATION],
        pod.address.to_string(),
        "the annotation names the simulator's loopback address"
    );

    let hub = start_hub().await;
    let cluster = shared_cluster();
    let mut agents = NodeAgents::start(cluster, AgentsConfig::new(GPU_NODES, hub.url()))
        .await
        .unwrap();
    assert_eq!(agents.nodes(), GPU_NODES);
    let pids = agents.pids();
    assert!(pids.len() == 2 && pids.iter().all(|p| is_alive(*p)), "{pids:?}");
    let token = agents.token().expect("a ServiceAccount token").to_string();

    let diagnose = |hub: &RecordingHub, agents: &NodeAgents| {
        format!(
            "last samples of the pod: {:#?}\n--- agent of {node} ---\n{}",
            last_samples(hub, &ns, &pod.name, 3),
            agents.log_tail(&node, 20).unwrap_or_default()
        )
    };

    // The first load: every figure arrives in the report of the pod's node.
    let first = hub
        .wait_for(WAIT, |r| {
            r.node == node
                && server_sample(r, &ns, &pod.name).is_some_and(|s| {
                    s.scraped
                        && s.deployment == "sim"
                        && s.queue_depth == 12.0
                        && s.running_requests == 3.0
                        && within(s.request_rate, 50.0, 0.2)
                        && s.error_rate == 0.0
                        && s.latency_p95_seconds > 0.128
                        && s.latency_p95_seconds <= 0.256
                        && s.busy_ratio == 0.5
                })
        })
        .await
        .unwrap_or_else(|| panic!("no report with the first load\n{}", diagnose(&hub, &agents)));
    assert!(first.simulated);
    let sample = server_sample(&first, &ns, &pod.name).unwrap();
    assert_eq!(
        sample
            .queues
            .iter()
            .map(|q| (q.tier.as_str(), q.queue_depth))
            .collect::<Vec<_>>(),
        [("default", 12.0)]
    );
    assert!(sim.scrapes(&ns, &pod.name) > 0);
    let authorizations = hub.authorizations();
    assert!(!authorizations.is_empty());
    assert!(
        authorizations.iter().all(|a| *a == format!("Bearer {token}")),
        "every stream presents the ServiceAccount token: {authorizations:?}"
    );
    // The simulated GPU held by the pod follows its busy ratio (one round behind).
    hub.wait_for(WAIT, |r| {
        r.node == node
            && r.gpus
                .iter()
                .any(|g| g.pod.as_ref().is_some_and(|p| p.name == pod.name) && g.utilization_gpu == 50.0)
    })
    .await
    .unwrap_or_else(|| panic!("no GPU of the pod at 50%\n{}", diagnose(&hub, &agents)));

    // A new deployment load: the reports follow.
    sim.set_deployment_load(
        &ns,
        "sim",
        PodLoad {
            queued: 2.0,
            running: 1.0,
            request_rate: 10.0,
            error_rate: 0.2,
            latency_seconds: 0.03,
            busy_ratio: 0.25,
            batch_size: 4.0,
            ..Default::default()
        },
    );
    hub.wait_for(WAIT, |r| {
        server_sample(r, &ns, &pod.name).is_some_and(|s| {
            s.queue_depth == 2.0
                && s.running_requests == 1.0
                && within(s.request_rate, 10.0, 0.2)
                && within(s.error_rate, 2.0, 0.2)
                && s.latency_p95_seconds > 0.016
                && s.latency_p95_seconds <= 0.032
                && within(s.mean_batch_size, 4.0, 0.01)
                && s.busy_ratio == 0.25
        })
    })
    .await
    .unwrap_or_else(|| panic!("no report with the second load\n{}", diagnose(&hub, &agents)));

    // A pod's own load overrides its deployment's.
    sim.set_pod_load(
        &ns,
        &pod.name,
        PodLoad {
            queued: 40.0,
            ..Default::default()
        },
    );
    hub.wait_for(WAIT, |r| {
        server_sample(r, &ns, &pod.name).is_some_and(|s| s.queue_depth == 40.0 && s.request_rate == 0.0)
    })
    .await
    .unwrap_or_else(|| panic!("no report with the pod's own load\n{}", diagnose(&hub, &agents)));

    agents.stop();
    assert!(
        pids.iter().all(|p| !is_alive(*p)),
        "agents left running: {pids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_without_a_token_is_refused_and_keeps_retrying() {
    let hub = start_hub().await;
    let config = AgentsConfig {
        token: AgentToken::None,
        ..AgentsConfig::new(["gpu-node-0"], hub.url())
    };
    let mut agents = NodeAgents::start(shared_cluster(), config).await.unwrap();
    assert_eq!(agents.token(), None);
    poll_until(WAIT, "two refused streams (a retry after the first)", || async {
        Ok((hub.refused() >= 2).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agents.log_tail("gpu-node-0", 20).unwrap_or_default()));
    assert_eq!(hub.reports(), 0);
    assert_eq!(agents.exited("gpu-node-0"), None, "it keeps running");
    let log = agents.log_tail("gpu-node-0", 200).unwrap_or_default();
    assert!(
        log.contains("telemetry stream down") && log.contains("no bearer token"),
        "{log}"
    );
    let metrics = agents.metrics("gpu-node-0").await.expect("its /metrics answers");
    assert!(
        metrics.lines().any(|l| l == "modelfleet_node_stream_connected 0"),
        "{metrics}"
    );
}

fn sample_value(exposition: &str, series: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_simulator_serves_each_server_pod_on_loopback_until_it_is_deleted() {
    let (client, ns) = shared_namespace("loadsim").await;
    let ns = ns.name().to_string();
    let sim = LoadSimulator::start(client.clone(), Some(ns.clone()))
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    for (name, labels) in [
        ("server", json!({"modelfleet.dev/deployment": "bare"})),
        ("other", json!({"app": "other"})),
    ] {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "image": "ghcr.io/modelfleet/server:test"}]}
        }))
        .unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let served = sim.wait_pods(&ns, "bare", 1, WAIT).await.unwrap();
    assert_eq!(served.len(), 1);
    let address = served[0].address;
    assert!(address.ip().is_loopback(), "{address}");
    assert_eq!(sim.scrape_address(&ns, "server"), Some(address));
    assert_eq!(
        sim.scrape_address(&ns, "other"),
        None,
        "only server pods are served"
    );
    wait_for(&pods, "server", WAIT, "scrape-address annotation", |p| {
        p.metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(SCRAPE_ADDRESS_ANNOTATION))
            == Some(&address.to_string())
    })
    .await
    .unwrap();

    sim.set_pod_load(
        &ns,
        "server",
        PodLoad {
            queued: 5.0,
            request_rate: 100.0,
            ..Default::default()
        },
    );
    let ok = r#"modelfleet_requests_total{api="openai",tier="default",code="200"}"#;
    let (status, first) = http::get(address.port(), "/metrics").await.expect("it answers");
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        sample_value(&first, "modelfleet_requests_queued"),
        Some(5.0),
        "{first}"
    );
    assert_eq!(
        sample_value(&first, r#"modelfleet_queue_depth{tier="default"}"#),
        Some(5.0)
    );
    assert!(first.trim_end().ends_with("# EOF"));
    poll_until(WAIT, "requests counted since the first scrape", || async {
        let (_, text) = http::get(address.port(), "/metrics")
            .await
            .ok_or_else(|| "no answer".to_string())?;
        let (before, after) = (sample_value(&first, ok), sample_value(&text, ok));
        Ok((after > before).then_some(()))
    })
    .await
    .unwrap();
    assert!(sim.scrapes(&ns, "server") >= 2);
    assert_eq!(http::get(address.port(), "/other").await.map(|r| r.0), Some(404));

    pods.delete("server", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    poll_until(WAIT, "the deleted pod's listener closed", || async {
        let closed = sim.scrape_address(&ns, "server").is_none()
            && http::get(address.port(), "/metrics").await.is_none();
        Ok(closed.then_some(()))
    })
    .await
    .unwrap();
}
