//! Autoscaler reaction benchmark: from a 5× load step, as the node agents report it, to the new
//! replica count written on the child Deployment.
//!
//! ```sh
//! cargo run --release -p modelfleet-operator --example autoscale_bench -- 40
//! ```
//! Argument: trials (40). Starts a local control plane with enough 8-GPU nodes for every
//! ModelDeployment and one stepped one, and the operator (in process, default 2 s tick), creates
//! one ModelDeployment per trial (2 replicas,
//! `queueDepthPerReplica: 4`), and streams NodeReports for all their pods every second (a
//! synthetic agent authenticated with a real projected token) at the target load. Each trial then
//! steps one ModelDeployment to 5× its load at a random phase of the tick and measures until its
//! Deployment's `spec.replicas` changes (a watch), then deletes it to free its GPUs.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{
    Api, ResourceExt,
    api::{ListParams, PostParams},
    runtime::{WatchStreamExt, watcher},
};
use modelfleet_crds::{ModelDeployment, constants::labels};
use modelfleet_operator::{OperatorConfig, controller, http::HttpState};
use modelfleet_proto::telemetry::{NodeReport, PodRef, ServerSample, telemetry_client::TelemetryClient};
use modelfleet_testkit::{LocalCluster, agents::request_agent_token, testing};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const NAMESPACE: &str = "default";
const TARGET: f64 = 4.0;

fn spec() -> &'static str {
    "model: {name: m, version: '1', uri: 'hf://o/m'}
runtime: {backend: synthetic, device: cpu}
resources: {gpus: 1}
scaling:
  minReplicas: 2
  maxReplicas: 20
  targets: {queueDepthPerReplica: 4}
  stableWindow: 60s
  panicWindow: 6s
  scaleDownStabilization: 300s"
}

#[tokio::main]
async fn main() {
    let trials: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(40);
    // 2 GPUs per ModelDeployment, plus 8 for the stepped one's new replicas.
    let node_count = (2 * trials + 8).div_ceil(8);
    let cluster: &'static LocalCluster = Box::leak(Box::new(
        testing::start_with_gpu_nodes(node_count).await.expect("cluster"),
    ));
    let client = cluster.client().await.expect("client");
    let telemetry_addr = start_operator(cluster);
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), NAMESPACE);
    create_and_wait_ready(&client, &api, trials).await;
    eprintln!("{trials} ModelDeployments with 2 ready replicas each");
    let stepped: Steps = Default::default();
    // When the first report carrying each step left the agent.
    let reported: Steps = Default::default();
    let tx = connect_agent(&client, telemetry_addr).await;
    let reporter = spawn_reporter(&client, tx, stepped.clone(), reported.clone());
    // Let the autoscaler see steady data first.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let changed = watch_replica_changes(deployments);
    let (reactions, missed) = run_trials(&api, trials, &stepped, &reported, &changed).await;
    reporter.abort();
    print_reactions(trials, reactions, &missed);
}

/// Instants per ModelDeployment name.
type Steps = Arc<Mutex<HashMap<String, Instant>>>;

/// Runs the operator on its own runtime (the benchmark's waits must not delay it); returns the
/// telemetry hub's address.
fn start_operator(cluster: &'static LocalCluster) -> std::net::SocketAddr {
    let telemetry_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port");
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        runtime.block_on(async move {
            let client = cluster.client().await.expect("client");
            let config = OperatorConfig {
                telemetry_addr,
                ..Default::default()
            };
            let _ = controller::run(client, config, HttpState::default(), std::future::pending()).await;
        });
    });

    telemetry_addr
}

/// Creates the ModelDeployments and waits until each has 2 ready replicas.
async fn create_and_wait_ready(client: &kube::Client, api: &Api<ModelDeployment>, trials: usize) {
    for i in 0..trials {
        let md = ModelDeployment::new(&format!("md-{i}"), serde_yaml::from_str(spec()).expect("spec"));
        api.create(&PostParams::default(), &md).await.expect("create");
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let ready_at_two = |list: &[Deployment]| {
        list.iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2))
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let list = deployments
            .list(&ListParams::default())
            .await
            .expect("list")
            .items;
        if ready_at_two(&list) >= trials {
            break;
        }
        if Instant::now() > deadline {
            not_ready(client, &list, trials).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Panics with the pods' phases and the Deployments' replicas.
async fn not_ready(client: &kube::Client, list: &[Deployment], trials: usize) {
    let ready_at_two = |list: &[Deployment]| {
        list.iter()
            .filter(|d| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2))
            .count()
    };
    let mut phases: HashMap<String, usize> = HashMap::new();
    for p in Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
    {
        *phases
            .entry(format!("{:?}", p.status.and_then(|s| s.phase)))
            .or_default() += 1;
    }
    let replicas: Vec<_> = list
        .iter()
        .map(|d| {
            (
                d.spec.as_ref().and_then(|s| s.replicas),
                d.status.as_ref().and_then(|s| s.ready_replicas),
            )
        })
        .collect();
    panic!(
        "{} of {trials} ModelDeployments have 2 ready replicas after 300 s; pods by phase {phases:?}; deployments (replicas, ready) {replicas:?}",
        ready_at_two(list),
    );
}

/// The synthetic agent's stream to the hub: one stream, every pod of every ModelDeployment.
async fn connect_agent(
    client: &kube::Client,
    telemetry_addr: std::net::SocketAddr,
) -> mpsc::Sender<NodeReport> {
    let token = request_agent_token(client, NAMESPACE).await.expect("token");
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let mut hub = TelemetryClient::connect(format!("http://{telemetry_addr}"))
        .await
        .expect("connect to the hub");
    let mut acks = hub
        .report(request)
        .await
        .expect("the hub accepts the token")
        .into_inner();
    tokio::spawn(async move { while let Ok(Some(_)) = acks.message().await {} });
    tx
}

/// Reports every Running pod each second, at 5× load once its ModelDeployment was stepped.
fn spawn_reporter(
    client: &kube::Client,
    tx: mpsc::Sender<NodeReport>,
    stepped: Steps,
    reported: Steps,
) -> tokio::task::JoinHandle<()> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        for sequence in 1.. {
            tick.tick().await;
            let list = pods
                .list(&ListParams::default().labels(labels::DEPLOYMENT))
                .await
                .map(|l| l.items)
                .unwrap_or_default();
            let now = Instant::now();
            let servers = samples(&list, &stepped, now);
            let sent = Instant::now();
            for md in stepped
                .lock()
                .expect("lock")
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(m, _)| m)
            {
                reported.lock().expect("lock").entry(md.clone()).or_insert(sent);
            }
            let report = NodeReport {
                node: "bench-agent".into(),
                sequence,
                interval_ms: 1000,
                simulated: true,
                servers,
                ..Default::default()
            };
            if tx.send(report).await.is_err() {
                return;
            }
        }
    })
}

