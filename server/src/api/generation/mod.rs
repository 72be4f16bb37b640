//! The HTTP front end of a generation server: OpenAI `/v1/chat/completions` and
//! `/v1/completions` (whole answers or SSE streams), `/v1/models`, health, and `/metrics`.

pub mod parse;
pub(crate) mod respond;

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response, sse::Sse},
    routing::{get, post},
};
use bytes::Bytes;
use modelfleet_contract::{headers, paths};
use serde_json::json;

use super::json_body;
use crate::{
    error::InferError,
    generate::service::{GenerationService, RequestHeaders},
};
use respond::{Api, Envelope, Timing};

/// The generation routes on the API port.
pub fn router(service: Arc<GenerationService>, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route(paths::LIVE, get(super::health::live))
        .route(paths::READY, get(ready))
        .route("/v2/health/live", get(super::health::live))
        .route("/v2/health/ready", get(ready))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(middleware::from_fn_with_state(
            service.clone(),
            load_and_request_id,
        ))
        .with_state(service)
}

/// `/metrics` on the metrics port, the scheduler's figures read at scrape time.
pub fn metrics_router(service: Arc<GenerationService>) -> Router {
    Router::new()
        .route(paths::METRICS, get(metrics))
        .with_state(service)
}

async fn metrics(State(service): State<Arc<GenerationService>>) -> impl IntoResponse {
    service.sync_metrics();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        service.metrics.render(),
    )
}

async fn ready(State(service): State<Arc<GenerationService>>) -> impl IntoResponse {
    let ready = service.lifecycle.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"ready": ready})))
}

/// The router's picking input (sequences waiting plus running) on every answer, and the
/// caller's request id echoed.
async fn load_and_request_id(
    State(service): State<Arc<GenerationService>>,
    request: Request,
    next: Next,
) -> Response {
    let id = request.headers().get(headers::REQUEST_ID).cloned();
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    h.insert(headers::LOAD, HeaderValue::from(service.load()));
    if let Some(id) = id {
        h.insert(headers::REQUEST_ID, id);
    }
    response
}

async fn models(State(service): State<Arc<GenerationService>>) -> impl IntoResponse {
    Json(json!({"object": "list", "data": [{
        "id": service.model_name,
        "object": "model",
        "created": 0,
        "owned_by": "modelfleet",
        "version": service.model_version,
        "task": "generation",
        "context_length": service.limits.context_length,
    }]}))
}

async fn chat(
    State(service): State<Arc<GenerationService>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(&service, Api::Chat, &headers, body).await
}

async fn completions(
    State(service): State<Arc<GenerationService>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(&service, Api::Completions, &headers, body).await
}

/// The `api` label of request metrics.
pub(crate) fn api_label(api: Api) -> &'static str {
    match api {
        Api::Chat => "openai_chat",
        Api::Completions => "openai_completions",
    }
}

/// The request body as JSON, with body-limit and syntax errors in the error envelope (for the
/// upstream backend's routes, which read bodies as these do).
pub(crate) fn read_json(body: Result<Bytes, BytesRejection>) -> Result<serde_json::Value, InferError> {
    json_body(body)
}

/// The route of an API (where a mirrored copy goes on the shadow).
pub(crate) fn api_path(api: Api) -> &'static str {
    match api {
        Api::Chat => "/v1/chat/completions",
        Api::Completions => "/v1/completions",
    }
}

async fn generate(
    service: &GenerationService,
    api: Api,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = std::time::Instant::now();
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let request_headers = RequestHeaders {
        tier: text(headers::TIER),
        timeout: text(headers::TIMEOUT),
        shadow_copy: headers.contains_key(headers::SHADOW),
    };
    let tier_label = service.tier_name(service.tier_index(request_headers.tier).ok());
    let parsed = json_body(body).and_then(|v| {
        let (prompt, options) = match api {
            Api::Chat => parse::parse_chat(&v, &service.limits)?,
            Api::Completions => parse::parse_completion(&v, &service.limits)?,
        };
        Ok((prompt, options, v))
    });
    let (prompt, options, value) = match parsed {
        Ok(p) => p,
        Err(e) => return refuse(service, api, tier_label, started, e),
    };
    // Only requests that would give the same text again are compared with a shadow's.
    let copy = (!request_headers.shadow_copy && options.deterministic())
        .then(|| service.mirror().prepare_generation(api_path(api), &value))
        .flatten();
    drop(value);
    let admitted = match service.admit(prompt, &options, request_headers).await {
        Ok(a) => a,
        Err(e) => return refuse(service, api, tier_label, started, e),
    };
    let envelope = Envelope::new(api, &service.model_name);
    let mut timing = Timing::new(&service.metrics, &admitted);
    let tier = admitted.tier.clone();
    if options.stream {
        // Counted as answered when the stream starts: its status is 200 whatever follows.
        service.count(api_label(api), tier, 200, started);
        let chunks = respond::stream(admitted, envelope, timing, options.include_usage, copy);
        return Sse::new(chunks).into_response();
    }
    match respond::whole(admitted, &envelope, &mut timing, copy).await {
        Ok(body) => {
            service.count(api_label(api), tier, 200, started);
            Json(body).into_response()
        }
        Err(e) => refuse(service, api, tier, started, e),
    }
}

fn refuse(
    service: &GenerationService,
    api: Api,
    tier: String,
    started: std::time::Instant,
    error: InferError,
) -> Response {
    service.count(api_label(api), tier, error.status().as_u16(), started);
    error.into_response()
}
