//! Agent configuration: flags with environment equivalents.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, ValueEnum};
use modelfleet_crds::parse_std_duration;

/// Everything the agent needs.
#[derive(Args, Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (the DaemonSet sets it from the downward API).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The operator's telemetry service.
    #[arg(
        long,
        env = "MODELFLEET_OPERATOR_URL",
        default_value = "http://modelfleet-telemetry.modelfleet-system.svc:9091"
    )]
    pub operator_url: String,
    /// Sampling and reporting interval.
    #[arg(long, env = "MODELFLEET_INTERVAL", default_value = "1s", value_parser = parse_std_duration)]
    pub interval: Duration,
    /// `nvml` reads the GPUs through the NVIDIA driver; `simulated` invents them (no GPU needed).
    #[arg(long, env = "MODELFLEET_GPU_BACKEND", value_enum, default_value_t = GpuBackend::Nvml)]
    pub gpu_backend: GpuBackend,
    /// Simulated GPUs on this node.
    #[arg(long, env = "MODELFLEET_SIMULATED_GPUS", default_value_t = 8)]
    pub simulated_gpus: u32,
    /// Product name of the simulated GPUs.
    #[arg(
        long,
        env = "MODELFLEET_SIMULATED_PRODUCT",
        default_value = "NVIDIA-H100-80GB-HBM3"
    )]
    pub simulated_product: String,
    /// Memory of each simulated GPU, MiB.
    #[arg(long, env = "MODELFLEET_SIMULATED_MEMORY_MIB", default_value_t = 81_559)]
    pub simulated_memory_mib: u64,
    /// The kubelet's PodResources socket; when absent or unreadable, GPUs are attributed from
    /// the pods bound to the node.
    #[arg(
        long,
        env = "MODELFLEET_POD_RESOURCES_SOCKET",
        default_value = "/var/lib/kubelet/pod-resources/kubelet.sock"
    )]
    pub pod_resources_socket: PathBuf,
    /// Projected service-account token (audience modelfleet-operator) sent as the credential.
    #[arg(
        long,
        env = "MODELFLEET_TOKEN_FILE",
        default_value = "/var/run/secrets/modelfleet/token"
    )]
    pub token_file: PathBuf,
    /// Address of `/metrics` and `/healthz`.
    #[arg(long, env = "MODELFLEET_METRICS_ADDR", default_value = "0.0.0.0:9400")]
    pub metrics_addr: SocketAddr,
    /// Reports kept while the operator is unreachable (oldest dropped beyond).
    #[arg(long, env = "MODELFLEET_REPORT_BUFFER", default_value_t = 300)]
    pub report_buffer: usize,
    /// Longest a server scrape may take.
    #[arg(long, env = "MODELFLEET_SCRAPE_TIMEOUT", default_value = "500ms", value_parser = parse_std_duration)]
    pub scrape_timeout: Duration,
    /// Scrape only loopback addresses (the local test cluster, whose pod IPs are data only).
    #[arg(long, env = "MODELFLEET_SCRAPE_LOOPBACK_ONLY")]
    pub scrape_loopback_only: bool,
}

/// GPU readers.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum GpuBackend {
    Nvml,
    Simulated,
}
