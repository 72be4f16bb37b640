//! Relaying the engine's SSE stream to the client as it comes: each chunk's `model` becomes
//! our served name, usage goes to the client only if it asked (`stream_options.include_usage`,
//! as one last chunk with no choices, as OpenAI sends it), the stream always ends with
//! `[DONE]`, and the token timing goes to the TTFT and inter-token histograms. Dropping the
//! relay (the client went away) drops the engine's response body, which closes that
//! connection: the engine stops generating.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Instant};

use axum::response::sse::Event as SseEvent;
use futures::Stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::{admission::Permit, service::UpstreamService};
use crate::{
    api::generation::respond::{Api, Timing},
    error::InferError,
    shadow::PendingCopy,
};

/// One event's payload from the engine.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// `data:` lines, joined.
    Data(String),
    /// `error:` lines (llama.cpp's server reports a failure mid-stream so).
    Error(String),
}

/// Splits an SSE byte stream into events (a blank line ends one), across reads.
#[derive(Debug, Default)]
pub struct SseSplitter {
    buffer: Vec<u8>,
}

impl SseSplitter {
    /// The events completed by `bytes`.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<Payload> {
        // CR LF and LF line ends alike.
        self.buffer.extend(bytes.iter().filter(|b| **b != b'\r'));
        let mut out = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let field = |name: &str| -> Vec<&str> {
                text.lines()
                    .filter_map(|l| l.strip_prefix(name))
                    .map(|v| v.strip_prefix(' ').unwrap_or(v))
                    .collect()
            };
            let (data, error) = (field("data:"), field("error:"));
            if !error.is_empty() {
                out.push(Payload::Error(error.join("\n")));
            } else if !data.is_empty() {
                out.push(Payload::Data(data.join("\n")));
            }
        }
        out
    }
}

/// A relayed stream's state.
struct Relay {
    service: Arc<UpstreamService>,
    body: Option<Incoming>,
    splitter: SseSplitter,
    pending: VecDeque<SseEvent>,
    api: Api,
    include_usage: bool,
    timing: Timing,
    usage: Option<Value>,
    /// `id`, `object` and `created` of the engine's chunks, for our usage chunk.
    meta: Map<String, Value>,
    /// Chunks with text (the token count when the engine reports no usage).
    pieces: u64,
    text: String,
    finish: Option<String>,
    deadline: Option<Instant>,
    permit: Option<Permit>,
    copy: Option<PendingCopy>,
    done: bool,
}

/// What a stream needs besides the engine's answer.
pub struct StreamParts {
    pub api: Api,
    pub include_usage: bool,
    pub tier: String,
    pub started: Instant,
    pub deadline: Option<Instant>,
    pub permit: Permit,
    pub copy: Option<PendingCopy>,
}

/// The engine's event stream `body` as our SSE chunks.
pub fn stream(
    service: Arc<UpstreamService>,
    body: Incoming,
    parts: StreamParts,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    let relay = Relay {
        timing: Timing::starting(&service.metrics, parts.tier, parts.started),
        service,
        body: Some(body),
        splitter: SseSplitter::default(),
        pending: VecDeque::new(),
        api: parts.api,
        include_usage: parts.include_usage,
        usage: None,
        meta: Map::new(),
        pieces: 0,
        text: String::new(),
        finish: None,
        deadline: parts.deadline,
        permit: Some(parts.permit),
        copy: parts.copy,
        done: false,
    };
    futures::stream::unfold(relay, |mut r| async move {
        loop {
            if let Some(event) = r.pending.pop_front() {
                return Some((Ok(event), r));
            }
            if r.done {
                return None;
            }
            r.read().await;
        }
    })
}

impl Relay {
    /// Reads the engine's next frame (or the deadline) and turns it into chunks.
    async fn read(&mut self) {
        let Some(body) = self.body.as_mut() else {
            return self.end(false);
        };
        let frame = match self.deadline {
            Some(at) => match tokio::time::timeout_at(at.into(), body.frame()).await {
                Ok(frame) => frame,
                Err(_) => return self.past_deadline(),
            },
            None => body.frame().await,
        };
        match frame {
            None => self.end(self.finish.is_some()),
            Some(Err(e)) => {
                let error = InferError::Backend(format!("the engine's stream broke: {e}"));
                self.pending.push_back(data(error.envelope().to_string()));
                self.end(false);
            }
            Some(Ok(frame)) => {
                if let Some(bytes) = frame.data_ref() {
                    for payload in self.splitter.push(bytes) {
                        self.on(payload);
                    }
                }
            }
        }
    }

