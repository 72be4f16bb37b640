//! `--task generation --backend upstream --upstream-url http://127.0.0.1:PORT`: modelfleet-server
//! in front of an OpenAI-compatible engine in the same pod (llama.cpp's server, vLLM, TGI).
//!
//! The engine generates; this server keeps what the fleet relies on: our request checks before
//! anything is forwarded (`service`), admission with priority tiers that bounds the requests
//! the engine runs to `--max-running-sequences` (`admission`), deadlines, SSE relayed as it
//! comes with our served name (`relay`), our metrics plus the engine's KV-cache usage and
//! readiness that follows the engine's `/health` (`probe`), shadow mirroring of deterministic
//! requests, and the drain on SIGTERM. `client` holds the one pooled connection to the engine.

mod admission;
mod api;
mod client;
mod probe;
mod relay;
mod service;

use std::{future::Future, sync::Arc, time::Duration};

pub use admission::{Admission, AdmissionLimits, Permit};
pub use client::EngineClient;
pub use probe::{EngineStatus, kv_usage, slots_kv_usage};
pub use relay::{Payload, SseSplitter};
pub use service::{UpstreamParts, UpstreamService};

use crate::{
    ServerConfig,
    api::generation::parse::GenerationLimits,
    generate::scheduler::TierConfig,
    metrics::{Metrics, ModelLabels},
    serve::{Listening, StartError, Stop, bind_all, drain_then_stop, serve_http, start_mirror},
};

/// The context length before the engine reports its own (and without `--context-length`):
/// no limit of ours; the engine refuses what does not fit.
pub const UNKNOWN_CONTEXT: usize = u32::MAX as usize;

/// How often the engine's health and KV-cache usage are read.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// Starts serving in front of the engine at `--upstream-url`; ready once the engine's `/health`
/// answers 200. `shutdown` resolving starts the drain.
pub async fn start(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Listening, StartError> {
    let served = &config.contract;
    let url = served.upstream_url.as_deref().ok_or_else(|| {
        StartError::Config(
            "--backend=upstream needs --upstream-url http://127.0.0.1:PORT: the engine in the same pod"
                .into(),
        )
    })?;
    let engine = EngineClient::new(url).map_err(StartError::Config)?;
    let metrics = Metrics::default();
    metrics
        .model_info
        .get_or_create(&ModelLabels {
            model: served.model_name.clone(),
            version: served.model_version.clone(),
            backend: "upstream",
            // The engine's device is its own; the pod's is what the operator asked for.
            device: if served.device == modelfleet_contract::Device::Cuda {
                "cuda"
            } else {
                "cpu"
            }
            .into(),
            simulated: "false",
        })
        .set(1);
    let admission = Admission::new(
        AdmissionLimits {
            tiers: served
                .batching
                .effective_tiers()
                .iter()
                .map(TierConfig::from)
                .collect(),
            max_running: served.generation.max_running_sequences as usize,
            max_waiting: served.batching.max_queue_size as usize,
        },
        metrics.clone(),
    );
    let status = Arc::new(EngineStatus::default());
    let limits = GenerationLimits {
        context_length: served
            .generation
            .context_length
            .map_or(UNKNOWN_CONTEXT, |c| c as usize),
        default_max_tokens: served.generation.default_max_tokens as usize,
        max_prompt_bytes: config.generation.max_prompt_bytes,
    };
    let parts = UpstreamParts {
        model_name: served.model_name.clone(),
        model_version: served.model_version.clone(),
        engine: engine.clone(),
        admission,
        limits,
        metrics: metrics.clone(),
        mirror: start_mirror(&config, &metrics),
    };
    let service = Arc::new(UpstreamService::new(parts, status.clone()));
    tokio::spawn(probe::watch(engine, status, metrics, PROBE_INTERVAL));
    serve(config, service, shutdown).await
}

async fn serve(
    config: ServerConfig,
    service: Arc<UpstreamService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Listening, StartError> {
    let bound = bind_all(&config).await?;
    let stop = Stop::new();
    let app = api::router(service.clone(), config.limits.max_request_bytes);
    let http_task = serve_http(bound.http, app, &stop);
    let metrics_task = serve_http(bound.metrics, api::metrics_router(service.clone()), &stop);
    // OIP v2 gRPC serves embeddings only: the port answers at once (404) rather than leaving
    // a client hanging.
    let grpc_task = serve_http(bound.grpc, axum::Router::new(), &stop);
    service.lifecycle.set_loaded();
    tracing::info!(
        engine = service.engine.base(),
        "forwarding to the engine once its /health answers 200"
    );
    let draining = service.clone();
    let drain = async move {
        tracing::info!("shutdown requested: not ready, finishing forwarded requests");
        draining.lifecycle.start_draining();
        draining.metrics.ready.set(0);
        while draining.admission.load() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let tasks = vec![http_task, grpc_task, metrics_task];
    let stopped = drain_then_stop(shutdown, drain, config.drain_timeout, stop, tasks);
    let addrs = bound.addrs;
    Ok(Listening {
        http: addrs.0,
        grpc: addrs.1,
        metrics: addrs.2,
        backend: "upstream",
        simulated: false,
        engine: None,
        stopped,
    })
}
