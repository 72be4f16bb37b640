//! The HTTP and gRPC front ends. Every API turns its request into an [`EmbedRequest`] for the
//! shared [`Engine`], so limits, errors, metrics and mirroring are the same everywhere.

pub mod generation;
mod grpc;
pub(crate) mod health;
mod oip;
mod openai;

use std::sync::Arc;

use axum::{
    Router,
    extract::{DefaultBodyLimit, Request, State},
    http::{HeaderMap, HeaderValue},
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
pub use grpc::grpc_service;
use modelfleet_contract::{headers, paths};

use crate::engine::{EmbedRequest, Engine};

/// The OpenAI, OIP v2 and health routes on the API port.
pub fn router(engine: Arc<Engine>, max_request_bytes: usize) -> Router {
    Router::new()
        .route(paths::EMBEDDINGS, post(openai::embeddings))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{model}", get(openai::model))
        .route(paths::LIVE, get(health::live))
        .route(paths::READY, get(health::ready))
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
        .layer(middleware::from_fn_with_state(
            engine.clone(),
            load_and_request_id,
        ))
        .with_state(engine)
}

/// Every answer carries the server's load (requests queued plus running, the router's picking
/// input between scrapes) and echoes the caller's request id, so logs on both sides join.
async fn load_and_request_id(State(engine): State<Arc<Engine>>, request: Request, next: Next) -> Response {
    let id = request.headers().get(headers::REQUEST_ID).cloned();
    let mut response = next.run(request).await;
    let load = engine
        .metrics
        .queued
        .get()
        .saturating_add(engine.metrics.running.get())
        .max(0);
    let h = response.headers_mut();
    h.insert(headers::LOAD, HeaderValue::from(load));
    if let Some(id) = id {
        h.insert(headers::REQUEST_ID, id);
    }
    response
}

/// `/metrics` on the metrics port.
pub fn metrics_router(engine: Arc<Engine>) -> Router {
    Router::new()
        .route(paths::METRICS, get(health::metrics))
        .with_state(engine)
}

/// The modelfleet headers of a request.
struct Headers<'a> {
    tier: Option<&'a str>,
    timeout: Option<&'a str>,
    shadow_copy: bool,
}

impl<'a> Headers<'a> {
    fn of(map: &'a HeaderMap) -> Self {
        let text = |name: &str| map.get(name).and_then(|v| v.to_str().ok());
        Self {
            tier: text(headers::TIER),
            timeout: text(headers::TIMEOUT),
            shadow_copy: map.contains_key(headers::SHADOW),
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

#[cfg(test)]
mod parsing_properties {
    //! Request parsing never panics, whatever the bytes, and round-trips valid requests.

    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::{json_body, oip::parse_infer, openai::parse_request};

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>().prop_map(|f| json!(f)),
            ".{0,12}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("input".to_owned()),
                        Just("model".to_owned()),
                        Just("inputs".to_owned()),
                        Just("name".to_owned()),
                        Just("datatype".to_owned()),
                        Just("shape".to_owned()),
                        Just("data".to_owned()),
                        Just("encoding_format".to_owned()),
                        Just("dimensions".to_owned()),
                        Just("outputs".to_owned()),
                        "[a-z]{1,6}",
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_give_a_result_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(v) = json_body(Ok(bytes.into())) {
                let _ = parse_request(&v, 384);
                let _ = parse_infer(&v);
            }
        }

        #[test]
        fn arbitrary_json_gives_a_result_not_a_panic(v in arb_json()) {
            let _ = parse_request(&v, 384);
            let _ = parse_infer(&v);
            let _ = parse_infer(&json!({"inputs": [v]}));
        }

        #[test]
        fn valid_requests_keep_their_texts(texts in prop::collection::vec(".{1,20}", 1..8)) {
            let parsed = parse_request(&json!({"model": "m", "input": texts}), 384).unwrap();
            prop_assert_eq!(&parsed.texts, &texts);
            let n = texts.len();
            let infer = parse_infer(&json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [n], "data": texts}]})).unwrap();
            prop_assert_eq!(infer.texts, texts);
        }
    }
}
