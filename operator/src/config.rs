//! Operator configuration: every flag has an environment variable.

use std::{net::SocketAddr, time::Duration};

/// The server image used when `spec.runtime.image` is empty.
pub const DEFAULT_SERVER_IMAGE: &str = concat!("ghcr.io/modelfleet/server:", env!("CARGO_PKG_VERSION"));

/// Operator settings.
#[derive(Debug, Clone, clap::Args)]
pub struct OperatorConfig {
    /// Server image for ModelDeployments that do not set `spec.runtime.image`.
    #[arg(long, env = "MODELFLEET_DEFAULT_IMAGE", default_value = DEFAULT_SERVER_IMAGE)]
    pub default_image: String,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, env = "MODELFLEET_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Namespace of the leader-election Lease.
    #[arg(long, env = "MODELFLEET_LEASE_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
    /// Name of the leader-election Lease.
    #[arg(long, env = "MODELFLEET_LEASE_NAME", default_value = "modelfleet-operator")]
    pub lease_name: String,
    /// This replica's identity in the Lease (defaults to the pod name or host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// Lease duration: a dead leader is replaced after at most this plus one retry period.
    #[arg(long, env = "MODELFLEET_LEASE_DURATION", default_value = "10s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How often the leader renews and followers retry.
    #[arg(long, env = "MODELFLEET_LEASE_RETRY", default_value = "2s", value_parser = parse_duration)]
    pub lease_retry: Duration,
    /// Requeue interval of a healthy ModelDeployment (watches cover changes; this is a safety net).
    #[arg(long, env = "MODELFLEET_RESYNC", default_value = "5m", value_parser = parse_duration)]
    pub resync: Duration,
    /// Reconciles run at once.
    #[arg(long, env = "MODELFLEET_CONCURRENCY", default_value_t = 8)]
    pub concurrency: u16,
    /// Address of the telemetry hub (gRPC) that node agents stream to.
    #[arg(long, env = "MODELFLEET_TELEMETRY_ADDR", default_value = "0.0.0.0:9091")]
    pub telemetry_addr: SocketAddr,
    /// Audience node-agent tokens must carry (checked by TokenReview).
    #[arg(long, env = "MODELFLEET_TELEMETRY_AUDIENCE", default_value = modelfleet_crds::constants::TELEMETRY_TOKEN_AUDIENCE)]
    pub telemetry_audience: String,
    /// Tick of the autoscaler's decision loop.
    #[arg(long, env = "MODELFLEET_AUTOSCALE_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub autoscale_interval: Duration,
    /// Prometheus base URL (plain HTTP) for `prometheus` analysis checks without an `address`.
    #[arg(long, env = "MODELFLEET_PROMETHEUS_URL")]
    pub prometheus_url: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    s.parse::<modelfleet_crds::Duration>()
        .map(Into::into)
        .map_err(|e| e.to_string())
}

impl Default for OperatorConfig {
    fn default() -> Self {
        Self {
            default_image: DEFAULT_SERVER_IMAGE.into(),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            lease_namespace: "default".into(),
            lease_name: "modelfleet-operator".into(),
            identity: None,
            lease_duration: Duration::from_secs(10),
            lease_retry: Duration::from_secs(2),
            resync: Duration::from_secs(300),
            concurrency: 8,
            telemetry_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            telemetry_audience: modelfleet_crds::constants::TELEMETRY_TOKEN_AUDIENCE.into(),
            autoscale_interval: Duration::from_secs(2),
            prometheus_url: None,
        }
    }
}
