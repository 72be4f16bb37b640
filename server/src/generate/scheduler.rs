//! The continuous-batching scheduler: one actor on its own OS thread owns the model, the waiting
//! queues (one per priority tier) and the running set. Each step it drops cancelled and expired
//! sequences, admits waiting ones by strict tier priority within the KV budget (preempting lower
//! tiers for a higher one when the budget is exhausted), and runs one forward in which every
//! decoding sequence advances one token and prefilling ones a chunk of their prompt, so a long
//! prompt never stalls the running streams. Tokens stream to each request through its own
//! bounded channel; the actor never waits for a client.
//!
//! Decisions live in `queue` (pure state, tested from fixtures); `sequence` is one request's
//! tokens, sampler and text stream; `step` is the actor that applies them to the model.

mod queue;
mod sequence;
mod step;
#[cfg(test)]
mod tests;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        mpsc as std_mpsc,
    },
    thread,
    time::{Duration, Instant},
};

use modelfleet_contract::{BatchingArgs, TierArg, headers};
use tokio::sync::mpsc;

use super::{Decode, LanguageModel, SeqId, sampling::SamplingParams};
use crate::error::InferError;
use queue::WaitingLimits;
pub(crate) use queue::{DrainRate, drain_time};
use sequence::Sequence;

/// How the scheduler batches.
#[derive(Debug, Clone, PartialEq)]
pub struct SchedulerConfig {
    /// Most sequences running (prefilling or decoding) at once.
    pub max_running: usize,
    /// KV tokens the running sequences may reserve in all; each reserves its prompt plus its
    /// `max_tokens`, so admitted sequences never run out of cache.
    pub kv_budget_tokens: usize,
    /// Most prompt tokens one prefilling sequence feeds per step.
    pub prefill_chunk: usize,
    /// Most tokens in one forward. Decode tokens always run (one per decoding sequence);
    /// prefill chunks fill the rest.
    pub step_token_budget: usize,
    /// Priority tiers, the highest first; none: one tier named
    /// [`BatchingArgs::DEFAULT_TIER`].
    pub tiers: Vec<TierConfig>,
    /// Most sequences waiting in all tiers; beyond it (or a tier's share of it), 429.
    pub max_waiting: usize,
    /// Tokens that end a sequence (finish reason `stop`); never streamed as text.
    pub eos_ids: Vec<u32>,
    /// Longest sequence served (prompt plus completion), never above the model's own context
    /// length; None: the model's.
    pub context_length: Option<usize>,
}

impl Default for SchedulerConfig {
    /// Settings for a small model on a CPU; `eos_ids` must come from the tokenizer.
    fn default() -> Self {
        Self {
            max_running: 16,
            kv_budget_tokens: 32_768,
            prefill_chunk: 64,
            step_token_budget: 256,
            tiers: Vec::new(),
            max_waiting: 256,
            eos_ids: Vec::new(),
            context_length: None,
        }
    }
}

impl SchedulerConfig {
    /// The configuration in force: at least one tier, and no limit of zero (which would stall).
    fn normalised(mut self) -> Self {
        if self.tiers.is_empty() {
            self.tiers.push(TierConfig {
                name: BatchingArgs::DEFAULT_TIER.into(),
                timeout: None,
                queue_share: 1.0,
            });
        }
        self.max_running = self.max_running.max(1);
        self.prefill_chunk = self.prefill_chunk.max(1);
        self.step_token_budget = self.step_token_budget.max(1);
        self
    }
}

/// One priority tier.
#[derive(Debug, Clone, PartialEq)]
pub struct TierConfig {
    /// Name, as sent in `x-modelfleet-tier`.
    pub name: String,
    /// Longest a request may wait before its first admission; `None`: no limit.
    pub timeout: Option<Duration>,
    /// Largest share of `max_waiting` the tier may hold, in (0, 1].
    pub queue_share: f64,
}

impl From<&TierArg> for TierConfig {
    /// The tier of a `--tier name:timeout:share` flag, as the embeddings batcher reads it.
    fn from(tier: &TierArg) -> Self {
        Self {
            name: tier.name.clone(),
            timeout: tier.timeout,
            queue_share: tier.share(),
        }
    }
}

