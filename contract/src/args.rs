//! [`ServerArgs`]: the modelfleet-server flags the operator sets, with their environment
//! variables and defaults. The server flattens it into its own parser, next to its server-only
//! options; the operator writes it with [`ServerArgs::to_args`].

use std::{fmt, path::PathBuf, str::FromStr, time::Duration};

use clap::{Args, ValueEnum};

use crate::{Backend, Device, ModelTask, paths, ports};

/// Durations use the API's grammar (`500ms`, `2s`, `1m30s`): one grammar for manifests and flags.
pub use modelfleet_crds::parse_std_duration as parse_duration;

/// What the server serves, how it batches, where it listens and which routing file it reads.
// `group(skip)` on each struct here: clap would otherwise name an argument group after the
// struct, and a parser that flattens these under a struct of the same name (a test's own
// `ServerArgs` wrapper) would fail its debug assertions with a duplicate group.
#[derive(Args, Debug, Clone, PartialEq)]
#[group(skip)]
pub struct ServerArgs {
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
    /// Task of the model: `embedding` or `generation` (a llama-family GGUF).
    #[arg(long, env = "MODELFLEET_TASK", value_enum, default_value_t = ModelTask::Embedding)]
    pub task: ModelTask,
    /// Compute backend: `candle` runs the model; `synthetic` simulates one (for load tests).
    #[arg(long, env = "MODELFLEET_BACKEND", value_enum, default_value_t = Backend::Candle)]
    pub backend: Backend,
    /// Device of the candle backend.
    // The server's default is the CPU, unlike the API's (`cuda`): a bare `modelfleet-server` on a
    // laptop must start.
    #[arg(long, env = "MODELFLEET_DEVICE", value_enum, default_value_t = Device::Cpu)]
    pub device: Device,
    /// Directory for downloaded models (`hf://` URIs).
    #[arg(long, env = "MODELFLEET_MODEL_CACHE", default_value = paths::MODEL_DIR)]
    pub model_cache: PathBuf,
    #[command(flatten)]
    pub batching: BatchingArgs,
    #[command(flatten)]
    pub ports: PortArgs,
    /// JSON file `{"mirror": {"url", "percent"}}` mounted from the `<name>-routing` ConfigMap;
    /// re-read when it changes. Absent file: no mirroring.
    #[arg(long, env = "MODELFLEET_ROUTING_FILE")]
    pub routing_file: Option<PathBuf>,
    /// `--backend upstream`: base URL of the engine this server fronts in the same pod (vLLM,
    /// llama.cpp's server, TGI), on localhost: `http://127.0.0.1:8000`.
    #[arg(long, env = "MODELFLEET_UPSTREAM_URL")]
    pub upstream_url: Option<String>,
    #[command(flatten)]
    pub generation: GenerationArgs,
}

/// Generation (`--task generation`): the limits the operator sets from `spec.generation`.
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
#[group(skip)]
pub struct GenerationArgs {
    /// Sequences in the running batch at most.
    #[arg(long, env = "MODELFLEET_MAX_RUNNING_SEQUENCES", default_value_t = 16,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_running_sequences: u32,
    /// KV-cache budget in tokens across running sequences: a request reserves its prompt plus
    /// max_tokens. Unset: the context length times 4 (or fewer sequences' worth when that
    /// exceeds --max-running-sequences full contexts).
    #[arg(long, env = "MODELFLEET_KV_BUDGET_TOKENS",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub kv_budget_tokens: Option<u32>,
    /// Longest sequence (prompt plus generated tokens) served; never above the model's own
    /// context length. Unset: the model's.
    #[arg(long, env = "MODELFLEET_CONTEXT_LENGTH",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub context_length: Option<u32>,
    /// `max_tokens` of a request that names none.
    #[arg(long, env = "MODELFLEET_DEFAULT_MAX_TOKENS", default_value_t = 256,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub default_max_tokens: u32,
}