/// One report's samples: the ModelDeployment's load is 2 × target spread over its pods, 5×
/// that after its step.
fn samples(list: &[Pod], stepped: &Steps, now: Instant) -> Vec<ServerSample> {
    let mut per_md: HashMap<String, usize> = HashMap::new();
    for p in list {
        *per_md.entry(p.labels()[labels::DEPLOYMENT].clone()).or_default() += 1;
    }
    list.iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| {
            let md = p.labels()[labels::DEPLOYMENT].clone();
            // The step is in the report sent after its instant.
            let factor = if stepped.lock().expect("lock").get(&md).is_some_and(|t| *t <= now) {
                5.0
            } else {
                1.0
            };
            ServerSample {
                pod: Some(PodRef {
                    namespace: NAMESPACE.into(),
                    name: p.name_any(),
                    container: "server".into(),
                }),
                deployment: md.clone(),
                revision: p.labels().get(labels::REVISION).cloned().unwrap_or_default(),
                scraped: true,
                // The ModelDeployment's load is 2 × target, spread over its pods.
                queue_depth: factor * 2.0 * TARGET / per_md[&md] as f64,
                ..Default::default()
            }
        })
        .collect()
}

/// When each ModelDeployment's Deployment first left 2 replicas.
fn watch_replica_changes(deployments: Api<Deployment>) -> Steps {
    let changed: Steps = Default::default();
    {
        let changed = changed.clone();
        let watch = watcher(deployments, watcher::Config::default()).applied_objects();
        tokio::spawn(async move {
            let mut watch = std::pin::pin!(watch);
            while let Some(Ok(d)) = watch.next().await {
                if d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(2) != 2
                    && let Some(md) = d.labels().get(labels::DEPLOYMENT)
                {
                    changed
                        .lock()
                        .expect("lock")
                        .entry(md.clone())
                        .or_insert_with(Instant::now);
                }
            }
        });
    }
    changed
}

/// Steps each ModelDeployment in turn at a random phase; the reaction times and the missed ones.
async fn run_trials(
    api: &Api<ModelDeployment>,
    trials: usize,
    stepped: &Steps,
    reported: &Steps,
    changed: &Steps,
) -> (Vec<f64>, HashSet<String>) {
    let mut reactions = Vec::new();
    let mut missed = HashSet::new();
    for i in 0..trials {
        let md = format!("md-{i}");
        // A random phase against the agent's second and the autoscaler's tick.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..2000))).await;
        let at = Instant::now();
        stepped.lock().expect("lock").insert(md.clone(), at);
        let deadline = at + Duration::from_secs(15);
        let done = loop {
            if let Some(t) = changed.lock().expect("lock").get(&md) {
                break Some(*t);
            }
            if Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let sent = reported.lock().expect("lock").get(&md).copied();
        match done.zip(sent) {
            Some((t, sent)) => reactions.push(t.saturating_duration_since(sent).as_secs_f64()),
            None => {
                missed.insert(md.clone());
            }
        }
        api.delete(&md, &Default::default()).await.expect("delete");
    }
    (reactions, missed)
}

/// Prints the distribution and the quantiles.
fn print_reactions(trials: usize, mut reactions: Vec<f64>, missed: &HashSet<String>) {
    let mut histogram: std::collections::BTreeMap<u64, usize> = Default::default();
    for r in &reactions {
        *histogram.entry((r * 10.0).floor() as u64).or_default() += 1;
    }
    let histogram: Vec<String> = histogram
        .iter()
        .map(|(tenths, n)| {
            format!(
                "{:.1}-{:.1} s: {n}",
                *tenths as f64 / 10.0,
                (*tenths + 1) as f64 / 10.0
            )
        })
        .collect();
    println!("distribution: {}", histogram.join(", "));
    reactions.sort_by(f64::total_cmp);
    let q = |p: f64| reactions[((reactions.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "trials: {trials}, missed (no change within 15 s): {}",
        missed.len()
    );
    if !reactions.is_empty() {
        println!(
            "reaction from the 5x step to the new replica count on the Deployment: p50 {:.2} s, p90 {:.2} s, p99 {:.2} s, max {:.2} s",
            q(0.5),
            q(0.9),
            q(0.99),
            reactions[reactions.len() - 1]
        );
    }
}
