//! Helpers for integration tests: one cluster per test binary, a fresh namespace per test.

use std::{
    process::Command,
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use k8s_openapi::api::core::v1::Namespace;
use kube::{Api, Client, api::PostParams};

use crate::{ClusterConfig, GpuNodePool, LocalCluster, crds, nodes};

static SHARED: OnceLock<LocalCluster> = OnceLock::new();

/// The cluster shared by every test of this test binary, started on first use with our CRDs, the
/// Gateway API CRDs, a pool of 2 GPU nodes (8 × H100 each) and one CPU node. Its components are
/// guarded: they die with the test process, since statics are never dropped.
///
/// Panics (failing the test with the component's log tail) if the cluster cannot start.
pub fn shared_cluster() -> &'static LocalCluster {
    SHARED.get_or_init(|| {
        // A thread and runtime of its own: the caller runs inside a test's runtime, which ends
        // with that test and must not block on (or drop) another runtime.
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a Tokio runtime");
            runtime.block_on(start_shared())
        })
        .join()
        .unwrap_or_else(|_| panic!("the shared cluster start-up panicked"))
        .unwrap_or_else(|e| panic!("cannot start the shared local cluster: {e}"))
    })
}

async fn start_shared() -> crate::Result<LocalCluster> {
    let cluster = start_with_gpu_nodes(2).await?;
    let client = cluster.client().await?;
    crds::install_gateway_api_crds(&client, cluster.toolchain()).await?;
    crds::install_inference_extension_crds(&client, cluster.toolchain()).await?;
    nodes::add_cpu_nodes(&client, 1).await?;
    Ok(cluster)
}

/// A fresh cluster of its own (for benchmarks) with the modelfleet CRDs and `gpu_nodes` GPU nodes
/// of the default pool (8 × H100 each).
pub async fn start_with_gpu_nodes(gpu_nodes: usize) -> crate::Result<LocalCluster> {
    let cluster = LocalCluster::start(ClusterConfig::default()).await?;
    let client = cluster.client().await?;
    crds::install_modelfleet_crds(&client).await?;
    nodes::add_gpu_pool(
        &client,
        &GpuNodePool {
            count: gpu_nodes,
            ..Default::default()
        },
    )
    .await?;
    Ok(cluster)
}

/// A client of the shared cluster and a fresh namespace for one test.
pub async fn shared_namespace(prefix: &str) -> (kube::Client, TestNamespace) {
    let cluster = shared_cluster();
    let client = cluster.client().await.expect("a client");
    let ns = TestNamespace::create(cluster, &client, prefix)
        .await
        .expect("a namespace");
    (client, ns)
}

/// A namespace for one test, deleted when dropped (also when the test panics).
#[derive(Debug)]
pub struct TestNamespace {
    name: String,
    kubectl: std::path::PathBuf,
    kubeconfig: std::path::PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl TestNamespace {
    /// Creates `<prefix>-<pid>-<n>` in `cluster`.
    pub async fn create(cluster: &LocalCluster, client: &Client, prefix: &str) -> crate::Result<Self> {
        let name = format!(
            "{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let ns = Namespace {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        Ok(Self {
            name,
            kubectl: cluster.toolchain().bin("kubectl"),
            kubeconfig: cluster.kubeconfig_path().to_path_buf(),
        })
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        // Synchronous on purpose: Drop cannot await, and this also runs while a test panics.
        let _ = Command::new(&self.kubectl)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args([
                "delete",
                "namespace",
                &self.name,
                "--wait=false",
                "--ignore-not-found",
            ])
            .output();
    }
}

/// `helm install modelfleet charts/modelfleet` into `modelfleet-system` of `cluster`, without
/// waiting for pods (kwok runs them, but no image is ever pulled); panics with helm's output on
/// failure.
pub fn helm_install_chart(cluster: &LocalCluster) {
    let chart = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/modelfleet");
    let out = std::process::Command::new(cluster.toolchain().bin("helm"))
        .args(["install", "modelfleet"])
        .arg(&chart)
        .args([
            "--namespace",
            "modelfleet-system",
            "--create-namespace",
            "--wait=false",
        ])
        .arg(format!("--kubeconfig={}", cluster.kubeconfig_path().display()))
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm install: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
