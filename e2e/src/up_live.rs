//! `modelfleet-e2e up --live` and `modelfleet-e2e exec`: a cluster whose GPU pods run for real in
//! the fleet namespace, and commands run inside that namespace with the cluster's DNS.

use std::{path::PathBuf, time::Instant};

use modelfleet_testkit::{
    ClusterConfig, GpuNodePool, LocalCluster, crds,
    live::{LiveConfig, LiveFleet},
    operator_process,
};
use serde::{Deserialize, Serialize};

/// `up --live` options.
#[derive(clap::Args, Debug)]
pub struct LiveArgs {
    /// Live GPU nodes (their pods run for real).
    #[arg(id = "live_nodes", long = "live-nodes", default_value_t = 2)]
    pub nodes: usize,
    /// GPUs per live node.
    #[arg(id = "live_gpus_per_node", long = "live-gpus-per-node", default_value_t = 4)]
    pub gpus_per_node: u32,
}

/// What `up --live` records for `exec`.
#[derive(Serialize, Deserialize, Debug)]
pub struct LiveState {
    /// The fleet's network namespace (`ip netns exec <netns>`).
    pub netns: String,
    /// The cluster's kubeconfig.
    pub kubeconfig: PathBuf,
}

/// `$MODELFLEET_E2E_LIVE_STATE`, else `$HOME/.cache/modelfleet/up/live.json`.
pub fn state_file() -> PathBuf {
    if let Some(path) = std::env::var_os("MODELFLEET_E2E_LIVE_STATE") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/modelfleet/up/live.json")
}

fn step(n: u32, what: &str, since: Instant) {
    eprintln!("[{n}/7] {what} ({:.1}s)", since.elapsed().as_secs_f64());
}

fn text<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Runs the live cluster until Ctrl-C.
pub async fn up(live: LiveArgs, dir: Option<PathBuf>) -> Result<(), String> {
    let t0 = Instant::now();
    step(1, "toolchain and control plane", t0);
    let cluster = LocalCluster::start(ClusterConfig {
        dir,
        ..Default::default()
    })
    .await
    .map_err(text)?;
    let client = cluster.client().await.map_err(text)?;
    crds::install_modelfleet_crds(&client).await.map_err(text)?;
    crds::install_gateway_api_crds(&client, cluster.toolchain())
        .await
        .map_err(text)?;
    step(2, "building the workspace binaries (the live images)", t0);
    let config = LiveConfig {
        pool: GpuNodePool {
            name_prefix: "live-gpu".into(),
            count: live.nodes,
            gpus_per_node: live.gpus_per_node,
            ..Default::default()
        },
        images: Some(crate::build::live_images().await?),
        ..Default::default()
    };
    step(3, "fleet namespace, kube-proxy, CoreDNS and live nodes", t0);
    let mut fleet = LiveFleet::start(&cluster, config).await.map_err(text)?;
    step(
        4,
        "Prometheus (in the fleet namespace, scraping every live pod) and the operator",
        t0,
    );
    let prometheus = fleet
        .start_prometheus(&cluster, std::time::Duration::from_secs(2))
        .await
        .map_err(text)?;
    let binary = fleet
        .images()
        .binary_for("modelfleet-operator")
        .map_err(text)?
        .to_path_buf();
    let hub = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(text)?;
    let mut operator = operator_process::start_operator_with_prometheus(
        &binary,
        &cluster,
        hub,
        true,
        Some(&prometheus.url()),
    )
    .map_err(text)?;
    fleet.relay_into_namespace(hub.port()).await.map_err(text)?;
    step(
        5,
        "node agents (one process per live node, in the fleet namespace)",
        t0,
    );
    let mut node_agents = fleet
        .start_node_agents(&cluster, &format!("http://{hub}"))
        .await
        .map_err(text)?;
    step(
        6,
        "router (in the fleet namespace; anonymous callers get each model's lowest tier; reporting to the operator)",
        t0,
    );
    let mut router = start_reporting_router(&mut fleet, &cluster, &client, hub).await?;
    step(7, "ready", t0);
    let state = LiveState {
        netns: fleet.net().name().to_string(),
        kubeconfig: cluster.kubeconfig_path().to_path_buf(),
    };
    let path = state_file();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(text)?;
    }
    std::fs::write(&path, serde_json::to_string_pretty(&state).map_err(text)?).map_err(text)?;
    println!(
        "\nLive cluster ready in {:.1}s at {}",
        t0.elapsed().as_secs_f64(),
        cluster.api_url()
    );
    println!("export KUBECONFIG={}", cluster.kubeconfig_path().display());
    println!(
        "export PATH={}:$PATH   # kubectl and helm of the pinned versions",
        cluster.toolchain().dir().display()
    );
    println!(
        "\nPods on nodes {} run for real, in network namespace {}.",
        fleet.node_names().join(", "),
        fleet.net().name()
    );
    println!("Prometheus: {}", prometheus.url());
    println!("router: {}", router.base_url());
    println!("Try:");
    println!("  kubectl get pods -o wide -w");
    println!("  curl -s {}/models", router.base_url());
    println!("  cargo run -p modelfleet-e2e -- exec -- curl -s http://<name>.<namespace>.svc:8080/v1/models");
    let mut signals =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).map_err(text)?;
    eprintln!("running; press Ctrl-C to stop and delete it");
    signals.recv().await;
    eprintln!("stopping…");
    let _ = std::fs::remove_file(&path);
    for agents in &mut node_agents {
        agents.stop();
    }
    operator.stop(modelfleet_testkit::process::STOP_GRACE);
    router.process.stop(modelfleet_testkit::process::STOP_GRACE);
    prometheus.stop();
    fleet.stop().await;
    cluster.stop();
    eprintln!("stopped");
    Ok(())
}