impl Default for GenerationArgs {
    fn default() -> Self {
        Self {
            max_running_sequences: 16,
            kv_budget_tokens: None,
            context_length: None,
            default_max_tokens: 256,
        }
    }
}

impl GenerationArgs {
    /// The context length in force: `--context-length`, never above the model's `model_max`.
    pub fn context_limit(&self, model_max: usize) -> usize {
        self.context_length
            .map_or(model_max, |c| (c as usize).min(model_max))
    }

    fn to_args(self) -> Vec<String> {
        let mut args = vec![format!("--max-running-sequences={}", self.max_running_sequences)];
        args.extend(self.kv_budget_tokens.map(|t| format!("--kv-budget-tokens={t}")));
        args.extend(self.context_length.map(|t| format!("--context-length={t}")));
        args.push(format!("--default-max-tokens={}", self.default_max_tokens));
        args
    }
}

/// The dynamic batcher's limits and the priority tiers.
#[derive(Args, Debug, Clone, PartialEq)]
#[group(skip)]
pub struct BatchingArgs {
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
    /// A priority tier `name:timeout:share`, highest first, repeatable (`high:2s:1`, `low::0.5`).
    /// Empty timeout: none; empty share: 1. Without any: one tier `default`. Requests pick one with
    /// `x-modelfleet-tier`; without the header they use the last tier.
    #[arg(long = "tier", env = "MODELFLEET_TIERS", value_delimiter = ',', value_parser = TierArg::from_str)]
    pub tiers: Vec<TierArg>,
}

impl Default for BatchingArgs {
    fn default() -> Self {
        Self {
            max_batch_size: 32,
            max_batch_tokens: 16384,
            max_queue_delay: Duration::from_millis(5),
            max_queue_size: 1024,
            tiers: Vec::new(),
        }
    }
}

impl BatchingArgs {
    /// Name of the one tier a server without `--tier` has.
    pub const DEFAULT_TIER: &str = "default";

    /// The tiers in priority order; one [`Self::DEFAULT_TIER`] tier when none is configured.
    pub fn effective_tiers(&self) -> Vec<TierArg> {
        if self.tiers.is_empty() {
            vec![TierArg {
                name: Self::DEFAULT_TIER.into(),
                timeout: None,
                max_queue_share: None,
            }]
        } else {
            self.tiers.clone()
        }
    }
}

/// The listening ports.
#[derive(Args, Debug, Clone, Copy, PartialEq, Eq)]
#[group(skip)]
pub struct PortArgs {
    /// OpenAI and OIP HTTP API (0: any free port, reported in the log).
    #[arg(long, env = "MODELFLEET_HTTP_PORT", default_value_t = ports::HTTP)]
    pub http_port: u16,
    /// OIP gRPC API.
    #[arg(long, env = "MODELFLEET_GRPC_PORT", default_value_t = ports::GRPC)]
    pub grpc_port: u16,
    /// Prometheus `/metrics`.
    #[arg(long, env = "MODELFLEET_METRICS_PORT", default_value_t = ports::METRICS)]
    pub metrics_port: u16,
}

impl Default for PortArgs {
    fn default() -> Self {
        Self {
            http_port: ports::HTTP,
            grpc_port: ports::GRPC,
            metrics_port: ports::METRICS,
        }
    }
}

/// One priority tier, written `name:timeout:share` on the command line.
#[derive(Debug, Clone, PartialEq)]
pub struct TierArg {
    /// Tier name, as sent in `x-modelfleet-tier`.
    pub name: String,
    /// Longest a request may wait in the queue; None: no tier timeout.
    pub timeout: Option<Duration>,
    /// Largest share of `--max-queue-size` this tier may hold, in (0, 1]; None: 1. Kept as given,
    /// so the flag written from a tier without a share reads back as the same tier.
    pub max_queue_share: Option<f64>,
}

impl TierArg {
    /// The share of the queue in force: the configured one, else all of it.
    pub fn share(&self) -> f64 {
        self.max_queue_share.unwrap_or(1.0)
    }
}

