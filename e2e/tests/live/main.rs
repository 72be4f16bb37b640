//! The live fleet: ModelDeployments whose pods run for real on live nodes, reached through
//! Service DNS from inside the fleet namespace. One cluster, fleet, Prometheus, operator and set
//! of node agents serve every test of this binary.

mod rollouts;
mod router;
mod scale_zero;
mod serving;
mod telemetry;

use std::{
    collections::BTreeMap,
    sync::OnceLock,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use modelfleet_crds::ModelDeployment;
use modelfleet_testkit::{
    ClusterConfig, LocalCluster,
    agents::NodeAgents,
    crds,
    live::{self, LiveConfig, LiveFleet},
    operator_process,
    process::ManagedProcess,
    prometheus::Prometheus,
    testing::TestNamespace,
};

#[derive(Debug)]
pub struct Live {
    pub cluster: LocalCluster,
    pub fleet: LiveFleet,
    pub prometheus: Prometheus,
    pub agents: Vec<NodeAgents>,
    /// The operator's telemetry hub, also reachable at this address inside the fleet namespace.
    pub hub: std::net::SocketAddr,
    _operator: ManagedProcess,
    pub model_uri: String,
}

pub fn model_dir() -> std::path::PathBuf {
    if let Ok(dir) = std::env::var("MODELFLEET_TEST_MODEL_DIR") {
        return dir.into();
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../server/scripts/fetch-model.sh");
    let out = std::process::Command::new("bash")
        .args([script, "--print-dir"])
        .output()
        .expect("fetch-model.sh");
    assert!(out.status.success(), "fetch-model.sh failed");
    String::from_utf8_lossy(&out.stdout).trim().into()
}

async fn start() -> modelfleet_testkit::Result<Live> {
    let runtime_error = modelfleet_testkit::Error::Runtime;
    let cluster = LocalCluster::start(ClusterConfig::default()).await?;
    let client = cluster.client().await?;
    crds::install_modelfleet_crds(&client).await?;
    let mut fleet = LiveFleet::start(&cluster, LiveConfig::default()).await?;
    let prometheus = fleet.start_prometheus(&cluster, Duration::from_secs(1)).await?;
    let binary = fleet
        .images()
        .binary_for("modelfleet-operator")
        .map_err(runtime_error)?
        .to_path_buf();
    let hub = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| runtime_error(format!("no free port: {e}")))?;
    let operator = operator_process::start_operator_with_prometheus(
        &binary,
        &cluster,
        hub,
        true,
        Some(&prometheus.url()),
    )?;
    fleet.relay_into_namespace(hub.port()).await?;
    let agents = fleet
        .start_node_agents(&cluster, &format!("http://{hub}"))
        .await?;
    let model_uri = live::stage_model(&model_dir(), "all-MiniLM-L6-v2")?;
    Ok(Live {
        cluster,
        fleet,
        prometheus,
        agents,
        hub,
        _operator: operator,
        model_uri,
    })
}

/// One live cluster per test binary, on a runtime of its own that lives as long as the process.
pub fn shared() -> &'static Live {
    // The outcome is kept either way: a fixture that failed to start fails every test at once
    // with its reason instead of being retried by each.
    static LIVE: OnceLock<Result<Live, String>> = OnceLock::new();
    let live = LIVE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime");
            runtime.block_on(async move {
                let _ = tx.send(start().await);
                std::future::pending::<()>().await;
            });
        });
        rx.recv()
            .map_err(|e| format!("the live fixture thread: {e}"))?
            .map_err(|e| e.to_string())
    });
    live.as_ref()
        .unwrap_or_else(|e| panic!("cannot start the live fleet: {e}"))
}

