//! Start-up of a generation server (`--task generation`): load the GGUF, size the KV budget,
//! start the scheduler, serve the OpenAI generation routes and `/metrics`, and drain on
//! shutdown.

use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
};

use modelfleet_contract::Device as DeviceKind;

use super::{
    Decode, LanguageModel,
    model::GgufLlama,
    scheduler::{Scheduler, SchedulerConfig, TierConfig},
    service::{GenerationService, ServiceParts},
};
use crate::{
    ServerConfig,
    api::{self, generation::parse::GenerationLimits},
    metrics::{Metrics, ModelLabels},
    serve::{Listening, StartError, Stop, bind_all, drain_then_stop, serve_http, start_mirror},
};

/// The `.gguf` file a `--model-uri` names: `file:///path/model.gguf`, or a directory holding
/// exactly one.
pub fn gguf_path(uri: &str) -> Result<PathBuf, StartError> {
    let Some(path) = uri.strip_prefix("file://").map(PathBuf::from) else {
        return Err(StartError::Config(format!(
            "--model-uri `{uri}`: generation reads a local GGUF file: file:///path/to/model.gguf"
        )));
    };
    if path.is_file() {
        return Ok(path);
    }
    let found: Vec<PathBuf> = std::fs::read_dir(&path)
        .map_err(|e| StartError::Config(format!("--model-uri `{uri}`: {e}")))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        _ => Err(StartError::Config(format!(
            "--model-uri `{uri}`: expected one .gguf file in {}, found {}",
            path.display(),
            found.len()
        ))),
    }
}

/// The served name of a GGUF: the file's stem (`SmolLM2-135M-Instruct.Q4_1`).
pub fn default_model_name(path: &Path) -> String {
    path.file_stem()
        .map_or_else(|| "model".to_owned(), |s| s.to_string_lossy().into_owned())
}

/// The scheduler's limits from the flags and the model.
fn scheduler_config(config: &ServerConfig, context_length: usize, eos_ids: Vec<u32>) -> SchedulerConfig {
    let (g, tuning) = (&config.contract.generation, &config.generation);
    let max_running = g.max_running_sequences as usize;
    let kv_budget_tokens = g
        .kv_budget_tokens
        .map_or_else(|| context_length * max_running.min(4), |t| (t as usize).max(1));
    SchedulerConfig {
        max_running,
        kv_budget_tokens,
        prefill_chunk: tuning.prefill_chunk as usize,
        step_token_budget: tuning.step_token_budget as usize,
        tiers: config
            .contract
            .batching
            .tiers
            .iter()
            .map(TierConfig::from)
            .collect(),
        max_waiting: config.contract.batching.max_queue_size as usize,
        eos_ids,
        context_length: Some(context_length),
    }
}

/// Loads the model and starts serving; `shutdown` resolving starts the drain.
pub async fn start(
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Listening, StartError> {
    let served = &config.contract;
    let uri = served.model_uri.clone().ok_or_else(|| {
        StartError::Config("--task=generation needs --model-uri file:///path/to/model.gguf".into())
    })?;
    let path = gguf_path(&uri)?;
    let device = crate::backend::device_for(served.device).map_err(StartError::Config)?;
    let started = std::time::Instant::now();
    let loading = path.clone();
    let (model, tokenizer) = tokio::task::spawn_blocking(move || GgufLlama::load(&loading, &device))
        .await
        .map_err(|e| StartError::Config(format!("model loader: {e}")))?
        .map_err(|e| StartError::Config(format!("loading {}: {e}", path.display())))?;
    let info = model.info();
    tracing::info!(
        file = %path.display(),
        layers = info.layers,
        context_length = info.context_length,
        took_ms = started.elapsed().as_millis() as u64,
        "generation model loaded"
    );
    let tokenizer = Arc::new(tokenizer);
    let context_length = served.generation.context_limit(info.context_length);
    let scheduler_config = scheduler_config(&config, context_length, tokenizer.eos_ids());
    let model: Box<dyn LanguageModel> = Box::new(model);
    let decode: Arc<dyn Decode> = tokenizer.clone();
    let scheduler = Scheduler::start(model, decode, scheduler_config);

    let metrics = Metrics::default();
    metrics
        .model_info
        .get_or_create(&ModelLabels {
            model: served.model_name.clone(),
            version: served.model_version.clone(),
            backend: "candle",
            device: if served.device == DeviceKind::Cuda {
                "cuda"
            } else {
                "cpu"
            }
            .into(),
            simulated: "false",
        })
        .set(1);
    let mirror = start_mirror(&config, &metrics);
    let service = Arc::new(GenerationService::new(ServiceParts {
        model_name: served.model_name.clone(),
        model_version: served.model_version.clone(),
        scheduler,
        tokenizer,
        limits: GenerationLimits {
            context_length,
            default_max_tokens: served.generation.default_max_tokens as usize,
            max_prompt_bytes: config.generation.max_prompt_bytes,
        },
        metrics: metrics.clone(),
        mirror,
    }));
    serve(config, service, shutdown).await
}

async fn serve(
    config: ServerConfig,
    service: Arc<GenerationService>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Listening, StartError> {
    let bound = bind_all(&config).await?;
    let stop = Stop::new();
    let app = api::generation::router(service.clone(), config.limits.max_request_bytes);
    let http_task = serve_http(bound.http, app, &stop);
    let metrics_task = serve_http(
        bound.metrics,
        api::generation::metrics_router(service.clone()),
        &stop,
    );
    // The OIP v2 gRPC API serves embeddings only: the port answers at once (404) rather than
    // leaving a client hanging.
    let grpc_task = serve_http(bound.grpc, axum::Router::new(), &stop);
    service.lifecycle.set_loaded();
    service.metrics.ready.set(1);
    let draining = service.clone();
    let drain = async move {
        tracing::info!("shutdown requested: not ready, finishing running sequences");
        draining.lifecycle.start_draining();
        draining.metrics.ready.set(0);
        draining.idle().await;
    };
    let tasks = vec![http_task, grpc_task, metrics_task];
    let stopped = drain_then_stop(shutdown, drain, config.drain_timeout, stop, tasks);
    let addrs = bound.addrs;
    Ok(Listening {
        http: addrs.0,
        grpc: addrs.1,
        metrics: addrs.2,
        backend: "candle",
        simulated: false,
        engine: None,
        stopped,
    })
}
