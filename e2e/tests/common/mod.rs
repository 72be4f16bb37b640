//! Helpers for tests across components: the server's binary, HTTP client and test model from
//! [`modelfleet_testkit::server`], an in-process server, and the node agent's loopback-only config
//! against the recording telemetry hub.
#![allow(dead_code)]

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use modelfleet_node_agent::{AgentConfig, config::GpuBackend};
use modelfleet_testkit::telemetry_hub::{RecordingHub, TokenPolicy};

// Each test binary uses part of it.
#[allow(unused_imports)]
pub use modelfleet_testkit::server::*;

#[derive(clap::Parser)]
struct ServerArgs {
    #[command(flatten)]
    config: modelfleet_server::ServerConfig,
}

/// An in-process modelfleet-server with the synthetic backend on loopback and free ports, plus
/// `extra` flags.
pub async fn start_synthetic_server(extra: &[&str]) -> modelfleet_server::Listening {
    use clap::Parser;
    let mut argv = vec![
        "server",
        "--backend=synthetic",
        "--listen-address=127.0.0.1",
        "--http-port=0",
        "--grpc-port=0",
        "--metrics-port=0",
    ];
    argv.extend_from_slice(extra);
    modelfleet_server::start(ServerArgs::parse_from(argv).config, std::future::pending())
        .await
        .expect("the server starts")
}

/// The recording telemetry hub, accepting streams with or without a token.
pub async fn start_hub(addr: SocketAddr) -> RecordingHub {
    RecordingHub::start(addr, TokenPolicy::AcceptAny).await
}

/// A node agent config for a loopback-only run with simulated GPUs.
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