impl FromStr for TierArg {
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
            None
        } else {
            let parsed = share.parse::<f64>().ok().filter(|v| *v > 0.0 && *v <= 1.0);
            Some(
                parsed
                    .ok_or_else(|| format!("tier `{s}`: share must be a number in (0, 1], got `{share}`"))?,
            )
        };
        Ok(Self {
            name: name.to_owned(),
            timeout,
            max_queue_share,
        })
    }
}

impl fmt::Display for TierArg {
    /// `name:timeout:share`, an absent part empty: what [`TierArg::from_str`] reads back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let timeout = self.timeout.map(duration_arg).unwrap_or_default();
        let share = self.max_queue_share.map(|s| s.to_string()).unwrap_or_default();
        write!(f, "{}:{timeout}:{share}", self.name)
    }
}

impl ServerArgs {
    /// The command line that the server parses back into `self`, one `--flag=value` per item.
    /// Every flag is written, defaults included, so a pod does not depend on the server's
    /// defaults. The order is fixed (tiers last) because the arguments are part of the pod
    /// template: another order would roll out every revision. The generation flags are written
    /// for `--task generation` only, so an embeddings pod's template never holds them.
    pub fn to_args(&self) -> Vec<String> {
        let (b, p) = (&self.batching, &self.ports);
        let mut args = vec![
            format!("--model-name={}", self.model_name),
            format!("--model-version={}", self.model_version),
        ];
        args.extend(self.model_uri.iter().map(|uri| format!("--model-uri={uri}")));
        args.extend([
            format!("--task={}", value_name(self.task)),
            format!("--backend={}", value_name(self.backend)),
            format!("--device={}", value_name(self.device)),
            format!("--model-cache={}", self.model_cache.display()),
            format!("--max-batch-size={}", b.max_batch_size),
            format!("--max-batch-tokens={}", b.max_batch_tokens),
            format!("--max-queue-delay={}", duration_arg(b.max_queue_delay)),
            format!("--max-queue-size={}", b.max_queue_size),
            format!("--http-port={}", p.http_port),
            format!("--grpc-port={}", p.grpc_port),
            format!("--metrics-port={}", p.metrics_port),
        ]);
        args.extend(
            self.routing_file
                .iter()
                .map(|f| format!("--routing-file={}", f.display())),
        );
        args.extend(self.upstream_url.iter().map(|u| format!("--upstream-url={u}")));
        if self.task == ModelTask::Generation {
            args.extend(self.generation.to_args());
        }
        args.extend(b.tiers.iter().map(|t| format!("--tier={t}")));
        args
    }
}

/// The flag value of an enum: its `ValueEnum` name, which is also its name in the API.
fn value_name(v: impl ValueEnum) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_owned())
        .unwrap_or_default()
}

