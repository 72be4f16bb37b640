//! Benchmark: N ModelDeployments on M fake GPU nodes against a real local control plane.
//!
//!     cargo run --release -p modelfleet-operator --example scale_bench -- [deployments] [nodes] [concurrency]
//!
//! `BENCH_OPERATOR_BINARY=path` runs that operator build instead of building this one.
//!
//! Starts a fresh local cluster, the release operator binary as a separate process, creates the
//! ModelDeployments (1 replica, 1 GPU each) and reports: time until every child Deployment exists,
//! time until every ModelDeployment is Available, reconcile duration p50/p99 (from the operator's
//! histogram) and the share within the 50 ms goal, the API server's own mean time for each kind of
//! apply the operator sends, and the operator's peak memory and CPU seconds (from /proc).

use std::{
    collections::BTreeMap,
    net::TcpListener,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api,
    api::{ListParams, PostParams},
};
use modelfleet_crds::{ModelDeployment, v1alpha1::Phase};
use modelfleet_testkit::{
    procfs::{cpu_seconds, proc_status_mib},
    testing,
};

/// A Prometheus histogram's cumulative buckets, `(le, count)` ordered by edge, `+Inf` last.
fn buckets(metrics: &str, name: &str) -> Vec<(f64, f64)> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, l.rsplit(' ').next()?.parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
}

/// Quantile from a Prometheus histogram's cumulative buckets, interpolated within the bucket.
fn quantile(metrics: &str, name: &str, q: f64) -> f64 {
    let buckets = buckets(metrics, name);
    let total = buckets.last().map_or(0.0, |b| b.1);
    let target = q * total;
    let mut prev = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= target {
            if le.is_infinite() {
                return prev.0;
            }
            let share = if count > prev.1 {
                (target - prev.1) / (count - prev.1)
            } else {
                1.0
            };
            return prev.0 + share * (le - prev.0);
        }
        prev = (le, count);
    }
    prev.0
}

/// Share of a histogram's observations at or below its bucket edge `le`.
fn share_within(metrics: &str, name: &str, le: f64) -> f64 {
    let buckets = buckets(metrics, name);
    let total = buckets.last().map_or(0.0, |b| b.1);
    let within = buckets.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
    if total > 0.0 { within / total } else { 0.0 }
}

/// The operator's kinds of server-side apply, as the API server labels them.
const APPLIED: [&str; 5] = [
    "services",
    "deployments",
    "configmaps",
    "poddisruptionbudgets",
    "modeldeployments/status",
];

/// The API server's view of the operator's applies, from its own metrics.
#[derive(Default)]
struct ApplyStats {
    /// Resource → (seconds, count) of its applies, server side.
    time: BTreeMap<String, (f64, f64)>,
    /// Resource → applies that found the object existing (HTTP 200, not 201 Created). In this
    /// benchmark no child changes after its creation, so each one is a redundant write.
    existing: BTreeMap<String, f64>,
    /// Resource → every apply (the operator is the only client that applies).
    applies: BTreeMap<String, f64>,
}

impl ApplyStats {
    async fn read(client: &kube::Client) -> Self {
        let mut stats = Self::default();
        let Ok(request) = http::Request::get("/metrics").body(Vec::new()) else {
            return stats;
        };
        let text = client.request_text(request).await.unwrap_or_default();
        for line in text.lines() {
            let Some((name, rest)) = line.split_once('{') else {
                continue;
            };
            let Some((labels, value)) = rest.rsplit_once("} ") else {
                continue;
            };
            let label = |key: &str| {
                labels
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key)?.strip_prefix("=\"")?.strip_suffix('"'))
            };
            if label("verb") != Some("APPLY") {
                continue;
            }
            let resource = match (label("resource"), label("subresource")) {
                (Some(r), Some(s)) if !s.is_empty() => format!("{r}/{s}"),
                (Some(r), _) => r.to_string(),
                _ => continue,
            };
            let (true, Ok(value)) = (APPLIED.contains(&resource.as_str()), value.parse::<f64>()) else {
                continue;
            };
            match name {
                "apiserver_request_duration_seconds_sum" => {
                    stats.time.entry(resource).or_default().0 += value
                }
                "apiserver_request_duration_seconds_count" => {
                    stats.time.entry(resource).or_default().1 += value
                }
                "apiserver_request_total" => {
                    if label("code") == Some("200") {
                        *stats.existing.entry(resource.clone()).or_default() += value;
                    }
                    *stats.applies.entry(resource).or_default() += value;
                }
                _ => {}
            }
        }
        stats
    }

    fn mean_times(&self) -> String {
        self.time
            .iter()
            .filter(|(_, (_, count))| *count > 0.0)
            .map(|(r, (sum, count))| format!("{r} {:.0} ms ({count:.0})", 1000.0 * sum / count))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// (child applies, status applies) per ModelDeployment.
    fn writes_per(&self, count: usize) -> (f64, f64) {
        let status = self
            .applies
            .get("modeldeployments/status")
            .copied()
            .unwrap_or(0.0);
        let all: f64 = self.applies.values().sum();
        ((all - status) / count as f64, status / count as f64)
    }

    fn redundant_child_writes(&self) -> f64 {
        self.existing
            .iter()
            .filter(|(r, _)| !r.ends_with("/status"))
            .fold(0.0, |sum, (_, n)| sum + n)
    }
}

