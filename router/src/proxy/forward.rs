//! One try against one endpoint: the request as the server should see it (the router's tier,
//! the request id), the server's load read off its answer, and the body passed through while it
//! streams, the endpoint counted in flight until the body ends.

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{
    body::Body,
    http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header},
    response::Response,
};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use modelfleet_contract::headers;

use crate::{load::EndpointLoad, state::Upstream};

/// The response time a failed connection counts as.
const UNREACHABLE_PENALTY: Duration = Duration::from_secs(5);

/// What one try sends.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// `/v1/...`.
    pub path: &'a str,
    /// The client's body, unchanged.
    pub body: Bytes,
    /// The server tier the router chose (the client's own tier header is never forwarded).
    pub tier: Option<&'a str>,
    /// The request id (the client's, or one the router made).
    pub request_id: &'a str,
    /// The client's `accept`.
    pub accept: Option<&'a HeaderValue>,
    /// Time left until the request's deadline.
    pub remaining: Duration,
}

/// Why a try did not get a response head.
#[derive(Debug)]
pub enum TryError {
    /// Connecting or sending failed (safe to retry: the server saw no request, or a broken one).
    Connect(String),
    /// No response head within the deadline.
    Timeout,
}

/// Sends one try to `load.addr` and returns the response head with its body still streaming.
pub async fn send(
    upstream: &Upstream,
    load: &Arc<EndpointLoad>,
    out: &Outgoing<'_>,
) -> Result<Response, TryError> {
    let request = build(load.addr, out).map_err(|e| TryError::Connect(e.to_string()))?;
    let in_flight = load.begin();
    let started = Instant::now();
    let sent = tokio::time::timeout(out.remaining, upstream.request(request)).await;
    let response = match sent {
        Err(_) => return Err(TryError::Timeout),
        Ok(Err(e)) => {
            // Until a scrape or the watch takes it out, an endpoint that refuses connections
            // costs as much as one that takes seconds to answer.
            load.observe_latency(UNREACHABLE_PENALTY);
            return Err(TryError::Connect(e.to_string()));
        }
        Ok(Ok(r)) => r,
    };
    load.observe_latency(started.elapsed());
    if let Some(load_now) = reported_load(response.headers()) {
        load.report(load_now, Instant::now());
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    // The guard moves into the body: the endpoint counts as busy until the body is done or the
    // client goes away.
    let body = body.map_frame(move |frame| {
        let _busy = &in_flight;
        frame
    });
    Ok(Response::from_parts(parts, Body::new(body)))
}

fn build(addr: SocketAddr, out: &Outgoing<'_>) -> Result<Request<Full<Bytes>>, axum::http::Error> {
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(format!("http://{addr}{}", out.path))
        .header(header::CONTENT_TYPE, "application/json")
        .header(headers::REQUEST_ID, out.request_id)
        .header(
            headers::TIMEOUT,
            format!("{}ms", out.remaining.as_millis().max(1)),
        );
    if let Some(tier) = out.tier {
        request = request.header(headers::TIER, tier);
    }
    if let Some(accept) = out.accept {
        request = request.header(header::ACCEPT, accept);
    }
    request.body(Full::new(out.body.clone()))
}

/// The server's `x-modelfleet-load` (requests queued and running), if it sent one.
pub fn reported_load(headers: &HeaderMap) -> Option<u32> {
    headers.get(headers::LOAD)?.to_str().ok()?.trim().parse().ok()
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
        header::TE,
        header::TRAILER,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

/// Whether an answer may be tried again on another endpoint (the body was not read yet): 502,
/// 503 and 504 and other server errors, not 4xx and not 501.
pub fn retryable(status: StatusCode) -> bool {
    status.is_server_error() && status != StatusCode::NOT_IMPLEMENTED
}

/// Reads a whole body within `timeout`, up to `max` bytes (None: over the bound, or it failed).
pub async fn collect(body: Body, max: usize, timeout: Duration) -> Option<Bytes> {
    let limited = http_body_util::Limited::new(body, max);
    tokio::time::timeout(timeout, limited.collect())
        .await
        .ok()?
        .ok()
        .map(|c| c.to_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_are_retried_client_errors_are_not() {
        assert!(retryable(StatusCode::SERVICE_UNAVAILABLE));
        assert!(retryable(StatusCode::INTERNAL_SERVER_ERROR));
        assert!(!retryable(StatusCode::NOT_IMPLEMENTED));
        assert!(!retryable(StatusCode::TOO_MANY_REQUESTS));
        assert!(!retryable(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn the_request_carries_the_routers_tier_and_id() {
        let out = Outgoing {
            path: "/v1/embeddings",
            body: Bytes::from_static(b"{}"),
            tier: Some("free"),
            request_id: "abc",
            accept: None,
            remaining: Duration::from_millis(1500),
        };
        let r = build(SocketAddr::from(([10, 0, 0, 1], 8080)), &out).expect("request");
        assert_eq!(r.uri(), "http://10.0.0.1:8080/v1/embeddings");
        assert_eq!(r.headers()[headers::TIER], "free");
        assert_eq!(r.headers()[headers::REQUEST_ID], "abc");
        assert_eq!(r.headers()[headers::TIMEOUT], "1500ms");
    }

    #[test]
    fn the_load_header_is_read_when_well_formed() {
        let mut h = HeaderMap::new();
        assert_eq!(reported_load(&h), None);
        h.insert(headers::LOAD, HeaderValue::from_static(" 7"));
        assert_eq!(reported_load(&h), Some(7));
        h.insert(headers::LOAD, HeaderValue::from_static("lots"));
        assert_eq!(reported_load(&h), None);
    }
}
