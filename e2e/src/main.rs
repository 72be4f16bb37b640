//! `modelfleet-e2e`: start a local Kubernetes control plane with fake GPU nodes.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant},
};

use clap::{Parser, Subcommand};
use modelfleet_testkit::{
    ClusterConfig, GpuNodePool, LocalCluster, Toolchain, agents, crds, nodes, operator_process, process,
};
use serde::{Deserialize, Serialize};

mod build;
mod live_bench;
mod startup_bench;
mod up_live;

/// Local Kubernetes control plane for modelfleet: etcd, kube-apiserver, kube-controller-manager,
/// kube-scheduler and kwok (fake GPU nodes) on 127.0.0.1, built from pinned Go modules.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a cluster with GPU nodes and the modelfleet CRDs; tear it down on Ctrl-C.
    Up(UpArgs),
    /// Stop a cluster started with `up --keep`.
    Down {
        /// Keep the cluster directory (logs, kubeconfig) instead of deleting it.
        #[arg(long)]
        keep_dir: bool,
    },
    /// Run a command inside the live fleet's network namespace (started by `up --live`), with
    /// the cluster's DNS: `modelfleet-e2e exec -- curl http://<svc>.<ns>.svc:8080/v1/models`.
    Exec {
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Build the pinned toolchain if needed and print its directory.
    Toolchain,
    /// Measure the live fleet with the real MiniLM: start to the first Ready pod, memory with 4
    /// replicas, and throughput per replica count (Markdown for docs/benchmarks.md).
    BenchLive {
        /// Replica counts to measure, in order (memory is taken at 4).
        #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
        replicas: Vec<i32>,
        /// Concurrent clients of the closed loop.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Seconds per throughput run.
        #[arg(long, default_value_t = 15)]
        seconds: u64,
    },
    /// Measure warm start time to the first Ready GPU node and the cluster's memory.
    BenchStart {
        /// Number of start-ups to measure.
        #[arg(long, default_value_t = 3)]
        runs: u32,
    },
}

#[derive(clap::Args, Debug)]
struct UpArgs {
    /// Leave the cluster running and exit; stop it later with `modelfleet-e2e down`.
    #[arg(long)]
    keep: bool,
    /// Number of GPU nodes.
    #[arg(long, default_value_t = 4)]
    gpu_nodes: usize,
    /// GPUs per node (`nvidia.com/gpu` capacity).
    #[arg(long, default_value_t = 8)]
    gpus_per_node: u32,
    /// GPU product label (`nvidia.com/gpu.product`).
    #[arg(long, default_value = "NVIDIA-H100-80GB-HBM3")]
    gpu_product: String,
    /// MiB per GPU (`nvidia.com/gpu.memory`).
    #[arg(long, default_value_t = 81559)]
    gpu_memory_mib: u64,
    /// Untainted CPU-only nodes, for CPU models.
    #[arg(long, default_value_t = 1)]
    cpu_nodes: usize,
    /// Cluster directory. Empty: a new temporary directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Also build and run the operator from this workspace and apply examples/minimal.yaml.
    #[arg(long)]
    with_operator: bool,
    /// Operator binary to run instead of building one (with --with-operator).
    #[arg(long, requires = "with_operator")]
    operator_binary: Option<PathBuf>,
    /// Also run a simulated node agent per GPU node and a load simulator, apply
    /// examples/gpu-autoscaled.yaml, and take each ModelDeployment's load from its
    /// `modelfleet.dev/simulated-load` annotation (watch the autoscaler react). Not with --keep:
    /// the simulator lives in this process.
    #[arg(long, requires = "with_operator", conflicts_with = "keep")]
    with_agents: bool,
    /// Live GPU nodes whose pods run for real in a network namespace of their own, with
    /// kube-proxy, CoreDNS, the operator and one node agent per node (docs/local-cluster.md).
    #[arg(long, conflicts_with_all = ["keep", "with_operator", "with_agents"])]
    live: bool,
    #[command(flatten)]
    live_args: up_live::LiveArgs,
}

/// What `up --keep` leaves for `down`.
#[derive(Serialize, Deserialize, Debug)]
struct KeptCluster {
    dir: PathBuf,
    components: Vec<(String, u32)>,
}

