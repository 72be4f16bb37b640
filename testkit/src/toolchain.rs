//! The pinned Kubernetes binaries, built by `testkit/toolchain/build.sh` and cached by version in
//! `$HOME/.cache/modelfleet/k8s/<versions>/` (or `$MODELFLEET_TOOLCHAIN_DIR`).

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use crate::{Error, Result};

/// The build script, from this crate's source tree.
pub const BUILD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/toolchain/build.sh");

/// A directory of built binaries and the data files copied beside them.
#[derive(Debug, Clone)]
pub struct Toolchain {
    dir: PathBuf,
}

/// Whether the Debian packages the script installs are there (Prometheus; iptables and iproute2
/// for the live fleet): the script runs again when one is missing, even with a ready toolchain.
fn system_packages_present() -> bool {
    [
        "/usr/bin/prometheus",
        "/usr/sbin/iptables-restore",
        "/usr/sbin/ip",
    ]
    .iter()
    .all(|p| std::path::Path::new(p).exists())
        || std::env::var_os("MODELFLEET_SKIP_APT").is_some()
}

impl Toolchain {
    /// Finds the toolchain, building it first if needed. The build prints progress on stderr and
    /// takes 25 to 40 minutes cold on 2 cores; afterwards this returns at once.
    pub fn ensure() -> Result<Self> {
        let dir = Self::expected_dir()?;
        // The data files are fetched apart from the binaries (a new pin does not rebuild them):
        // a ready toolchain without them runs the script again, which then only fetches.
        let data_present = dir.join("inference-extension-crds").is_dir();
        if dir.join("ready").is_file() && system_packages_present() && data_present {
            return Ok(Self { dir });
        }
        eprintln!(
            "modelfleet-e2e: building the local Kubernetes toolchain into {} (first run only)",
            dir.display()
        );
        let status = Command::new("bash")
            .arg(BUILD_SCRIPT)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .map_err(Error::io(format!("run {BUILD_SCRIPT}")))?;
        if !status.success() || !dir.join("ready").is_file() {
            return Err(Error::Toolchain(format!(
                "{BUILD_SCRIPT} failed ({status}); its progress lines above say which step"
            )));
        }
        Ok(Self { dir })
    }

    /// The directory the build script uses for the current pins.
    pub fn expected_dir() -> Result<PathBuf> {
        let out = Command::new("bash")
            .args([BUILD_SCRIPT, "--print-dir"])
            .output()
            .map_err(Error::io(format!("run {BUILD_SCRIPT} --print-dir")))?;
        let dir = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !out.status.success() || dir.is_empty() {
            return Err(Error::Toolchain(format!(
                "{BUILD_SCRIPT} --print-dir printed nothing"
            )));
        }
        Ok(PathBuf::from(dir))
    }

    /// The toolchain directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of a binary (`kube-apiserver`, `kubectl`, `etcd`, `kwok`, `helm`, …).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// kwok stage configuration files (node initialize/heartbeat, pod ready/complete/delete).
    pub fn kwok_stages(&self) -> Result<Vec<PathBuf>> {
        list_yaml(&self.dir.join("kwok-stages"))
    }

    /// The Gateway API standard-channel CRD files.
    pub fn gateway_api_crds(&self) -> Result<Vec<PathBuf>> {
        list_yaml(&self.dir.join("gateway-api-crds"))
    }

    /// The Gateway API Inference Extension's CRD files (InferencePool).
    pub fn inference_extension_crds(&self) -> Result<Vec<PathBuf>> {
        list_yaml(&self.dir.join("inference-extension-crds"))
    }
}

fn list_yaml(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(Error::io(format!("list {}", dir.display())))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    Ok(files)
}
