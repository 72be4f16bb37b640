//! The agent's cost: a local cluster with one GPU node (8 simulated GPUs), 16 modelfleet-server
//! pods on it (real servers, synthetic backend, on loopback), and the release agent binary
//! sampling every second and streaming to a test hub. Reports the agent's resident memory and CPU.
//!
//!   cargo build --release -p modelfleet-node-agent
//!   cargo run --release -p modelfleet-e2e --example agent_bench -- [SECONDS=300] [PODS=16]
//!
//! It lives in e2e because the servers are the server crate's, in process; the agent binary comes
//! from the same profile as this example (`modelfleet_testkit::bin`).

#[path = "../tests/common/mod.rs"]
mod common;

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{start_hub, start_synthetic_server};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use modelfleet_testkit::{
    ClusterConfig, GpuNodePool, LocalCluster, nodes,
    procfs::{cpu_seconds, proc_status_mib},
};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(300);
    let pod_count: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(16);
    let agent_bin = modelfleet_testkit::bin::path("modelfleet-node-agent")?;

    eprintln!("bench: starting the local cluster");
    let cluster = LocalCluster::start(ClusterConfig::default()).await?;
    let client = cluster.client().await?;
    let node = nodes::add_gpu_pool(
        &client,
        &GpuNodePool {
            count: 1,
            ..Default::default()
        },
    )
    .await?[0]
        .metadata
        .name
        .clone()
        .ok_or("node name")?;
    eprintln!("bench: {pod_count} servers and pods on {node}");
    let mut servers = Vec::new();
    for i in 0..pod_count {
        let server = start_synthetic_server(&["--tier=high:1s:1", "--tier=low::0.5"]).await;
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("server-{i}"), "namespace": "default",
                "labels": BTreeMap::from([("modelfleet.dev/deployment", format!("d{}", i % 4)), ("modelfleet.dev/revision", "r1".to_owned())]),
                "annotations": {"modelfleet.dev/scrape-address": server.metrics.to_string()}},
            "spec": {"nodeName": node, "containers": [{"name": "server", "image": "x",
                "resources": {"limits": {"nvidia.com/gpu": if i < 8 { "1" } else { "0" }}}}]}
        }))?;
        Api::<Pod>::namespaced(client.clone(), "default")
            .create(&PostParams::default(), &pod)
            .await?;
        servers.push(server);
    }
    let hub = start_hub("127.0.0.1:0".parse()?).await;
    let mut agent = Command::new(&agent_bin)
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .args([
            "--node-name",
            &node,
            "--operator-url",
            &hub.url(),
            "--gpu-backend=simulated",
        ])
        .args([
            "--metrics-addr=127.0.0.1:0",
            "--scrape-loopback-only",
            "--token-file=/nonexistent",
            "--log-format=text",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = agent.id();
    // Settle (watch synced, first scrapes), then measure.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (cpu0, t0, reports0) = (cpu_seconds(pid), Instant::now(), hub.reports());
    eprintln!("bench: measuring for {seconds} s");
    let mut peak_rss = 0.0f64;
    while t0.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(5)).await;
        peak_rss = peak_rss.max(proc_status_mib(pid, "VmRSS:"));
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu0;
    let hwm = proc_status_mib(pid, "VmHWM:");
    let reports = hub.reports() - reports0;
    let last = hub
        .wait_for(Duration::from_secs(2), |_| true)
        .await
        .ok_or("no report")?;
    let _ = agent.kill();
    let _ = agent.wait();
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "seconds": elapsed,
            "gpus": last.gpus.len(),
            "attributed_gpus": last.gpus.iter().filter(|g| g.pod.is_some()).count(),
            "servers": last.servers.len(),
            "scraped_servers": last.servers.iter().filter(|s| s.scraped).count(),
            "reports": reports,
            "cpu_seconds": cpu,
            "cpu_percent_of_a_core": 100.0 * cpu / elapsed,
            "rss_mib_max_sampled": peak_rss,
            "vm_hwm_mib": hwm,
        }))?
    );
    drop(servers);
    Ok(())
}
