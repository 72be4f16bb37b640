//! Answers of the OpenAI generation APIs: the whole completion as one JSON object, or its
//! events as server-sent `data:` chunks ending in `[DONE]`. The timing of every token goes to
//! the TTFT and inter-token histograms here, once per request, whichever way it is answered.

use std::{
    convert::Infallible,
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use axum::response::sse::Event as SseEvent;
use futures::Stream;
use serde_json::{Value, json};

use crate::{
    error::InferError,
    generate::{
        scheduler::{Event, FinishReason},
        service::Admitted,
    },
    metrics::{Metrics, TierLabel},
    shadow::PendingCopy,
};

/// Which API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completions,
}

impl Api {
    fn object(self, streamed: bool) -> &'static str {
        match (self, streamed) {
            (Self::Chat, false) => "chat.completion",
            (Self::Chat, true) => "chat.completion.chunk",
            (Self::Completions, _) => "text_completion",
        }
    }

    fn id_prefix(self) -> &'static str {
        match self {
            Self::Chat => "chatcmpl",
            Self::Completions => "cmpl",
        }
    }
}

/// What every chunk and the final object share.
#[derive(Debug, Clone)]
pub struct Envelope {
    /// Which API.
    pub api: Api,
    /// `chatcmpl-…` / `cmpl-…`.
    pub id: String,
    /// Seconds since the epoch.
    pub created: u64,
    /// The served model name.
    pub model: String,
}

impl Envelope {
    /// A new envelope for one request.
    pub fn new(api: Api, model: &str) -> Self {
        Self {
            api,
            id: format!("{}-{:024x}", api.id_prefix(), fastrand::u128(..) >> 32),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            model: model.to_owned(),
        }
    }

    fn wrap(&self, streamed: bool, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": self.api.object(streamed),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }
}

/// Token timing of one request, observed into the histograms as tokens arrive.
#[derive(Debug)]
pub struct Timing {
    metrics: Metrics,
    tier: String,
    started: Instant,
    last: Option<Instant>,
}

impl Timing {
    /// Timing of `admitted`.
    pub fn new(metrics: &Metrics, admitted: &Admitted) -> Self {
        Self::starting(metrics, admitted.tier.clone(), admitted.started)
    }

    /// Timing of a request in `tier` that arrived at `started`.
    pub fn starting(metrics: &Metrics, tier: String, started: Instant) -> Self {
        Self {
            metrics: metrics.clone(),
            tier,
            started,
            last: None,
        }
    }

    /// A token arrived now: the first one's time since arrival, or the time since the last.
    pub fn token(&mut self) {
        let now = Instant::now();
        let label = TierLabel {
            tier: self.tier.clone(),
        };
        match self.last {
            None => self
                .metrics
                .generation
                .time_to_first_token
                .get_or_create(&label)
                .observe(now.duration_since(self.started).as_secs_f64()),
            Some(last) => self
                .metrics
                .generation
                .inter_token_latency
                .observe(now.duration_since(last).as_secs_f64()),
        }
        self.last = Some(now);
    }
}

fn usage(prompt_tokens: usize, completion_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    })
}

fn logprobs_value(api: Api, tokens: &[(String, f32)]) -> Value {
    match api {
        Api::Chat => {
            json!({"content": tokens.iter().map(|(t, lp)| json!({"token": t, "logprob": lp, "bytes": t.as_bytes(), "top_logprobs": []})).collect::<Vec<_>>()})
        }
        Api::Completions => json!({
            "tokens": tokens.iter().map(|(t, _)| t.clone()).collect::<Vec<_>>(),
            "token_logprobs": tokens.iter().map(|(_, lp)| *lp).collect::<Vec<_>>(),
        }),
    }
}