/// Where `up --keep` records the cluster for `down`: `$MODELFLEET_E2E_STATE`, else
/// `$HOME/.cache/modelfleet/up/cluster.json`.
fn state_file() -> PathBuf {
    if let Some(path) = std::env::var_os("MODELFLEET_E2E_STATE") {
        return PathBuf::from(path);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache/modelfleet/up/cluster.json")
}

fn step(n: u32, total: u32, what: &str, since: Instant) {
    eprintln!("[{n}/{total}] {what} ({:.1}s)", since.elapsed().as_secs_f64());
}

async fn up(args: UpArgs) -> Result<(), String> {
    if args.keep && state_file().is_file() {
        return Err(format!(
            "a kept cluster is already running ({}); stop it with `modelfleet-e2e down`",
            state_file().display()
        ));
    }
    let t0 = Instant::now();
    let total = match (args.with_operator, args.with_agents) {
        (true, true) => 7,
        (true, false) => 6,
        _ => 4,
    };
    step(
        1,
        total,
        "toolchain: finding or building the pinned Kubernetes binaries",
        t0,
    );
    let toolchain = tokio::task::spawn_blocking(Toolchain::ensure)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    step(
        2,
        total,
        "starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok",
        t0,
    );
    let config = ClusterConfig {
        dir: args.dir.clone(),
        keep_dir: args.keep,
        guarded: !args.keep,
        ..Default::default()
    };
    let cluster = LocalCluster::start(config).await.map_err(|e| e.to_string())?;
    let client = cluster.client().await.map_err(|e| e.to_string())?;
    step(
        3,
        total,
        "installing the ModelDeployment and Gateway API CRDs",
        t0,
    );
    crds::install_modelfleet_crds(&client)
        .await
        .map_err(|e| e.to_string())?;
    crds::install_gateway_api_crds(&client, &toolchain)
        .await
        .map_err(|e| e.to_string())?;
    step(
        4,
        total,
        &format!(
            "adding {} GPU nodes of {} x {}",
            args.gpu_nodes, args.gpus_per_node, args.gpu_product
        ),
        t0,
    );
    let pool = GpuNodePool {
        count: args.gpu_nodes,
        product: args.gpu_product.clone(),
        gpus_per_node: args.gpus_per_node,
        gpu_memory_mib: args.gpu_memory_mib,
        ..Default::default()
    };
    let gpu_nodes: Vec<String> = nodes::add_gpu_pool(&client, &pool)
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .filter_map(|n| n.metadata.name.clone())
        .collect();
    nodes::add_cpu_nodes(&client, args.cpu_nodes)
        .await
        .map_err(|e| e.to_string())?;
    let operator = if args.with_operator {
        step(5, total, "building and starting modelfleet-operator", t0);
        let binary = match args.operator_binary.clone() {
            Some(path) => path,
            None => operator_binary(args.with_agents).await?,
        };
        let telemetry_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free loopback port for the telemetry hub: {e}"))?;
        let process = operator_process::start_operator(&binary, &cluster, telemetry_addr, !args.keep)
            .map_err(|e| e.to_string())?;
        step(6, total, "applying examples/minimal.yaml", t0);
        apply_example(&client, "minimal.yaml").await?;
        Some((process, telemetry_addr))
    } else {
        None
    };
    let simulated = match &operator {
        Some((_, telemetry_addr)) if args.with_agents => {
            step(7, total, "starting simulated node agents and load", t0);
            let simulator = std::sync::Arc::new(
                agents::LoadSimulator::start(client.clone(), None)
                    .await
                    .map_err(|e| e.to_string())?,
            );
            let follower = agents::follow_annotations(client.clone(), simulator.clone());
            let node_agents = agents::NodeAgents::start(
                &cluster,
                agents::AgentsConfig::new(gpu_nodes, format!("http://{telemetry_addr}")),
            )
            .await
            .map_err(|e| e.to_string())?;
            apply_example(&client, "gpu-autoscaled.yaml").await?;
            Some((simulator, follower, node_agents))
        }
        _ => None,
    };
    let operator = operator.map(|(process, _)| process);
    print_ready(&cluster, t0.elapsed());
    if operator.is_some() {
        println!(
            "\nThe operator is running (log: {}/modelfleet-operator.log). Next:",
            cluster.dir().display()
        );
        println!("  kubectl get mdep -A -w");
    }
    if simulated.is_some() {
        println!("\nSimulated node agents stream to the operator. Put load on the autoscaled example:");
        println!(
            "  kubectl annotate mdep embedder {}=queued=80,rps=400,p95=0.1 --overwrite",
            agents::SIMULATED_LOAD_ANNOTATION
        );
        println!("  kubectl get mdep embedder -o jsonpath='{{.status.autoscaling}}'; kubectl get deploy -w");
    }

    if args.keep {
        let operator_pid = operator.map(|p| (p.name().to_string(), p.detach()));
        let (mut components, dir) = cluster.detach();
        components.extend(operator_pid);
        let kept = KeptCluster { dir, components };
        let path = state_file();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("create {}: {e}", parent.display()))?;
        }
        let json = serde_json::to_string_pretty(&kept).map_err(|e| e.to_string())?;
        std::fs::write(&path, json).map_err(|e| format!("write {}: {e}", path.display()))?;
        eprintln!("left running; stop it with: modelfleet-e2e down");
        return Ok(());
    }
    let mut signals = StopSignals::register()?;
    eprintln!("running; press Ctrl-C to stop and delete it");
    signals.wait().await;
    eprintln!("stopping…");
    if let Some((_, follower, mut node_agents)) = simulated {
        follower.abort();
        node_agents.stop();
    }
    if let Some(mut operator) = operator {
        operator.stop(process::STOP_GRACE);
    }
    cluster.stop();
    eprintln!("stopped");
    Ok(())
}

