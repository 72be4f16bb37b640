//! Helpers for operator integration tests: the shared local cluster plus one in-process operator
//! per test binary, and waits on ModelDeployment status.
#![allow(dead_code)]

use std::{sync::OnceLock, time::Duration};

use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client,
    api::{ListParams, PostParams},
};
use modelfleet_crds::{ModelDeployment, manifest::model_deployments_from_yaml};
use modelfleet_operator::{OperatorConfig, controller, http::HttpState};
use modelfleet_testkit::{
    LocalCluster,
    testing::{TestNamespace, shared_cluster, shared_namespace},
    wait::wait_for,
};

static OPERATOR: OnceLock<std::net::SocketAddr> = OnceLock::new();

/// The test operator's telemetry hub, for node agents (`http://127.0.0.1:PORT`).
pub fn telemetry_url() -> String {
    format!("http://{}", OPERATOR.get().expect("the test operator runs"))
}

/// Starts (once per test binary) an operator for `cluster` on its own thread and runtime.
pub fn start_operator(cluster: &'static LocalCluster, lease: &str) {
    let lease = lease.to_string();
    OPERATOR.get_or_init(move || {
        let telemetry_addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free loopback port");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a Tokio runtime");
            runtime.block_on(async move {
                let client = cluster.client().await.expect("a client");
                let config = OperatorConfig {
                    lease_name: lease,
                    identity: Some("test-operator".into()),
                    lease_duration: Duration::from_secs(5),
                    lease_retry: Duration::from_secs(1),
                    telemetry_addr,
                    autoscale_interval: Duration::from_secs(1),
                    ..Default::default()
                };
                let result =
                    controller::run(client, config, HttpState::default(), std::future::pending()).await;
                panic!("the test operator stopped: {result:?}");
            });
        });
        telemetry_addr
    });
}

/// The shared cluster with its operator, a client and a fresh namespace.
pub async fn setup(prefix: &str) -> (Client, TestNamespace) {
    start_operator(shared_cluster(), "modelfleet-operator-tests");
    shared_namespace(prefix).await
}

/// The ModelDeployment of `examples/<file>`, moved to `namespace`.
pub fn example(file: &str, namespace: &str) -> ModelDeployment {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(file);
    let text = std::fs::read_to_string(path).expect("example");
    let mut md = model_deployments_from_yaml(&text).expect("valid").remove(0);
    md.metadata.namespace = Some(namespace.to_string());
    md
}

/// A ModelDeployment from inline spec YAML.
pub fn model_deployment(name: &str, namespace: &str, spec_yaml: &str) -> ModelDeployment {
    let spec = serde_yaml::from_str(spec_yaml).expect("spec YAML");
    let mut md = ModelDeployment::new(name, spec);
    md.metadata.namespace = Some(namespace.to_string());
    md
}

/// Creates `md`.
pub async fn create(client: &Client, md: &ModelDeployment) -> ModelDeployment {
    let api: Api<ModelDeployment> =
        Api::namespaced(client.clone(), md.metadata.namespace.as_deref().expect("ns"));
    api.create(&PostParams::default(), md)
        .await
        .expect("create ModelDeployment")
}

/// The status condition `type_` of `md`, as `(status, reason, message)`.
pub fn condition(md: &ModelDeployment, type_: &str) -> Option<(String, String, String)> {
    md.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until `name` has condition `type_` with `status` (and `reason`, when given) for its
/// current generation.
pub async fn wait_condition(
    client: &Client,
    namespace: &str,
    name: &str,
    type_: &str,
    status: &str,
    reason: Option<&str>,
    timeout: Duration,
) -> ModelDeployment {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), namespace);
    let what = format!("{type_}={status} {}", reason.unwrap_or(""));
    wait_for(&api, name, timeout, &what, |md: &ModelDeployment| {
        let current = md.status.as_ref().and_then(|s| s.observed_generation) == md.metadata.generation;
        current
            && condition(md, type_)
                .is_some_and(|(s, r, _)| s == status && reason.is_none_or(|want| want == r))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The revision Deployments of `name`.
pub async fn revision_deployments(client: &Client, namespace: &str, name: &str) -> Vec<Deployment> {
    Api::<Deployment>::namespaced(client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("modelfleet.dev/deployment={name}")))
        .await
        .expect("list Deployments")
        .items
        .into_iter()
        .filter(|d| d.metadata.deletion_timestamp.is_none())
        .collect()
}

/// `kubectl get mdep NAME` as a kubectl user sees it: the header and the row, split on whitespace.
pub fn kubectl_get_mdep(namespace: &str, name: &str) -> Vec<(String, String)> {
    let cluster = shared_cluster();
    let output = std::process::Command::new(cluster.toolchain().bin("kubectl"))
        .arg("--kubeconfig")
        .arg(cluster.kubeconfig_path())
        .args(["get", "mdep", name, "-n", namespace])
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut lines = stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>());
    let header = lines.next().expect("a header line");
    let row = lines.next().expect("a row");
    assert_eq!(header.len(), row.len(), "{stdout}");
    header.into_iter().zip(row).collect()
}
