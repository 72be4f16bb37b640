//! The HTTP side: where requests go (loopback unless allowed), the prebuilt request bodies, the
//! pool of keep-alive connections and one request's outcome.

use std::{
    net::{SocketAddr, ToSocketAddrs},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, sync::Notify};

/// The default texts: the sentences the batching benchmark also feeds the direct candle loop, so
/// both measure the same inputs.
const DEFAULT_TEXTS: &str = include_str!("../../../bench/sentences.txt");

/// A resolved `--url`.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// The address dialled: the one checked for loopback, so nothing is looked up again.
    pub addr: SocketAddr,
    /// `/<base path>/v1/embeddings`.
    pub path: Uri,
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
    let path = Uri::try_from(path).map_err(|e| bad(&e))?;
    let host = HeaderValue::from_str(authority.as_str()).map_err(|e| bad(&e))?;
    Ok(Endpoint { addr, path, host })
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
            uri: endpoint.path.clone(),
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

/// Connections being opened at once, at most. When all are busy and none is idle, a request
/// waits for whichever comes first, a connection put back or a free opening slot. Without this,
/// a cold start or a stall at a high rate snowballs: every arrival opens a connection, opening
/// them slows everything down, more arrivals find none idle (20 000 req/s went from 80 to 4096
/// connections in 200 ms). The wait counts as latency in the open loop.
const MAX_CONNECTING: usize = 8;

/// HTTP/1.1 keep-alive connections to the target, each carrying one request at a time.
///
/// A request takes the most recently used idle connection, or opens one (see
/// [`MAX_CONNECTING`]), and puts it back once its answer is read. So the pool grows to the
/// requests outstanding at once: `--concurrency` in the closed loop, about the peak in flight in
/// the open loop. (hyper-util's legacy client also races a new connection against every wait
/// for an idle one and keeps the loser: at 20 000 req/s with one request in flight on average
/// it opened 4096 connections, its idle cap, then churned them.)
#[derive(Debug)]
pub struct Pool {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    max_idle: usize,
    /// Signalled when a request or an opening ends.
    freed: Notify,
    connecting: AtomicUsize,
    opened: AtomicU64,
}

impl Pool {
    /// An empty pool to `addr` keeping up to `max_idle` idle connections.
    pub fn new(addr: SocketAddr, max_idle: usize) -> Self {
        Self {
            addr,
            idle: Mutex::new(Vec::with_capacity(max_idle.min(4096))),
            max_idle,
            freed: Notify::new(),
            connecting: AtomicUsize::new(0),
            opened: AtomicU64::new(0),
        }
    }

    /// Connections opened so far.
    pub fn opened(&self) -> u64 {
        self.opened.load(Ordering::Relaxed)
    }

    /// An idle connection ready for a request, else a new one (`true`: new).
    async fn checkout(&self) -> Result<(SendRequest<Full<Bytes>>, bool), Outcome> {
        loop {
            // Registered before looking, so a connection put back meanwhile still wakes us.
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            while let Some(mut sender) = self.idle.lock().ok().and_then(|mut idle| idle.pop()) {
                // Ready once the connection has finished the last exchange; an error: it closed.
                if !sender.is_closed() && sender.ready().await.is_ok() {
                    return Ok((sender, false));
                }
            }
            if self.connecting.fetch_add(1, Ordering::AcqRel) < MAX_CONNECTING {
                let connected = self.connect().await;
                self.connecting.fetch_sub(1, Ordering::AcqRel);
                self.freed.notify_one();
                return connected.map(|sender| (sender, true));
            }
            self.connecting.fetch_sub(1, Ordering::AcqRel);
            freed.await;
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, Outcome> {
        let stream = TcpStream::connect(self.addr)
            .await
            .map_err(|_| Outcome::Connect)?;
        let _ = stream.set_nodelay(true);
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|_| Outcome::Connect)?;
        // Drives the connection; ends when it closes or its sender is dropped.
        tokio::spawn(connection);
        self.opened.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }

    /// Returns a connection whose exchange is complete.
    fn checkin(&self, sender: SendRequest<Full<Bytes>>) {
        if !sender.is_closed()
            && let Ok(mut idle) = self.idle.lock()
            && idle.len() < self.max_idle
        {
            idle.push(sender);
        }
    }
}

/// Wakes one request waiting for a connection when a request ends, however it ends (put back,
/// closed on an error, dropped on a timeout): it finds the connection idle or may open one.
struct WakeOnEnd<'a>(&'a Pool);

impl Drop for WakeOnEnd<'_> {
    fn drop(&mut self) {
        self.0.freed.notify_one();
    }
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

/// Sends request `i` and reads the answer to its end, all within the target's timeout.
pub async fn send(pool: &Pool, target: &Target, i: u64) -> Outcome {
    let _wake = WakeOnEnd(pool);
    let exchange = async {
        let mut request = target.request(i);
        let (response, sender) = loop {
            let (mut sender, fresh) = pool.checkout().await?;
            match sender.try_send_request(request).await {
                Ok(response) => break (response, sender),
                // An idle connection the server closed before the request went out gives it
                // back: try the next one.
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => request = unsent,
                    _ => return Err(Outcome::Other),
                },
            }
        };
        let status = response.status().as_u16();
        let mut body = response.into_body();
        // Read frame by frame and drop them: nothing is kept or concatenated.
        while let Some(frame) = body.frame().await {
            frame.map_err(|_| Outcome::Other)?;
        }
        pool.checkin(sender);
        Ok::<_, Outcome>(Outcome::Status(status))
    };
    match tokio::time::timeout(target.timeout, exchange).await {
        Ok(Ok(outcome) | Err(outcome)) => outcome,
        // The connection is dropped with the unfinished exchange.
        Err(_) => Outcome::Timeout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets_unless_allowed() {
        let e = resolve("http://127.0.0.1:9000", false).unwrap();
        assert_eq!(
            (e.addr.to_string(), e.path.to_string()),
            ("127.0.0.1:9000".into(), "/v1/embeddings".into())
        );
        assert_eq!(e.host, "127.0.0.1:9000");
        let e = resolve("http://127.1.2.3:80/prefix/", false).unwrap();
        assert_eq!(e.path, "/prefix/v1/embeddings");
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
        assert_eq!(
            (r.method(), r.uri().to_string()),
            (&Method::POST, "/v1/embeddings".into())
        );
        assert_eq!(r.headers()["x-modelfleet-tier"], "high");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()[header::HOST], "127.0.0.1:8080");
    }
}
