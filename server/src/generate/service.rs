//! The generation service the HTTP API calls: whether it takes work, which tier a request
//! runs in, the prompt rendered and tokenised (off the async runtime), the scheduler's admission,
//! and the metrics of every request it answers.

use std::{
    sync::{Arc, atomic::Ordering::Relaxed},
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{
    scheduler::{Event, GenerationRequest, Scheduler},
    tokenizer::GgufTokenizer,
};
use crate::{
    api::generation::parse::{GenerationLimits, Options, Prompt},
    engine::{Lifecycle, timeout_header},
    error::InferError,
    metrics::{Metrics, TierLabel},
    shadow::Mirror,
};

/// What the service is built from.
pub struct ServiceParts {
    /// `--model-name`.
    pub model_name: String,
    /// `--model-version`.
    pub model_version: String,
    /// The scheduler owning the model.
    pub scheduler: Scheduler,
    /// The model's tokenizer and chat template.
    pub tokenizer: Arc<GgufTokenizer>,
    /// Request limits.
    pub limits: GenerationLimits,
    /// Metrics.
    pub metrics: Metrics,
    /// Shadow mirroring (off until the routing file names a target).
    pub mirror: Mirror,
}

impl std::fmt::Debug for ServiceParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceParts")
            .field("model_name", &self.model_name)
            .finish_non_exhaustive()
    }
}

/// The generation service (one per server).
pub struct GenerationService {
    /// `--model-name`.
    pub model_name: String,
    /// `--model-version`.
    pub model_version: String,
    /// Loaded, ready, draining.
    pub lifecycle: Lifecycle,
    /// Metrics.
    pub metrics: Metrics,
    /// Request limits.
    pub limits: GenerationLimits,
    scheduler: Scheduler,
    tokenizer: Arc<GgufTokenizer>,
    mirror: Mirror,
    /// Held while copying the scheduler's totals into the counters, so two scrapes at once do
    /// not both add the same difference.
    syncing: std::sync::Mutex<()>,
}

impl std::fmt::Debug for GenerationService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerationService")
            .field("model_name", &self.model_name)
            .finish_non_exhaustive()
    }
}

/// A request the scheduler took: its events, and what its answer and metrics need.
#[derive(Debug)]
pub struct Admitted {
    /// Tokens, then `Done` or `Failed`.
    pub events: mpsc::Receiver<Event>,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// The tier's name (metric label).
    pub tier: String,
    /// When the request arrived.
    pub started: Instant,
}

/// The modelfleet headers of a generation request.
#[derive(Debug, Default, Clone, Copy)]
pub struct RequestHeaders<'a> {
    /// `x-modelfleet-tier`.
    pub tier: Option<&'a str>,
    /// `x-modelfleet-timeout`.
    pub timeout: Option<&'a str>,
    /// `x-modelfleet-shadow`: the request is a mirrored copy, never mirrored again.
    pub shadow_copy: bool,
}

impl GenerationService {
    /// The service; not ready until [`Lifecycle::set_loaded`].
    pub fn new(p: ServiceParts) -> Self {
        Self {
            model_name: p.model_name,
            model_version: p.model_version,
            lifecycle: Lifecycle::default(),
            metrics: p.metrics,
            limits: p.limits,
            scheduler: p.scheduler,
            tokenizer: p.tokenizer,
            mirror: p.mirror,
            syncing: std::sync::Mutex::new(()),
        }
    }

    /// Sequences waiting plus running: the load the router picks by.
    pub fn load(&self) -> i64 {
        let s = self.scheduler.stats();
        i64::try_from(s.waiting.load(Relaxed) + s.running.load(Relaxed)).unwrap_or(i64::MAX)
    }

