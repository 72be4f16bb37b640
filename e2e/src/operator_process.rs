//! `up --with-operator`: build the operator from this workspace and run it against the cluster.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use crate::{Error, LocalCluster, Result, process::ManagedProcess};

/// The workspace this crate belongs to.
fn workspace_root() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Builds `modelfleet-operator` (debug profile) with cargo and returns the binary's path.
pub fn build_operator() -> Result<PathBuf> {
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "build",
            "--quiet",
            "-p",
            "modelfleet-operator",
            "--bin",
            "modelfleet-operator",
        ])
        .current_dir(workspace_root())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(Error::io("run cargo build -p modelfleet-operator"))?;
    if !status.success() {
        return Err(Error::Toolchain(format!(
            "cargo build -p modelfleet-operator failed ({status})"
        )));
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    Ok(target.join("debug/modelfleet-operator"))
}

/// Starts the operator against `cluster`, logging to `<cluster dir>/modelfleet-operator.log`.
pub fn start_operator(
    binary: &std::path::Path,
    cluster: &LocalCluster,
    guarded: bool,
) -> Result<ManagedProcess> {
    let args = [
        "run",
        "--http-addr=127.0.0.1:0",
        "--log-format=text",
        "--lease-namespace=default",
    ]
    .map(String::from);
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
