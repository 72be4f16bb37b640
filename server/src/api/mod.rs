//! The HTTP and gRPC front ends. Every API turns its request into an [`EmbedRequest`] for the
//! shared [`Engine`], so limits, errors, metrics and mirroring are the same everywhere.

mod grpc;
mod health;
mod oip;
mod openai;

use std::sync::Arc;

use axum::{
    Router,
    extract::DefaultBodyLimit,
    http::HeaderMap,
    routing::{get, post},
};
pub use grpc::grpc_service;
pub use modelfleet_crds::constants::{TIER_HEADER, TIMEOUT_HEADER};

use crate::engine::{EmbedRequest, Engine};

/// Marks a mirrored copy, so a shadow never mirrors it again.
pub const SHADOW_HEADER: &str = "x-modelfleet-shadow";

/// The OpenAI, OIP v2 and health routes on the API port.
pub fn router(engine: Arc<Engine>, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/v1/embeddings", post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{model}", get(openai::model))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/v2", get(oip::server_metadata))
        .route("/v2/health/live", get(health::live))
        .route("/v2/health/ready", get(health::ready))
        .route("/v2/models/{model}", get(oip::model_metadata))
        .route(
            "/v2/models/{model}/versions/{version}",
            get(oip::model_metadata_version),
        )
        .route("/v2/models/{model}/ready", get(oip::model_ready))
        .route(
            "/v2/models/{model}/versions/{version}/ready",
            get(oip::model_ready_version),
        )
        .route("/v2/models/{model}/infer", post(oip::infer))
        .route(
            "/v2/models/{model}/versions/{version}/infer",
            post(oip::infer_version),
        )
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .with_state(engine)
}

/// `/metrics` on the metrics port.
pub fn metrics_router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route("/metrics", get(health::metrics))
        .with_state(engine)
}

/// The modelfleet headers of a request.
struct Headers<'a> {
    tier: Option<&'a str>,
    timeout: Option<&'a str>,
    shadow_copy: bool,
}

impl<'a> Headers<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        Self {
            tier: text(TIER_HEADER),
            timeout: text(TIMEOUT_HEADER),
            shadow_copy: headers.contains_key(SHADOW_HEADER),
        }
    }

    fn request(&self, api: &'static str, model: Option<&'a str>, texts: Vec<String>) -> EmbedRequest<'a> {
        EmbedRequest {
            api,
            model,
            texts,
            tier: self.tier,
            timeout: self.timeout,
            shadow_copy: self.shadow_copy,
        }
    }
}

/// The request body as JSON, with body-limit and syntax errors in the error envelope.
fn json_body(
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<serde_json::Value, crate::error::InferError> {
    use crate::error::InferError;
    let body = body.map_err(|e| {
        if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            InferError::too_large(
                "body",
                format!("the request body is too large: {e} (--max-request-bytes)"),
            )
        } else {
            InferError::invalid("body", e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| InferError::invalid("body", format!("malformed JSON: {e}")))
}

/// `value` as a string, or an error naming `param`.
fn string_field<'v>(value: &'v serde_json::Value, param: &str) -> Result<&'v str, crate::error::InferError> {
    value.as_str().ok_or_else(|| {
        crate::error::InferError::invalid(param, format!("expected a string, got {}", json_type(value)))
    })
}

/// JSON type name for error messages.
fn json_type(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}
