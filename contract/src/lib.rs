//! The contract between the operator, modelfleet-server and the node agent, typed once.
//!
//! The operator writes a pod that the server must understand and the node agent must scrape; each
//! side used to carry its own copy of the flag names, ports, paths and metric names. They live
//! here instead, so a rename is one edit and a mismatch does not compile:
//!
//! - [`ServerArgs`]: the server flags the operator sets. The server's parser flattens it; the
//!   operator writes it with [`ServerArgs::to_args`].
//! - [`RoutingFile`]: the routing file the operator writes into the `<name>-routing` ConfigMap and
//!   the server re-reads.
//! - [`ports`], [`paths`], [`headers`], [`annotations`], [`metrics`]: the names both sides use.

mod args;
pub mod metrics;
mod routing;

pub use args::{BatchingArgs, GenerationArgs, PortArgs, ServerArgs, TierArg, parse_duration};
/// The API's enums are the flags' values: `--task`, `--backend`, `--device` accept exactly the
/// names a ModelDeployment uses.
pub use modelfleet_crds::v1alpha1::{Backend, Device, ModelTask};
pub use routing::{MirrorTarget, RoutingFile};

/// The server's listening ports, fixed in every pod the operator builds.
pub mod ports {
    /// OpenAI and OIP v2 HTTP (`--http-port`).
    pub const HTTP: u16 = 8080;
    /// OIP v2 gRPC (`--grpc-port`).
    pub const GRPC: u16 = 8081;
    /// Prometheus `/metrics` (`--metrics-port`); the node agent scrapes `<podIP>:9090`.
    pub const METRICS: u16 = 9090;
    /// Container port name of [`HTTP`]: probes and Services refer to the port by name.
    pub const HTTP_NAME: &str = "http";
    /// Container port name of [`GRPC`].
    pub const GRPC_NAME: &str = "grpc";
    /// Container port name of [`METRICS`].
    pub const METRICS_NAME: &str = "metrics";
}

/// Paths inside the serving pod and on the server's ports.
pub mod paths {
    /// Where the routing ConfigMap is mounted.
    pub const ROUTING_DIR: &str = "/etc/modelfleet/routing";
    /// The file name of a revision's routing key inside [`ROUTING_DIR`].
    pub const ROUTING_FILE_NAME: &str = "routing.json";
    /// The routing file the server watches (`--routing-file`): [`ROUTING_DIR`]/[`ROUTING_FILE_NAME`].
    pub const ROUTING_FILE: &str = "/etc/modelfleet/routing/routing.json";
    /// Model cache (`--model-cache`, an emptyDir) or the mounted claim of a `pvc://` URI.
    pub const MODEL_DIR: &str = "/var/lib/modelfleet/models";
    /// Liveness probe, on the HTTP port.
    pub const LIVE: &str = "/health/live";
    /// Readiness and startup probe, on the HTTP port: ready after the warm-up, until SIGTERM.
    pub const READY: &str = "/health/ready";
    /// Prometheus text exposition, on the metrics port.
    pub const METRICS: &str = "/metrics";
    /// OpenAI embeddings, on the HTTP port; mirrored copies go there too.
    pub const EMBEDDINGS: &str = "/v1/embeddings";
}

/// Request headers the server reads (HTTP headers or gRPC metadata).
pub mod headers {
    /// Picks a priority tier by name; without it a request uses the last (lowest) tier.
    pub const TIER: &str = "x-modelfleet-tier";
    /// The request's own queue deadline (a duration such as `2s`); it may shorten its tier's
    /// timeout, never extend it.
    pub const TIMEOUT: &str = "x-modelfleet-timeout";
    /// Marks a mirrored copy, so a shadow never mirrors it again.
    pub const SHADOW: &str = "x-modelfleet-shadow";
    /// On every server response: requests queued and running in that server as it answered. The
    /// router's picker reads it between its once-a-second scrapes.
    pub const LOAD: &str = "x-modelfleet-load";
    /// The request id: kept from the client or made by the router, sent to the server, logged by
    /// both and echoed in the response.
    pub const REQUEST_ID: &str = "x-request-id";
    /// On router responses: the endpoint (`ip:port`) that answered.
    pub const ENDPOINT: &str = "x-modelfleet-endpoint";
    /// On router responses: the revision that answered.
    pub const REVISION: &str = "x-modelfleet-revision";
    /// On router responses: `hit` or `miss` (the exact cache), `semantic-hit` or `semantic-miss`
    /// (the semantic cache); absent when the request was not cacheable.
    pub const CACHE: &str = "x-modelfleet-cache";
    /// On a semantic-cache hit: the cosine similarity of the two prompts (`0.973`).
    pub const CACHE_SIMILARITY: &str = "x-modelfleet-cache-similarity";
    /// On router responses: the ModelDeployment (`namespace/name`) that answered, when the request
    /// went to a fallback.
    pub const FALLBACK: &str = "x-modelfleet-fallback";
    /// The router's retries of this request (on the server's side: 1 for a retried copy).
    pub const RETRY: &str = "x-modelfleet-retry";
}

/// The router's listening ports (`modelfleet-router`, docs/router.md).
pub mod router_ports {
    /// OpenAI-compatible HTTP (`--http-port`).
    pub const HTTP: u16 = 8000;
    /// Envoy ext_proc gRPC: the Endpoint Picker (`--epp-addr`), the port Gateway API Inference
    /// Extension pickers use.
    pub const EPP: u16 = 9002;
    /// Prometheus `/metrics`, `/healthz`, `/readyz` (`--metrics-port`).
    pub const METRICS: u16 = 9090;
}

/// Annotations more than one part reads or writes.
pub mod annotations {
    /// On a server pod: the `host:port` the node agent scrapes instead of `<podIP>:9090` (the
    /// local cluster's pod IPs are not reachable, so its harness points it at a loopback port).
    pub const SCRAPE_ADDRESS: &str = "modelfleet.dev/scrape-address";
    /// On every child: a hash of what the operator last applied, to skip identical writes.
    pub const SPEC_HASH: &str = "modelfleet.dev/spec-hash";
    /// On each revision's Deployment: the model version it serves.
    pub const MODEL_VERSION: &str = "modelfleet.dev/model-version";
}

#[cfg(test)]
mod tests {
    use super::paths;

    #[test]
    fn the_routing_file_is_inside_the_routing_mount() {
        assert_eq!(
            paths::ROUTING_FILE,
            format!("{}/{}", paths::ROUTING_DIR, paths::ROUTING_FILE_NAME)
        );
    }
}
