//! Start-up and shutdown: load the model, run a warm-up batch, then serve until SIGTERM and drain.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use modelfleet_contract::ModelTask;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};

use crate::{
    ServerConfig, api,
    backend::{self, Backend},
    batcher::Batcher,
    engine::{Engine, EngineParts},
    metrics::{Metrics, ModelLabels},
    shadow::{Mirror, MirrorConfig, watch_routing_file},
};

/// How often the routing file is re-read.
const ROUTING_POLL: Duration = Duration::from_secs(1);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(String),
    #[error("loading the model: {0}")]
    Load(#[from] backend::BackendError),
    #[error(
        "warm-up batch of {inputs} inputs x {tokens} tokens failed: {error}; lower --max-batch-size or --max-batch-tokens, or give the pod more memory"
    )]
    WarmUp {
        inputs: usize,
        tokens: usize,
        error: String,
    },
    #[error("listening on {addr}: {error}")]
    Bind { addr: SocketAddr, error: std::io::Error },
}

/// A started server: its addresses and a handle that resolves when it has stopped.
#[derive(Debug)]
pub struct Listening {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    /// `candle` or `synthetic`.
    pub backend: &'static str,
    /// True when outputs and timings are simulated.
    pub simulated: bool,
    /// The embeddings engine (None for a generation server).
    pub engine: Option<Arc<Engine>>,
    pub stopped: JoinHandle<()>,
}

/// Loads the model, warms it up and starts serving; `shutdown` resolving starts the drain.
pub async fn start(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Listening, StartError> {
    let served = &config.contract;
    match served.task {
        ModelTask::Embedding => {}
        ModelTask::Generation => return crate::generate::start::start(config, shutdown).await,
        ModelTask::Classification => {
            return Err(StartError::Config(
                "--task=classification: this release serves embedding and generation models".into(),
            ));
        }
    }
    let loading = config.clone();
    let (backend, encoder) = tokio::task::spawn_blocking(move || backend::load(&loading))
        .await
        .map_err(|e| StartError::Config(format!("model loader: {e}")))??;
    let info = backend.info().clone();
    let max_tokens = config.limits.token_limit(info.max_input_tokens);
    warm_up(backend.clone(), &config, max_tokens).await?;

    let metrics = Metrics::default();
    metrics
        .model_info
        .get_or_create(&ModelLabels {
            model: served.model_name.clone(),
            version: served.model_version.clone(),
            backend: info.name,
            device: info.device.clone(),
            simulated: if info.simulated { "true" } else { "false" },
        })
        .set(1);
    let batcher = Batcher::spawn(
        &served.batching,
        config.max_concurrent_batches,
        backend,
        metrics.clone(),
    );
    let mirror = Mirror::start(
        MirrorConfig {
            model_name: served.model_name.clone(),
            queue: config.shadow_queue,
            agreement: config.shadow_agreement,
            concurrency: 16,
            timeout: Duration::from_secs(30),
        },
        metrics.clone(),
    );
    if let Some(path) = served.routing_file.clone() {
        tokio::spawn(watch_routing_file(path, mirror.clone(), ROUTING_POLL));
    }
    let engine = Arc::new(Engine::new(EngineParts {
        model_name: served.model_name.clone(),
        model_version: served.model_version.clone(),
        info: info.clone(),
        metrics: metrics.clone(),
        batcher,
        encoder,
        limits: config.limits.clone(),
        mirror,
    }));

    let (address, ports) = (config.listen_address, served.ports);
    let http = bind(SocketAddr::new(address, ports.http_port)).await?;
    let grpc = bind(SocketAddr::new(address, ports.grpc_port)).await?;
    let metrics_listener = bind(SocketAddr::new(address, ports.metrics_port)).await?;
    let addrs = (local(&http)?, local(&grpc)?, local(&metrics_listener)?);

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped_signal = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let http_task = tokio::spawn(
        axum::serve(http, api::router(engine.clone(), config.limits.max_request_bytes))
            .with_graceful_shutdown(stopped_signal(stop_rx.clone()))
            .into_future(),
    );
    let metrics_task = tokio::spawn(
        axum::serve(metrics_listener, api::metrics_router(engine.clone()))
            .with_graceful_shutdown(stopped_signal(stop_rx.clone()))
            .into_future(),
    );
    let grpc_task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(api::grpc_service(engine.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc),
                stopped_signal(stop_rx),
            ),
    );
    engine.lifecycle.set_loaded();
    metrics.ready.set(1);

    let drain_timeout = config.drain_timeout;
    let draining = engine.clone();
    let stopped = tokio::spawn(async move {
        shutdown.await;
        tracing::info!("shutdown requested: not ready, finishing queued work");
        draining.lifecycle.start_draining();
        draining.metrics.ready.set(0);
        if tokio::time::timeout(drain_timeout, draining.batcher.drain())
            .await
            .is_err()
        {
            tracing::warn!(?drain_timeout, "queued work did not finish in time");
        }
        let _ = stop_tx.send(true);
        // Connections get what is left of a short grace to write their answers.
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            let _ = http_task.await;
            let _ = grpc_task.await;
            let _ = metrics_task.await;
        })
        .await;
        tracing::info!("stopped");
    });
    Ok(Listening {
        http: addrs.0,
        grpc: addrs.1,
        metrics: addrs.2,
        backend: info.name,
        simulated: info.simulated,
        engine: Some(engine),
        stopped,
    })
}

pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind { addr, error })
}

pub(crate) fn local(listener: &TcpListener) -> Result<SocketAddr, StartError> {
    listener
        .local_addr()
        .map_err(|error| StartError::Config(format!("local address: {error}")))
}

/// Runs the largest batch the limits allow, so a batch that does not fit fails now, not under
/// load.
async fn warm_up(
    backend: Arc<dyn Backend>,
    config: &ServerConfig,
    max_tokens: usize,
) -> Result<(), StartError> {
    let batching = &config.contract.batching;
    let inputs = batching.max_batch_size as usize;
    let tokens = (batching.max_batch_tokens as usize / inputs).clamp(2, max_tokens.max(2));
    let started = std::time::Instant::now();
    let result = tokio::task::spawn_blocking(move || {
        // [CLS] filler… [SEP] with a common WordPiece id, so the batch is as long as allowed.
        let mut ids = vec![1000u32; tokens];
        ids[0] = 101;
        ids[tokens - 1] = 102;
        let batch: Vec<&[u32]> = (0..inputs).map(|_| ids.as_slice()).collect();
        backend.embed(&batch).map(|_| ())
    })
    .await;
    let error = match result {
        Ok(Ok(())) => {
            tracing::info!(
                inputs,
                tokens,
                took_ms = started.elapsed().as_millis() as u64,
                "warm-up batch ran"
            );
            return Ok(());
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    Err(StartError::WarmUp {
        inputs,
        tokens,
        error,
    })
}
