//! Text generation: a llama-family GGUF model whose forward pass runs a ragged batch of
//! sequences, each with its own KV cache (`model`), the tokenizer and chat template read from
//! the GGUF (`tokenizer`), sampling (`sampling`), incremental detokenisation and stop strings
//! (`stop`), and the continuous-batching scheduler actor (`scheduler`) that owns the model on
//! its own OS thread. `service` is what the HTTP API (`api::generation`) calls; `start` brings
//! a generation server up.
//!
//! The boundary between the scheduler and a model is [`LanguageModel`]: the scheduler decides
//! which sequences advance by how many tokens each step; the model only computes.

pub mod model;
pub mod sampling;
pub mod scheduler;
pub mod service;
pub mod start;
pub mod stop;
pub mod tokenizer;

/// A sequence's id: the scheduler makes them, the model keys its KV caches by them.
pub type SeqId = u64;

/// One sequence's part of a forward pass: its next tokens at its current position (a prefill
/// chunk of the prompt, or the one token sampled last).
#[derive(Debug, Clone, Copy)]
pub struct Feed<'a> {
    /// The sequence.
    pub seq: SeqId,
    /// Tokens to append to its KV cache, at least one.
    pub tokens: &'a [u32],
}

/// Errors of loading or running a generation model.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    /// The model file is missing, unreadable or not a llama-family GGUF.
    #[error("model file: {0}")]
    Files(String),
    /// The tokenizer or chat template in the GGUF cannot be built or applied.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A forward pass failed.
    #[error("model: {0}")]
    Model(#[from] candle_core::Error),
    /// A feed would take a sequence past the model's context length.
    #[error("sequence {seq} would hold {tokens} tokens; the context length is {limit}")]
    ContextFull { seq: SeqId, tokens: usize, limit: usize },
}

/// A model that extends sequences. Runs on the scheduler's thread only, never on the async
/// runtime.
pub trait LanguageModel: Send {
    /// Size of the vocabulary (length of each logits vector).
    fn vocab_size(&self) -> usize;
    /// Longest sequence (prompt plus generated tokens) the model can hold.
    fn context_length(&self) -> usize;
    /// One forward pass over `feeds` (each sequence at most once; a sequence not seen before
    /// starts empty): appends each feed's tokens to its sequence's KV cache and returns, per feed
    /// in order, the logits after its last token.
    fn forward(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<Vec<f32>>, GenerateError>;
    /// Frees a sequence's KV cache at once (finished, cancelled or preempted). Unknown ids are
    /// ignored.
    fn release(&mut self, seq: SeqId);
    /// Tokens in the KV cache of `seq` (0 when unknown).
    fn cached_tokens(&self, seq: SeqId) -> usize;
}

/// Token ids to text: the tokenizer, or a fake in tests. The scheduler decodes each sequence's
/// generated ids with it to stream text and check stop strings.
pub trait Decode: Send + Sync {
    /// The text of `ids`, special tokens left out.
    fn decode(&self, ids: &[u32]) -> String;
}
