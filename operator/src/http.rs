//! `/metrics`, `/healthz` and `/readyz`.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{Router, extract::State, http::StatusCode, routing::get};

use crate::metrics::Metrics;

/// Shared by the HTTP handlers.
#[derive(Debug, Clone, Default)]
pub struct HttpState {
    /// Metrics to render.
    pub metrics: Metrics,
    /// Set once the process can serve: follower waiting for the Lease, or leader with watches running.
    pub ready: Arc<AtomicBool>,
}

/// Binds `addr` and returns the bound address with the server future, which serves until the
/// process ends.
pub async fn serve(
    addr: SocketAddr,
    state: HttpState,
) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = std::io::Result<()>>)> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<HttpState>| async move {
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.render(),
                )
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(|State(s): State<HttpState>| async move {
                if s.ready.load(Ordering::Relaxed) {
                    (StatusCode::OK, "ok")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "starting")
                }
            }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((bound, async move { axum::serve(listener, app).await }))
}