/// One generation request, tokenised.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    /// Prompt token ids (the chat template applied), at least one.
    pub prompt: Vec<u32>,
    /// Sampling and stopping.
    pub params: SamplingParams,
    /// Index into the tiers ([`Scheduler::tier_index`]).
    pub tier: usize,
    /// When the request gives up (what `x-modelfleet-timeout` sets). Before the first token it
    /// fails with `QueueTimeout`; after, the stream ends with what was generated (`length`).
    pub deadline: Option<Instant>,
}

/// Why a generation ended normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End-of-sequence token or a stop string.
    Stop,
    /// `max_tokens`, the context length, or the request's deadline.
    Length,
}

impl FinishReason {
    /// The OpenAI `finish_reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
        }
    }
}

/// What a request's stream carries: tokens, then one `Done` or `Failed`. The stream ending
/// without either means the scheduler stopped.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// One generated token (an end-of-sequence token included, with no text of its own).
    /// `text` is what it releases, possibly empty while text is held back (a split character,
    /// a possible stop string); all `text`s together are the output, stop string excluded.
    Token {
        id: u32,
        text: String,
        /// Set when the request asked for logprobs.
        logprob: Option<f32>,
    },
    /// The generation ended; `completion_tokens` counts the `Token` events.
    Done {
        finish: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    /// The generation failed (a model error, or the deadline passed before the first token).
    Failed(InferError),
}

/// Counters and gauges the metrics endpoint reads; the scheduler updates them, readers only
/// load them.
#[derive(Debug)]
pub struct SchedulerStats {
    /// Sequences running (prefilling or decoding).
    pub running: AtomicUsize,
    /// Sequences waiting (submitted or preempted, not running), in all tiers.
    pub waiting: AtomicUsize,
    /// Sequences waiting, per tier (indexed like [`Scheduler::tiers`]).
    pub waiting_by_tier: Box<[AtomicUsize]>,
    /// KV tokens reserved by the running sequences.
    pub kv_reserved_tokens: AtomicUsize,
    /// The KV budget in tokens.
    pub kv_capacity_tokens: usize,
    /// Running sequences preempted (put back to wait and recompute).
    pub preemptions_total: AtomicU64,
    /// Sequences dropped because their client went away.
    pub cancelled_total: AtomicU64,
    /// Sequences ended by their deadline or tier timeout.
    pub timed_out_total: AtomicU64,
    /// Sequences failed by a model error.
    pub failed_total: AtomicU64,
    /// Sequences that ended with `Done`.
    pub finished_total: AtomicU64,
    /// Prompt tokens of admitted sequences (counted once, recomputation excluded).
    pub prompt_tokens_total: AtomicU64,
    /// Tokens generated.
    pub generated_tokens_total: AtomicU64,
    /// Forward passes run.
    pub steps_total: AtomicU64,
    /// Sequences in the last forward.
    pub last_step_batch_size: AtomicUsize,
    /// Sequences summed over every forward (÷ `steps_total`: the mean batch).
    pub step_sequences_total: AtomicU64,
    /// Tokens in the last forward.
    pub last_step_tokens: AtomicUsize,
    /// Finished sequences per second, smoothed (f64 bits): the `Retry-After` estimate.
    drain_per_second: AtomicU64,
}

impl SchedulerStats {
    fn new(tiers: usize, kv_capacity_tokens: usize) -> Self {
        Self {
            running: AtomicUsize::new(0),
            waiting: AtomicUsize::new(0),
            waiting_by_tier: (0..tiers).map(|_| AtomicUsize::new(0)).collect(),
            kv_reserved_tokens: AtomicUsize::new(0),
            kv_capacity_tokens,
            preemptions_total: AtomicU64::new(0),
            cancelled_total: AtomicU64::new(0),
            timed_out_total: AtomicU64::new(0),
            failed_total: AtomicU64::new(0),
            finished_total: AtomicU64::new(0),
            prompt_tokens_total: AtomicU64::new(0),
            generated_tokens_total: AtomicU64::new(0),
            steps_total: AtomicU64::new(0),
            last_step_batch_size: AtomicUsize::new(0),
            step_sequences_total: AtomicU64::new(0),
            last_step_tokens: AtomicUsize::new(0),
            drain_per_second: AtomicU64::new(0f64.to_bits()),
        }
    }

    /// Sequences waiting in `tier` (0 for an unknown tier).
    pub fn waiting_in(&self, tier: usize) -> usize {
        self.waiting_by_tier.get(tier).map_or(0, |n| n.load(Relaxed))
    }

