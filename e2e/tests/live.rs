//! The live fleet: ModelDeployments whose pods run for real on live nodes, reached through
//! Service DNS from inside the fleet namespace.

use std::{
    sync::OnceLock,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, api::ListParams};
use modelfleet_crds::ModelDeployment;
use modelfleet_e2e::{
    ClusterConfig, LocalCluster, crds,
    live::{self, LiveConfig, LiveFleet},
    operator_process,
    process::{ManagedProcess, is_alive},
    testing::TestNamespace,
    wait,
};

struct Live {
    cluster: LocalCluster,
    fleet: LiveFleet,
    _operator: ManagedProcess,
    model_uri: String,
}

fn model_dir() -> std::path::PathBuf {
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

async fn start() -> modelfleet_e2e::Result<Live> {
    let cluster = LocalCluster::start(ClusterConfig::default()).await?;
    let client = cluster.client().await?;
    crds::install_modelfleet_crds(&client).await?;
    let fleet = LiveFleet::start(&cluster, LiveConfig::default()).await?;
    let binary = fleet
        .images()
        .binary_for("modelfleet-operator")
        .map_err(modelfleet_e2e::Error::Runtime)?
        .to_path_buf();
    let hub = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| modelfleet_e2e::Error::Runtime(format!("no free port: {e}")))?;
    let operator = operator_process::start_operator(&binary, &cluster, hub, true)?;
    let model_uri = live::stage_model(&model_dir(), "all-MiniLM-L6-v2")?;
    Ok(Live {
        cluster,
        fleet,
        _operator: operator,
        model_uri,
    })
}

/// One live cluster per test binary, on a runtime of its own that lives as long as the process.
fn shared() -> &'static Live {
    static LIVE: OnceLock<Live> = OnceLock::new();
    LIVE.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Runtime::new().expect("a runtime");
            runtime.block_on(async move {
                let _ = tx.send(start().await);
                std::future::pending::<()>().await;
            });
        });
        rx.recv()
            .expect("the live fixture thread")
            .unwrap_or_else(|e| panic!("cannot start the live fleet: {e}"))
    })
}

async fn namespace(prefix: &str) -> (Client, TestNamespace) {
    let live = shared();
    let client = live.cluster.client().await.expect("client");
    let ns = TestNamespace::create(&live.cluster, &client, prefix)
        .await
        .expect("namespace");
    (client, ns)
}

fn minimal(uri: &str) -> ModelDeployment {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/minimal.yaml");
    let text = std::fs::read_to_string(path).expect("examples/minimal.yaml");
    let mut md = modelfleet_crds::manifest::model_deployments_from_yaml(&text)
        .expect("parse")
        .remove(0);
    md.spec.model.uri = uri.to_string();
    md
}

fn embedding(body: &str) -> Vec<f64> {
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    v["data"][0]["embedding"]
        .as_array()
        .expect("an embedding")
        .iter()
        .filter_map(|x| x.as_f64())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "issue #15: not yet run end to end; run with `cargo test -p modelfleet-e2e --test live -- --ignored`"]
async fn the_minimal_example_serves_the_same_vector_as_the_server_alone_through_service_dns() {
    let live = shared();
    let (client, ns) = namespace("live-minimal").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.create(&Default::default(), &minimal(&live.model_uri))
        .await
        .expect("create minilm");
    wait::wait_for(
        &api,
        "minilm",
        Duration::from_secs(240),
        "minilm Available",
        |md: &ModelDeployment| {
            md.status
                .as_ref()
                .is_some_and(|s| format!("{:?}", s.phase).contains("Available"))
        },
    )
    .await
    .expect("minilm becomes Available on live nodes");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let list = pods
        .list(&ListParams::default().labels("modelfleet.dev/deployment=minilm"))
        .await
        .expect("pods");
    let node = list.items[0]
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    assert!(
        node.starts_with("live-"),
        "the pod runs on a live node, not {node}"
    );

    let body = r#"{"model":"all-MiniLM-L6-v2","input":["the fleet serves for real"]}"#;
    let url = format!("http://minilm.{}.svc:8080/v1/embeddings", ns.name());
    let answer = live
        .fleet
        .request("POST", &url, Some(body), &[])
        .await
        .expect("a request through Service DNS");
    assert_eq!(answer.status, 200, "{}", answer.body);
    let through_fleet = embedding(&answer.body);

    // The same model served by the server alone, on the host's loopback.
    let server = live
        .fleet
        .images()
        .binary_for("modelfleet-server")
        .expect("server")
        .to_path_buf();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let dir = tempfile::tempdir().expect("dir");
    let args = vec![
        format!("--model-uri=file://{}", model_dir().display()),
        "--listen-address=127.0.0.1".into(),
        format!("--http-port={port}"),
        "--grpc-port=0".into(),
        "--metrics-port=0".into(),
    ];
    let mut alone =
        ManagedProcess::spawn("server-alone", &server, &args, dir.path(), true).expect("server alone");
    alone
        .wait_ready(Duration::from_secs(120), || async move {
            modelfleet_e2e::http::get(port, "/health/ready")
                .await
                .is_some_and(|(s, _)| s == 200)
        })
        .await
        .expect("the server alone is ready");
    let direct = reqwest_post(port, body).await;
    let alone_vector = embedding(&direct);
    assert_eq!(through_fleet.len(), 384);
    let max_diff = through_fleet
        .iter()
        .zip(&alone_vector)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max_diff < 1e-5, "vectors differ by {max_diff}");
}

