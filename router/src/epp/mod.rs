//! Endpoint Picker mode: the router's picking served as a Gateway API Inference Extension
//! Endpoint Picker over Envoy `ext_proc` (`--epp-addr`; docs/router-epp.md).
//!
//! A gateway (Envoy, or any GAIE implementation) opens one `Process` stream per HTTP request and
//! sends its headers and body. The picker reads the body's `model`, routes it exactly as the HTTP
//! path does ([`crate::route::route`], the canary sequence, the least-loaded eligible endpoint)
//! and answers with `x-gateway-destination-endpoint: ip:port[,ip:port…]` (best first, the rest a
//! fallback list) as a header and as `envoy.lb` dynamic metadata. The request itself never passes
//! through the router: the gateway forwards it.
//!
//! Layout: [`decide`] is the decision (pure over the router's state), `exchange` the per-stream
//! state machine (which message is answered how, per body mode), `wire` the protocol's messages,
//! `crate::metrics::EppMetrics` the counter of decisions.

pub mod decide;
mod exchange;
mod wire;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use modelfleet_proto::ext_proc::{
    ProcessingRequest, ProcessingResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
};
use tokio::{net::TcpListener, sync::mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming, transport::server::TcpIncoming};

pub use crate::metrics::EppMetrics;
pub use decide::{Decision, Refusal, Subset};

use crate::state::Router;

/// The header (and `envoy.lb` metadata key) naming the destination: `ip:port[,ip:port…]`.
pub const DESTINATION: &str = "x-gateway-destination-endpoint";
/// The namespace of the dynamic metadata the destination is also written to.
pub const LB_NAMESPACE: &str = "envoy.lb";
/// The metadata namespace the proxy's subset hint arrives in (one literal name, dots included).
pub const SUBSET_NAMESPACE: &str = "envoy.lb.subset_hint";
/// The key of the subset hint in [`SUBSET_NAMESPACE`]: the endpoints the pick is restricted to.
pub const SUBSET_KEY: &str = "x-gateway-destination-endpoint-subset";
/// The key in [`LB_NAMESPACE`] the proxy reports the endpoint that served a request under.
pub const SERVED_KEY: &str = "x-gateway-destination-endpoint-served";

/// Answers waiting for the proxy to read them, per stream; a full channel holds the stream back
/// rather than buffering without bound.
const STREAM_BUFFER: usize = 16;

/// The `envoy.service.ext_proc.v3.ExternalProcessor` service over the router's state.
#[derive(Debug, Clone)]
pub struct ExtProc {
    router: Arc<Router>,
    metrics: EppMetrics,
}

impl ExtProc {
    /// A picker reading `router`'s table and load, counting its decisions in `metrics`.
    pub fn new(router: Arc<Router>, metrics: EppMetrics) -> Self {
        Self { router, metrics }
    }

    /// The tonic service, ready for a `Server::builder()`.
    pub fn into_service(self) -> ExternalProcessorServer<Self> {
        ExternalProcessorServer::new(self)
    }
}

#[tonic::async_trait]
impl ExternalProcessor for ExtProc {
    type ProcessStream = ReceiverStream<Result<ProcessingResponse, Status>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let exchange = exchange::Exchange::new(self.router.clone(), self.metrics.clone());
        tokio::spawn(exchange::run(request.into_inner(), tx, exchange));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Serves the picker on `listener` (plain HTTP/2, no TLS) until the process ends: Envoy keeps one
/// stream per request in flight, so stopping earlier than the HTTP API would only fail requests
/// the gateway has already sent.
pub async fn serve(
    listener: TcpListener,
    router: Arc<Router>,
    metrics: EppMetrics,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(ExtProc::new(router, metrics).into_service())
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
}
