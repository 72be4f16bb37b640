//! What watches the fleet: node agents attributing GPUs through PodResources, Prometheus scraping
//! live pods, and a fleet that stops leaving nothing behind.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use modelfleet_crds::ModelDeployment;
use modelfleet_testkit::{
    live::{LiveConfig, LiveFleet},
    process::is_alive,
};

use super::{is_available, is_ready, model_deployment, namespace, send, shared, wait_md, wait_pods};

/// `DCGM_FI_DEV_GPU_UTIL` of each GPU the agent's metrics attribute to `pod`: UUID → percent.
fn gpu_util_of(metrics: &str, pod: &str) -> Vec<(String, f64)> {
    metrics
        .lines()
        .filter(|l| l.starts_with("DCGM_FI_DEV_GPU_UTIL{") && l.contains(&format!("pod=\"{pod}\"")))
        .filter_map(|l| {
            let uuid = l.split("UUID=\"").nth(1)?.split('"').next()?.to_string();
            let value = l.rsplit(' ').next()?.parse().ok()?;
            Some((uuid, value))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_node_agent_attributes_the_gpu_through_pod_resources_and_its_utilisation_follows_load() {
    let live = shared();
    let (client, ns) = namespace("live-gpu").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    let uri = &live.model_uri;
    let md = model_deployment(&format!(
        "metadata:\n  name: gpu\nspec:\n  model:\n    name: gpu-model\n    version: \"1\"\n    uri: {uri}\n    task: embedding\n  runtime:\n    device: cpu\n    backend: synthetic\n    args: [\"--synthetic-batch-cost=20ms\", \"--synthetic-input-cost-us=5000\", \"--synthetic-dim=8\"]\n  resources:\n    gpus: 1\n  replicas: 1\n"
    ));
    api.create(&PostParams::default(), &md).await.expect("create");
    wait_md(&api, "gpu", Duration::from_secs(120), "Available", is_available).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let pod = wait_pods(
        &pods,
        "modelfleet.dev/deployment=gpu",
        Duration::from_secs(10),
        "Ready",
        |p| p.iter().any(is_ready),
    )
    .await
    .remove(0);
    let name = pod.metadata.name.clone().expect("name");
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("bound");
    assert!(node.starts_with("live-gpu-"), "{node}");
    // The runtime hands out the highest free GPU first, so only PodResources names it: the
    // fallback (pods take GPUs in creation order) would say index 0.
    let devices = live
        .fleet
        .nodes()
        .iter()
        .find(|n| n.name == node)
        .expect("the live node")
        .gpu_devices(ns.name(), &name);
    assert_eq!(devices.len(), 1, "{devices:?}");
    assert!(!devices[0].ends_with("-0"), "{devices:?}");
    let agents = live
        .agents
        .iter()
        .find(|a| a.nodes().contains(&node.as_str()))
        .expect("the node's agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    let idle = loop {
        let seen = gpu_util_of(&agents.metrics(&node).await.unwrap_or_default(), &name);
        if !seen.is_empty() {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never attributed a GPU to {name}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(idle.iter().map(|(u, _)| u.clone()).collect::<Vec<_>>(), devices);

    let url = format!("http://gpu.{}.svc:8080/v1/embeddings", ns.name());
    let load = tokio::spawn(async move { send(&url, 600, 8).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut busiest = 0.0f64;
    while !load.is_finished() && Instant::now() < deadline {
        let seen = gpu_util_of(&agents.metrics(&node).await.unwrap_or_default(), &name);
        busiest = seen.iter().map(|(_, v)| *v).fold(busiest, f64::max);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let (_, failures) = load.await.expect("load");
    assert!(failures.is_empty(), "{failures:?}");
    let at_rest = idle[0].1;
    assert!(
        busiest > at_rest + 20.0,
        "simulated utilisation of {} stayed at {busiest}% under load (idle {at_rest}%)",
        devices[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_scrapes_every_live_server_pod_with_its_revision() {
    let live = shared();
    let (client, ns) = namespace("live-prom").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.create(
        &PostParams::default(),
        &super::synthetic("scraped", "1", 8, 2, ""),
    )
    .await
    .expect("create");
    let md = wait_md(
        &api,
        "scraped",
        Duration::from_secs(120),
        "Available",
        is_available,
    )
    .await;
    let revision = md.status.and_then(|s| s.stable).expect("stable").revision;
    let query = format!(
        "up{{job=\"live-pods\",namespace=\"{}\",deployment=\"scraped\",revision=\"{revision}\"}} == 1",
        ns.name()
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let result = live.prometheus.query(&query).await.expect("query");
        if result.as_array().is_some_and(|r| r.len() == 2) {
            break;
        }
        assert!(Instant::now() < deadline, "{query}: {result}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn after_stop_no_process_of_the_fleet_is_alive_and_its_namespace_is_gone() {
    let live = shared();
    let (client, ns) = namespace("live-stop").await;
    // No GPUs and no CPU node: nothing of the other tests can land on this fleet's node.
    let config = LiveConfig {
        pool: modelfleet_testkit::GpuNodePool {
            name_prefix: "stop-gpu".into(),
            count: 1,
            gpus_per_node: 0,
            ..Default::default()
        },
        cpu_nodes: 0,
        images: Some(live.fleet.images().clone()),
    };
    let fleet = LiveFleet::start(&live.cluster, config)
        .await
        .expect("a second fleet");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "sleeper"},
        "spec": {
            "nodeName": "stop-gpu-0",
            "securityContext": {"runAsUser": 65532, "runAsGroup": 65532},
            "containers": [{"name": "server", "image": "modelfleet-server",
                "args": ["--backend=synthetic", format!("--model-uri={}", live.model_uri)]}],
        },
    }))
    .expect("a pod");
    pods.create(&PostParams::default(), &pod).await.expect("create");
    let running = wait_pods(&pods, "", Duration::from_secs(60), "the pod runs", |p| {
        p.iter().any(|p| container_pid(p).is_some())
    })
    .await;
    // The container's parent dying (as when the harness is killed) takes the program with it,
    // although dropping to runAsUser cleared the program's own parent-death signal.
    let init = running.iter().find_map(container_pid).expect("a container");
    let server = modelfleet_testkit::live::runtime::container::first_child(init)
        .expect("the program under the container's PID 1");
    let parent = parent_of(init).expect("unshare");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(parent as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the container's parent");
    let deadline = Instant::now() + Duration::from_secs(5);
    while is_alive(server) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !is_alive(server),
        "the program (pid {server}) outlived its container's parent"
    );
    let running = wait_pods(&pods, "", Duration::from_secs(60), "the pod runs again", |p| {
        p.iter().filter_map(container_pid).any(|pid| pid != init)
    })
    .await;
    let name = fleet.net().name().to_string();
    let mut pids = fleet.service_pids();
    assert!(!pids.is_empty() && pids.iter().all(|p| is_alive(*p)));
    pids.extend(running.iter().filter_map(container_pid));
    fleet.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left: Vec<u32> = pids.iter().copied().filter(|p| is_alive(*p)).collect();
    assert!(left.is_empty(), "processes left: {left:?} of {pids:?}");
    assert!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "namespace {name} is left"
    );
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client);
    let _ = nodes.delete("stop-gpu-0", &Default::default()).await;
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

fn container_pid(p: &Pod) -> Option<u32> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .as_deref()?
        .strip_prefix("modelfleet-live://")?
        .parse()
        .ok()
}