/// Kills the operator when the benchmark ends, also on a panic.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Builds the release operator next to this example and returns its path.
fn build_operator() -> std::path::PathBuf {
    let binary = std::env::current_exe()
        .expect("exe")
        .parent()
        .and_then(|p| p.parent())
        .expect("target dir")
        .join("modelfleet-operator");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "modelfleet-operator",
            "--bin",
            "modelfleet-operator",
            // With the example in the same build, cargo resolves features as `cargo run
            // --example` did, so the operator is not rebuilt with other features each run.
            "--example",
            "scale_bench",
        ])
        .status()
        .expect("cargo build");
    assert!(status.success());
    binary
}

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let node_count: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let concurrency: u16 = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);

    let cluster = testing::start_with_gpu_nodes(node_count).await.expect("cluster");
    let client = cluster.client().await.expect("client");
    eprintln!("cluster with {node_count} GPU nodes ready");
    let (operator, port) = start_operator(&cluster, concurrency);
    let pid = operator.0.id();
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), "default");
    let t0 = Instant::now();
    create_all(&api, count).await;
    let created = t0.elapsed();
    let (children_at, available_at, peak_mib) = wait_available(&client, &cluster, pid, count, t0).await;
    let run = Run {
        count,
        node_count,
        created,
        children_at,
        available_at,
        peak_mib,
    };
    report(&client, port, pid, operator, &run).await;
    cluster.stop();
}

