//! Helpers for the agent's tests: a test telemetry server (what the operator's hub will be), an
//! in-process modelfleet-server, and agent configs for loopback-only runs.
#![allow(dead_code)]

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use modelfleet_node_agent::{AgentConfig, config::GpuBackend};
use modelfleet_proto::telemetry::{
    NodeReport, ReportAck,
    telemetry_server::{Telemetry, TelemetryServer},
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

/// What the test telemetry server received.
#[derive(Debug, Default)]
pub struct Received {
    pub reports: Vec<NodeReport>,
    pub authorization: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct Hub {
    received: Arc<Mutex<Received>>,
}

#[tonic::async_trait]
impl Telemetry for Hub {
    type ReportStream = ReceiverStream<Result<ReportAck, Status>>;

    async fn report(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        if let Some(auth) = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
        {
            self.received
                .lock()
                .expect("lock")
                .authorization
                .push(auth.to_owned());
        }
        let mut stream = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Some(Ok(report)) = stream.next().await {
                let sequence = report.sequence;
                received.lock().expect("lock").reports.push(report);
                if tx.send(Ok(ReportAck { sequence })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A telemetry server on `addr` (127.0.0.1:0 for any port).
pub struct TestHub {
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestHub {
    pub async fn start(addr: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the test hub");
        let addr = listener.local_addr().expect("address");
        let hub = Hub::default();
        let received = hub.received.clone();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(TelemetryServer::new(hub))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Self { addr, received, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until a received report satisfies `check`, returning it.
    pub async fn wait_for(&self, limit: Duration, check: impl Fn(&NodeReport) -> bool) -> Option<NodeReport> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(r) = self
                .received
                .lock()
                .expect("lock")
                .reports
                .iter()
                .rev()
                .find(|r| check(r))
            {
                return Some(r.clone());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub fn count(&self) -> usize {
        self.received.lock().expect("lock").reports.len()
    }

    pub fn authorizations(&self) -> Vec<String> {
        self.received.lock().expect("lock").authorization.clone()
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        self.task.abort();
    }
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