/// `exec -- <command>`: runs it inside the fleet namespace (`ip netns exec`, which also points
/// `/etc/resolv.conf` at the fleet's CoreDNS) with the cluster's KUBECONFIG.
pub fn exec(command: &[String]) -> Result<std::process::ExitCode, String> {
    let path = state_file();
    let text = std::fs::read_to_string(&path).map_err(|_| {
        format!(
            "no live cluster is running ({} not found): start one with `modelfleet-e2e up --live`",
            path.display()
        )
    })?;
    let state: LiveState = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let (program, args) = command
        .split_first()
        .ok_or("exec needs a command: modelfleet-e2e exec -- <command>")?;
    let status = std::process::Command::new("ip")
        .args(["netns", "exec", &state.netns, program])
        .args(args)
        .env("KUBECONFIG", &state.kubeconfig)
        .status()
        .map_err(|e| format!("run ip netns exec: {e}"))?;
    Ok(std::process::ExitCode::from(
        u8::try_from(status.code().unwrap_or(1)).unwrap_or(1),
    ))
}

/// The router with anonymous access on each model's lowest tier, streaming its counts to the
/// operator's hub (`status.routing`) with a token of its own ServiceAccount `modelfleet-router`.
async fn start_reporting_router(
    fleet: &mut LiveFleet,
    cluster: &LocalCluster,
    client: &kube::Client,
    hub: std::net::SocketAddr,
) -> Result<modelfleet_testkit::live::router::FleetRouter, String> {
    let token = modelfleet_testkit::agents::request_telemetry_token(client, "default", "modelfleet-router")
        .await
        .map_err(text)?;
    let token_file = cluster.dir().join("modelfleet-router.token");
    write_private(&token_file, &token).map_err(text)?;
    let flags = [
        "--allow-anonymous".to_owned(),
        format!("--operator-url=http://{hub}"),
        format!("--token-file={}", token_file.display()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    fleet.start_router(cluster, &flags).await.map_err(text)
}

/// Writes `text` to `path`, readable by this user only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}