async fn reqwest_post(port: u16, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let req = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    live::client::parse_answer(&raw).expect("answer").body
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "issue #15: not yet run end to end; run with `cargo test -p modelfleet-e2e --test live -- --ignored`"]
async fn a_killed_server_restarts_once_and_kubectl_logs_shows_both_runs() {
    let live = shared();
    let (client, ns) = namespace("live-restart").await;
    let mut md = minimal(&live.model_uri);
    md.spec.runtime.backend = serde_json::from_str("\"synthetic\"").expect("backend");
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.create(&Default::default(), &md).await.expect("create");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let pod = wait_ready_pod(&pods, Duration::from_secs(120)).await;
    let name = pod.metadata.name.clone().expect("name");
    let pid: i32 = container_id(&pod).parse().expect("a pid");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL).expect("kill");
    let restarted = wait::wait_for(
        &pods,
        &name,
        Duration::from_secs(60),
        "restartCount 1 and Ready",
        |p: &Pod| restart_count(p) == 1 && is_ready(p),
    )
    .await
    .expect("the container restarts");
    assert_ne!(container_id(&restarted), pid.to_string());
    let kubectl = |previous: bool| {
        let mut cmd = std::process::Command::new(live.cluster.toolchain().bin("kubectl"));
        cmd.arg(format!(
            "--kubeconfig={}",
            live.cluster.kubeconfig_path().display()
        ))
        .args(["logs", "-n", ns.name(), &name]);
        if previous {
            cmd.arg("--previous");
        }
        let out = cmd.output().expect("kubectl logs");
        assert!(
            out.status.success(),
            "kubectl logs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        kubectl(false).contains("listening"),
        "current log: {}",
        kubectl(false)
    );
    assert!(
        kubectl(true).contains("listening"),
        "previous log: {}",
        kubectl(true)
    );
}

async fn wait_ready_pod(pods: &Api<Pod>, timeout: Duration) -> Pod {
    let deadline = Instant::now() + timeout;
    loop {
        let list = pods.list(&ListParams::default()).await.expect("list pods");
        if let Some(p) = list.items.into_iter().find(is_ready) {
            return p;
        }
        assert!(Instant::now() < deadline, "no Ready pod within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn is_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restart_count(p: &Pod) -> i32 {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .map_or(0, |c| c.restart_count)
}

fn container_id(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .and_then(|c| c.container_id.clone())
        .unwrap_or_default()
        .trim_start_matches("modelfleet-live://")
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "issue #15: not yet run end to end; run with `cargo test -p modelfleet-e2e --test live -- --ignored`"]
async fn after_stop_no_process_of_the_fleet_is_alive_and_its_namespace_is_gone() {
    let live = shared();
    let config = LiveConfig {
        pool: modelfleet_e2e::GpuNodePool {
            name_prefix: "stop-gpu".into(),
            count: 1,
            gpus_per_node: 1,
            ..Default::default()
        },
        cpu_nodes: 0,
        images: Some(live.fleet.images().clone()),
    };
    let fleet = LiveFleet::start(&live.cluster, config)
        .await
        .expect("a second fleet");
    let name = fleet.net().name().to_string();
    let pids = fleet.service_pids();
    assert!(!pids.is_empty() && pids.iter().all(|p| is_alive(*p)));
    fleet.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pids.iter().all(|p| !is_alive(*p)), "processes left: {pids:?}");
    assert!(
        !std::path::Path::new("/run/netns").join(&name).exists(),
        "namespace {name} is left"
    );
}
