//! Start-up and shutdown: load the model, run a warm-up batch, then serve until SIGTERM and drain.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use modelfleet_contract::{Backend as BackendKind, ModelTask};
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
        ModelTask::Generation if served.backend == BackendKind::Upstream => {
            return crate::upstream::start(config, shutdown).await;
        }
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
    let mirror = start_mirror(&config, &metrics);
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

    let bound = bind_all(&config).await?;
    let stop = Stop::new();
    let http_task = serve_http(
        bound.http,
        api::router(engine.clone(), config.limits.max_request_bytes),
        &stop,
    );
    let metrics_task = serve_http(bound.metrics, api::metrics_router(engine.clone()), &stop);
    let grpc = tonic::transport::Server::builder()
        .add_service(api::grpc_service(engine.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(bound.grpc),
            stop.signal(),
        );
    let grpc_task = tokio::spawn(async move {
        let _ = grpc.await;
    });
    engine.lifecycle.set_loaded();
    metrics.ready.set(1);

    let draining = engine.clone();
    let drain = async move {
        tracing::info!("shutdown requested: not ready, finishing queued work");
        draining.lifecycle.start_draining();
        draining.metrics.ready.set(0);
        draining.batcher.drain().await;
    };
    let tasks = vec![http_task, grpc_task, metrics_task];
    let stopped = drain_then_stop(shutdown, drain, config.drain_timeout, stop, tasks);
    let addrs = bound.addrs;
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

/// The shadow mirror of a server, and the watcher of its routing file (`--routing-file`).
pub(crate) fn start_mirror(config: &ServerConfig, metrics: &Metrics) -> Mirror {
    let mirror = Mirror::start(
        MirrorConfig {
            model_name: config.contract.model_name.clone(),
            queue: config.shadow_queue,
            agreement: config.shadow_agreement,
            text_agreement: config.shadow_text_agreement,
            concurrency: 16,
            timeout: Duration::from_secs(30),
        },
        metrics.clone(),
    );
    if let Some(path) = config.contract.routing_file.clone() {
        tokio::spawn(watch_routing_file(path, mirror.clone(), ROUTING_POLL));
    }
    mirror
}

/// The three listeners of a server, bound, and their addresses (http, grpc, metrics).
pub(crate) struct Bound {
    pub http: TcpListener,
    pub grpc: TcpListener,
    pub metrics: TcpListener,
    pub addrs: (SocketAddr, SocketAddr, SocketAddr),
}

/// Binds the HTTP, gRPC and metrics ports.
pub(crate) async fn bind_all(config: &ServerConfig) -> Result<Bound, StartError> {
    let (address, ports) = (config.listen_address, config.contract.ports);
    let http = bind(SocketAddr::new(address, ports.http_port)).await?;
    let grpc = bind(SocketAddr::new(address, ports.grpc_port)).await?;
    let metrics = bind(SocketAddr::new(address, ports.metrics_port)).await?;
    let addrs = (local(&http)?, local(&grpc)?, local(&metrics)?);
    Ok(Bound {
        http,
        grpc,
        metrics,
        addrs,
    })
}

/// The signal that stops every listener (after the drain).
pub(crate) struct Stop {
    tx: watch::Sender<bool>,
    rx: watch::Receiver<bool>,
}

impl Stop {
    pub(crate) fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self { tx, rx }
    }

    /// Resolves when the listeners are to stop.
    pub(crate) fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Serves `app` on `listener` until `stop`.
pub(crate) fn serve_http(listener: TcpListener, app: axum::Router, stop: &Stop) -> JoinHandle<()> {
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.signal());
    tokio::spawn(async move {
        let _ = server.await;
    })
}

/// After `shutdown`: `drain` (it marks the server not ready and waits for its work) for at most
/// `drain_timeout`, then stops the listeners and gives connections a short grace to write their
/// answers.
pub(crate) fn drain_then_stop(
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
    stop: Stop,
    tasks: Vec<JoinHandle<()>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        shutdown.await;
        if tokio::time::timeout(drain_timeout, drain).await.is_err() {
            tracing::warn!(?drain_timeout, "work in progress did not finish in time");
        }
        let _ = stop.tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            for task in tasks {
                let _ = task.await;
            }
        })
        .await;
        tracing::info!("stopped");
    })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind { addr, error })
}

fn local(listener: &TcpListener) -> Result<SocketAddr, StartError> {
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