/// Waits for every event of `admitted` and answers with one JSON object (or the failure); a
/// request picked for mirroring is copied to the shadow with its text.
pub async fn whole(
    mut admitted: Admitted,
    envelope: &Envelope,
    timing: &mut Timing,
    copy: Option<PendingCopy>,
) -> Result<Value, InferError> {
    let mut text = String::new();
    let mut logprobs = Vec::new();
    while let Some(event) = admitted.events.recv().await {
        match event {
            Event::Token {
                text: piece, logprob, ..
            } => {
                timing.token();
                if let Some(lp) = logprob {
                    logprobs.push((piece.clone(), lp));
                }
                text.push_str(&piece);
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                if let Some(copy) = copy {
                    copy.complete(text.clone());
                }
                let lp = (!logprobs.is_empty()).then(|| logprobs_value(envelope.api, &logprobs));
                let choice = match envelope.api {
                    Api::Chat => json!({"index": 0, "message": {"role": "assistant", "content": text},
                                        "logprobs": lp, "finish_reason": finish.as_str()}),
                    Api::Completions => json!({"index": 0, "text": text, "logprobs": lp,
                                               "finish_reason": finish.as_str()}),
                };
                let mut body = envelope.wrap(false, json!([choice]));
                body["usage"] = usage(prompt_tokens, completion_tokens);
                return Ok(body);
            }
            Event::Failed(e) => return Err(e),
        }
    }
    Err(InferError::Backend(
        "the scheduler ended the request without an answer".into(),
    ))
}

/// State of a streamed answer.
struct Streaming {
    admitted: Admitted,
    envelope: Envelope,
    timing: Timing,
    include_usage: bool,
    role_sent: bool,
    /// The text so far, kept only for a request picked for mirroring.
    text: String,
    copy: Option<PendingCopy>,
    /// Chunks ready to go out, in order.
    pending: std::collections::VecDeque<SseEvent>,
    finished: bool,
}

impl Streaming {
    fn chunk(&self, delta: Value, finish: Option<FinishReason>, logprob: Option<(String, f32)>) -> SseEvent {
        let lp = logprob.map(|t| logprobs_value(self.envelope.api, &[t]));
        let finish = finish.map(FinishReason::as_str);
        let choice = match self.envelope.api {
            Api::Chat => json!({"index": 0, "delta": delta, "logprobs": lp, "finish_reason": finish}),
            Api::Completions => {
                json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")),
                                       "logprobs": lp, "finish_reason": finish})
            }
        };
        let mut body = self.envelope.wrap(true, json!([choice]));
        if self.include_usage {
            body["usage"] = Value::Null;
        }
        SseEvent::default().data(body.to_string())
    }

    /// Turns one scheduler event into chunks.
    fn on(&mut self, event: Event) {
        match event {
            Event::Token { text, logprob, .. } => {
                self.timing.token();
                if self.copy.is_some() {
                    self.text.push_str(&text);
                }
                if !self.role_sent && self.envelope.api == Api::Chat {
                    self.role_sent = true;
                    let first = self.chunk(json!({"role": "assistant", "content": ""}), None, None);
                    self.pending.push_back(first);
                }
                if !text.is_empty() || logprob.is_some() {
                    let lp = logprob.map(|lp| (text.clone(), lp));
                    let c = self.chunk(json!({"content": text}), None, lp);
                    self.pending.push_back(c);
                }
            }
            Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            } => {
                if let Some(copy) = self.copy.take() {
                    copy.complete(std::mem::take(&mut self.text));
                }
                let last = self.chunk(json!({}), Some(finish), None);
                self.pending.push_back(last);
                if self.include_usage {
                    let mut body = self.envelope.wrap(true, json!([]));
                    body["usage"] = usage(prompt_tokens, completion_tokens);
                    self.pending.push_back(SseEvent::default().data(body.to_string()));
                }
                self.end();
            }
            Event::Failed(e) => {
                self.pending
                    .push_back(SseEvent::default().data(e.envelope().to_string()));
                self.end();
            }
        }
    }

    fn end(&mut self) {
        self.pending.push_back(SseEvent::default().data("[DONE]"));
        self.finished = true;
    }
}

/// The events of `admitted` as SSE chunks. Dropping the stream (the client went away) drops
/// the receiver, which the scheduler sees at its next step and frees the sequence. A request
/// picked for mirroring is copied to the shadow with its whole text once it is done.
pub fn stream(
    admitted: Admitted,
    envelope: Envelope,
    timing: Timing,
    include_usage: bool,
    copy: Option<PendingCopy>,
) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send {
    let state = Streaming {
        admitted,
        envelope,
        timing,
        include_usage,
        role_sent: false,
        text: String::new(),
        copy,
        pending: Default::default(),
        finished: false,
    };
    futures::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(chunk) = s.pending.pop_front() {
                return Some((Ok(chunk), s));
            }
            if s.finished {
                return None;
            }
            match s.admitted.events.recv().await {
                Some(event) => s.on(event),
                None => s.on(Event::Failed(InferError::Backend(
                    "the scheduler ended the request without an answer".into(),
                ))),
            }
        }
    })
}