/// Builds the operator (and the node agent for `--with-agents`) of this checkout and returns the
/// operator's path.
async fn operator_binary(with_agents: bool) -> Result<PathBuf, String> {
    let names: &'static [&'static str] = if with_agents {
        &["modelfleet-operator", agents::NODE_AGENT_BIN]
    } else {
        &["modelfleet-operator"]
    };
    tokio::task::spawn_blocking(|| build::workspace_bins(names))
        .await
        .map_err(|e| e.to_string())??;
    operator_process::operator_binary().map_err(|e| e.to_string())
}

/// Ctrl-C or SIGTERM, registered when created (before the prompt that invites them).
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn register() -> Result<Self, String> {
        use tokio::signal::unix::{SignalKind, signal};
        let register = |kind| signal(kind).map_err(|e| format!("cannot handle signals: {e}"));
        Ok(Self {
            interrupt: register(SignalKind::interrupt())?,
            terminate: register(SignalKind::terminate())?,
        })
    }

    async fn wait(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

/// Creates `examples/<file>` in namespace `default`.
async fn apply_example(client: &kube::Client, file: &str) -> Result<(), String> {
    let path = format!("{}/../examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    let mut md = modelfleet_crds::manifest::model_deployments_from_yaml(&text)
        .map_err(|e| format!("{path}: {e}"))?
        .remove(0);
    md.metadata.namespace = Some("default".into());
    let api: kube::Api<modelfleet_crds::ModelDeployment> = kube::Api::namespaced(client.clone(), "default");
    api.create(&Default::default(), &md)
        .await
        .map_err(|e| format!("create {path}: {e}"))?;
    Ok(())
}

fn print_ready(cluster: &LocalCluster, took: Duration) {
    let kubectl_dir = cluster.toolchain().dir();
    println!(
        "\nLocal cluster ready in {:.1}s at {}",
        took.as_secs_f64(),
        cluster.api_url()
    );
    println!("  logs and certificates: {}\n", cluster.dir().display());
    println!("export KUBECONFIG={}", cluster.kubeconfig_path().display());
    println!(
        "export PATH={}:$PATH   # kubectl and helm of the pinned versions",
        kubectl_dir.display()
    );
    println!("\nTry:");
    println!("  kubectl get nodes -L nvidia.com/gpu.product,nvidia.com/gpu.count");
    println!("  kubectl apply -f examples/minimal.yaml && kubectl get mdep");
    println!(
        "  kubectl apply -f examples/gpu-autoscaled.yaml   # namespace search: kubectl create ns search first"
    );
    println!("  kubectl explain modeldeployment.spec.rollout");
}

async fn bench_start(runs: u32) -> Result<(), String> {
    tokio::task::spawn_blocking(Toolchain::ensure)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    println!(
        "| run | control plane ready (s) | first GPU node Ready (s) | cluster RSS (MiB) | per component (MiB) |"
    );
    println!("|---|---|---|---|---|");
    for run in 1..=runs {
        let s = startup_bench::measure_once().await.map_err(|e| e.to_string())?;
        let parts: Vec<String> = s.rss_mib.iter().map(|(n, m)| format!("{n} {m:.0}")).collect();
        println!(
            "| {run} | {:.1} | {:.1} | {:.0} | {} |",
            s.control_plane.as_secs_f64(),
            s.first_gpu_node_ready.as_secs_f64(),
            s.total_rss_mib(),
            parts.join(", ")
        );
    }
    Ok(())
}

async fn bench_live(replicas: Vec<i32>, clients: usize, seconds: u64) -> Result<(), String> {
    if clients == 0 || seconds == 0 {
        return Err("--clients and --seconds must be at least 1".into());
    }
    tokio::task::spawn_blocking(Toolchain::ensure)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let script = operator_process::workspace_root().join("server/scripts/fetch-model.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--print-dir")
        .output()
        .map_err(|e| format!("run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed", script.display()));
    }
    let config = live_bench::LiveBenchConfig {
        model_dir: String::from_utf8_lossy(&out.stdout).trim().into(),
        replicas,
        clients,
        duration: std::time::Duration::from_secs(seconds),
    };
    let bench = live_bench::run(&config).await.map_err(|e| e.to_string())?;
    println!("{}", live_bench::markdown(&bench, &config));
    Ok(())
}

fn down(keep_dir: bool) -> Result<(), String> {
    let path = state_file();
    let text = std::fs::read_to_string(&path)
        .map_err(|_| format!("no kept cluster ({} not found)", path.display()))?;
    let kept: KeptCluster = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, pid) in kept.components.iter().rev() {
        eprintln!("stopping {name} (pid {pid})");
        process::terminate_pid(*pid, process::STOP_GRACE);
    }
    if !keep_dir && is_cluster_dir(&kept.dir) {
        std::fs::remove_dir_all(&kept.dir).map_err(|e| format!("remove {}: {e}", kept.dir.display()))?;
    }
    std::fs::remove_file(&path).map_err(|e| format!("remove {}: {e}", path.display()))?;
    eprintln!("stopped");
    Ok(())
}

