//! `modelfleet-e2e bench-live`: the live fleet with the real MiniLM. Time from start to the first
//! Ready live pod, memory of the whole live cluster with 4 real-model replicas, and the
//! throughput of 1, 2 and 4 real-model replicas on this machine's cores (closed loop through the
//! Service from inside the fleet namespace). Results go to docs/benchmarks.md.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use modelfleet_crds::ModelDeployment;

use modelfleet_testkit::{
    ClusterConfig, Error, LocalCluster, Result, crds,
    live::{self, LiveConfig, LiveFleet},
    operator_process,
    procfs::rss_mib,
};

/// How `bench-live` runs.
#[derive(Debug, Clone)]
pub struct LiveBenchConfig {
    /// The MiniLM model directory (safetensors, tokenizer).
    pub model_dir: std::path::PathBuf,
    /// Replica counts whose throughput is measured.
    pub replicas: Vec<i32>,
    /// Concurrent clients of the closed loop.
    pub clients: usize,
    /// Length of each throughput run.
    pub duration: Duration,
}

/// One throughput run.
#[derive(Debug, Clone)]
pub struct ThroughputRun {
    /// Ready real-model replicas.
    pub replicas: i32,
    /// Answered requests per second.
    pub rps: f64,
    /// Median and 95th percentile latency.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// Failed requests.
    pub failures: usize,
}

/// What `bench-live` measured.
#[derive(Debug, Clone)]
pub struct LiveBench {
    /// From the start of the cluster to the first Ready live server pod (binaries already built).
    pub first_ready_pod: Duration,
    /// Resident memory with 4 real-model replicas, MiB: (part, MiB).
    pub rss_mib: Vec<(String, f64)>,
    /// Throughput per replica count.
    pub runs: Vec<ThroughputRun>,
}

const NAME: &str = "minilm";

fn real_minilm(uri: &str) -> Result<ModelDeployment> {
    let text = format!(
        "apiVersion: modelfleet.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: {NAME}\nspec:\n  model:\n    name: all-MiniLM-L6-v2\n    version: \"1\"\n    uri: {uri}\n    task: embedding\n  runtime:\n    device: cpu\n  resources:\n    gpus: 0\n    cpu: 100m\n    memory: 512Mi\n  replicas: 1\n"
    );
    let mut all = modelfleet_crds::manifest::model_deployments_from_yaml(&text)
        .map_err(|e| Error::Runtime(format!("the benchmark's ModelDeployment: {e}")))?;
    Ok(all.remove(0))
}

/// Runs the benchmark; progress goes to stderr.
pub async fn run(config: &LiveBenchConfig) -> Result<LiveBench> {
    eprintln!("bench-live: building the live images");
    let images = crate::build::live_images().await.map_err(Error::Binary)?;
    let t0 = Instant::now();
    let cluster = LocalCluster::start(ClusterConfig::default()).await?;
    let client = cluster.client().await?;
    crds::install_modelfleet_crds(&client).await?;
    let fleet = LiveFleet::start(
        &cluster,
        LiveConfig {
            images: Some(images),
            ..Default::default()
        },
    )
    .await?;
    let binary = fleet
        .images()
        .binary_for("modelfleet-operator")
        .map_err(Error::Runtime)?
        .to_path_buf();
    let hub = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(Error::io("pick a port for the hub"))?;
    let mut operator = operator_process::start_operator(&binary, &cluster, hub, true)?;
    let uri = live::stage_model(&config.model_dir, "all-MiniLM-L6-v2")?;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &real_minilm(&uri)?).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    wait_ready(&pods, 1, Duration::from_secs(300)).await?;
    let first_ready_pod = t0.elapsed();
    eprintln!(
        "bench-live: first Ready pod after {:.1}s",
        first_ready_pod.as_secs_f64()
    );

    let mut runs = Vec::new();
    let mut rss = Vec::new();
    for &replicas in &config.replicas {
        scale(&api, replicas).await?;
        wait_ready(&pods, replicas, Duration::from_secs(300)).await?;
        // kube-proxy programs new endpoints within a moment of their readiness.
        tokio::time::sleep(Duration::from_secs(3)).await;
        if replicas == 4 {
            rss = memory(&cluster, &fleet, operator.pid());
        }
        eprintln!(
            "bench-live: {replicas} replica(s), {} clients for {:?}",
            config.clients, config.duration
        );
        runs.push(throughput(&fleet, replicas, config).await);
    }
    operator.stop(modelfleet_testkit::process::STOP_GRACE);
    fleet.stop().await;
    cluster.stop();
    Ok(LiveBench {
        first_ready_pod,
        rss_mib: rss,
        runs,
    })
}

