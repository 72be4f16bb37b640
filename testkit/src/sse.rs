//! A client for server-sent events (OpenAI streaming): POST a JSON body and read the `data:`
//! payloads one by one as they arrive, with the time each arrived, so tests can check that a
//! stream is incremental and measure first-token and inter-token times.

use std::{collections::VecDeque, time::Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

/// An open event stream.
#[derive(Debug)]
pub struct EventStream {
    /// The response status.
    pub status: u16,
    /// The response headers.
    pub headers: http::HeaderMap,
    body: Incoming,
    buffer: String,
    ready: VecDeque<(Instant, String)>,
    /// A non-SSE body (an error answer), read whole.
    pub error_body: Option<Value>,
}

/// POSTs `body` and opens its event stream (or reads the error answer).
pub async fn post_stream(url: &str, body: &Value, headers: &[(&str, &str)]) -> EventStream {
    let mut request = http::Request::post(url)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let request = request
        .body(Full::new(Bytes::from(serde_json::to_vec(body).expect("json"))))
        .expect("request");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let sse = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut stream = EventStream {
        status,
        headers,
        body: response.into_body(),
        buffer: String::new(),
        ready: VecDeque::new(),
        error_body: None,
    };
    if !sse {
        let mut bytes = Vec::new();
        while let Some(Ok(frame)) = stream.body.frame().await {
            if let Some(data) = frame.data_ref() {
                bytes.extend_from_slice(data);
            }
        }
        stream.error_body = Some(serde_json::from_slice(&bytes).unwrap_or(Value::Null));
    }
    stream
}

impl EventStream {
    /// The next `data:` payload and when it arrived; None at the end of the body.
    pub async fn next_data(&mut self) -> Option<(Instant, String)> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Some(event);
            }
            let frame = self.body.frame().await?.ok()?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            let now = Instant::now();
            self.buffer.push_str(&String::from_utf8_lossy(data));
            while let Some(end) = self.buffer.find("\n\n") {
                let event: String = self.buffer.drain(..end + 2).collect();
                let payload: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim_start)
                    .collect();
                if !payload.is_empty() {
                    self.ready.push_back((now, payload.join("\n")));
                }
            }
        }
    }

    /// Every remaining payload, JSON-decoded, up to `[DONE]` (not included), with arrival times.
    pub async fn collect_json(&mut self) -> (Vec<(Instant, Value)>, bool) {
        let mut out = Vec::new();
        while let Some((at, data)) = self.next_data().await {
            if data == "[DONE]" {
                return (out, true);
            }
            out.push((at, serde_json::from_str(&data).unwrap_or(Value::String(data))));
        }
        (out, false)
    }
}
