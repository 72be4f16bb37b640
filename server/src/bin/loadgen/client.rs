//! The HTTP side: where requests go (loopback unless allowed), the prebuilt request bodies, the
//! pooled keep-alive client and one request's outcome.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

/// The default texts: the sentences the batching benchmark also feeds the direct candle loop, so
/// both measure the same inputs.
const DEFAULT_TEXTS: &str = include_str!("../../../bench/sentences.txt");

/// The keep-alive HTTP/1.1 client every request goes through.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A resolved `--url`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `http://<address>/<base path>/v1/embeddings` with the resolved address (the one checked
    /// for loopback), so nothing is looked up again after the check.
    pub uri: Uri,
    /// The `Host` header: the authority as the user wrote it.
    pub host: HeaderValue,
}

/// Resolves `url` to the embeddings endpoint; refuses a host outside 127.0.0.0/8 and ::1 unless
/// `allow_remote`.
pub fn resolve(url: &str, allow_remote: bool) -> Result<Endpoint, String> {
    let bad = |why: &dyn std::fmt::Display| format!("--url `{url}`: {why}");
    let uri: Uri = url.parse().map_err(|e| bad(&e))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad(&"only http:// is supported"));
    }
    let authority = uri.authority().ok_or_else(|| bad(&"no host"))?;
    let host = authority.host().trim_matches(['[', ']']);
    let port = authority.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = (host, port).to_socket_addrs().map_err(|e| bad(&e))?.collect();
    let addr = *addrs.first().ok_or_else(|| bad(&"the host has no address"))?;
    if !allow_remote && let Some(remote) = addrs.iter().find(|a| !is_loopback(a)) {
        return Err(bad(&format_args!(
            "{} is not a loopback address (127.0.0.0/8 or ::1); pass --allow-remote to load \
             another machine",
            remote.ip()
        )));
    }
    let path = format!("{}/v1/embeddings", uri.path().trim_end_matches('/'));
    let uri = Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(path)
        .build()
        .map_err(|e| bad(&e))?;
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| bad(&e))?;
    Ok(Endpoint { uri, host })
}