/// A duration in the API's canonical form (`5ms`, `1m30s`). Flags are read with millisecond
/// resolution, so whole milliseconds are all a parsed value holds.
fn duration_arg(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    modelfleet_crds::Duration::from_millis(ms).to_string()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: ServerArgs,
    }

    fn parse(argv: &[String]) -> ServerArgs {
        let argv = std::iter::once("server".to_string()).chain(argv.iter().cloned());
        Cli::try_parse_from(argv).unwrap().args
    }

    #[test]
    fn defaults_are_the_servers() {
        let a = parse(&[]);
        assert_eq!((a.model_name.as_str(), a.model_version.as_str()), ("minilm", "1"));
        assert_eq!(
            (a.task, a.backend, a.device),
            (ModelTask::Embedding, Backend::Candle, Device::Cpu)
        );
        assert_eq!(a.model_cache, PathBuf::from(paths::MODEL_DIR));
        assert_eq!(a.batching, BatchingArgs::default());
        assert_eq!(a.ports, PortArgs::default());
        assert_eq!((a.model_uri, a.routing_file), (None, None));
        assert_eq!((a.upstream_url, a.generation), (None, GenerationArgs::default()));
    }

    #[test]
    fn to_args_parses_back_to_the_same_args() {
        let args = ServerArgs {
            model_name: "m".into(),
            model_version: "v3".into(),
            model_uri: Some("hf://org/name@rev".into()),
            task: ModelTask::Classification,
            backend: Backend::Synthetic,
            device: Device::Cuda,
            model_cache: "/cache".into(),
            batching: BatchingArgs {
                max_batch_size: 64,
                max_batch_tokens: 4096,
                max_queue_delay: Duration::from_millis(90_500),
                max_queue_size: 7,
                tiers: vec!["paid:2s:".parse().unwrap(), "free:10s:0.5".parse().unwrap()],
            },
            ports: PortArgs {
                http_port: 1,
                grpc_port: 2,
                metrics_port: 3,
            },
            routing_file: Some(paths::ROUTING_FILE.into()),
            upstream_url: Some("http://127.0.0.1:8000".into()),
            generation: GenerationArgs::default(),
        };
        let argv = args.to_args();
        assert!(!argv.iter().any(|a| a.contains("max-tokens")), "{argv:?}");
        assert!(
            argv.contains(&"--max-queue-delay=1m30s500ms".to_string()),
            "{argv:?}"
        );
        assert!(argv.contains(&"--tier=paid:2s:".to_string()), "{argv:?}");
        assert_eq!(parse(&argv), args);
    }

    #[test]
    fn generation_args_parse_back_and_cap_the_context() {
        let args = ServerArgs {
            task: ModelTask::Generation,
            generation: GenerationArgs {
                max_running_sequences: 8,
                kv_budget_tokens: Some(4096),
                context_length: Some(1024),
                default_max_tokens: 64,
            },
            ..parse(&[])
        };
        let argv = args.to_args();
        assert!(argv.contains(&"--context-length=1024".to_string()), "{argv:?}");
        assert_eq!(parse(&argv), args);
        assert_eq!(args.generation.context_limit(8192), 1024);
        assert_eq!(args.generation.context_limit(512), 512);
        assert_eq!(GenerationArgs::default().context_limit(2048), 2048);
    }

    #[test]
    fn a_wrapper_of_the_same_name_can_flatten_it() {
        #[derive(Parser, Debug)]
        struct ServerArgs {
            #[command(flatten)]
            args: super::ServerArgs,
        }
        let parsed = ServerArgs::try_parse_from(["server", "--http-port=1"]).unwrap();
        assert_eq!(parsed.args.ports.http_port, 1);
    }

    #[test]
    fn enum_flag_values_are_the_api_names() {
        fn same<T: ValueEnum + serde::Serialize>() {
            for v in T::value_variants() {
                assert_eq!(serde_json::to_value(v).unwrap(), value_name(v.clone()));
            }
        }
        same::<ModelTask>();
        same::<Backend>();
        same::<Device>();
    }

    #[test]
    fn tiers_parse_with_empty_parts_as_defaults() {
        let t: TierArg = "high:2s:0.5".parse().unwrap();
        assert_eq!(t.timeout, Some(Duration::from_secs(2)));
        assert_eq!(t.share(), 0.5);
        let t: TierArg = "low::".parse().unwrap();
        assert_eq!((t.timeout, t.max_queue_share, t.share()), (None, None, 1.0));
        let t: TierArg = "batch".parse().unwrap();
        assert_eq!(t.name, "batch");
        assert_eq!(t.to_string(), "batch::");
    }

    #[test]
    fn bad_tiers_name_the_part_and_limit() {
        let err = |s: &str| s.parse::<TierArg>().unwrap_err();
        assert!(err("high:2s:1.5").contains("(0, 1]"));
        assert!(err("high:soon:1").contains("timeout"));
        assert!(err(":1s:1").contains("name"));
        assert!(err("a:1s:1:x").contains("name:timeout:share"));
    }
}