    /// Share of the KV budget reserved, 0 to 1.
    pub fn kv_utilisation(&self) -> f64 {
        if self.kv_capacity_tokens == 0 {
            return 0.0;
        }
        self.kv_reserved_tokens.load(Relaxed) as f64 / self.kv_capacity_tokens as f64
    }

    /// How long a refused client should wait: the waiting sequences at the observed drain rate.
    pub fn retry_after(&self) -> Duration {
        let rate = f64::from_bits(self.drain_per_second.load(Relaxed));
        drain_time(self.waiting.load(Relaxed), rate)
    }

    fn set_drain_rate(&self, per_second: f64) {
        self.drain_per_second.store(per_second.to_bits(), Relaxed);
    }

    /// One more waiting in `tier`, whatever the limits (a preempted sequence).
    fn add_waiting(&self, tier: usize) {
        self.waiting.fetch_add(1, Relaxed);
        if let Some(n) = self.waiting_by_tier.get(tier) {
            n.fetch_add(1, Relaxed);
        }
    }

    /// One fewer waiting in `tier`.
    fn remove_waiting(&self, tier: usize) {
        self.waiting.fetch_sub(1, Relaxed);
        if let Some(n) = self.waiting_by_tier.get(tier) {
            n.fetch_sub(1, Relaxed);
        }
    }
}

/// What every handle shares.
#[derive(Debug)]
struct Shared {
    config: SchedulerConfig,
    waiting_limits: WaitingLimits,
    context_length: usize,
    next_seq: AtomicU64,
}

/// Handle to the scheduler; cheap to clone. The scheduler thread ends once every handle is
/// dropped and its work is done.
#[derive(Debug, Clone)]
pub struct Scheduler {
    submissions: std_mpsc::Sender<Sequence>,
    stats: Arc<SchedulerStats>,
    shared: Arc<Shared>,
}

impl Scheduler {
    /// Starts the scheduler thread, which owns `model` from now on.
    pub fn start(model: Box<dyn LanguageModel>, decode: Arc<dyn Decode>, config: SchedulerConfig) -> Self {
        let config = config.normalised();
        let stats = Arc::new(SchedulerStats::new(config.tiers.len(), config.kv_budget_tokens));
        let shared = Arc::new(Shared {
            waiting_limits: WaitingLimits::new(&config.tiers, config.max_waiting),
            context_length: config
                .context_length
                .map_or(model.context_length(), |c| c.min(model.context_length())),
            config,
            next_seq: AtomicU64::new(1),
        });
        let (submissions, received) = std_mpsc::channel();
        let actor = step::Actor::new(model, decode, shared.config.clone(), stats.clone());
        thread::Builder::new()
            .name("generate".into())
            .spawn(move || actor.run(received))
            .expect("spawning the scheduler thread; the server cannot generate without it");
        Self {
            submissions,
            stats,
            shared,
        }
    }

    /// The tiers, highest priority first.
    pub fn tiers(&self) -> &[TierConfig] {
        &self.shared.config.tiers
    }

    /// The context length served (prompt plus completion).
    pub fn context_length(&self) -> usize {
        self.shared.context_length
    }

    /// Index of the tier named by the `x-modelfleet-tier` header; the last tier without one.
    pub fn tier_index(&self, name: Option<&str>) -> Result<usize, InferError> {
        tier_index(self.tiers(), name)
    }

    /// The scheduler's counters.
    pub fn stats(&self) -> Arc<SchedulerStats> {
        self.stats.clone()
    }