/// Refuses to delete a directory that does not look like one `up` made.
fn is_cluster_dir(dir: &Path) -> bool {
    dir.join("kubeconfig").is_file() && dir.join("pki").is_dir()
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) if args.live => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(up_live::up(args.live_args, args.dir)),
            Err(e) => Err(format!("cannot start a Tokio runtime: {e}")),
        },
        Command::Exec { command } => match up_live::exec(&command) {
            Ok(code) => return code,
            Err(e) => Err(e),
        },
        Command::Up(args) => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(up(args)),
            Err(e) => Err(format!("cannot start a Tokio runtime: {e}")),
        },
        Command::Down { keep_dir } => down(keep_dir),
        Command::BenchStart { runs } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(bench_start(runs)),
            Err(e) => Err(format!("cannot start a Tokio runtime: {e}")),
        },
        Command::BenchLive {
            replicas,
            clients,
            seconds,
        } => match tokio::runtime::Runtime::new() {
            Ok(rt) => rt.block_on(bench_live(replicas, clients, seconds)),
            Err(e) => Err(format!("cannot start a Tokio runtime: {e}")),
        },
        Command::Toolchain => Toolchain::ensure()
            .map(|t| println!("{}", t.dir().display()))
            .map_err(|e| e.to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("modelfleet-e2e: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks argument definitions only when a command is built; a clash (two flags with
    /// one id) would otherwise surface as a panic on the user's first `up`.
    #[test]
    fn the_command_line_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
