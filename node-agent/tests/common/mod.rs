//! Helpers for the agent's tests: a test telemetry server (what the operator's hub will be) and
//! agent configs for loopback-only runs. Tests with a real modelfleet-server are in e2e/tests.
#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use modelfleet_node_agent::{AgentConfig, config::GpuBackend};
use modelfleet_testkit::telemetry_hub::{RecordingHub, TokenPolicy};

/// The recording telemetry hub, accepting streams with or without a token (these tests run the
/// agent with no token file too).
pub async fn start_hub(addr: SocketAddr) -> RecordingHub {
    RecordingHub::start(addr, TokenPolicy::AcceptAny).await
}

/// An agent config for a loopback-only run with simulated GPUs.
pub fn agent_config(node: &str, operator_url: String, token_file: PathBuf) -> AgentConfig {
    AgentConfig {
        node_name: node.into(),
        operator_url,
        interval: Duration::from_millis(250),
        gpu_backend: GpuBackend::Simulated,
        simulated_gpus: 8,
        simulated_product: "NVIDIA-H100-80GB-HBM3".into(),
        simulated_memory_mib: 81_559,
        pod_resources_socket: PathBuf::from("/nonexistent/kubelet.sock"),
        token_file,
        metrics_addr: "127.0.0.1:0".parse().expect("address"),
        report_buffer: 300,
        scrape_timeout: Duration::from_millis(500),
        scrape_loopback_only: true,
    }
}

/// A free loopback port (bound, then released).
pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address")
}
