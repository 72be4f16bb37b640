//! The router's flags (each also an environment variable) and the settings they make.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Parser;
use modelfleet_contract::router_ports;

use crate::{
    cache::CacheConfig,
    pick::{PickConfig, Strategy},
};

/// One OpenAI-compatible entry point for every ModelDeployment the router watches: picks the
/// least-loaded Ready pod of the right revision, enforces API keys, tiers and rate limits,
/// answers repeated deterministic requests from a cache, holds requests while a model has no
/// Ready pod, and falls back to a smaller model under overload (docs/router.md).
#[derive(Parser, Debug, Clone)]
#[command(name = "modelfleet-router", version)]
pub struct Cli {
    /// OpenAI-compatible API (`/v1/...`).
    #[arg(long, env = "MODELFLEET_ROUTER_HTTP_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], router_ports::HTTP)))]
    pub http_addr: SocketAddr,
    /// `/metrics`, `/healthz`, `/readyz`.
    #[arg(long, env = "MODELFLEET_ROUTER_METRICS_ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], router_ports::METRICS)))]
    pub metrics_addr: SocketAddr,
    /// Watch ModelDeployments and pods in these namespaces only (comma-separated or repeated;
    /// default: all namespaces).
    #[arg(long, env = "MODELFLEET_ROUTER_NAMESPACE", value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Namespace of the API-key Secrets (labelled `modelfleet.dev/router-key: "true"`).
    #[arg(long, env = "MODELFLEET_ROUTER_KEYS_NAMESPACE", default_value = "default")]
    pub keys_namespace: String,
    /// Serve callers without a key, on each model's lowest tier, without limits.
    #[arg(long, env = "MODELFLEET_ROUTER_ALLOW_ANONYMOUS")]
    pub allow_anonymous: bool,
    /// Serve the models in this file instead of watching Kubernetes (benchmarks, tests;
    /// docs/router.md shows the format).
    #[arg(long, env = "MODELFLEET_ROUTER_STATIC_CONFIG")]
    pub static_config: Option<PathBuf>,
    /// How endpoints are chosen.
    #[arg(long, env = "MODELFLEET_ROUTER_PICKER", value_enum, default_value_t = Strategy::LeastLoaded)]
    pub picker: Strategy,
    /// How often each pod's metrics are read for its queue.
    #[arg(long, env = "MODELFLEET_ROUTER_SCRAPE_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub scrape_interval: Duration,
    /// A pod whose load was not read for this long is not picked.
    #[arg(long, env = "MODELFLEET_ROUTER_STALE_AFTER", default_value = "3s", value_parser = parse_duration)]
    pub stale_after: Duration,
    /// Response-cache bound in bytes (0: no cache).
    #[arg(long, env = "MODELFLEET_ROUTER_CACHE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub cache_bytes: usize,
    /// Response-cache entry lifetime.
    #[arg(long, env = "MODELFLEET_ROUTER_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// How long a request waits for a model with no Ready pod before 503.
    #[arg(long, env = "MODELFLEET_ROUTER_HOLD_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub hold_timeout: Duration,
    /// Requests held per model at most; past it: 503 at once.
    #[arg(long, env = "MODELFLEET_ROUTER_HOLD_QUEUE", default_value_t = 256)]
    pub hold_queue: usize,
    /// Deadline of a request (held time, tries and the answer), unless the client's
    /// `x-modelfleet-timeout` (seconds) is shorter.
    #[arg(long, env = "MODELFLEET_ROUTER_REQUEST_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Largest request body accepted.
    #[arg(long, env = "MODELFLEET_ROUTER_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// On SIGTERM: report not ready, keep serving this long (endpoints update), then finish
    /// in-flight requests and exit.
    #[arg(long, env = "MODELFLEET_ROUTER_DRAIN_DELAY", default_value = "5s", value_parser = parse_duration)]
    pub drain_delay: Duration,
    /// `json` (one object per line) or `text`.
    #[arg(long, env = "MODELFLEET_ROUTER_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    pub log_format: String,
    /// Also serve the Endpoint Picker here: Envoy ext_proc gRPC for a Gateway API Inference
    /// Extension InferencePool (port 9002 by convention; docs/router-epp.md). Unset: off.
    #[arg(long, env = "MODELFLEET_ROUTER_EPP_ADDR")]
    pub epp_addr: Option<SocketAddr>,
    /// The operator's telemetry hub (e.g. http://modelfleet-telemetry.modelfleet-system:9500):
    /// what this replica saw per ModelDeployment streams there every --report-interval and
    /// becomes status.routing. Unset: no reports.
    #[arg(long, env = "MODELFLEET_ROUTER_OPERATOR_URL")]
    pub operator_url: Option<String>,
    /// Projected service-account token (audience modelfleet-operator) sent to the hub, re-read at
    /// each connect.
    #[arg(
        long,
        env = "MODELFLEET_ROUTER_TOKEN_FILE",
        default_value = "/var/run/secrets/modelfleet/token"
    )]
    pub token_file: PathBuf,
    /// How often a report goes to the hub.
    #[arg(long, env = "MODELFLEET_ROUTER_REPORT_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub report_interval: Duration,
    /// This replica's name in its reports (the pod's name; the hub keeps one report per name).
    #[arg(long, env = "POD_NAME", default_value = "modelfleet-router")]
    pub pod_name: String,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<modelfleet_crds::Duration>()
        .map(Into::into)
        .map_err(|e| e.to_string())
}

/// What the serving path needs of the flags.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Picking.
    pub pick: PickConfig,
    /// The response cache.
    pub cache: CacheConfig,
    /// Anonymous callers allowed.
    pub allow_anonymous: bool,
    /// Holding for a model with no Ready pod.
    pub hold_timeout: Duration,
    /// Held requests per model.
    pub hold_queue: usize,
    /// A request's deadline.
    pub request_timeout: Duration,
    /// Largest body.
    pub max_body_bytes: usize,
}

impl From<&Cli> for RouterConfig {
    fn from(cli: &Cli) -> Self {
        Self {
            pick: PickConfig {
                strategy: cli.picker,
                stale_after: cli.stale_after,
            },
            cache: CacheConfig {
                max_bytes: cli.cache_bytes,
                ttl: cli.cache_ttl,
            },
            allow_anonymous: cli.allow_anonymous,
            hold_timeout: cli.hold_timeout,
            hold_queue: cli.hold_queue,
            request_timeout: cli.request_timeout,
            max_body_bytes: cli.max_body_bytes,
        }
    }
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self::from(&Cli::parse_from(["modelfleet-router"]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ports_and_limits() {
        let cli = Cli::parse_from(["modelfleet-router"]);
        assert_eq!(cli.http_addr.port(), 8000);
        assert_eq!(cli.metrics_addr.port(), 9090);
        assert!(!cli.allow_anonymous, "anonymous access is off unless configured");
        let config = RouterConfig::from(&cli);
        assert_eq!(config.pick.stale_after, Duration::from_secs(3));
        assert_eq!(config.hold_timeout, Duration::from_secs(60));
    }

    #[test]
    fn a_bad_duration_names_the_flag() {
        let err = Cli::try_parse_from(["modelfleet-router", "--hold-timeout", "soon"]).unwrap_err();
        assert!(err.to_string().contains("--hold-timeout"), "{err}");
        let err = Cli::try_parse_from(["modelfleet-router", "--log-format", "yaml"]).unwrap_err();
        assert!(err.to_string().contains("--log-format"), "{err}");
    }
}
