//! The request path every API shares: validate, tokenize, queue, answer, mirror, count.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use modelfleet_contract::headers;

use crate::{
    backend::{BackendInfo, TextEncoder},
    batcher::Batcher,
    config::{InputLimits, OverlongInput, parse_duration},
    error::InferError,
    metrics::Metrics,
    shadow::Mirror,
};

/// Texts above this many bytes in one request are tokenized off the async runtime.
const INLINE_TOKENIZE_BYTES: usize = 4096;

/// The `x-modelfleet-timeout` header as a duration, or a 400 naming it.
pub fn timeout_header(header: Option<&str>) -> Result<Option<Duration>, InferError> {
    header
        .map(|t| {
            parse_duration(t.trim()).map_err(|e| {
                InferError::invalid(
                    headers::TIMEOUT,
                    format!("`{t}` is not a duration like 500ms or 2s: {e}"),
                )
            })
        })
        .transpose()
}

/// Whether the server takes work: ready after warm-up, not ready once draining.
#[derive(Debug, Default)]
pub struct Lifecycle {
    loaded: AtomicBool,
    draining: AtomicBool,
}

impl Lifecycle {
    /// The model is loaded and warmed up.
    pub fn set_loaded(&self) {
        self.loaded.store(true, Ordering::SeqCst);
    }

    /// SIGTERM: refuse new work from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Ready for traffic.
    pub fn is_ready(&self) -> bool {
        self.loaded.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// The answer to a request while not ready: still loading, or draining.
    pub fn refusal(&self) -> Option<InferError> {
        if self.draining.load(Ordering::SeqCst) {
            Some(InferError::Unavailable {
                message: "the server is shutting down; retry on another replica".into(),
                retry_after: Duration::from_secs(1),
            })
        } else if !self.loaded.load(Ordering::SeqCst) {
            Some(InferError::Unavailable {
                message: "the model is still loading".into(),
                retry_after: Duration::from_secs(5),
            })
        } else {
            None
        }
    }
}

/// One embedding request, whatever API it came through.
#[derive(Debug)]
pub struct EmbedRequest<'a> {
    /// `openai`, `oip_http` or `oip_grpc` (a metric label).
    pub api: &'static str,
    /// The model the client asked for, if the API carries one in the body.
    pub model: Option<&'a str>,
    pub texts: Vec<String>,
    /// `x-modelfleet-tier`.
    pub tier: Option<&'a str>,
    /// `x-modelfleet-timeout`.
    pub timeout: Option<&'a str>,
    /// The request is itself a shadow copy (`x-modelfleet-shadow`): never mirror it again.
    pub shadow_copy: bool,
}

/// The answer: one vector per text, and the tokens counted.
#[derive(Debug)]
pub struct EmbedOutput {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// Everything a request needs.
#[derive(Debug)]
pub struct Engine {
    pub model_name: String,
    pub model_version: String,
    pub info: BackendInfo,
    pub lifecycle: Lifecycle,
    pub metrics: Metrics,
    pub batcher: Batcher,
    encoder: Arc<TextEncoder>,
    max_input_tokens: usize,
    overlong: OverlongInput,
    mirror: Mirror,
}

/// Parts of an [`Engine`].
#[derive(Debug)]
pub struct EngineParts {
    pub model_name: String,
    pub model_version: String,
    pub info: BackendInfo,
    pub metrics: Metrics,
    pub batcher: Batcher,
    pub encoder: TextEncoder,
    pub limits: InputLimits,
    pub mirror: Mirror,
}

impl Engine {
    /// Assembles the engine; the input limit is the flag's, never above the model's.
    pub fn new(p: EngineParts) -> Self {
        let max_input_tokens = p.limits.token_limit(p.info.max_input_tokens);
        Self {
            model_name: p.model_name,
            model_version: p.model_version,
            info: p.info,
            lifecycle: Lifecycle::default(),
            metrics: p.metrics,
            batcher: p.batcher,
            encoder: Arc::new(p.encoder),
            max_input_tokens,
            overlong: p.limits.overlong_input,
            mirror: p.mirror,
        }
    }

    /// Longest input accepted, in tokens.
    pub fn max_input_tokens(&self) -> usize {
        self.max_input_tokens
    }

    /// Serves one request and counts it.
    pub async fn embed(&self, request: EmbedRequest<'_>) -> Result<EmbedOutput, InferError> {
        let started = Instant::now();
        let api = request.api;
        let tier = self.batcher.tier_index(request.tier);
        let tier_name = self.tier_label(tier.as_ref().ok().copied());
        let result = match tier {
            Ok(tier) => self.embed_in_tier(request, tier, started).await,
            Err(e) => Err(e),
        };
        let code = match &result {
            Ok(_) => 200,
            Err(e) => e.status().as_u16(),
        };
        self.count(api, tier_name, code, started);
        result
    }

