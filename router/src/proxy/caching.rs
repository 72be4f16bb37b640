//! The caches on the serving path: a lookup before a request is sent (the exact cache, then
//! the semantic cache of a generation model that turns it on), and a complete, small answer
//! stored on its way out. Each lookup is counted once, under the cache that decided it.

use std::time::{Duration, Instant};

use axum::{
    body::Body,
    http::{HeaderValue, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use modelfleet_contract::headers;
use modelfleet_crds::v1alpha1::ModelTask;
use serde_json::{Value, json};

use super::{Request, answer::Refusal, forward, serve};
use crate::{
    activity::Seen,
    cache::{self, semantic},
    keys::Grant,
    metrics::CacheLabels,
    state::Router,
    table::ModelEntry,
};

/// How long the embedding of a prompt may take: a slow or absent embedding model costs a
/// generation request this much at most, then the request goes on uncached.
const EMBEDDING_BUDGET: Duration = Duration::from_secs(2);

/// A prompt's embedding, for the semantic cache of the model it was made for.
#[derive(Debug)]
pub(super) struct PromptEmbedding {
    /// `namespace/name` of the generation model (a fallback does not use it).
    model: String,
    /// Unit length.
    vector: Vec<f32>,
    /// `spec.routing.semanticCache.similarityAbove`.
    similarity_above: f64,
}

/// The embedding of a request's prompt for `model`'s semantic cache, from the embeddings model
/// it names (through the router's own path: picking, retries, its exact cache); None when the
/// model has no semantic cache, the request no prompt, or the embedding model no answer in time.
pub(super) async fn prompt_embedding(
    router: &std::sync::Arc<Router>,
    model: &ModelEntry,
    grant: &Grant,
    request: &Request<'_>,
) -> Option<PromptEmbedding> {
    let spec = model.routing.semantic_cache.as_ref()?;
    if model.task != ModelTask::Generation || router.config.cache.max_bytes == 0 {
        return None;
    }
    let text = semantic::prompt_text(request.path, &request.json)?;
    let table = router.table();
    let Some(embedder) = table
        .resolve(&spec.embedding_model)
        .filter(|m| m.namespace == model.namespace && m.task == ModelTask::Embedding)
    else {
        tracing::debug!(model = %model.key(), embedding_model = %spec.embedding_model, "no such embeddings model in the namespace: semantic cache skipped");
        return None;
    };
    let body = json!({"model": embedder.served, "input": text});
    let embed = Request {
        path: "/v1/embeddings",
        body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
        json: body,
        id: request.id,
        accept: None,
        tier: embedder.tier_for(grant.tier.as_deref()),
        deadline: request.deadline.min(Instant::now() + EMBEDDING_BUDGET),
        embedding: None,
    };
    let answer = serve(router, &embedder.key(), &embed).await.ok()?;
    let vector = embedding_of(answer, embed.deadline).await;
    if vector.is_none() {
        tracing::debug!(model = %model.key(), embedding_model = %embedder.key(), "the embeddings model gave no embedding: semantic cache skipped");
    }
    Some(PromptEmbedding {
        model: model.key(),
        vector: vector?,
        similarity_above: spec.similarity_above,
    })
}

/// The first embedding of an OpenAI embeddings answer, unit length.
async fn embedding_of(answer: Response, deadline: Instant) -> Option<Vec<f32>> {
    if answer.status() != StatusCode::OK {
        return None;
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    let bytes = forward::collect(answer.into_body(), 1 << 20, remaining).await?;
    let json: Value = serde_json::from_slice(&bytes).ok()?;
    let vector = json["data"][0]["embedding"]
        .as_array()?
        .iter()
        .map(|x| x.as_f64().map(|f| f as f32))
        .collect::<Option<Vec<f32>>>()?;
    semantic::unit(vector)
}

/// The exact-cache key of `request` for `revision`, when it may be cached.
fn exact_key(
    router: &Router,
    model: &ModelEntry,
    revision: &str,
    request: &Request<'_>,
) -> Option<cache::Key> {
    let on = router.config.cache.max_bytes > 0
        && model.routing.response_cache
        && cache::cacheable(request.path, &request.json);
    on.then(|| cache::key(revision, request.path, &request.json))
}

/// The semantic-cache key and embedding of `request` for `revision`, when `model` uses one.
fn semantic_key<'r>(
    model: &ModelEntry,
    revision: &str,
    request: &'r Request<'_>,
) -> Option<(cache::Key, &'r PromptEmbedding)> {
    let embedding = request.embedding.as_ref().filter(|e| e.model == model.key())?;
    Some((
        semantic::parameters_key(revision, request.path, &request.json),
        embedding,
    ))
}

fn count(router: &Router, model: &ModelEntry, result: &'static str) {
    let seen = if result.ends_with("hit") {
        Seen::CacheHit
    } else {
        Seen::CacheMiss
    };
    router.activity.count(model, seen);
    router
        .metrics
        .cache
        .get_or_create(&CacheLabels {
            model: model.key(),
            result,
        })
        .inc();
}

/// The cached answer to `request` from `revision`, if any cache has one.
pub(super) fn cached(
    router: &Router,
    model: &ModelEntry,
    revision: &str,
    request: &Request<'_>,
    now: Instant,
) -> Option<Response> {
    let semantic = semantic_key(model, revision, request);
    if let Some(key) = exact_key(router, model, revision, request) {
        if let Some(body) = router.cache.get(&key, now) {
            count(router, model, "hit");
            return Some(hit_response(body, revision, "hit"));
        }
        if semantic.is_none() {
            count(router, model, "miss");
            return None;
        }
    }
    let (parameters, embedding) = semantic?;
    let Some(hit) = router
        .semantic
        .get(&parameters, &embedding.vector, embedding.similarity_above, now)
    else {
        count(router, model, "semantic_miss");
        return None;
    };
    count(router, model, "semantic_hit");
    let mut r = hit_response(hit.body, revision, "semantic-hit");
    if let Ok(v) = HeaderValue::try_from(format!("{:.3}", hit.similarity)) {
        r.headers_mut().insert(headers::CACHE_SIMILARITY, v);
    }
    Some(r)
}

fn hit_response(body: Bytes, revision: &str, how: &'static str) -> Response {
    let mut r = Response::new(Body::from(body));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(headers::CACHE, HeaderValue::from_static(how));
    if let Ok(v) = HeaderValue::try_from(revision) {
        h.insert(headers::REVISION, v);
    }
    r
}

/// Stores a complete, small 200 answer in the caches that `request` may use, and returns it
/// marked as a miss; anything else streams through untouched.
pub(super) async fn store(
    router: &Router,
    model: &ModelEntry,
    revision: &str,
    request: &Request<'_>,
    response: Response,
) -> Response {
    let exact = exact_key(router, model, revision, request);
    let semantic = semantic_key(model, revision, request);
    let small = response
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= router.config.cache.max_bytes / 4);
    if (exact.is_none() && semantic.is_none()) || !small || response.status() != StatusCode::OK {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let remaining = request.deadline.saturating_duration_since(Instant::now());
    let Some(bytes) = forward::collect(body, router.config.cache.max_bytes.max(1), remaining).await else {
        return Refusal::Upstream {
            status: StatusCode::BAD_GATEWAY,
            message: "the model server's answer ended early".into(),
        }
        .into_response();
    };
    let now = Instant::now();
    if let Some(key) = exact {
        router.cache.put(key, bytes.clone(), now);
        router
            .metrics
            .cache_bytes
            .set(i64::try_from(router.cache.bytes()).unwrap_or(i64::MAX));
    }
    if let Some((parameters, embedding)) = semantic {
        router
            .semantic
            .put(parameters, embedding.vector.clone(), bytes.clone(), now);
        router
            .metrics
            .semantic_cache_bytes
            .set(i64::try_from(router.semantic.bytes()).unwrap_or(i64::MAX));
    }
    let how = if exact.is_some() { "miss" } else { "semantic-miss" };
    parts
        .headers
        .insert(headers::CACHE, HeaderValue::from_static(how));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}
