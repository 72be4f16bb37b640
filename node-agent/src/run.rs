//! Wiring: the pod watch, the GPU sampler, the sampling loop, the stream and `/metrics`.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{Router, extract::State, routing::get};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio::net::TcpListener;

use crate::{
    AgentConfig,
    agent::Agent,
    config::GpuBackend,
    gpu::{GpuError, GpuSampler, NvmlSampler, SimulatedSampler},
    metrics::AgentMetrics,
    stream::{Outbox, StreamConfig, run_stream},
};

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("listening on {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
}

/// A started agent.
#[derive(Debug)]
pub struct Running {
    /// Where `/metrics` listens.
    pub metrics_addr: SocketAddr,
    pub metrics: AgentMetrics,
    pub outbox: Arc<Outbox>,
    /// Resolves when the loop has stopped.
    pub stopped: tokio::task::JoinHandle<()>,
}

/// The configured GPU sampler.
pub fn sampler(config: &AgentConfig) -> Result<Box<dyn GpuSampler>, GpuError> {
    Ok(match config.gpu_backend {
        GpuBackend::Nvml => Box::new(NvmlSampler::init()?),
        GpuBackend::Simulated => Box::new(SimulatedSampler::new(
            &config.node_name,
            config.simulated_gpus,
            &config.simulated_product,
            config.simulated_memory_mib,
        )),
    })
}

/// Starts everything with the configured sampler; `shutdown` stops the loop.
pub async fn start(
    config: AgentConfig,
    client: Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let sampler = sampler(&config)?;
    start_with_sampler(config, sampler, client, shutdown).await
}

/// Starts everything with `sampler`.
pub async fn start_with_sampler(
    config: AgentConfig,
    sampler: Box<dyn GpuSampler>,
    client: Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let metrics = AgentMetrics::default();
    let outbox = Arc::new(Outbox::new(config.report_buffer, metrics.clone()));

    // Only the pods bound to this node: the watch stays small on a big cluster.
    let pods: Api<Pod> = Api::all(client);
    let watch = watcher::Config::default().fields(&format!("spec.nodeName={}", config.node_name));
    let (store, writer) = reflector::store();
    let node = config.node_name.clone();
    tokio::spawn(async move {
        let mut events = reflector(writer, watcher(pods, watch)).default_backoff().boxed();
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                tracing::warn!(node = %node, error = %e, "pod watch error; retrying");
            }
        }
    });

    let listener = TcpListener::bind(config.metrics_addr)
        .await
        .map_err(|error| StartError::Bind {
            addr: config.metrics_addr,
            error,
        })?;
    let metrics_addr = listener.local_addr().map_err(|error| StartError::Bind {
        addr: config.metrics_addr,
        error,
    })?;
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(m): State<AgentMetrics>| async move { m.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics.clone());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    tokio::spawn(run_stream(
        StreamConfig {
            url: config.operator_url.clone(),
            token_file: Some(config.token_file.clone()),
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(30),
        },
        outbox.clone(),
        metrics.clone(),
    ));
    let agent = Agent::new(config, sampler, store, metrics.clone(), outbox.clone());
    let stopped = tokio::spawn(agent.run(shutdown));
    Ok(Running {
        metrics_addr,
        metrics,
        outbox,
        stopped,
    })
}