    /// Counts a request refused before it reached [`Engine::embed`] (unparseable body) and
    /// returns its error.
    pub fn reject_early(&self, api: &'static str, tier: Option<&str>, error: InferError) -> InferError {
        let tier_name = self.tier_label(self.batcher.tier_index(tier).ok());
        self.count(api, tier_name, error.status().as_u16(), Instant::now());
        error
    }

    /// The `tier` metric label: the tier's name, `none` for an unknown one.
    fn tier_label(&self, index: Option<usize>) -> String {
        index
            .map_or("none", |t| self.batcher.tiers()[t].name.as_str())
            .to_owned()
    }

    fn count(&self, api: &'static str, tier: String, code: u16, started: Instant) {
        self.metrics.count_request(api, tier, code, started);
    }

    async fn embed_in_tier(
        &self,
        request: EmbedRequest<'_>,
        tier: usize,
        started: Instant,
    ) -> Result<EmbedOutput, InferError> {
        if let Some(refusal) = self.lifecycle.refusal() {
            return Err(refusal);
        }
        if let Some(model) = request.model
            && model != self.model_name
        {
            return Err(InferError::ModelNotFound {
                requested: model.to_owned(),
                served: self.model_name.clone(),
            });
        }
        let timeout = timeout_header(request.timeout)?;
        self.check_shape(&request.texts)?;
        let inputs = self.tokenize(&request.texts).await?;
        let prompt_tokens = inputs.iter().map(Vec::len).sum();
        let vectors = self.batcher.submit(tier, inputs, timeout).await?;
        if !request.shadow_copy {
            self.mirror.offer(&request.texts, &vectors, started.elapsed());
        }
        Ok(EmbedOutput {
            vectors,
            prompt_tokens,
        })
    }

    fn check_shape(&self, texts: &[String]) -> Result<(), InferError> {
        let limit = self.batcher.limits().max_inputs;
        if texts.is_empty() {
            return Err(InferError::invalid("input", "must contain at least one string"));
        }
        if texts.len() > limit {
            return Err(InferError::invalid(
                "input",
                format!(
                    "{} strings in one request; the limit is {limit} (maxBatchSize)",
                    texts.len()
                ),
            ));
        }
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(InferError::invalid(format!("input[{i}]"), "must not be empty"));
        }
        Ok(())
    }

    async fn tokenize(&self, texts: &[String]) -> Result<Vec<Vec<u32>>, InferError> {
        let bytes: usize = texts.iter().map(String::len).sum();
        let encoded = if bytes <= INLINE_TOKENIZE_BYTES {
            encode_all(&self.encoder, texts)
        } else {
            let encoder = self.encoder.clone();
            let texts = texts.to_vec();
            tokio::task::spawn_blocking(move || encode_all(&encoder, &texts))
                .await
                .map_err(|e| InferError::Backend(format!("tokenizer task: {e}")))?
        }?;
        let mut inputs = Vec::with_capacity(encoded.len());
        for (i, mut ids) in encoded.into_iter().enumerate() {
            if ids.len() > self.max_input_tokens {
                match self.overlong {
                    OverlongInput::Reject => {
                        return Err(InferError::too_large(
                            format!("input[{i}]"),
                            format!(
                                "input[{i}] has {} tokens; the limit is {} (--max-input-tokens; \
                                 --overlong-input=truncate cuts instead)",
                                ids.len(),
                                self.max_input_tokens
                            ),
                        ));
                    }
                    OverlongInput::Truncate => truncate(&mut ids, self.max_input_tokens),
                }
            }
            inputs.push(ids);
        }
        let limits = self.batcher.limits();
        let longest = inputs.iter().map(Vec::len).max().unwrap_or(0);
        if longest * inputs.len() > limits.max_padded_tokens {
            return Err(InferError::too_large(
                "input",
                format!(
                    "{} inputs padded to {longest} tokens make {} tokens; the limit is {} (maxBatchTokens)",
                    inputs.len(),
                    longest * inputs.len(),
                    limits.max_padded_tokens
                ),
            ));
        }
        Ok(inputs)
    }
}

fn encode_all(encoder: &TextEncoder, texts: &[String]) -> Result<Vec<Vec<u32>>, InferError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            encoder
                .encode(t)
                .map(|e| e.ids)
                .map_err(|e| InferError::invalid(format!("input[{i}]"), e.to_string()))
        })
        .collect()
}

/// Keeps the first `limit - 1` tokens and the final special token ([SEP]).
fn truncate(ids: &mut Vec<u32>, limit: usize) {
    if limit >= 2 && ids.len() > limit {
        let last = ids[ids.len() - 1];
        ids.truncate(limit - 1);
        ids.push(last);
    } else {
        ids.truncate(limit);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_closing_special_token() {
        let mut ids = vec![101, 1, 2, 3, 4, 102];
        truncate(&mut ids, 4);
        assert_eq!(ids, [101, 1, 2, 102]);
    }
}
