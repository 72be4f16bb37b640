//! Server configuration: every option is a flag with an environment equivalent. The operator
//! passes the flags listed in docs/server.md; `spec.runtime.args` may add any other.

use std::{net::IpAddr, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};

/// What the server serves and how it batches.
#[derive(Args, Debug, Clone)]
pub struct ServerConfig {
    /// Model name served (`model` in OpenAI requests, `{name}` in OIP paths).
    #[arg(long, env = "MODELFLEET_MODEL_NAME", default_value = "minilm")]
    pub model_name: String,
    /// Model version reported in metadata and metrics.
    #[arg(long, env = "MODELFLEET_MODEL_VERSION", default_value = "1")]
    pub model_version: String,
    /// Where the weights live: `file:///dir` (config.json, model.safetensors, tokenizer.json) or
    /// `hf://org/name[@revision]` (downloaded into --model-cache; needs a network). The synthetic
    /// backend needs none; given one, it uses the model's tokenizer to count tokens.
    #[arg(long, env = "MODELFLEET_MODEL_URI")]
    pub model_uri: Option<String>,
    /// Task of the model. Only `embedding` is served by this release.
    #[arg(long, env = "MODELFLEET_TASK", value_enum, default_value_t = Task::Embedding)]
    pub task: Task,
    /// Compute backend: `candle` runs the model; `synthetic` simulates one (for load tests).
    #[arg(long, env = "MODELFLEET_BACKEND", value_enum, default_value_t = BackendKind::Candle)]
    pub backend: BackendKind,
    /// Device of the candle backend.
    #[arg(long, env = "MODELFLEET_DEVICE", value_enum, default_value_t = DeviceKind::Cpu)]
    pub device: DeviceKind,
    /// Directory for downloaded models (`hf://` URIs).
    #[arg(
        long,
        env = "MODELFLEET_MODEL_CACHE",
        default_value = "/var/lib/modelfleet/models"
    )]
    pub model_cache: PathBuf,
    #[command(flatten)]
    pub batching: BatchingConfig,
    #[command(flatten)]
    pub limits: InputLimits,
    #[command(flatten)]
    pub synthetic: SyntheticConfig,
    #[command(flatten)]
    pub listen: ListenConfig,
    /// JSON file `{"mirror": {"url", "percent"}}` mounted from the `<name>-routing` ConfigMap;
    /// re-read when it changes. Absent file: no mirroring.
    #[arg(long, env = "MODELFLEET_ROUTING_FILE")]
    pub routing_file: Option<PathBuf>,
    /// Shadow requests waiting to be sent; beyond it, mirrored copies are dropped and counted.
    #[arg(long, env = "MODELFLEET_SHADOW_QUEUE", default_value_t = 256)]
    pub shadow_queue: usize,
    /// Cosine similarity at or above which a shadow output agrees with the primary one.
    #[arg(long, env = "MODELFLEET_SHADOW_AGREEMENT", default_value_t = 0.99)]
    pub shadow_agreement: f32,
    /// On SIGTERM, how long queued and running work may take before the server exits anyway.
    #[arg(long, env = "MODELFLEET_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// The dynamic batcher and admission control.
