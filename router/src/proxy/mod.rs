//! The OpenAI-compatible serving path: `GET /v1/models` and `POST /v1/...` (embeddings, chat
//! completions, completions). Each request: the caller's grant, the body's `model`, the model
//! (or its fallback), the tenant's limits, the cache, then up to two tries on the least-loaded
//! endpoints, holding while the model has none Ready.

pub mod answer;
mod caching;
pub mod forward;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    Json,
    body::Body,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, Uri, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use modelfleet_contract::headers;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{
    activity::Seen,
    keys::Grant,
    metrics::{FallbackLabels, Metrics, PickLabels, RequestLabels},
    pick, route,
    state::Router,
    table::{Endpoint, ModelEntry, Table},
};
use answer::{Refusal, rate_limit_headers};
use forward::{Outgoing, TryError};

/// The API routes.
pub fn app(router: Arc<Router>) -> axum::Router {
    axum::Router::new()
        .route("/v1/models", get(models))
        .route("/v1/{*path}", post(infer))
        .with_state(router)
}

/// The `Authorization: Bearer` key, if any.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, Refusal> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(|k| Some(k.trim()))
        .ok_or(Refusal::Unauthorized(
            "the Authorization header must be `Bearer <key>`",
        ))
}

fn grant(router: &Router, headers: &HeaderMap) -> Result<Grant, Refusal> {
    let key = bearer(headers)?;
    router.grant(key).ok_or(Refusal::Unauthorized(if key.is_some() {
        "the API key is not valid"
    } else {
        "an API key is required (Authorization: Bearer <key>)"
    }))
}