    fn on(&mut self, payload: Payload) {
        if self.done {
            return;
        }
        match payload {
            Payload::Data(text) if text.trim() == "[DONE]" => self.end(self.finish.is_some()),
            Payload::Data(text) => match serde_json::from_str::<Value>(&text) {
                Ok(Value::Object(chunk)) if chunk.contains_key("error") => {
                    self.pending.push_back(data(Value::Object(chunk).to_string()));
                    self.end(false);
                }
                Ok(Value::Object(chunk)) => self.on_chunk(chunk),
                // Not ours to judge: passed on as it came.
                _ => self.pending.push_back(data(text)),
            },
            Payload::Error(text) => {
                let envelope = serde_json::from_str::<Value>(&text)
                    .ok()
                    .filter(|v| v.get("error").is_some())
                    .unwrap_or_else(|| InferError::Backend(format!("the engine failed: {text}")).envelope());
                self.pending.push_back(data(envelope.to_string()));
                self.end(false);
            }
        }
    }

    fn on_chunk(&mut self, mut chunk: Map<String, Value>) {
        chunk.insert("model".into(), Value::String(self.service.model_name.clone()));
        if let Some(usage) = chunk.remove("usage").filter(|u| !u.is_null()) {
            self.usage = Some(usage);
        }
        for key in ["id", "object", "created"] {
            if let Some(v) = chunk.get(key) {
                self.meta.insert(key.into(), v.clone());
            }
        }
        let Some(choice) = chunk.get("choices").and_then(|c| c.get(0)) else {
            return; // a usage-only chunk: ours comes at the end
        };
        let piece = match self.api {
            Api::Chat => choice.pointer("/delta/content"),
            Api::Completions => choice.get("text"),
        };
        if let Some(piece) = piece.and_then(Value::as_str).filter(|p| !p.is_empty()) {
            self.timing.token();
            self.pieces += 1;
            if self.copy.is_some() {
                self.text.push_str(piece);
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(finish.to_owned());
        }
        if self.include_usage {
            chunk.insert("usage".into(), Value::Null);
        }
        self.pending.push_back(data(Value::Object(chunk).to_string()));
    }

    /// `x-modelfleet-timeout` passed mid-stream: the engine's request is dropped and the
    /// answer ends here, as a generation cut by its length.
    fn past_deadline(&mut self) {
        self.body = None;
        if self.finish.is_none() {
            let choice = match self.api {
                Api::Chat => json!({"index": 0, "delta": {}, "finish_reason": "length"}),
                Api::Completions => json!({"index": 0, "text": "", "finish_reason": "length"}),
            };
            let mut chunk = self.meta.clone();
            chunk.insert("model".into(), Value::String(self.service.model_name.clone()));
            chunk.insert("choices".into(), json!([choice]));
            self.pending.push_back(data(Value::Object(chunk).to_string()));
        }
        // Cut short: not the text a shadow would give, so not compared.
        self.copy = None;
        self.end(false);
    }

    /// The end of the stream: the engine's connection and our running place freed, tokens
    /// counted, the usage chunk if asked, the mirrored copy sent after a complete answer, then
    /// `[DONE]`.
    fn end(&mut self, complete: bool) {
        if self.done {
            return;
        }
        self.done = true;
        self.body = None;
        self.permit = None;
        match &self.usage {
            Some(usage) => self.service.count_usage(usage),
            None => {
                self.service
                    .metrics
                    .generation
                    .generated_tokens
                    .inc_by(self.pieces);
            }
        }
        if self.include_usage
            && let Some(usage) = self.usage.take()
        {
            let mut chunk = self.meta.clone();
            chunk.insert("model".into(), Value::String(self.service.model_name.clone()));
            chunk.insert("choices".into(), json!([]));
            chunk.insert("usage".into(), usage);
            self.pending.push_back(data(Value::Object(chunk).to_string()));
        }
        if let Some(copy) = self.copy.take()
            && complete
        {
            copy.complete(std::mem::take(&mut self.text));
        }
        self.pending.push_back(data("[DONE]".to_owned()));
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if !self.done {
            // The client went away mid-stream; dropping the body cancels the engine's request.
            self.service.metrics.generation.cancelled_sequences.inc();
        }
    }
}

fn data(payload: String) -> SseEvent {
    SseEvent::default().data(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_split_across_reads_and_line_ends() {
        let mut s = SseSplitter::default();
        assert!(s.push(b"data: {\"a\"").is_empty());
        assert_eq!(s.push(b":1}\n\n"), [Payload::Data("{\"a\":1}".into())]);
        assert_eq!(
            s.push(b": comment\r\n\r\ndata: [DONE]\r\n\r\n"),
            [Payload::Data("[DONE]".into())]
        );
        assert_eq!(
            s.push(b"error: {\"code\":500}\n\ndata:x\ndata:y\n\n"),
            [
                Payload::Error("{\"code\":500}".into()),
                Payload::Data("x\ny".into())
            ]
        );
    }
}