async fn scale(api: &Api<ModelDeployment>, replicas: i32) -> Result<()> {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    api.patch(NAME, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

async fn wait_ready(pods: &Api<Pod>, n: i32, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let selector = format!("{}={NAME}", modelfleet_crds::constants::labels::DEPLOYMENT);
    loop {
        let list = pods.list(&ListParams::default().labels(&selector)).await?;
        let ready = list
            .items
            .iter()
            .filter(|p| modelfleet_testkit::wait::pod_is_ready(p))
            .count();
        if i32::try_from(ready).unwrap_or(0) >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Runtime(format!(
                "not {n} Ready {NAME} pods within {timeout:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resident memory of the control plane, the operator, and every process in the fleet namespace
/// (kube-proxy, CoreDNS, the pods' process trees).
fn memory(cluster: &LocalCluster, fleet: &LiveFleet, operator: u32) -> Vec<(String, f64)> {
    let mut parts: Vec<(String, f64)> = cluster
        .components()
        .into_iter()
        .map(|(name, pid)| (name, rss_mib(pid)))
        .collect();
    parts.push(("modelfleet-operator".into(), rss_mib(operator)));
    let (mut servers, mut others) = (0.0, 0.0);
    for pid in pids_in_netns(fleet.net().path()) {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if comm.trim() == "modelfleet-serv" {
            servers += rss_mib(pid);
        } else {
            others += rss_mib(pid);
        }
    }
    parts.push(("4 × modelfleet-server (real MiniLM)".into(), servers));
    parts.push(("kube-proxy, CoreDNS, container wrappers".into(), others));
    parts
}

/// Pids whose network namespace is the one at `netns` (compared by inode).
fn pids_in_netns(netns: &Path) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(netns).map(|m| m.ino()) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == target))
        .collect()
}

/// A closed loop of `config.clients` clients through the Service for `config.duration`.
async fn throughput(fleet: &LiveFleet, replicas: i32, config: &LiveBenchConfig) -> ThroughputRun {
    let url = format!("http://{NAME}.default.svc:8080/v1/embeddings");
    let body = r#"{"model":"all-MiniLM-L6-v2","input":["a sentence of about the length people send to an embeddings endpoint"]}"#;
    let end = Instant::now() + config.duration;
    let clients = (0..config.clients).map(|_| async {
        let mut latencies = Vec::new();
        let mut failures = 0;
        while Instant::now() < end {
            let start = Instant::now();
            match fleet.request("POST", &url, Some(body), &[]).await {
                Ok(a) if a.status == 200 => latencies.push(start.elapsed()),
                _ => failures += 1,
            }
        }
        (latencies, failures)
    });
    let results = futures::future::join_all(clients).await;
    let failures = results.iter().map(|(_, f)| f).sum();
    let mut all: Vec<Duration> = results.into_iter().flat_map(|(l, _)| l).collect();
    all.sort();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
    };
    ThroughputRun {
        replicas,
        rps: all.len() as f64 / config.duration.as_secs_f64(),
        p50: at(0.5).unwrap_or_default(),
        p95: at(0.95).unwrap_or_default(),
        failures,
    }
}

/// The results as the Markdown docs/benchmarks.md shows.
pub fn markdown(bench: &LiveBench, config: &LiveBenchConfig) -> String {
    let mut out = format!(
        "First Ready live pod (real MiniLM) {:.1} s after the cluster started (binaries built).\n\n| Part (4 real-model replicas Ready) | RSS MiB |\n|---|---:|\n",
        bench.first_ready_pod.as_secs_f64()
    );
    for (part, mib) in &bench.rss_mib {
        out += &format!("| {part} | {mib:.0} |\n");
    }
    let total: f64 = bench.rss_mib.iter().map(|(_, m)| m).sum();
    out += &format!("| **whole live cluster** | **{total:.0}** |\n\n");
    out += &format!(
        "| Real-model replicas | req/s ({} clients, {:?}) | p50 ms | p95 ms | failed |\n|---:|---:|---:|---:|---:|\n",
        config.clients, config.duration
    );
    for r in &bench.runs {
        out += &format!(
            "| {} | {:.1} | {:.1} | {:.1} | {} |\n",
            r.replicas,
            r.rps,
            r.p50.as_secs_f64() * 1e3,
            r.p95.as_secs_f64() * 1e3,
            r.failures
        );
    }
    out
}