/// A router for one test, watching one namespace. Every router listens on the same address in
/// the fleet namespace ([`modelfleet_testkit::live::router::HTTP_IN_NAMESPACE`]), so tests take
/// turns: the turn is held until the router has stopped (fields drop in order).
#[derive(Debug)]
pub struct TestRouter {
    _router: modelfleet_testkit::live::router::FleetRouter,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

/// Waits for this test's turn, then starts a router watching `namespace` with `extra` flags.
pub async fn start_router(namespace: &str, extra: &[&str]) -> TestRouter {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let turn = TURN.lock().await;
    let live = shared();
    let binary = live
        .fleet
        .images()
        .binary_for("modelfleet-router")
        .expect("router binary");
    let namespace_flag = format!("--namespace={namespace}");
    let mut flags = vec![namespace_flag.as_str()];
    flags.extend_from_slice(extra);
    let router = modelfleet_testkit::live::router::start(&live.cluster, live.fleet.net(), binary, &flags)
        .await
        .expect("the router starts and lists the cluster");
    TestRouter {
        _router: router,
        _turn: turn,
    }
}

pub async fn namespace(prefix: &str) -> (Client, TestNamespace) {
    let live = shared();
    let client = live.cluster.client().await.expect("client");
    let ns = TestNamespace::create(&live.cluster, &client, prefix)
        .await
        .expect("namespace");
    (client, ns)
}

/// A ModelDeployment from YAML (the `apiVersion`/`kind` header is added).
pub fn model_deployment(yaml: &str) -> ModelDeployment {
    let text = format!("apiVersion: modelfleet.dev/v1alpha1\nkind: ModelDeployment\n{yaml}");
    modelfleet_crds::manifest::model_deployments_from_yaml(&text)
        .unwrap_or_else(|e| panic!("{e}: {text}"))
        .remove(0)
}

/// `name` serving synthetic embeddings (MiniLM's tokenizer) of `dim` dimensions on `replicas` CPU
/// pods, with
/// `extra` (more YAML under `spec`, indented by two spaces) when given.
pub fn synthetic(name: &str, version: &str, dim: usize, replicas: i32, extra: &str) -> ModelDeployment {
    let uri = &shared().model_uri;
    model_deployment(&format!(
        "metadata:\n  name: {name}\nspec:\n  model:\n    name: {name}-model\n    version: \"{version}\"\n    uri: {uri}\n    task: embedding\n  runtime:\n    device: cpu\n    backend: synthetic\n    args: [\"--synthetic-dim={dim}\"]\n  resources:\n    gpus: 0\n    cpu: 100m\n    memory: 256Mi\n  replicas: {replicas}\n{extra}"
    ))
}

pub fn embedding(body: &str) -> Vec<f64> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["data"][0]["embedding"]
        .as_array()
        .unwrap_or_else(|| panic!("no embedding in {body}"))
        .iter()
        .filter_map(|x| x.as_f64())
        .collect()
}

/// What `n` embeddings requests to `url` from inside the namespace got, `concurrency` at a time:
/// per embedding dimension the number of answers, and the failures.
pub async fn send(url: &str, n: usize, concurrency: usize) -> (BTreeMap<usize, usize>, Vec<String>) {
    let live = shared();
    let body = r#"{"input":["the fleet serves for real"]}"#;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (url, next) = (url.to_string(), next.clone());
        workers.spawn(async move {
            let mut got = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                got.push(match live.fleet.request("POST", &url, Some(body), &[]).await {
                    Ok(a) if a.status == 200 => Ok(embedding(&a.body).len()),
                    Ok(a) => Err(format!("HTTP {}: {}", a.status, a.body)),
                    Err(e) => Err(e.to_string()),
                });
            }
            got
        });
    }
    let (mut dims, mut failures) = (BTreeMap::new(), Vec::new());
    for result in workers.join_all().await.into_iter().flatten() {
        match result {
            Ok(dim) => *dims.entry(dim).or_insert(0) += 1,
            Err(e) => failures.push(e),
        }
    }
    (dims, failures)
}

pub use modelfleet_testkit::wait::pod_is_ready as is_ready;

pub fn label<'a>(p: &'a Pod, key: &str) -> &'a str {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key))
        .map_or("", String::as_str)
}

/// Waits until `check` holds for the pods of `namespace` matching `selector`.
pub async fn wait_pods(
    pods: &Api<Pod>,
    selector: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&[Pod]) -> bool,
) -> Vec<Pod> {
    let deadline = Instant::now() + timeout;
    loop {
        let list = pods
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list pods");
        if check(&list.items) {
            return list.items;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {timeout:?}; pods: {:?}",
            list.items.iter().map(pod_summary).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Name, phase and each container's state, for failure messages.
pub fn pod_summary(p: &Pod) -> String {
    let status = p.status.clone().unwrap_or_default();
    let containers: Vec<String> = status
        .container_statuses
        .iter()
        .flatten()
        .map(|c| {
            let state = c.state.clone().unwrap_or_default();
            let detail = match (&state.waiting, &state.terminated) {
                (Some(w), _) => format!("waiting {:?}: {:?}", w.reason, w.message),
                (_, Some(t)) => format!("terminated {} {:?}", t.exit_code, t.reason),
                _ => "running".into(),
            };
            format!(
                "{} ready={} restarts={} {detail}",
                c.name, c.ready, c.restart_count
            )
        })
        .collect();
    format!(
        "{} {:?} [{}]",
        p.metadata.name.as_deref().unwrap_or(""),
        status.phase,
        containers.join("; ")
    )
}

/// Waits until the ModelDeployment `name` satisfies `check`.
pub async fn wait_md(
    api: &Api<ModelDeployment>,
    name: &str,
    timeout: Duration,
    what: &str,
    check: impl Fn(&ModelDeployment) -> bool,
) -> ModelDeployment {
    modelfleet_testkit::wait::wait_for(api, name, timeout, what, check)
        .await
        .unwrap_or_else(|e| panic!("{name}: {what}: {e}"))
}

pub fn is_available(md: &ModelDeployment) -> bool {
    md.status.as_ref().is_some_and(|s| {
        s.phase == Some(modelfleet_crds::v1alpha1::Phase::Available)
            && s.observed_generation == md.metadata.generation
    })
}