    /// Resolves once nothing waits or runs (the drain on shutdown).
    pub async fn idle(&self) {
        while self.load() > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Copies the scheduler's figures into the metrics (at each scrape).
    pub fn sync_metrics(&self) {
        let _one = self.syncing.lock().unwrap_or_else(|e| e.into_inner());
        let s = self.scheduler.stats();
        let m = &self.metrics;
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        m.queued.set(gauge(s.waiting.load(Relaxed)));
        m.running.set(gauge(s.running.load(Relaxed)));
        for (i, tier) in self.scheduler.tiers().iter().enumerate() {
            m.queue_depth
                .get_or_create(&TierLabel {
                    tier: tier.name.clone(),
                })
                .set(gauge(s.waiting_in(i)));
        }
        let g = &m.generation;
        g.kv_cache_usage.set(s.kv_utilisation());
        for (counter, total) in [
            (&g.preemptions, &s.preemptions_total),
            (&g.cancelled_sequences, &s.cancelled_total),
            (&g.prompt_tokens, &s.prompt_tokens_total),
            (&g.generated_tokens, &s.generated_tokens_total),
            (&g.steps, &s.steps_total),
            (&g.step_sequences, &s.step_sequences_total),
        ] {
            let (total, now) = (total.load(Relaxed), counter.get());
            if total > now {
                counter.inc_by(total - now);
            }
        }
    }

    /// Shadow mirroring of deterministic requests.
    pub fn mirror(&self) -> &Mirror {
        &self.mirror
    }

    /// The scheduler (its statistics feed the metrics).
    pub fn scheduler(&self) -> &Scheduler {
        &self.scheduler
    }

    /// The tier a request names (None: the lowest).
    pub fn tier_index(&self, name: Option<&str>) -> Result<usize, InferError> {
        self.scheduler.tier_index(name)
    }

    /// The metric label of tier `index`.
    pub fn tier_name(&self, index: Option<usize>) -> String {
        index
            .and_then(|i| self.scheduler.tiers().get(i))
            .map_or_else(|| "none".to_owned(), |t| t.name.clone())
    }

    /// Checks, renders and tokenises the prompt, and hands it to the scheduler.
    pub async fn admit(
        &self,
        prompt: Prompt,
        options: &Options,
        headers: RequestHeaders<'_>,
    ) -> Result<Admitted, InferError> {
        let started = Instant::now();
        if let Some(refusal) = self.lifecycle.refusal() {
            return Err(refusal);
        }
        if let Some(model) = &options.model
            && *model != self.model_name
        {
            return Err(InferError::ModelNotFound {
                requested: model.clone(),
                served: self.model_name.clone(),
            });
        }
        let tier = self.tier_index(headers.tier)?;
        let deadline = timeout_header(headers.timeout)?.map(|t| started + t);
        let tokenizer = self.tokenizer.clone();
        let ids = tokio::task::spawn_blocking(move || tokenize(&tokenizer, prompt))
            .await
            .map_err(|e| InferError::Backend(format!("tokenizer task: {e}")))??;
        let prompt_tokens = ids.len();
        let events = self.scheduler.submit(GenerationRequest {
            prompt: ids,
            params: options.params.clone(),
            tier,
            deadline,
        })?;
        Ok(Admitted {
            events,
            prompt_tokens,
            tier: self.tier_name(Some(tier)),
            started,
        })
    }

    /// Counts a finished (or refused) request.
    pub fn count(&self, api: &'static str, tier: String, code: u16, started: Instant) {
        self.metrics.count_request(api, tier, code, started);
    }
}

fn tokenize(tokenizer: &GgufTokenizer, prompt: Prompt) -> Result<Vec<u32>, InferError> {
    let text = match prompt {
        Prompt::Text(text) => text,
        Prompt::Chat(messages) => tokenizer
            .apply_chat_template(&messages, true)
            .map_err(|e| InferError::invalid("messages", e.to_string()))?,
    };
    let ids = tokenizer
        .encode(&text)
        .map_err(|e| InferError::Backend(e.to_string()))?;
    if ids.is_empty() {
        return Err(InferError::invalid("prompt", "must not be empty"));
    }
    Ok(ids)
}
