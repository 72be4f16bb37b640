//! One request in the scheduler: its tokens (prompt, then generated), how many of them are in
//! the model's KV cache, its sampler and text stream, its deadline, and its event channel.

use std::time::{Duration, Instant};

use modelfleet_contract::headers;
use tokio::sync::mpsc::{self, error::TrySendError};

use super::{Event, FinishReason, GenerationRequest};
use crate::{
    error::InferError,
    generate::{
        Decode, SeqId,
        sampling::Sampler,
        stop::{Emit, TextStream},
    },
};

/// A deadline and what set it (named in the timeout message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    pub at: Instant,
    pub source: &'static str,
}

/// What ends every sequence the same way: the model's limits and the end-of-sequence tokens.
#[derive(Clone, Copy)]
pub struct TokenRules<'a> {
    pub decode: &'a dyn Decode,
    pub eos_ids: &'a [u32],
    pub context_length: usize,
}

/// What a sampled token did to its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// More tokens follow.
    Continues,
    /// `Done` was sent.
    Finished,
    /// The client went away.
    ClientGone,
}

/// One request's generation state.
#[derive(Debug)]
pub struct Sequence {
    pub id: SeqId,
    pub tier: usize,
    /// Prompt plus `max_tokens`: the KV tokens it reserves.
    pub reserve: usize,
    prompt_len: usize,
    /// The prompt, then the generated tokens: what a prefill (or a recompute after preemption)
    /// feeds.
    tokens: Vec<u32>,
    /// How many of `tokens` are in the model's KV cache.
    fed: usize,
    max_tokens: usize,
    logprobs: bool,
    sampler: Sampler,
    text: TextStream,
    events: mpsc::Sender<Event>,
    submitted: Instant,
    /// Before the first admission: the earlier of the tier timeout and the request deadline.
    queue_deadline: Option<Deadline>,
    /// The request's own deadline, in force once admitted.
    deadline: Option<Deadline>,
    admitted_before: bool,
}

impl Sequence {
    /// A new sequence for `request`, submitted at `now`.
    pub fn new(
        id: SeqId,
        request: GenerationRequest,
        tier_timeout: Option<Duration>,
        events: mpsc::Sender<Event>,
        now: Instant,
    ) -> Self {
        let deadline = request.deadline.map(|at| Deadline {
            at,
            source: headers::TIMEOUT,
        });
        let tier_deadline = tier_timeout.map(|t| Deadline {
            at: now + t,
            source: "tier timeout",
        });
        let queue_deadline = [deadline, tier_deadline]
            .into_iter()
            .flatten()
            .min_by_key(|d| d.at);
        let params = request.params;
        Self {
            id,
            tier: request.tier,
            reserve: request.prompt.len() + params.max_tokens,
            prompt_len: request.prompt.len(),
            tokens: request.prompt,
            fed: 0,
            max_tokens: params.max_tokens,
            logprobs: params.logprobs,
            sampler: Sampler::new(&params),
            text: TextStream::new(&params.stop),
            events,
            submitted: now,
            queue_deadline,
            deadline,
            admitted_before: false,
        }
    }

