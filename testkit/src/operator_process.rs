//! The operator as a process against a [`LocalCluster`], from the binary cargo built (see
//! [`crate::bin`]).

use std::path::PathBuf;

use crate::{LocalCluster, Result, bin, process::ManagedProcess};

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The built `modelfleet-operator` ([`bin::path`]).
pub fn operator_binary() -> Result<PathBuf> {
    bin::path("modelfleet-operator")
}

/// Starts the operator against `cluster`, with its telemetry hub on `telemetry_addr` (loopback),
/// logging to `<cluster dir>/modelfleet-operator.log`.
pub fn start_operator(
    binary: &std::path::Path,
    cluster: &LocalCluster,
    telemetry_addr: std::net::SocketAddr,
    guarded: bool,
) -> Result<ManagedProcess> {
    start_operator_with_prometheus(binary, cluster, telemetry_addr, guarded, None)
}

/// [`start_operator`] with `prometheus` analysis checks answered by the Prometheus at
/// `prometheus_url` (a loopback URL).
pub fn start_operator_with_prometheus(
    binary: &std::path::Path,
    cluster: &LocalCluster,
    telemetry_addr: std::net::SocketAddr,
    guarded: bool,
    prometheus_url: Option<&str>,
) -> Result<ManagedProcess> {
    let mut args = vec![
        "run".to_string(),
        "--http-addr=127.0.0.1:0".into(),
        "--log-format=text".into(),
        "--lease-namespace=default".into(),
        format!("--telemetry-addr={telemetry_addr}"),
    ];
    if let Some(url) = prometheus_url {
        args.push(format!("--prometheus-url={url}"));
    }
    let kubeconfig = cluster.kubeconfig_path().as_os_str();
    ManagedProcess::spawn_with_env(
        "modelfleet-operator",
        binary,
        &args,
        &[("KUBECONFIG", kubeconfig)],
        cluster.dir(),
        guarded,
    )
}
