//! Errors of the harness, each with a stable category.

use std::{path::PathBuf, time::Duration};

/// A harness error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The toolchain could not be built or found.
    #[error("toolchain: {0}")]
    Toolchain(String),
    /// A workspace binary is not built (see [`crate::bin::locate`]).
    #[error("binary: {0}")]
    Binary(String),
    /// Certificate generation failed.
    #[error("cannot generate certificates: {0}")]
    Pki(#[from] rcgen::Error),
    /// A component exited or never became ready.
    #[error("{component} did not start: {reason}\n--- last lines of {} ---\n{tail}", log.display())]
    ComponentStart {
        /// Component name (etcd, kube-apiserver, …).
        component: String,
        /// What went wrong.
        reason: String,
        /// Its log file.
        log: PathBuf,
        /// The end of its log.
        tail: String,
    },
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The Kubernetes API answered with an error.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// The generated kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// A condition did not hold in time.
    #[error("timed out after {timeout:?} waiting for {what}; last state:\n{last_state}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        timeout: Duration,
        /// The object's last observed state (YAML), or why there is none.
        last_state: String,
    },
    /// A manifest could not be read or converted.
    #[error("manifest {path}: {reason}")]
    Manifest {
        /// Where it came from.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Prometheus could not be started or queried.
    #[error("prometheus: {0}")]
    Prometheus(String),
    /// The live fleet's network namespace could not be made or is not isolated.
    #[error("fleet network: {0}")]
    Network(String),
    /// A live pod could not be run as asked.
    #[error("live runtime: {0}")]
    Runtime(String),
}

impl Error {
    /// Stable category for logs.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Toolchain(_) => "toolchain",
            Error::Binary(_) => "binary",
            Error::Pki(_) => "pki",
            Error::ComponentStart { .. } => "component_start",
            Error::Io { .. } => "io",
            Error::Kube(_) => "kube",
            Error::Kubeconfig(_) => "kubeconfig",
            Error::Timeout { .. } => "timeout",
            Error::Manifest { .. } => "manifest",
            Error::Prometheus(_) => "prometheus",
            Error::Network(_) => "network",
            Error::Runtime(_) => "runtime",
        }
    }

    /// A `map_err` adapter that wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let what = what.into();
        move |source| Error::Io { what, source }
    }
}

/// Result with the harness error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