fn is_loopback(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The texts to embed: the lines of `file` (blank ones skipped), or the built-in sentences.
pub fn texts(file: Option<&std::path::Path>) -> Result<Vec<String>, String> {
    let owned;
    let (source, content) = match file {
        Some(path) => {
            owned =
                std::fs::read_to_string(path).map_err(|e| format!("--texts-file {}: {e}", path.display()))?;
            (path.display().to_string(), owned.as_str())
        }
        None => ("the built-in texts".to_owned(), DEFAULT_TEXTS),
    };
    let texts: Vec<String> = content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if texts.is_empty() {
        return Err(format!("--texts-file {source}: no sentences"));
    }
    Ok(texts)
}

/// One request body per text, JSON-encoded once: body `i` holds `per_request` texts starting at
/// text `i` (wrapping), so consecutive requests differ.
pub fn bodies(model: &str, texts: &[String], per_request: usize) -> Result<Arc<[Bytes]>, String> {
    let per_request = per_request.max(1);
    (0..texts.len())
        .map(|start| {
            let input: Vec<&str> = (0..per_request)
                .map(|k| texts[(start + k) % texts.len()].as_str())
                .collect();
            serde_json::to_vec(&serde_json::json!({ "model": model, "input": input }))
                .map(Bytes::from)
                .map_err(|e| format!("encoding a request: {e}"))
        })
        .collect()
}

/// Everything needed to build request `i` cheaply: bodies and headers are shared, not rebuilt.
#[derive(Debug, Clone)]
pub struct Target {
    uri: Uri,
    headers: HeaderMap,
    bodies: Arc<[Bytes]>,
    timeout: Duration,
}

impl Target {
    /// The request template: `Host`, `content-type: application/json` and the extra headers.
    pub fn new(
        endpoint: &Endpoint,
        extra: &[(HeaderName, HeaderValue)],
        bodies: Arc<[Bytes]>,
        timeout: Duration,
    ) -> Self {
        let mut headers = HeaderMap::with_capacity(2 + extra.len());
        headers.insert(header::HOST, endpoint.host.clone());
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in extra {
            headers.append(k.clone(), v.clone());
        }
        Self {
            uri: endpoint.uri.clone(),
            headers,
            bodies,
            timeout,
        }
    }

    /// The `i`-th request (bodies round robin); the URI, headers and body are reference-counted
    /// clones.
    fn request(&self, i: u64) -> Request<Full<Bytes>> {
        let body = self.bodies[(i % self.bodies.len() as u64) as usize].clone();
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        request
    }
}

/// A keep-alive client pooling up to `pool` idle connections (one per concurrent request).
pub fn http_client(pool: usize, connect_timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(connect_timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(pool)
        .build(connector)
}

/// What became of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// An HTTP answer with this status, its body read to the end.
    Status(u16),
    /// No connection could be made.
    Connect,
    /// No complete answer within `--timeout`.
    Timeout,
    /// Anything else: the connection broke, the answer was malformed.
    Other,
}

/// Sends request `i` and reads the answer to its end (within the target's timeout).
pub async fn send(client: &HttpClient, target: &Target, i: u64) -> Outcome {
    let exchange = async {
        let response = client.request(target.request(i)).await.map_err(|e| {
            if e.is_connect() {
                Outcome::Connect
            } else {
                Outcome::Other
            }
        })?;
        let status = response.status().as_u16();
        let mut body = response.into_body();
        // Read frame by frame and drop them: nothing is kept or concatenated.
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| Outcome::Other)?;
        }
        Ok::<_, Outcome>(Outcome::Status(status))
    };
    match tokio::time::timeout(target.timeout, exchange).await {
        Ok(Ok(outcome) | Err(outcome)) => outcome,
        Err(_) => Outcome::Timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_unless_allowed() {
        let e = resolve("http://127.0.0.1:9000", false).unwrap();
        assert_eq!(e.uri.to_string(), "http://127.0.0.1:9000/v1/embeddings");
        assert_eq!(e.host, "127.0.0.1:9000");
        let e = resolve("http://127.1.2.3:80/prefix/", false).unwrap();
        assert_eq!(e.uri.path(), "/prefix/v1/embeddings");
        assert!(resolve("http://[::1]:8080", false).is_ok());
        assert!(resolve("http://localhost:8080", false).is_ok());
        for remote in [
            "http://10.0.0.1:80",
            "http://192.168.1.2:8080",
            "http://[2001:db8::1]:80",
        ] {
            let err = resolve(remote, false).unwrap_err();
            assert!(err.contains("--allow-remote") && err.contains("--url"), "{err}");
            assert!(resolve(remote, true).is_ok(), "{remote} with --allow-remote");
        }
        assert!(
            resolve("https://127.0.0.1", false)
                .unwrap_err()
                .contains("http://")
        );
        assert!(resolve("127.0.0.1:8080", false).is_err());
    }

    #[test]
    fn bodies_are_valid_embedding_requests() {
        let texts = texts(None).unwrap();
        assert_eq!(texts.len(), 20);
        let bodies = bodies("minilm", &texts, 3).unwrap();
        assert_eq!(bodies.len(), 20);
        let last: serde_json::Value = serde_json::from_slice(&bodies[19]).unwrap();
        assert_eq!(last["model"], "minilm");
        let input = last["input"].as_array().unwrap();
        assert_eq!(input.len(), 3);
        assert_eq!(input[1], texts[0].as_str(), "inputs wrap around the list");
    }

    #[test]
    fn requests_carry_the_headers() {
        let endpoint = resolve("http://127.0.0.1:8080", false).unwrap();
        let extra = [crate::args::parse_header("x-modelfleet-tier:high").unwrap()];
        let target = Target::new(
            &endpoint,
            &extra,
            bodies("m", &["a".into()], 1).unwrap(),
            Duration::from_secs(1),
        );
        let r = target.request(7);
        assert_eq!(r.method(), Method::POST);
        assert_eq!(r.headers()["x-modelfleet-tier"], "high");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[header::HOST], "127.0.0.1:8080");
    }
}