async fn models(State(router): State<Arc<Router>>, headers: HeaderMap) -> Response {
    let grant = match grant(&router, &headers) {
        Ok(g) => g,
        Err(refusal) => return refusal.into_response(),
    };
    let table = router.table();
    let now = Instant::now();
    let data: Vec<Value> = route::visible(&table, &grant)
        .into_iter()
        .map(|m| {
            let ready = m
                .all_endpoints()
                .filter(|e| router.config.pick.eligible(e, now))
                .count();
            json!({
                "id": m.served,
                "object": "model",
                "created": m.created.max(0),
                "owned_by": m.namespace,
                "deployment": m.key(),
                "aliases": m.aliases,
                "task": m.task,
                "version": m.stable.version,
                "ready_replicas": ready,
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// A request id: the client's `x-request-id` when it is a sane token, else a new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get(headers::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| format!("{:016x}", fastrand::u64(..)), str::to_owned)
}

/// What a finished request is counted under.
#[derive(Debug, Default)]
struct Served {
    model: Option<String>,
    tier: Option<String>,
}

async fn infer(State(router): State<Arc<Router>>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let id = request_id(&headers);
    let mut served = Served::default();
    let mut response = match handle(&router, uri.path(), &headers, body, &id, &mut served).await {
        Ok(r) => r,
        Err(refusal) => refusal.into_response(),
    };
    if let Ok(v) = HeaderValue::try_from(id.as_str()) {
        response.headers_mut().insert(headers::REQUEST_ID, v);
    }
    let model = served.model.unwrap_or_else(|| "unknown".into());
    let code = response.status().as_u16();
    tracing::info!(request_id = %id, model = %model, path = uri.path(), code, ms = started.elapsed().as_secs_f64() * 1e3, "request");
    router
        .metrics
        .duration
        .get_or_create(&Metrics::model(&model))
        .observe(started.elapsed().as_secs_f64());
    router
        .metrics
        .requests
        .get_or_create(&RequestLabels {
            model,
            tier: served.tier.unwrap_or_else(|| "none".into()),
            code,
        })
        .inc();
    response
}

/// The request's deadline: `--request-timeout`, or the client's `x-modelfleet-timeout` if shorter.
fn deadline(router: &Router, headers: &HeaderMap, started: Instant) -> Instant {
    let asked = headers
        .get(headers::TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<modelfleet_crds::Duration>().ok())
        .map(Duration::from);
    started
        + asked.map_or(router.config.request_timeout, |a| {
            a.min(router.config.request_timeout)
        })
}

async fn handle(
    router: &Arc<Router>,
    path: &str,
    headers: &HeaderMap,
    body: Body,
    id: &str,
    served: &mut Served,
) -> Result<Response, Refusal> {
    let started = Instant::now();
    let deadline = deadline(router, headers, started);
    let grant = grant(router, headers)?;
    let (json, bytes, requested) = read_body(router, body).await?;
    let max_tokens = json.get("max_tokens").and_then(Value::as_u64);
    let tokens = route::estimated_tokens(bytes.len(), max_tokens);
    let table = router.table();
    let health = pick::LiveHealth {
        config: &router.config.pick,
        now: started,
        allowed: |_: &Endpoint| true,
    };
    let routed =
        route::route(&table, &requested, &grant, tokens, &health).ok_or_else(|| Refusal::UnknownModel {
            requested: requested.clone(),
            available: route::visible(&table, &grant)
                .iter()
                .map(|m| m.served.clone())
                .collect(),
        })?;
    // Counted under the model the request named, whoever answers it.
    router.activity.count(
        routed.fallback_from.map_or(routed.model, |(from, _)| from),
        Seen::Request,
    );
    let mut model_key = routed.model.key();
    let (json, bytes) = renamed(json, bytes, &routed.model.served);
    served.model = Some(model_key.clone());
    let tier = routed.model.tier_for(grant.tier.as_deref()).map(str::to_owned);
    served.tier.clone_from(&tier);
    let verdict = router.admit(&grant, tokens as f64, started);
    if let Some(v) = &verdict
        && let Err(after) = v.allowed
    {
        let mut r = Refusal::RateLimited(after).into_response();
        rate_limit_headers(r.headers_mut(), v);
        return Ok(r);
    }
    let mut fallback = routed
        .fallback_from
        .map(|(from, why)| count_fallback(router, from, &model_key, why));
    let mut request = Request {
        path,
        body: bytes,
        json,
        id,
        accept: headers.get(header::ACCEPT),
        tier: tier.as_deref(),
        deadline,
        embedding: None,
    };
    request.embedding = caching::prompt_embedding(router, routed.model, &grant, &request).await;
    let mut response = serve(router, &model_key, &request).await?;
    // The pod picked as the least loaded refused for a full queue: the primary is overloaded, and
    // a fallback that has room answers instead (nothing was processed, so resending is safe).
    if response.status() == StatusCode::TOO_MANY_REQUESTS
        && fallback.is_none()
        && let Some(target) = route::fallback_target(&table, routed.model, &grant)
    {
        let why = count_fallback(
            router,
            routed.model,
            &target.key(),
            route::FallbackReason::Overloaded,
        );
        (request.json, request.body) = renamed(request.json, request.body, &target.served);
        model_key = target.key();
        served.model = Some(model_key.clone());
        fallback = Some(why);
        response = serve(router, &model_key, &request).await?;
    }
    let h = response.headers_mut();
    if let Some(v) = &verdict {
        rate_limit_headers(h, v);
    }
    if let Some(why) = fallback {
        h.insert(headers::FALLBACK, HeaderValue::from_static(why));
    }
    Ok(response)
}

/// The body as JSON and bytes, and the `model` it names.
async fn read_body(router: &Router, body: Body) -> Result<(Value, bytes::Bytes, String), Refusal> {
    let bytes = axum::body::to_bytes(body, router.config.max_body_bytes)
        .await
        .map_err(|_| Refusal::TooLarge(router.config.max_body_bytes))?;
    let (json, requested) = route::parse_request(&bytes).map_err(Refusal::BadRequest)?;
    Ok((json, bytes, requested))
}

/// The body with `model` set to `served` (the server knows its served name only: an alias, a
/// `namespace/name` or a fallback is renamed on the way); unchanged when it names it already.
fn renamed(mut json: Value, bytes: bytes::Bytes, served: &str) -> (Value, bytes::Bytes) {
    if json.get("model").and_then(Value::as_str) == Some(served) {
        return (json, bytes);
    }
    json["model"] = Value::String(served.to_owned());
    let bytes = bytes::Bytes::from(serde_json::to_vec(&json).unwrap_or_default());
    (json, bytes)
}

fn count_fallback(router: &Router, from: &ModelEntry, to: &str, why: route::FallbackReason) -> &'static str {
    router.activity.count(from, Seen::Fallback);
    router
        .metrics
        .fallbacks
        .get_or_create(&FallbackLabels {
            model: from.key(),
            to: to.to_owned(),
            reason: why.as_str(),
        })
        .inc();
    why.as_str()
}

/// A parsed request on its way to a model.
struct Request<'a> {
    path: &'a str,
    body: bytes::Bytes,
    json: Value,
    id: &'a str,
    accept: Option<&'a HeaderValue>,
    tier: Option<&'a str>,
    deadline: Instant,
    /// Its prompt's embedding, for the semantic cache.
    embedding: Option<caching::PromptEmbedding>,
}

fn usable(router: &Router, now: Instant) -> impl Fn(&crate::table::Revision) -> bool + '_ {
    move |r| r.endpoints.iter().any(|e| router.config.pick.eligible(e, now))
}

/// Serves `request` from model `key`: the cache, else up to two tries, holding for an endpoint
/// while the model has none (re-reading the table on each change).
async fn serve(router: &Arc<Router>, key: &str, request: &Request<'_>) -> Result<Response, Refusal> {
    // Set once, so table changes do not extend the hold.
    let mut held: Option<Held> = None;
    // The revision whose cache entry was looked up (a hold or a retry need not look again).
    let mut looked_up: Option<String> = None;
    let mut tried = Vec::new();
    let mut last_failure: Option<Response> = None;
    let sequence = router.next_sequence(key);
    let mut changes = router.table.clone();
    loop {
        let table: Arc<Table> = changes.borrow_and_update().clone();
        let Some(model) = table.by_key(key) else {
            return Err(Refusal::Unavailable {
                message: format!("model {key} was removed"),
                retry_after: Duration::from_secs(1),
            });
        };
        let now = Instant::now();
        let revision = pick::revision(model, sequence, usable(router, now));
        if looked_up.as_deref() != Some(revision.name.as_str()) {
            if let Some(hit) = caching::cached(router, model, &revision.name, request, now) {
                return Ok(hit);
            }
            looked_up = Some(revision.name.clone());
        }
        let picked = router
            .picker
            .pick(&router.config.pick, &revision.endpoints, &tried, now)
            .cloned();
        let Some(endpoint) = picked else {
            if let Some(failure) = last_failure {
                return Ok(failure);
            }
            wait_for_endpoint(router, model, request, &mut held, &mut changes, now).await?;
            continue;
        };
        if tried.is_empty() {
            match &held {
                Some(h) => router.activity.woke(key, now.duration_since(h.since)),
                None => router.activity.seen(model, false, now),
            }
        }
        router
            .metrics
            .picks
            .get_or_create(&PickLabels {
                model: key.to_owned(),
                revision: revision.name.clone(),
                endpoint: endpoint.pod.clone(),
            })
            .inc();
        let out = Outgoing {
            path: request.path,
            body: request.body.clone(),
            tier: request.tier,
            request_id: request.id,
            accept: request.accept,
            remaining: request.deadline.saturating_duration_since(now),
        };
        let attempt = forward::send(&router.upstream, &endpoint.load, &out).await;
        let retry_left = tried.is_empty() && Instant::now() < request.deadline;
        tried.push(endpoint.load.addr);
        match after_try(attempt, retry_left) {
            Next::Answer(r) => {
                return Ok(finish(
                    router,
                    model,
                    &revision.name,
                    &endpoint.pod,
                    request,
                    r,
                    tried.len() - 1,
                )
                .await);
            }
            Next::Fail(refusal) => return Err(refusal),
            Next::Retry(failure) => last_failure = failure.or(last_failure),
        }
        router.metrics.retries.get_or_create(&Metrics::model(key)).inc();
    }
}

/// A request waiting for a Ready endpoint.
struct Held {
    _slot: crate::state::HeldSlot,
    /// When holding ends.
    until: Instant,
    /// When it began.
    since: Instant,
}

/// Waits for the next table change while `model` has no endpoint to pick, holding the request
/// (bounded by `--hold-queue` per model, until its deadline or `--hold-timeout`).
async fn wait_for_endpoint(
    router: &Arc<Router>,
    model: &ModelEntry,
    request: &Request<'_>,
    held: &mut Option<Held>,
    changes: &mut watch::Receiver<Arc<Table>>,
    now: Instant,
) -> Result<(), Refusal> {
    // At zero replicas this is what wakes the model (throttled to one write a second).
    router.activity.seen(model, true, now);
    let until = match held {
        Some(h) => h.until,
        None => {
            let slot = router
                .hold(&model.key())
                .ok_or_else(|| unavailable(router, model, "too many requests are waiting"))?;
            let until = request.deadline.min(now + router.config.hold_timeout);
            *held = Some(Held {
                _slot: slot,
                until,
                since: now,
            });
            until
        }
    };
    match tokio::time::timeout_at(until.into(), changes.changed()).await {
        Ok(Ok(())) => Ok(()),
        // Discovery is gone: no change will come, so waiting longer cannot help.
        Ok(Err(_)) => Err(unavailable(router, model, "the routing table stopped updating")),
        Err(_) => Err(unavailable(router, model, "no Ready replica came up in time")),
    }
}

/// What to do after one try.
enum Next {
    /// Give the client this answer.
    Answer(Response),
    /// Give up with this.
    Fail(Refusal),
    /// Try another endpoint; the failed answer, if any, is what the client gets when none is left.
    Retry(Option<Response>),
}

fn after_try(attempt: Result<Response, TryError>, retry_left: bool) -> Next {
    match attempt {
        Ok(r) if !(forward::retryable(r.status()) && retry_left) => Next::Answer(r),
        Ok(r) => Next::Retry(Some(r)),
        Err(TryError::Timeout) => Next::Fail(Refusal::Upstream {
            status: StatusCode::GATEWAY_TIMEOUT,
            message: "the model server did not answer before the request's deadline".into(),
        }),
        Err(TryError::Connect(e)) if !retry_left => Next::Fail(Refusal::Upstream {
            status: StatusCode::BAD_GATEWAY,
            message: format!("the model server could not be reached: {e}"),
        }),
        Err(TryError::Connect(_)) => Next::Retry(None),
    }
}

/// 503 for a model without a Ready replica; a model that scales from zero says to come back
/// after its measured cold start.
fn unavailable(router: &Router, model: &ModelEntry, why: &str) -> Refusal {
    let retry_after = router.activity.retry_after(model);
    Refusal::Unavailable {
        message: format!("model {} has no Ready replica: {why}", model.served),
        retry_after,
    }
}

/// The server's answer on its way out: the router's headers, and a cacheable 200 stored.
async fn finish(
    router: &Router,
    model: &ModelEntry,
    revision: &str,
    pod: &str,
    request: &Request<'_>,
    mut response: Response,
    retries: usize,
) -> Response {
    let h = response.headers_mut();
    for (name, value) in [(headers::ENDPOINT, pod), (headers::REVISION, revision)] {
        if let Ok(v) = HeaderValue::try_from(value) {
            h.insert(name, v);
        }
    }
    h.insert(headers::RETRY, HeaderValue::from(retries));
    caching::store(router, model, revision, request, response).await
}
