//! The HTTP front end of an upstream server: the same routes as a candle generation server
//! (OpenAI `/v1/chat/completions`, `/v1/completions`, `/v1/models`, health) and `/metrics` on
//! the metrics port; answers are the engine's, relayed.

use std::{sync::Arc, time::Instant};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Request, State, rejection::BytesRejection},
    http::{HeaderMap, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response, sse::Sse},
    routing::{get, post},
};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use modelfleet_contract::{headers, paths};
use serde_json::{Value, json};

use super::{
    relay::{self, StreamParts},
    service::{Forward, UpstreamService},
};
use crate::{
    api::generation::{api_path, read_json, respond::Api},
    error::InferError,
    shadow::answer_text,
};

/// The generation routes on the API port.
pub fn router(service: Arc<UpstreamService>, max_request_bytes: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route(paths::LIVE, get(crate::api::health::live))
        .route(paths::READY, get(ready))
        .route("/v2/health/live", get(crate::api::health::live))
        .route("/v2/health/ready", get(ready))
        .layer(DefaultBodyLimit::max(max_request_bytes))
        .layer(middleware::from_fn_with_state(
            service.clone(),
            load_and_request_id,
        ))
        .with_state(service)
}

/// `/metrics` on the metrics port.
pub fn metrics_router(service: Arc<UpstreamService>) -> Router {
    Router::new()
        .route(paths::METRICS, get(metrics))
        .with_state(service)
}

async fn metrics(State(service): State<Arc<UpstreamService>>) -> impl IntoResponse {
    service.sync_metrics();
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        service.metrics.render(),
    )
}

/// Ready only while the engine's `/health` answers 200 (and until SIGTERM).
async fn ready(State(service): State<Arc<UpstreamService>>) -> impl IntoResponse {
    let ready = service.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"ready": ready, "engine": service.status.is_healthy()})),
    )
}

/// The router's picking input (requests waiting plus forwarded) on every answer, and the
/// caller's request id echoed.
async fn load_and_request_id(
    State(service): State<Arc<UpstreamService>>,
    request: Request,
    next: Next,
) -> Response {
    let id = request.headers().get(headers::REQUEST_ID).cloned();
    let mut response = next.run(request).await;
    let h = response.headers_mut();
    let load = i64::try_from(service.admission.load()).unwrap_or(i64::MAX);
    h.insert(headers::LOAD, HeaderValue::from(load));
    if let Some(id) = id {
        h.insert(headers::REQUEST_ID, id);
    }
    response
}

async fn models(State(service): State<Arc<UpstreamService>>) -> impl IntoResponse {
    let limits = service.limits();
    let context = (limits.context_length != super::UNKNOWN_CONTEXT).then_some(limits.context_length);
    Json(json!({"object": "list", "data": [{
        "id": service.model_name,
        "object": "model",
        "created": 0,
        "owned_by": "modelfleet",
        "version": service.model_version,
        "task": "generation",
        "context_length": context,
    }]}))
}

async fn chat(
    State(service): State<Arc<UpstreamService>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(service, Api::Chat, headers, body).await
}

async fn completions(
    State(service): State<Arc<UpstreamService>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    generate(service, Api::Completions, headers, body).await
}

async fn generate(
    service: Arc<UpstreamService>,
    api: Api,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let started = Instant::now();
    let admitted = match read_json(body) {
        Ok(value) => service.admit(api, &headers, value).await,
        Err(e) => Err(e),
    };
    let forward = match admitted {
        Ok(f) => f,
        Err(e) => {
            service.count(api, service.tier_label(&headers), e.status().as_u16(), started);
            return e.into_response();
        }
    };
    let call = service.engine.post_json(
        api_path(api),
        forward.body.clone(),
        headers.get(headers::REQUEST_ID),
    );
    let sent = match forward.deadline {
        Some(at) => tokio::time::timeout_at(at.into(), call)
            .await
            .unwrap_or_else(|_| Err(past_deadline(&forward))),
        None => call.await,
    };
    let response = match sent {
        Ok(r) => r,
        Err(e) => return refuse(&service, &forward, e),
    };
    if !response.status().is_success() {
        return engine_error(&service, &forward, response).await;
    }
    let sse = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if forward.options.stream && sse {
        // Counted as answered when the stream starts: its status is 200 whatever follows.
        service.count(api, forward.tier.clone(), 200, forward.started);
        let parts = StreamParts {
            api,
            include_usage: forward.options.include_usage,
            tier: forward.tier,
            started: forward.started,
            deadline: forward.deadline,
            permit: forward.permit,
            copy: forward.copy,
        };
        return Sse::new(relay::stream(service.clone(), response.into_body(), parts)).into_response();
    }
    whole(&service, forward, response.into_body()).await
}