    /// Queues a request and returns its event stream, or refuses it at once: `Invalid` for an
    /// unknown tier, an empty prompt or `max_tokens` 0; `TooLarge` when prompt plus
    /// `max_tokens` exceed the context length or the whole KV budget; `Overloaded` (with
    /// `Retry-After`) when the waiting queue or the tier's share of it is full. Dropping the
    /// receiver cancels the request within one step.
    pub fn submit(&self, request: GenerationRequest) -> Result<mpsc::Receiver<Event>, InferError> {
        let shared = &self.shared;
        let Some(tier) = shared.config.tiers.get(request.tier) else {
            let message = format!("tier index {} out of range", request.tier);
            return Err(InferError::invalid(headers::TIER, message));
        };
        check_lengths(
            request.prompt.len(),
            request.params.max_tokens,
            shared.context_length,
            shared.config.kv_budget_tokens,
        )?;
        self.reserve_waiting(request.tier, &tier.name)?;
        // Sized for every event the request can get (max_tokens tokens and one end), so a
        // slow client never makes the scheduler wait or drop a token.
        let (events, received) = mpsc::channel(request.params.max_tokens.saturating_add(2));
        let seq: SeqId = shared.next_seq.fetch_add(1, Relaxed);
        let sequence = Sequence::new(seq, request, tier.timeout, events, Instant::now());
        let tier_index = sequence.tier;
        if self.submissions.send(sequence).is_err() {
            self.stats.remove_waiting(tier_index);
            return Err(InferError::Unavailable {
                message: "the generation scheduler stopped".into(),
                retry_after: Duration::from_secs(1),
            });
        }
        Ok(received)
    }

    /// Counts the request as waiting if the queue and the tier's share have room. Lock-free:
    /// the total, then the tier, each a compare-and-swap; the total is given back when the
    /// tier refuses.
    fn reserve_waiting(&self, tier: usize, tier_name: &str) -> Result<(), InferError> {
        let limits = &self.shared.waiting_limits;
        let stats = &self.stats;
        let refused = |refusal: queue::Refusal| InferError::Overloaded {
            message: refusal.message(tier_name),
            retry_after: stats.retry_after(),
        };
        // The closure's last call decides: `refusal` is set exactly when the update failed.
        let mut refusal = None;
        let _ = stats.waiting.fetch_update(Relaxed, Relaxed, |total| {
            refusal = limits.refuse_total(total);
            refusal.is_none().then_some(total + 1)
        });
        if let Some(refusal) = refusal {
            return Err(refused(refusal));
        }
        let _ = stats.waiting_by_tier[tier].fetch_update(Relaxed, Relaxed, |in_tier| {
            refusal = limits.refuse_in_tier(tier, in_tier);
            refusal.is_none().then_some(in_tier + 1)
        });
        if let Some(refusal) = refusal {
            stats.waiting.fetch_sub(1, Relaxed);
            return Err(refused(refusal));
        }
        Ok(())
    }
}

/// Index of the tier `name` (the `x-modelfleet-tier` header) among `tiers`, highest first; the
/// last tier without a name; 400 naming the header and the known tiers for an unknown one.
pub fn tier_index(tiers: &[TierConfig], name: Option<&str>) -> Result<usize, InferError> {
    match name {
        None => Ok(tiers.len().saturating_sub(1)),
        Some(name) => tiers.iter().position(|t| t.name == name).ok_or_else(|| {
            let known: Vec<_> = tiers.iter().map(|t| t.name.as_str()).collect();
            InferError::invalid(
                headers::TIER,
                format!("unknown tier `{name}`; this server has: {}", known.join(", ")),
            )
        }),
    }
}

/// Refuses a request that can never run: an empty prompt, no tokens to generate, or more
/// tokens than the context length or the whole KV budget.
fn check_lengths(
    prompt: usize,
    max_tokens: usize,
    context_length: usize,
    kv_budget: usize,
) -> Result<(), InferError> {
    if prompt == 0 {
        return Err(InferError::invalid("messages", "the prompt is empty"));
    }
    if max_tokens == 0 {
        return Err(InferError::invalid("max_tokens", "max_tokens must be at least 1"));
    }
    // 400, as OpenAI answers a request over the context length (413 is for bodies over a byte
    // limit, checked before tokenising).
    for (limit, what) in [
        (context_length, "the context length"),
        (kv_budget, "the server's KV budget"),
    ] {
        if prompt >= limit {
            return Err(InferError::invalid(
                "messages",
                format!(
                    "the prompt has {prompt} tokens; {what} is {limit} tokens, which leaves no room \
                     for a completion"
                ),
            ));
        }
        let total = prompt.saturating_add(max_tokens);
        if total > limit {
            return Err(InferError::invalid(
                "max_tokens",
                format!(
                    "the prompt has {prompt} tokens and max_tokens is {max_tokens}: {total} tokens, \
                     over {what} of {limit}; max_tokens may be at most {}",
                    limit - prompt
                ),
            ));
        }
    }
    Ok(())
}