/// The operator process (killed on drop) and its metrics port.
fn start_operator(
    cluster: &modelfleet_testkit::cluster::LocalCluster,
    concurrency: u16,
) -> (KillOnDrop, u16) {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    // `BENCH_OPERATOR_BINARY` runs another build (an older commit, for a side-by-side figure).
    let binary = match std::env::var_os("BENCH_OPERATOR_BINARY") {
        Some(path) => std::path::PathBuf::from(path),
        None => build_operator(),
    };
    let log =
        std::fs::File::create(std::env::temp_dir().join("modelfleet-scale-bench-operator.log")).expect("log");
    let operator = Command::new(&binary)
        .args([
            "run",
            "--log-format=text",
            "--telemetry-addr=127.0.0.1:0",
            &format!("--concurrency={concurrency}"),
        ])
        .arg(format!("--http-addr=127.0.0.1:{port}"))
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .env(
            "RUST_LOG",
            std::env::var("BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("operator");
    (KillOnDrop(operator), port)
}

/// Creates `count` ModelDeployments (1 replica, 1 GPU each) from 8 tasks.
async fn create_all(api: &Api<ModelDeployment>, count: usize) {
    let spec: modelfleet_crds::ModelDeploymentSpec = serde_yaml::from_str(
        "model: {name: m, version: '1', uri: 'hf://o/m'}\nresources: {gpus: 1}\nreplicas: 1\n",
    )
    .expect("spec");
    let mut tasks = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(count.div_ceil(8).max(1)) {
        let (api, spec, chunk) = (api.clone(), spec.clone(), chunk.to_vec());
        tasks.push(tokio::spawn(async move {
            for i in chunk {
                let mut md = ModelDeployment::new(&format!("bench-{i:04}"), spec.clone());
                md.metadata.namespace = Some("default".into());
                api.create(&PostParams::default(), &md).await.expect("create");
            }
        }));
    }
    for t in tasks {
        t.await.expect("create task");
    }
}

/// Waits until every ModelDeployment is Available: when every child Deployment existed, when
/// all were Available, and the operator's peak memory meanwhile.
async fn wait_available(
    client: &kube::Client,
    cluster: &modelfleet_testkit::cluster::LocalCluster,
    pid: u32,
    count: usize,
    t0: Instant,
) -> (Option<Duration>, Duration, f64) {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), "default");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let selector = ListParams::default().labels("modelfleet.dev/deployment");
    let mut children_at = None;
    let mut peak_mib = 0.0_f64;
    let available_at = loop {
        peak_mib = peak_mib.max(proc_status_mib(pid, "VmHWM:"));
        if children_at.is_none()
            && deployments
                .list_metadata(&selector)
                .await
                .map(|l| l.items.len())
                .unwrap_or(0)
                >= count
        {
            children_at = Some(t0.elapsed());
        }
        let mds = api.list(&ListParams::default()).await.expect("list");
        let available = mds
            .items
            .iter()
            .filter(|m| m.status.as_ref().and_then(|s| s.phase) == Some(Phase::Available))
            .count();
        if available >= count {
            break t0.elapsed();
        }
        if t0.elapsed() > Duration::from_secs(300) {
            for md in mds
                .items
                .iter()
                .filter(|m| m.status.as_ref().and_then(|s| s.phase) != Some(Phase::Available))
                .take(2)
            {
                eprintln!("{}", serde_yaml::to_string(&md.status).unwrap_or_default());
                let name = md.metadata.name.clone().unwrap_or_default();
                let ds = deployments
                    .list(&ListParams::default().labels(&format!("modelfleet.dev/deployment={name}")))
                    .await
                    .expect("list");
                for d in ds.items {
                    eprintln!("deployment {:?} status {:?}", d.metadata.name, d.status);
                }
            }
            panic!(
                "only {available}/{count} Available after 300 s; operator log in {}",
                cluster.dir().display()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    (children_at, available_at, peak_mib)
}

/// What one run measured besides the operator's metrics.
struct Run {
    count: usize,
    node_count: usize,
    created: Duration,
    children_at: Option<Duration>,
    available_at: Duration,
    peak_mib: f64,
}

/// Prints the table.
async fn report(client: &kube::Client, port: u16, pid: u32, operator: KillOnDrop, run: &Run) {
    let Run {
        count,
        node_count,
        created,
        children_at,
        available_at,
        mut peak_mib,
    } = *run;
    let metrics = modelfleet_testkit::http::get(port, "/metrics")
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let name = "modelfleet_operator_reconcile_duration_seconds";
    let reconciles: f64 = metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}_count")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0);
    let applies = ApplyStats::read(client).await;
    let cpu = cpu_seconds(pid);
    peak_mib = peak_mib.max(proc_status_mib(pid, "VmHWM:"));
    drop(operator);

    println!("| metric | value |\n|---|---|");
    println!("| ModelDeployments / GPU nodes | {count} / {node_count} |");
    println!(
        "| all {count} created (client side) | {:.1} s |",
        created.as_secs_f64()
    );
    println!(
        "| all child Deployments exist | {:.1} s |",
        children_at.unwrap_or(available_at).as_secs_f64()
    );
    println!("| all Available | {:.1} s |", available_at.as_secs_f64());
    println!("| reconciles | {reconciles:.0} |");
    println!(
        "| reconcile p50 | {:.1} ms |",
        1000.0 * quantile(&metrics, name, 0.5)
    );
    println!(
        "| reconcile p99 | {:.1} ms |",
        1000.0 * quantile(&metrics, name, 0.99)
    );
    println!(
        "| reconciles within 50 ms | {:.2} % |",
        100.0 * share_within(&metrics, name, 0.05)
    );
    println!(
        "| API server's mean time per apply (server side; count) | {} |",
        applies.mean_times()
    );
    println!(
        "| applies to an existing child (redundant here) | {:.0} |",
        applies.redundant_child_writes()
    );
    let (child_writes, status_writes) = applies.writes_per(count);
    println!(
        "| API writes per ModelDeployment (applies: children + status) | {:.2} + {status_writes:.2} |",
        child_writes
    );
    let decision = "modelfleet_operator_decision_duration_seconds";
    println!(
        "| operator's own time per reconcile (decision) p50 / p99 | {:.3} / {:.3} ms |",
        1000.0 * quantile(&metrics, decision, 0.5),
        1000.0 * quantile(&metrics, decision, 0.99)
    );
    println!("| operator peak RSS (VmHWM) | {peak_mib:.1} MiB |");
    println!("| operator CPU (user+system) | {cpu:.1} s |");
}
