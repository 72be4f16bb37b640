//! One forwarded request, before its answer: our checks of the body (the generation API's own
//! parser: every field, sizes before anything is sent), the served model, readiness, the tier
//! and deadline, admission, and the body the engine gets (its model name, an explicit
//! `max_tokens`, usage in streams).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::HeaderMap;
use modelfleet_contract::headers;
use serde_json::{Value, json};

use super::{
    admission::{Admission, Permit},
    client::EngineClient,
    probe::EngineStatus,
};
use crate::{
    api::generation::{
        api_label, api_path,
        parse::{self, GenerationLimits, Options},
        respond::Api,
    },
    engine::{Lifecycle, timeout_header},
    error::InferError,
    metrics::Metrics,
    shadow::{Mirror, PendingCopy},
};

/// What the service is built from.
#[derive(Debug)]
pub struct UpstreamParts {
    /// `--model-name`.
    pub model_name: String,
    /// `--model-version`.
    pub model_version: String,
    /// The engine.
    pub engine: EngineClient,
    /// The gate in front of it.
    pub admission: Arc<Admission>,
    /// Limits; `context_length` is `--context-length` ([`super::UNKNOWN_CONTEXT`] when unset:
    /// the engine's, once known).
    pub limits: GenerationLimits,
    /// Metrics.
    pub metrics: Metrics,
    /// Shadow mirroring.
    pub mirror: Mirror,
}

/// The upstream generation service (one per server).
#[derive(Debug)]
pub struct UpstreamService {
    /// `--model-name`.
    pub model_name: String,
    /// `--model-version`.
    pub model_version: String,
    /// Started, draining.
    pub lifecycle: Lifecycle,
    /// Metrics.
    pub metrics: Metrics,
    /// The engine.
    pub engine: EngineClient,
    /// What the probes know about the engine.
    pub status: Arc<EngineStatus>,
    /// The gate in front of the engine.
    pub admission: Arc<Admission>,
    limits: GenerationLimits,
    mirror: Mirror,
}

/// A request admitted to the engine: what its answer needs.
#[derive(Debug)]
pub struct Forward {
    /// Which API.
    pub api: Api,
    /// The body for the engine.
    pub body: Bytes,
    /// The request's options, as parsed.
    pub options: Options,
    /// The tier's name (metric label).
    pub tier: String,
    /// When the request arrived.
    pub started: Instant,
    /// `x-modelfleet-timeout`: when the whole request gives up.
    pub deadline: Option<Instant>,
    /// Its place among the running requests, held until the engine's answer ends.
    pub permit: Permit,
    /// The copy for the shadow, when mirrored.
    pub copy: Option<PendingCopy>,
}

impl UpstreamService {
    /// The service; not ready until [`Lifecycle::set_loaded`] and the engine's health.
    pub fn new(p: UpstreamParts, status: Arc<EngineStatus>) -> Self {
        Self {
            model_name: p.model_name,
            model_version: p.model_version,
            lifecycle: Lifecycle::default(),
            metrics: p.metrics,
            engine: p.engine,
            status,
            admission: p.admission,
            limits: p.limits,
            mirror: p.mirror,
        }
    }

    /// Ready: started, not draining, and the engine healthy.
    pub fn is_ready(&self) -> bool {
        self.lifecycle.is_ready() && self.status.is_healthy()
    }

    /// The limits in force: the engine's context length once known (never above
    /// `--context-length`).
    pub fn limits(&self) -> GenerationLimits {
        let mut limits = self.limits;
        if let Some(engine) = self.status.context() {
            limits.context_length = limits.context_length.min(engine);
        }
        limits
    }

    /// The metric label of the tier a request names.
    pub fn tier_label(&self, headers: &HeaderMap) -> String {
        let name = headers.get(headers::TIER).and_then(|v| v.to_str().ok());
        self.admission.tier_name(self.admission.tier_index(name).ok())
    }

    /// Checks a request and waits for its place; every refusal happens before the engine sees
    /// anything.
    pub async fn admit(&self, api: Api, headers: &HeaderMap, body: Value) -> Result<Forward, InferError> {
        let started = Instant::now();
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let limits = self.limits();
        let (_, options) = match api {
            Api::Chat => parse::parse_chat(&body, &limits)?,
            Api::Completions => parse::parse_completion(&body, &limits)?,
        };
        if let Some(model) = &options.model
            && *model != self.model_name
        {
            return Err(InferError::ModelNotFound {
                requested: model.clone(),
                served: self.model_name.clone(),
            });
        }
        let tier = self.admission.tier_index(text(headers::TIER))?;
        let deadline = timeout_header(text(headers::TIMEOUT))?.map(|t| started + t);
        self.refusal()?;
        let copy = (!headers.contains_key(headers::SHADOW) && options.deterministic())
            .then(|| self.mirror.prepare_generation(api_path(api), &body))
            .flatten();
        let body = self.engine_body(api, body, &options)?;
        let permit = self.admission.acquire(tier, deadline).await?;
        Ok(Forward {
            api,
            body,
            options,
            tier: self.admission.tier_name(Some(tier)),
            started,
            deadline,
            permit,
            copy,
        })
    }

    /// Why no request is taken now, if none is: draining, or the engine is not up.
    fn refusal(&self) -> Result<(), InferError> {
        if let Some(refusal) = self.lifecycle.refusal() {
            return Err(refusal);
        }
        if !self.status.is_healthy() {
            return Err(InferError::Unavailable {
                message: format!(
                    "the engine at {} is not ready (its /health does not answer 200 yet)",
                    self.engine.base()
                ),
                retry_after: Duration::from_secs(5),
            });
        }
        Ok(())
    }

    /// The body the engine gets: the client's, with the engine's model name, an explicit
    /// `max_tokens` (engines differ in their defaults, ours is `--default-max-tokens`), and
    /// usage asked for in streams (the token counters need it; the client sees it only if it
    /// asked).
    fn engine_body(&self, api: Api, mut body: Value, options: &Options) -> Result<Bytes, InferError> {
        let o = body
            .as_object_mut()
            .ok_or_else(|| InferError::invalid("body", "expected a JSON object"))?;
        match self.status.model() {
            Some(model) => o.insert("model".into(), Value::String(model)),
            None => o.remove("model"),
        };
        let named = ["max_tokens", "max_completion_tokens"]
            .iter()
            .any(|k| o.get(*k).is_some_and(|v| !v.is_null()));
        if !named {
            o.insert("max_tokens".into(), json!(options.params.max_tokens));
        }
        if api == Api::Completions {
            // The completions API has no max_completion_tokens; parse read max_tokens only.
            o.remove("max_completion_tokens");
        }
        if options.stream {
            o.insert("stream_options".into(), json!({"include_usage": true}));
        }
        serde_json::to_vec(&body)
            .map(Bytes::from)
            .map_err(|e| InferError::Backend(format!("encoding the engine request: {e}")))
    }

    /// Counts a finished (or refused) request.
    pub fn count(&self, api: Api, tier: String, code: u16, started: Instant) {
        self.metrics.count_request(api_label(api), tier, code, started);
    }

    /// Records the token counts of an answer's `usage`.
    pub fn count_usage(&self, usage: &Value) {
        let g = &self.metrics.generation;
        if let Some(n) = usage["prompt_tokens"].as_u64() {
            g.prompt_tokens.inc_by(n);
        }
        if let Some(n) = usage["completion_tokens"].as_u64() {
            g.generated_tokens.inc_by(n);
        }
    }

    /// Copies the gauges that are read at scrape time.
    pub fn sync_metrics(&self) {
        self.metrics.ready.set(i64::from(self.is_ready()));
    }
}