/// A whole answer: read, `model` made ours, tokens counted, the mirrored copy sent.
async fn whole(service: &UpstreamService, forward: Forward, body: Incoming) -> Response {
    let value = match read_body(&forward, body).await {
        Ok(bytes) => serde_json::from_slice::<Value>(&bytes)
            .map_err(|e| InferError::Backend(format!("the engine's answer is not JSON: {e}"))),
        Err(e) => Err(e),
    };
    let mut value = match value {
        Ok(v) => v,
        Err(e) => return refuse(service, &forward, e),
    };
    if let Some(o) = value.as_object_mut() {
        o.insert("model".into(), Value::String(service.model_name.clone()));
    }
    if let Some(usage) = value.get("usage") {
        service.count_usage(usage);
    }
    let Forward {
        api,
        tier,
        started,
        permit,
        copy,
        ..
    } = forward;
    drop(permit);
    if let Some(copy) = copy
        && let Some(text) = answer_text(&value)
    {
        copy.complete(text);
    }
    service.count(api, tier, 200, started);
    Json(value).into_response()
}

/// The body of an engine's answer, within the request's deadline.
async fn read_body(forward: &Forward, body: Incoming) -> Result<Bytes, InferError> {
    let collect = async {
        body.collect()
            .await
            .map(|c| c.to_bytes())
            .map_err(|e| InferError::Backend(format!("reading the engine's answer: {e}")))
    };
    match forward.deadline {
        Some(at) => tokio::time::timeout_at(at.into(), collect)
            .await
            .unwrap_or_else(|_| Err(past_deadline(forward))),
        None => collect.await,
    }
}

/// The engine refused or failed: its status, and its OpenAI error envelope (ours around its
/// text when it sent none).
async fn engine_error(
    service: &UpstreamService,
    forward: &Forward,
    response: http::Response<Incoming>,
) -> Response {
    let status = response.status();
    let bytes = read_body(forward, response.into_body()).await.unwrap_or_default();
    let body = serde_json::from_slice::<Value>(&bytes)
        .ok()
        .filter(|v| v.get("error").is_some_and(Value::is_object))
        .unwrap_or_else(|| {
            json!({"error": {
                "message": format!("the engine answered {status}: {}", String::from_utf8_lossy(&bytes)),
                "type": "server_error",
                "param": null,
                "code": "upstream",
            }})
        });
    service.count(
        forward.api,
        forward.tier.clone(),
        status.as_u16(),
        forward.started,
    );
    (status, Json(body)).into_response()
}

fn refuse(service: &UpstreamService, forward: &Forward, error: InferError) -> Response {
    service.count(
        forward.api,
        forward.tier.clone(),
        error.status().as_u16(),
        forward.started,
    );
    error.into_response()
}

/// `x-modelfleet-timeout` passed before the engine's answer: 503, as a generation server
/// answers a request that got no token by its deadline.
fn past_deadline(forward: &Forward) -> InferError {
    let limit = forward
        .deadline
        .map_or(0, |d| d.duration_since(forward.started).as_millis() as u64);
    InferError::QueueTimeout {
        waited_ms: forward.started.elapsed().as_millis() as u64,
        limit_ms: limit,
        source_of_limit: headers::TIMEOUT,
        retry_after: std::time::Duration::from_secs(1),
    }
}
