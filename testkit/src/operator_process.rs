//! `up --with-operator`: build the operator from this workspace and run it against the cluster.
//! [`build_binary`] builds any binary of the workspace (the node agent too, see [`crate::agents`]).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::{Error, LocalCluster, Result, process::ManagedProcess};

/// The workspace this crate belongs to.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Builds `modelfleet-operator` (debug profile) with cargo and returns the binary's path.
pub fn build_operator() -> Result<PathBuf> {
    build_binary("modelfleet-operator", "modelfleet-operator")
}

/// Builds binary `bin` of workspace package `package` (debug profile) with cargo and returns its
/// path. Blocking (it runs cargo): call it through `tokio::task::spawn_blocking` from async code.
pub fn build_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--quiet", "-p", package, "--bin", bin])
        .current_dir(workspace_root())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(Error::io(format!("run cargo build -p {package}")))?;
    if !status.success() {
        return Err(Error::Toolchain(format!(
            "cargo build -p {package} --bin {bin} failed ({status})"
        )));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join("debug").join(bin))
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
