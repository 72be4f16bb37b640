//! Endpoint Picker mode: the router's picking served as a Gateway API Inference Extension
//! Endpoint Picker over Envoy `ext_proc` (docs/router.md). Filled in by the EPP work.

use std::net::SocketAddr;

/// Why the picker has no endpoint for a request; the protocol answers 503 and 429.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PickRefusal {
    /// No eligible endpoint (unknown model, none Ready, none in the subset hint): 503.
    #[error("no endpoint: {0}")]
    NoEndpoint(String),
    /// The request should be shed (every endpoint at its queue limit): 429.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

/// What the ext_proc server asks of the router's picking.
pub trait Picker: Send + Sync + 'static {
    /// Endpoints (`podIP:port`) for a request for `model` (the body's `model` field; None when the
    /// body has none), best first, at most `max`, only among `subset` when the proxy sent a subset
    /// hint.
    fn pick(
        &self,
        model: Option<&str>,
        subset: Option<&[SocketAddr]>,
        max: usize,
    ) -> Result<Vec<SocketAddr>, PickRefusal>;
}
