//! The connection to the engine: one pooled HTTP/1 client (hyper, as the shadow mirror uses)
//! for every forwarded request, probe and scrape. The engine runs in the same pod, so plain
//! `http://` only.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use modelfleet_contract::headers;

use crate::error::InferError;

/// How long connecting to the engine may take: it is on localhost, so a slow connect means it
/// is not listening.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long an idle connection to the engine is kept for reuse.
const POOL_IDLE: Duration = Duration::from_secs(2);

/// The engine's base URL and the client that reaches it; cheap to clone.
#[derive(Clone)]
pub struct EngineClient {
    http: Client<HttpConnector, Full<Bytes>>,
    base: String,
}

impl std::fmt::Debug for EngineClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineClient").field("base", &self.base).finish()
    }
}

impl EngineClient {
    /// A client of the engine at `url` (`http://127.0.0.1:8000`, optionally with a path prefix);
    /// the error says what is wrong with the URL.
    pub fn new(url: &str) -> Result<Self, String> {
        let base = url.trim().trim_end_matches('/');
        let uri: Uri = base.parse().map_err(|e| format!("--upstream-url `{url}`: {e}"))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(format!(
                "--upstream-url `{url}`: expected http://HOST:PORT of the engine in the same pod (plain HTTP)"
            ));
        }
        if uri.query().is_some() {
            return Err(format!("--upstream-url `{url}`: a base URL has no query"));
        }
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        // Engines close idle keep-alive connections after a few seconds (llama.cpp's server
        // after 5): drop ours before they do, so a request is rarely sent on a closed one.
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(POOL_IDLE)
            .build(connector);
        Ok(Self {
            http,
            base: base.to_owned(),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// POSTs a JSON body to `path` and returns the answer's head with its body still to read
    /// (a stream is relayed as it comes). Failing to reach the engine is a 503.
    pub async fn post_json(
        &self,
        path: &str,
        body: Bytes,
        request_id: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, InferError> {
        let build = |body: Bytes| {
            let mut request = Request::post(format!("{}{path}", self.base))
                .header(header::CONTENT_TYPE, "application/json");
            if let Some(id) = request_id {
                request = request.header(headers::REQUEST_ID, id);
            }
            request
                .body(Full::new(body))
                .map_err(|e| InferError::Backend(format!("building the engine request: {e}")))
        };
        match self.http.request(build(body.clone())?).await {
            Ok(response) => Ok(response),
            // A pooled connection the engine closed as it was reused: the engine never read
            // the request, so sending it once more on a fresh connection is safe.
            Err(e) if !e.is_connect() => self
                .http
                .request(build(body)?)
                .await
                .map_err(|e| self.unreachable(&e.to_string())),
            Err(e) => Err(self.unreachable(&e.to_string())),
        }
    }

    /// GETs `path` within `limit`: its status and body, None when the engine does not answer.
    pub async fn get(&self, path: &str, limit: Duration) -> Option<(StatusCode, Bytes)> {
        let request = Request::get(format!("{}{path}", self.base))
            .body(Full::new(Bytes::new()))
            .ok()?;
        let call = async {
            let response = self.http.request(request).await.ok()?;
            let status = response.status();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        };
        tokio::time::timeout(limit, call).await.ok().flatten()
    }

    /// The 503 of an engine that does not answer.
    pub fn unreachable(&self, error: &str) -> InferError {
        InferError::Unavailable {
            message: format!("the engine at {} did not answer: {error}", self.base),
            retry_after: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_plain_http_base_urls_are_engines() {
        assert_eq!(
            EngineClient::new("http://127.0.0.1:8000/").expect("valid").base(),
            "http://127.0.0.1:8000"
        );
        assert!(EngineClient::new("http://localhost:8000/prefix").is_ok());
        for bad in [
            "https://127.0.0.1:8000",
            "127.0.0.1:8000",
            "http://h:1/?a=b",
            "not a url",
        ] {
            let e = EngineClient::new(bad).expect_err(bad);
            assert!(e.contains("--upstream-url"), "{e}");
        }
    }
}
