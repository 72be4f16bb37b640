//! Model backends behind one trait. A backend turns a batch of tokenized inputs into embeddings;
//! it runs on dedicated OS threads (see `batcher::workers`), never on the async runtime.

mod candle;
mod loader;
mod synthetic;
mod text;

use std::sync::Arc;

pub use candle::{CandleBackend, device_for};
pub use loader::{ModelFiles, resolve_model};
pub use synthetic::{LatencyModel, SyntheticBackend};
pub use text::{Encoded, TextEncoder};

use modelfleet_contract::Backend as BackendKind;

use crate::config::ServerConfig;

/// What a backend is, for metadata, logs and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendInfo {
    /// `candle` or `synthetic`.
    pub name: &'static str,
    /// `cpu` or `cuda`.
    pub device: String,
    /// Length of each embedding.
    pub dim: usize,
    /// Longest input the model accepts, in tokens, special tokens included.
    pub max_input_tokens: usize,
    /// True when outputs and timings are simulated, not computed by a model.
    pub simulated: bool,
}

/// Errors of loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("model files: {0}")]
    Files(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    #[error("{0}")]
    Unsupported(String),
}

/// A model that embeds batches of token ids.
pub trait Backend: Send + Sync + std::fmt::Debug {
    /// What this backend is.
    fn info(&self) -> &BackendInfo;
    /// One L2-normalised embedding per input, in input order. Inputs are token ids with special
    /// tokens; the batch is padded to its longest input by the backend.
    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError>;
}

/// Loads the configured backend and the text encoder that feeds it.
pub fn load(config: &ServerConfig) -> Result<(Arc<dyn Backend>, TextEncoder), BackendError> {
    let served = &config.contract;
    let files = match &served.model_uri {
        Some(uri) => Some(resolve_model(uri, &served.model_cache)?),
        None => None,
    };
    match served.backend {
        BackendKind::Candle => {
            let files = files.ok_or_else(|| {
                BackendError::Files("the candle backend needs --model-uri (file:// or hf://)".into())
            })?;
            let backend = CandleBackend::load(&files, served.device)?;
            let encoder = TextEncoder::from_file(&files.tokenizer)?;
            Ok((Arc::new(backend), encoder))
        }
        BackendKind::Synthetic => {
            let encoder = match &files {
                Some(f) => TextEncoder::from_file(&f.tokenizer)?,
                None => TextEncoder::approximate(),
            };
            let s = &config.synthetic;
            let backend = SyntheticBackend::new(
                s.synthetic_dim,
                512,
                LatencyModel {
                    per_batch: s.synthetic_batch_cost,
                    per_input_us: s.synthetic_input_cost_us,
                    per_token_us: s.synthetic_token_cost_us,
                },
            );
            Ok((Arc::new(backend), encoder))
        }
        BackendKind::Upstream => Err(BackendError::Unsupported(
            "--backend=upstream serves generation models (--task=generation --upstream-url \
             http://127.0.0.1:PORT, in front of vLLM, TGI or llama.cpp's server); embeddings run on \
             --backend=candle or synthetic"
                .into(),
        )),
    }
}
