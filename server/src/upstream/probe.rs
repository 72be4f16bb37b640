//! Watching the engine: `/health` every second (the server is ready only while it answers 200;
//! an engine loads its model for a while after it listens), what it serves once it is up
//! (its model id and context length), and its KV-cache usage from its own `/metrics` (or
//! llama.cpp's `/slots`).

use std::{
    sync::{
        RwLock,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use serde_json::Value;

use super::client::EngineClient;
use crate::metrics::Metrics;

/// How long one probe may take before it counts as no answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// KV-cache usage gauges of the engines we know, each 0 to 1: llama.cpp's server, vLLM (and
/// its name before v0.10).
const KV_GAUGES: [&str; 3] = [
    "llamacpp:kv_cache_usage_ratio",
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
];

/// What the probes learnt about the engine.
#[derive(Debug, Default)]
pub struct EngineStatus {
    healthy: AtomicBool,
    /// The engine's own name of its model (`/v1/models`), sent as `model` in forwarded
    /// requests; vLLM refuses any other.
    model: RwLock<Option<String>>,
    /// Tokens one request may hold (prompt plus completion) on the engine; 0 while unknown.
    context: AtomicUsize,
}

impl EngineStatus {
    /// The engine's `/health` answered 200 at the last probe.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// The engine's name of its model, once known.
    pub fn model(&self) -> Option<String> {
        self.model.read().ok().and_then(|m| m.clone())
    }

    /// The engine's context length per request, once known.
    pub fn context(&self) -> Option<usize> {
        Some(self.context.load(Ordering::Relaxed)).filter(|c| *c > 0)
    }
}

/// Probes the engine every `interval`, forever: health, then (once) what it serves, then its
/// KV-cache usage into `metrics`.
pub async fn watch(
    engine: EngineClient,
    status: std::sync::Arc<EngineStatus>,
    metrics: Metrics,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let healthy = matches!(engine.get("/health", PROBE_TIMEOUT).await, Some((s, _)) if s.is_success());
        if healthy && status.model().is_none() {
            discover(&engine, &status).await;
        }
        if healthy && let Some(usage) = engine_kv_usage(&engine).await {
            metrics.generation.kv_cache_usage.set(usage);
        }
        if status.healthy.swap(healthy, Ordering::SeqCst) != healthy {
            if healthy {
                tracing::info!(engine = engine.base(), model = ?status.model(), context = ?status.context(), "engine ready");
            } else {
                tracing::warn!(
                    engine = engine.base(),
                    "engine not ready: /health does not answer 200"
                );
            }
        }
    }
}

/// Reads the engine's model id (`/v1/models`) and context length (vLLM: `max_model_len` there;
/// llama.cpp: `n_ctx` of a slot in `/props`).
async fn discover(engine: &EngineClient, status: &EngineStatus) {
    let json = |body: &[u8]| serde_json::from_slice::<Value>(body).ok();
    let mut context = None;
    if let Some((s, body)) = engine.get("/v1/models", PROBE_TIMEOUT).await
        && s.is_success()
        && let Some(models) = json(&body)
    {
        let first = &models["data"][0];
        if let (Some(id), Ok(mut model)) = (first["id"].as_str(), status.model.write()) {
            *model = Some(id.to_owned());
        }
        context = first["max_model_len"].as_u64();
    }
    if context.is_none()
        && let Some((s, body)) = engine.get("/props", PROBE_TIMEOUT).await
        && s.is_success()
        && let Some(props) = json(&body)
    {
        context = props["default_generation_settings"]["n_ctx"].as_u64();
    }
    if let Some(c) = context {
        status
            .context
            .store(usize::try_from(c).unwrap_or(usize::MAX), Ordering::Relaxed);
    }
}

/// The engine's KV-cache usage: its own gauge in `/metrics`, else (llama.cpp builds that no
/// longer export one, 0.3.36's among them) what its busy slots hold according to `/slots`.
async fn engine_kv_usage(engine: &EngineClient) -> Option<f64> {
    if let Some((s, text)) = engine.get("/metrics", PROBE_TIMEOUT).await
        && s.is_success()
        && let Some(usage) = kv_usage(&String::from_utf8_lossy(&text))
    {
        return Some(usage);
    }
    let (s, body) = engine.get("/slots", PROBE_TIMEOUT).await?;
    if !s.is_success() {
        return None;
    }
    slots_kv_usage(&serde_json::from_slice(&body).ok()?)
}

/// llama.cpp's `/slots`: the tokens its busy slots hold (prompt plus decoded) over the context
/// of all slots, 0 to 1; None when it is not such a list.
pub fn slots_kv_usage(slots: &Value) -> Option<f64> {
    let slots = slots.as_array()?;
    let total: u64 = slots.iter().filter_map(|s| s["n_ctx"].as_u64()).sum();
    if total == 0 {
        return None;
    }
    let held: u64 = slots
        .iter()
        .filter(|s| s["is_processing"] == Value::Bool(true))
        .map(|s| {
            // One entry per sequence in newer builds, an object in older ones.
            let next = s["next_token"].get(0).unwrap_or(&s["next_token"]);
            s["n_prompt_tokens"].as_u64().unwrap_or(0) + next["n_decoded"].as_u64().unwrap_or(0)
        })
        .sum();
    Some((held as f64 / total as f64).clamp(0.0, 1.0))
}

/// The engine's KV-cache usage, 0 to 1, from its Prometheus text (the mean over its series,
/// vLLM labels one per engine core); None when it exports none of [`KV_GAUGES`].
pub fn kv_usage(text: &str) -> Option<f64> {
    for gauge in KV_GAUGES {
        let values: Vec<f64> = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let rest = l.strip_prefix(gauge)?;
                let rest = if rest.starts_with('{') {
                    &rest[rest.find('}')? + 1..]
                } else {
                    rest
                };
                rest.split_whitespace().next()?.parse::<f64>().ok()
            })
            .filter(|v| v.is_finite())
            .collect();
        if !values.is_empty() {
            return Some((values.iter().sum::<f64>() / values.len() as f64).clamp(0.0, 1.0));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_usage_is_read_from_llama_cpp_and_vllm_expositions() {
        let llama = "# HELP llamacpp:kv_cache_usage_ratio KV-cache usage. 1 = 100 percent usage.\n\
                     # TYPE llamacpp:kv_cache_usage_ratio gauge\nllamacpp:kv_cache_usage_ratio 0.25\n";
        assert_eq!(kv_usage(llama), Some(0.25));
        let vllm = "vllm:kv_cache_usage_perc{engine=\"0\",model_name=\"m\"} 0.5\n\
                    vllm:kv_cache_usage_perc{engine=\"1\",model_name=\"m\"} 0.1\n";
        assert!((kv_usage(vllm).expect("vllm") - 0.3).abs() < 1e-9);
        assert_eq!(
            kv_usage("vllm:gpu_cache_usage_perc{model_name=\"m\"} 0.75"),
            Some(0.75)
        );
        assert_eq!(kv_usage("llamacpp:kv_cache_tokens 12\nother 1"), None);
    }

    #[test]
    fn kv_usage_of_llama_cpp_slots_counts_the_busy_ones() {
        let slots = serde_json::json!([
            {"id": 0, "n_ctx": 1024, "is_processing": false},
            {"id": 1, "n_ctx": 1024, "is_processing": true, "n_prompt_tokens": 181,
             "next_token": [{"has_next_token": true, "n_decoded": 75}]},
        ]);
        assert_eq!(slots_kv_usage(&slots), Some(256.0 / 2048.0));
        let older = serde_json::json!([{"n_ctx": 100, "is_processing": true, "n_prompt_tokens": 10,
                                        "next_token": {"n_decoded": 15}}]);
        assert_eq!(slots_kv_usage(&older), Some(0.25));
        assert_eq!(slots_kv_usage(&serde_json::json!({"error": "no slots"})), None);
    }
}