#[derive(Args, Debug, Clone)]
pub struct BatchingConfig {
    /// Most inputs (sentences) in one batch; also the most inputs one request may carry.
    #[arg(long, env = "MODELFLEET_MAX_BATCH_SIZE", default_value_t = 32,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_batch_size: u32,
    /// Most tokens in one batch, counted with padding (inputs × longest input).
    #[arg(long, env = "MODELFLEET_MAX_BATCH_TOKENS", default_value_t = 16384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_batch_tokens: u32,
    /// While another batch runs, longest the oldest queued request waits for its batch to fill
    /// before it is started alongside (only with --max-concurrent-batches above 1). An idle
    /// backend always starts a batch at once.
    #[arg(long, env = "MODELFLEET_MAX_QUEUE_DELAY", default_value = "5ms", value_parser = parse_duration)]
    pub max_queue_delay: Duration,
    /// Most requests queued across tiers; beyond it requests get 429 with Retry-After.
    #[arg(long, env = "MODELFLEET_MAX_QUEUE_SIZE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue_size: u32,
    /// Batches the backend runs at once. 1 suits a CPU; a GPU may overlap 2.
    #[arg(long, env = "MODELFLEET_MAX_CONCURRENT_BATCHES", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub max_concurrent_batches: u32,
    /// A priority tier `name:timeout:share`, highest first, repeatable (`high:2s:1`, `low::0.5`).
    /// Empty timeout: none; empty share: 1. Without any: one tier `default`. Requests pick one with
    /// `x-modelfleet-tier`; without the header they use the last tier.
    #[arg(long = "tier", env = "MODELFLEET_TIERS", value_delimiter = ',', value_parser = TierConfig::from_str)]
    pub tiers: Vec<TierConfig>,
}

impl Default for BatchingConfig {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 16384,
            max_queue_delay: Duration::from_millis(5),
            max_queue_size: 1024,
            max_concurrent_batches: 1,
            tiers: Vec::new(),
        }
    }
}

impl BatchingConfig {
    /// The tiers in priority order; one `default` tier when none is configured.
    pub fn effective_tiers(&self) -> Vec<TierConfig> {
        if self.tiers.is_empty() {
            vec![TierConfig {
                name: "default".into(),
                timeout: None,
                max_queue_share: 1.0,
            }]
        } else {
            self.tiers.clone()
        }
    }
}

/// One priority tier.
#[derive(Debug, Clone, PartialEq)]
pub struct TierConfig {
    pub name: String,
    /// Longest a request may wait in the queue.
    pub timeout: Option<Duration>,
    /// Largest share of `--max-queue-size` this tier may hold, in (0, 1].
    pub max_queue_share: f64,
}

impl FromStr for TierConfig {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let name = parts.next().unwrap_or_default().trim();
        let timeout = parts.next().unwrap_or_default().trim();
        let share = parts.next().unwrap_or_default().trim();
        if parts.next().is_some() {
            return Err(format!("tier `{s}`: expected name:timeout:share"));
        }
        if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "tier `{s}`: the name must be 1 to 63 letters, digits or '-'"
            ));
        }
        let timeout = if timeout.is_empty() {
            None
        } else {
            Some(parse_duration(timeout).map_err(|e| format!("tier `{s}`: timeout: {e}"))?)
        };
        let max_queue_share = if share.is_empty() {
            1.0
        } else {
            share
                .parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0 && *v <= 1.0)
                .ok_or_else(|| format!("tier `{s}`: share must be a number in (0, 1], got `{share}`"))?
        };
        Ok(Self {
            name: name.to_owned(),
            timeout,
            max_queue_share,
        })
    }
}

/// Request limits (bad input is rejected with the field and the limit named).
#[derive(Args, Debug, Clone)]
pub struct InputLimits {
    /// Most tokens of one input, [CLS] and [SEP] included; the model's maximum when unset (512 for
    /// BERT), and never above it.
    #[arg(long, env = "MODELFLEET_MAX_INPUT_TOKENS")]
    pub max_input_tokens: Option<u32>,
    /// Over-long inputs: `reject` answers 413 naming the limit; `truncate` cuts them to the limit.
    #[arg(long, env = "MODELFLEET_OVERLONG_INPUT", value_enum, default_value_t = OverlongInput::Reject)]
    pub overlong_input: OverlongInput,
    /// Largest request body in bytes.
    #[arg(long, env = "MODELFLEET_MAX_REQUEST_BYTES", default_value_t = 2 * 1024 * 1024)]
    pub max_request_bytes: usize,
}

impl InputLimits {
    /// The input limit in force: `--max-input-tokens`, never above the model's `model_max`.
    pub fn token_limit(&self, model_max: usize) -> usize {
        self.max_input_tokens
            .map_or(model_max, |m| (m as usize).min(model_max))
    }
}

