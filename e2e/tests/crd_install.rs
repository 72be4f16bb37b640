//! The chart's CRDs as the API server sees them: it must accept every schema and CEL rule. The
//! crds crate evaluates our CEL rules client-side, but only the API server applies its cost
//! budget (an unbounded list under `self.all(...)` is refused there), so this installs the shipped
//! files into a real kube-apiserver.

use std::path::PathBuf;

use modelfleet_testkit::{ClusterConfig, LocalCluster, crds::install_crd_files};

#[tokio::test]
async fn the_chart_crds_are_accepted_by_a_real_api_server() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/modelfleet/crds");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("charts/modelfleet/crds")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the chart ships CRDs");

    let cluster = LocalCluster::start(ClusterConfig::default())
        .await
        .expect("local cluster");
    let client = cluster.client().await.expect("client");
    let installed = install_crd_files(&client, &files).await;
    cluster.stop();
    installed.unwrap_or_else(|e| panic!("the API server refused a chart CRD: {e}"));
}