    /// Prompt tokens.
    pub fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens not yet in the KV cache: 1 while decoding, more while (re)prefilling.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.fed
    }

    /// The next `n` tokens to feed.
    pub fn next_feed(&self, n: usize) -> &[u32] {
        &self.tokens[self.fed..(self.fed + n).min(self.tokens.len())]
    }

    /// Records that `n` more tokens are in the KV cache.
    pub fn fed(&mut self, n: usize) {
        self.fed = (self.fed + n).min(self.tokens.len());
    }

    /// Marks the sequence admitted; true the first time (its prompt is new work).
    pub fn admitted(&mut self) -> bool {
        !std::mem::replace(&mut self.admitted_before, true)
    }

    /// Its KV cache was dropped (preemption): everything is fed again when it resumes.
    pub fn preempted(&mut self) {
        self.fed = 0;
    }

    /// Whether the client dropped its receiver.
    pub fn is_cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// The deadline in force: the queue deadline until first admitted, the request's after.
    pub fn deadline(&self) -> Option<Deadline> {
        if self.admitted_before {
            self.deadline
        } else {
            self.queue_deadline
        }
    }

    /// Whether its deadline is at or before `now`.
    pub fn is_expired(&self, now: Instant) -> bool {
        self.deadline().is_some_and(|d| d.at <= now)
    }

    /// Samples the next token from `logits` and streams it; sends `Done` when it ends the
    /// sequence (end-of-sequence token, stop string, `max_tokens`, context length).
    pub fn take_token(&mut self, logits: &[f32], rules: TokenRules<'_>) -> Progress {
        // The log-probability costs a pass over the vocabulary: only when asked for.
        let (id, logprob) = if self.logprobs {
            let sampled = self.sampler.sample(logits);
            (sampled.id, Some(sampled.logprob))
        } else {
            (self.sampler.sample_id(logits), None)
        };
        self.tokens.push(id);
        let (emit, finish) = self.stream_text(id, rules);
        let token = Event::Token {
            id,
            text: emit.text,
            logprob,
        };
        if !self.send(token) {
            return Progress::ClientGone;
        }
        match finish {
            None => Progress::Continues,
            Some(finish) => {
                self.send(self.done(finish));
                Progress::Finished
            }
        }
    }

    /// The text `id` releases and, when it ends the sequence, why. An end-of-sequence token adds
    /// no text of its own but flushes the held-back text; so does the last allowed token.
    fn stream_text(&mut self, id: u32, rules: TokenRules<'_>) -> (Emit, Option<FinishReason>) {
        if rules.eos_ids.contains(&id) {
            return (self.text.finish(rules.decode), Some(FinishReason::Stop));
        }
        let mut emit = self.text.push(rules.decode, id);
        if emit.stopped {
            return (emit, Some(FinishReason::Stop));
        }
        let out_of_room = self.generated() >= self.max_tokens || self.tokens.len() >= rules.context_length;
        if !out_of_room {
            return (emit, None);
        }
        let tail = self.text.finish(rules.decode);
        emit.text.push_str(&tail.text);
        let finish = if tail.stopped {
            FinishReason::Stop
        } else {
            FinishReason::Length
        };
        (emit, Some(finish))
    }

    fn done(&self, finish: FinishReason) -> Event {
        Event::Done {
            finish,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
        }
    }

    /// Ends the sequence at its deadline: `QueueTimeout` before the first token; after it, the
    /// tokens sent stand and the stream ends `length` (text still held back for a possible stop
    /// string or a split character is dropped: the output is cut a little earlier).
    pub fn time_out(self, now: Instant, retry_after: Duration) {
        if self.generated() > 0 {
            self.send(self.done(FinishReason::Length));
            return;
        }
        let deadline = self.deadline();
        let limit = deadline.map_or(Duration::ZERO, |d| d.at.saturating_duration_since(self.submitted));
        self.send(Event::Failed(InferError::QueueTimeout {
            waited_ms: now.saturating_duration_since(self.submitted).as_millis() as u64,
            limit_ms: limit.as_millis() as u64,
            source_of_limit: deadline.map_or("deadline", |d| d.source),
            retry_after,
        }));
    }

    /// Ends the sequence with `error`.
    pub fn fail(self, error: InferError) {
        self.send(Event::Failed(error));
    }

    /// Sends without waiting; false when the client is gone. The channel holds every event a
    /// sequence can send, so it is never full.
    fn send(&self, event: Event) -> bool {
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(TrySendError::Closed(_)) => false,
            Err(TrySendError::Full(_)) => {
                debug_assert!(false, "an event channel sized for the whole stream is full");
                tracing::error!(seq = self.id, "event channel full; ending the stream");
                false
            }
        }
    }
}
