//! Liveness, readiness and the metrics exposition.

use std::sync::Arc;

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use serde_json::json;

use crate::engine::Engine;

/// Alive as long as the process serves HTTP.
pub async fn live() -> impl IntoResponse {
    Json(json!({"live": true}))
}

/// Ready once the model is loaded and warmed up, until SIGTERM.
pub async fn ready(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    let ready = engine.lifecycle.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready})))
}

/// Prometheus text format.
pub async fn metrics(State(engine): State<Arc<Engine>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        engine.metrics.render(),
    )
}
