//! Server configuration: every option is a flag with an environment equivalent. The flags the
//! operator sets are [`ServerArgs`] in modelfleet-contract (listed in docs/server.md), flattened
//! here next to the server-only options; `spec.runtime.args` may add any of these.

use std::{net::IpAddr, time::Duration};

use clap::{Args, Parser, ValueEnum};
pub use modelfleet_contract::{BatchingArgs, ServerArgs, TierArg, parse_duration};

/// Dynamic-batching inference server for sentence-embedding models: OpenAI `/v1/embeddings`,
/// Open Inference Protocol v2 over HTTP and gRPC, priority tiers with deadlines and honest load
/// shedding (429/503 with Retry-After), shadow mirroring, and Prometheus metrics.
///
/// Every option also reads an environment variable (shown in brackets). The operator passes the
/// flags listed in docs/server.md.
// Here rather than in main.rs so tests parse a pod's arguments with the binary's own parser.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
pub struct Cli {
    #[command(flatten)]
    pub config: ServerConfig,
    /// Log format.
    #[arg(long, env = "MODELFLEET_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
}

/// What the server serves and how it batches.
#[derive(Args, Debug, Clone)]
pub struct ServerConfig {
    /// The options the operator sets.
    #[command(flatten)]
    pub contract: ServerArgs,
    /// Batches the backend runs at once. 1 suits a CPU; a GPU may overlap 2.
    #[arg(long, env = "MODELFLEET_MAX_CONCURRENT_BATCHES", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=16))]
    pub max_concurrent_batches: u32,
    #[command(flatten)]
    pub limits: InputLimits,
    #[command(flatten)]
    pub synthetic: SyntheticConfig,
    #[command(flatten)]
    pub generation: GenerationConfig,
    /// Address every listener binds (tests use 127.0.0.1).
    #[arg(long, env = "MODELFLEET_LISTEN_ADDRESS", default_value = "0.0.0.0")]
    pub listen_address: IpAddr,
    /// Shadow requests waiting to be sent; beyond it, mirrored copies are dropped and counted.
    #[arg(long, env = "MODELFLEET_SHADOW_QUEUE", default_value_t = 256)]
    pub shadow_queue: usize,
    /// Cosine similarity at or above which a shadow output agrees with the primary one.
    #[arg(long, env = "MODELFLEET_SHADOW_AGREEMENT", default_value_t = 0.99)]
    pub shadow_agreement: f32,
    /// Generation servers: text similarity (1 − edit distance ÷ the longer text's length) at or
    /// above which a shadow's text agrees with the primary's; 1 (the default): only equal texts.
    #[arg(long, env = "MODELFLEET_SHADOW_TEXT_AGREEMENT", default_value_t = 1.0,
          value_parser = parse_share)]
    pub shadow_text_agreement: f64,
    /// On SIGTERM, how long queued and running work may take before the server exits anyway.
    #[arg(long, env = "MODELFLEET_DRAIN_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// A number from 0 to 1.
fn parse_share(s: &str) -> Result<f64, String> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| (0.0..=1.0).contains(v))
        .ok_or_else(|| format!("expected a number from 0 to 1, got `{s}`"))
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

/// What to do with an input longer than the limit.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlongInput {
    Reject,
    Truncate,
}

/// Generation (`--task generation`): the continuous-batching scheduler's tuning. The limits the
/// operator sets (running sequences, KV budget, context length, default max_tokens) are
/// [`modelfleet_contract::GenerationArgs`] in `contract.generation`.
#[derive(Args, Debug, Clone)]
pub struct GenerationConfig {
    /// Prompt tokens one sequence prefills per step, so a long prompt does not stall running
    /// streams.
    #[arg(long, env = "MODELFLEET_PREFILL_CHUNK", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=8192))]
    pub prefill_chunk: u32,
    /// Tokens in one forward pass at most (decode tokens plus prefill chunks).
    #[arg(long, env = "MODELFLEET_STEP_TOKEN_BUDGET", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub step_token_budget: u32,
    /// Bytes of prompt text (all messages) at most, checked before tokenisation.
    #[arg(long, env = "MODELFLEET_MAX_PROMPT_BYTES", default_value_t = 256 * 1024)]
    pub max_prompt_bytes: usize,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            prefill_chunk: 64,
            step_token_budget: 256,
            max_prompt_bytes: 256 * 1024,
        }
    }
}