impl Default for InputLimits {
    fn default() -> Self {
        Self {
            max_input_tokens: None,
            overlong_input: OverlongInput::Reject,
            max_request_bytes: 2 * 1024 * 1024,
        }
    }
}

/// The synthetic backend's latency model `t = a + b·batch + c·tokens` and output size.
#[derive(Args, Debug, Clone)]
pub struct SyntheticConfig {
    /// Fixed cost per batch (a).
    #[arg(long, env = "MODELFLEET_SYNTHETIC_BATCH_COST", default_value = "0ms", value_parser = parse_duration)]
    pub synthetic_batch_cost: Duration,
    /// Cost per input in the batch (b), in microseconds.
    #[arg(long, env = "MODELFLEET_SYNTHETIC_INPUT_COST_US", default_value_t = 0.0)]
    pub synthetic_input_cost_us: f64,
    /// Cost per padded token in the batch (c), in microseconds.
    #[arg(long, env = "MODELFLEET_SYNTHETIC_TOKEN_COST_US", default_value_t = 0.0)]
    pub synthetic_token_cost_us: f64,
    /// Dimension of the synthetic embeddings.
    #[arg(long, env = "MODELFLEET_SYNTHETIC_DIM", default_value_t = 384)]
    pub synthetic_dim: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self {
            synthetic_batch_cost: Duration::ZERO,
            synthetic_input_cost_us: 0.0,
            synthetic_token_cost_us: 0.0,
            synthetic_dim: 384,
        }
    }
}

/// Addresses and ports.
#[derive(Args, Debug, Clone)]
pub struct ListenConfig {
    /// Address every listener binds (tests use 127.0.0.1).
    #[arg(long, env = "MODELFLEET_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
    /// OpenAI and OIP HTTP API (0: any free port, reported in the log).
    #[arg(long, env = "MODELFLEET_HTTP_PORT", default_value_t = 8080)]
    pub http_port: u16,
    /// OIP gRPC API.
    #[arg(long, env = "MODELFLEET_GRPC_PORT", default_value_t = 8081)]
    pub grpc_port: u16,
    /// Prometheus `/metrics`.
    #[arg(long, env = "MODELFLEET_METRICS_PORT", default_value_t = 9090)]
    pub metrics_port: u16,
}

/// Model tasks of the API (only embeddings are served so far).
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    Embedding,
    Generation,
    Classification,
}

/// Compute backends.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Candle,
    Synthetic,
    Upstream,
}

/// Devices of the candle backend.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

/// What to do with an input longer than the limit.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlongInput {
    Reject,
    Truncate,
}

/// Durations use the API's grammar (`500ms`, `2s`, `1m30s`).
pub use modelfleet_crds::parse_std_duration as parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_parse_with_empty_parts_as_defaults() {
        let t: TierConfig = "high:2s:0.5".parse().unwrap();
        assert_eq!(t.timeout, Some(Duration::from_secs(2)));
        assert_eq!(t.max_queue_share, 0.5);
        let t: TierConfig = "low::".parse().unwrap();
        assert_eq!((t.timeout, t.max_queue_share), (None, 1.0));
        let t: TierConfig = "batch".parse().unwrap();
        assert_eq!(t.name, "batch");
    }

    #[test]
    fn bad_tiers_name_the_part_and_limit() {
        assert!(
            "high:2s:1.5"
                .parse::<TierConfig>()
                .unwrap_err()
                .contains("(0, 1]")
        );
        assert!(
            "high:soon:1"
                .parse::<TierConfig>()
                .unwrap_err()
                .contains("timeout")
        );
        assert!(":1s:1".parse::<TierConfig>().unwrap_err().contains("name"));
        assert!(
            "a:1s:1:x"
                .parse::<TierConfig>()
                .unwrap_err()
                .contains("name:timeout:share")
        );
    }
}
