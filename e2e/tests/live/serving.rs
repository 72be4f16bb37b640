//! Pods that serve: the real model through Service DNS, restarts and logs, readiness gating the
//! Service's endpoints.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::{Api, api::PostParams};
use modelfleet_crds::ModelDeployment;
use modelfleet_testkit::{live, process::ManagedProcess, wait};

use super::{embedding, is_available, is_ready, model_dir, namespace, send, shared, wait_md, wait_pods};

fn minimal(uri: &str) -> ModelDeployment {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/minimal.yaml");
    let text = std::fs::read_to_string(path).expect("examples/minimal.yaml");
    let mut md = modelfleet_crds::manifest::model_deployments_from_yaml(&text)
        .expect("parse")
        .remove(0);
    md.spec.model.uri = uri.to_string();
    md
}

#[tokio::test(flavor = "multi_thread")]
async fn the_minimal_example_serves_the_same_vector_as_the_server_alone_through_service_dns() {
    let live = shared();
    let (client, ns) = namespace("live-minimal").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.create(&PostParams::default(), &minimal(&live.model_uri))
        .await
        .expect("create minilm");
    wait_md(
        &api,
        "minilm",
        Duration::from_secs(240),
        "Available",
        is_available,
    )
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let list = wait_pods(
        &pods,
        "modelfleet.dev/deployment=minilm",
        Duration::from_secs(5),
        "a pod",
        |p| !p.is_empty(),
    )
    .await;
    let node = list[0]
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
    // The Service is minutes old at most: until kube-proxy has programmed it, a connection can
    // go unanswered, so the first answer is awaited, every attempt bounded.
    let answer = wait::poll_until(
        Duration::from_secs(90),
        "an answer through Service DNS",
        || async {
            match live.fleet.request("POST", &url, Some(body), &[]).await {
                Ok(answer) => Ok(Some(answer)),
                Err(e) => Err(e.to_string()),
            }
        },
    )
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
        "--model-name=all-MiniLM-L6-v2".into(),
        "--listen-address=127.0.0.1".into(),
        format!("--http-port={port}"),
        "--grpc-port=0".into(),
        "--metrics-port=0".into(),
    ];
    let mut alone =
        ManagedProcess::spawn("server-alone", &server, &args, dir.path(), true).expect("server alone");
    alone
        .wait_ready(Duration::from_secs(120), || async move {
            modelfleet_testkit::http::get(port, "/health/ready")
                .await
                .is_some_and(|(s, _)| s == 200)
        })
        .await
        .expect("the server alone is ready");
    let direct = post_on_loopback(port, body).await;
    let alone_vector = embedding(&direct);
    assert_eq!(through_fleet.len(), 384);
    let max_diff = through_fleet
        .iter()
        .zip(&alone_vector)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max_diff < 1e-5, "vectors differ by {max_diff}");
}

async fn post_on_loopback(port: u16, body: &str) -> String {
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
async fn a_killed_server_restarts_once_and_kubectl_logs_shows_both_runs() {
    let live = shared();
    let (client, ns) = namespace("live-restart").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    let md = super::synthetic("restart", "1", 384, 1, "");
    api.create(&PostParams::default(), &md).await.expect("create");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let ready = wait_pods(
        &pods,
        "modelfleet.dev/deployment=restart",
        Duration::from_secs(120),
        "a Ready pod",
        |p| p.iter().any(is_ready),
    )
    .await;
    let pod = ready.into_iter().find(is_ready).expect("a Ready pod");
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
    let logs = |previous: bool| {
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
    let (current, previous) = (logs(false), logs(true));
    assert!(current.contains("listening"), "current log: {current}");
    assert!(previous.contains("listening"), "previous log: {previous}");
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

/// A server pod with a readiness probe on a flag file in a hostPath directory the test controls,
/// serving embeddings of `dim` dimensions, labelled `app=gated`.
fn gated_pod(name: &str, dim: usize, flags: &std::path::Path) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"app": "gated"}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": "live-cpu-0"},
            "containers": [{
                "name": "server",
                "image": "modelfleet-server",
                "args": [
                    "--backend=synthetic", "--device=cpu", format!("--synthetic-dim={dim}"),
                    format!("--model-uri={}", shared().model_uri),
                ],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {
                    "exec": {"command": ["test", "-f", format!("/flags/{name}")]},
                    "periodSeconds": 1,
                    "failureThreshold": 1,
                },
                "volumeMounts": [{"name": "flags", "mountPath": "/flags"}],
            }],
            "volumes": [{"name": "flags", "hostPath": {"path": flags, "type": "Directory"}}],
        },
    }))
    .expect("a pod")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_whose_readiness_fails_leaves_the_endpoints_and_gets_no_traffic() {
    let (client, ns) = namespace("live-readiness").await;
    let flags = tempfile::tempdir().expect("flags dir");
    for name in ["four", "five"] {
        std::fs::write(flags.path().join(name), "").expect("flag");
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    for (name, dim) in [("four", 4), ("five", 5)] {
        pods.create(&PostParams::default(), &gated_pod(name, dim, flags.path()))
            .await
            .expect("create pod");
    }
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "gated"},
        "spec": {"selector": {"app": "gated"}, "ports": [{"port": 8080, "targetPort": "http"}]},
    }))
    .expect("a service");
    Api::<Service>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &service)
        .await
        .expect("create service");
    wait_pods(&pods, "app=gated", Duration::from_secs(60), "both Ready", |p| {
        p.len() == 2 && p.iter().all(is_ready)
    })
    .await;
    let url = format!("http://gated.{}.svc:8080/v1/embeddings", ns.name());
    // The Service was just created: until kube-proxy programs its first endpoints, connections
    // are refused, so failures only count once both pods answer.
    let both = wait_spread(&url, false, |dims| dims.len() == 2).await;
    assert!(both.contains_key(&4) && both.contains_key(&5), "{both:?}");

    std::fs::remove_file(flags.path().join("five")).expect("unflag");
    wait::wait_for(&pods, "five", Duration::from_secs(30), "not Ready", |p: &Pod| {
        !is_ready(p)
    })
    .await
    .expect("the readiness probe fails");
    let only_four = wait_spread(&url, true, |dims| dims.keys().eq([&4])).await;
    let (dims, failures) = send(&url, 200, 4).await;
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(
        dims.keys().collect::<Vec<_>>(),
        [&4],
        "{dims:?} after {only_four:?}"
    );
    let running = pods.get("five").await.expect("five");
    assert_eq!(
        running.status.and_then(|s| s.phase).as_deref(),
        Some("Running"),
        "the unready pod keeps running"
    );
}

/// Sends batches of 40 requests until their answers' dimensions satisfy `done` (endpoint changes
/// take kube-proxy a moment), at most 30 s; with `no_failures` every request must succeed.
async fn wait_spread(
    url: &str,
    no_failures: bool,
    done: impl Fn(&std::collections::BTreeMap<usize, usize>) -> bool,
) -> std::collections::BTreeMap<usize, usize> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (dims, failures) = send(url, 40, 4).await;
        assert!(!no_failures || failures.is_empty(), "{failures:?}");
        if done(&dims) {
            return dims;
        }
        assert!(std::time::Instant::now() < deadline, "last spread {dims:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
