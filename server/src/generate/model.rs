//! A llama-family GGUF model (`general.architecture = llama`: SmolLM2, TinyLlama, Llama 2 and
//! 3.0, Mistral 7B; no rope scaling, no mixture of experts) whose forward pass runs a ragged
//! batch: every feed's tokens are stacked into one activation matrix, so each linear layer (the
//! quantised matmuls, where the time goes) runs once for the whole batch, while attention runs
//! per sequence over that sequence's own KV cache.
//!
//! Written against candle's primitives rather than `candle_transformers`' quantized llama,
//! which keeps a single KV cache for one sequence and rotates every row of a batch at the same
//! position.

mod attention;
mod linear;
mod weights;

use std::{collections::HashMap, path::Path};

use candle_core::{Device, Tensor};

pub use attention::KV_CHUNK_TOKENS;
use attention::{Heads, Rope, SeqCache};
use weights::{Hyper, Layer, Loader, Weights};

use super::{Feed, GenerateError, LanguageModel, SeqId, tokenizer::GgufTokenizer};

/// What a loaded model is, for logs, metrics and capacity planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    /// `general.architecture` (`llama`).
    pub architecture: String,
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (fewer than `heads` with grouped-query attention).
    pub kv_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
    /// Longest sequence the model takes (`llama.context_length`).
    pub context_length: usize,
    /// Vocabulary size (length of a logits vector).
    pub vocab: usize,
    /// Size of the GGUF file.
    pub file_size_bytes: u64,
}

/// How a model holds its weight matrices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// Quantised, in the layout the device's kernels run fastest (see `linear`): what serving
    /// uses.
    #[default]
    Quantized,
    /// Dequantised to f32: exact arithmetic on the stored values, independent of batch shape,
    /// at six to eight times the memory of 4-bit weights and with far slower matmuls. A reference for
    /// tests and for measuring what quantised kernels cost in accuracy.
    F32,
}

/// A llama-family model from a GGUF file, with one KV cache per sequence.
#[derive(Debug)]
pub struct GgufLlama {
    hyper: Hyper,
    heads: Heads,
    weights: Weights,
    rope: Rope,
    caches: HashMap<SeqId, SeqCache>,
    vocab: usize,
    file_size_bytes: u64,
    device: Device,
}

/// The rows of one forward pass: every feed's tokens one after another.
struct Batch {
    tokens: Vec<u32>,
    positions: Vec<u32>,
    /// Per feed: its first row and number of rows.
    spans: Vec<(usize, usize)>,
}

impl GgufLlama {
    /// Reads a GGUF file once and builds the model on `device` and the tokenizer from its
    /// metadata.
    pub fn load(path: &Path, device: &Device) -> Result<(Self, GgufTokenizer), GenerateError> {
        Self::load_with(path, device, WeightFormat::Quantized)
    }

    /// [`Self::load`] with the weights held as `format`.
    pub fn load_with(
        path: &Path,
        device: &Device,
        format: WeightFormat,
    ) -> Result<(Self, GgufTokenizer), GenerateError> {
        let file_error = |e: std::io::Error| GenerateError::Files(format!("{}: {e}", path.display()));
        let file = std::fs::File::open(path).map_err(file_error)?;
        let file_size_bytes = file.metadata().map_err(file_error)?.len();
        let mut reader = std::io::BufReader::new(file);
        let content = candle_core::quantized::gguf_file::Content::read(&mut reader)
            .map_err(|e| GenerateError::Files(format!("{} is not a readable GGUF: {e}", path.display())))?;
        let tokenizer = GgufTokenizer::from_gguf(&content)?;
        let hyper = Hyper::from_gguf(&content)?;
        let weights = Loader::new(&content, &mut reader, device, format).weights(&hyper)?;
        let (vocab, hidden) = weights.embedding.shape().dims2()?;
        if hidden != hyper.hidden || vocab != tokenizer.vocab_size() {
            return Err(GenerateError::Files(format!(
                "token_embd.weight is {vocab}x{hidden}; expected {}x{}",
                tokenizer.vocab_size(),
                hyper.hidden
            )));
        }
        let heads = Heads {
            heads: hyper.heads,
            kv_heads: hyper.kv_heads,
            head_dim: hyper.head_dim,
            context_length: hyper.context_length,
        };
        let rope = Rope::new(&heads, hyper.rope_base, device)?;
        let model = Self {
            hyper,
            heads,
            weights,
            rope,
            caches: HashMap::new(),
            vocab,
            file_size_bytes,
            device: device.clone(),
        };
        Ok((model, tokenizer))
    }

    /// What the model is.
    pub fn info(&self) -> ModelInfo {
        ModelInfo {
            architecture: self.hyper.architecture.clone(),
            layers: self.hyper.layers,
            heads: self.hyper.heads,
            kv_heads: self.hyper.kv_heads,
            head_dim: self.hyper.head_dim,
            context_length: self.hyper.context_length,
            vocab: self.vocab,
            file_size_bytes: self.file_size_bytes,
        }
    }

    /// Bytes of KV cache one cached token takes (keys and values, every layer, f32), for the
    /// scheduler's KV budget. Caches grow in chunks of [`KV_CHUNK_TOKENS`] slots, so a sequence
    /// may hold up to that many slots more than its length.
    pub fn kv_bytes_per_token(&self) -> usize {
        2 * self.hyper.layers * self.hyper.kv_heads * self.hyper.head_dim * std::mem::size_of::<f32>()
    }

    /// Checks every feed before anything changes, so a rejected pass leaves all caches as they
    /// were, and lays the feeds out as rows.
    fn batch(&self, feeds: &[Feed<'_>]) -> Result<Batch, GenerateError> {
        let invalid = |message: String| GenerateError::Model(candle_core::Error::Msg(message));
        let rows = feeds.iter().map(|f| f.tokens.len()).sum();
        let mut batch = Batch {
            tokens: Vec::with_capacity(rows),
            positions: Vec::with_capacity(rows),
            spans: Vec::with_capacity(feeds.len()),
        };
        for (index, feed) in feeds.iter().enumerate() {
            if feed.tokens.is_empty() {
                return Err(invalid(format!(
                    "the feed of sequence {} has no tokens",
                    feed.seq
                )));
            }
            if feeds[..index].iter().any(|earlier| earlier.seq == feed.seq) {
                return Err(invalid(format!("sequence {} is fed twice in one pass", feed.seq)));
            }
            if let Some(&token) = feed.tokens.iter().find(|&&t| t as usize >= self.vocab) {
                return Err(invalid(format!(
                    "token {token} is outside the vocabulary of {}",
                    self.vocab
                )));
            }
            let cached = self.cached_tokens(feed.seq);
            let total = cached + feed.tokens.len();
            if total > self.hyper.context_length {
                return Err(GenerateError::ContextFull {
                    seq: feed.seq,
                    tokens: total,
                    limit: self.hyper.context_length,
                });
            }
            batch.spans.push((batch.tokens.len(), feed.tokens.len()));
            batch.tokens.extend_from_slice(feed.tokens);
            batch.positions.extend((cached..total).map(|p| p as u32));
        }
        Ok(batch)
    }

    /// The forward pass proper, over caches already reserved for the new tokens.
    fn run(&self, feeds: &[Feed<'_>], batch: &Batch) -> candle_core::Result<Vec<Vec<f32>>> {
        let caches = feeds
            .iter()
            .map(|f| self.caches.get(&f.seq))
            .collect::<Option<Vec<&SeqCache>>>()
            .ok_or_else(|| candle_core::Error::Msg("a fed sequence has no reserved cache".into()))?;
        let positions = Tensor::new(batch.positions.as_slice(), &self.device)?;
        let angles = self.rope.at(&positions)?;
        // One mask per sequence, shared by all layers.
        let masks = caches
            .iter()
            .zip(&batch.spans)
            .map(|(cache, &(_, tokens))| {
                attention::causal_mask(tokens, cache.len(), &self.heads, &self.device)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let ids = Tensor::new(batch.tokens.as_slice(), &self.device)?;
        let mut x = self.weights.embedding.embedding(&ids)?;
        for (index, layer) in self.weights.layers.iter().enumerate() {
            let step = LayerStep {
                index,
                caches: &caches,
                masks: &masks,
                angles: &angles,
                batch,
            };
            x = self.layer(layer, &step, &x)?;
        }
        // Only each feed's last row becomes logits: the output projection is the largest matmul
        // (vocabulary x hidden), and a prefill chunk's other rows would be thrown away.
        let last_rows: Vec<u32> = batch
            .spans
            .iter()
            .map(|&(start, len)| (start + len - 1) as u32)
            .collect();
        let last = x.index_select(&Tensor::new(last_rows.as_slice(), &self.device)?, 0)?;
        let last = candle_nn::ops::rms_norm(&last, &self.weights.output_norm, self.hyper.rms_eps)?;
        self.weights.output.forward(&last)?.to_vec2::<f32>()
    }

    /// One transformer block over all rows; attention per sequence.
    fn layer(&self, layer: &Layer, step: &LayerStep<'_>, x: &Tensor) -> candle_core::Result<Tensor> {
        let Heads {
            heads,
            kv_heads,
            head_dim,
            ..
        } = self.heads;
        let rows = x.dim(0)?;
        let h = candle_nn::ops::rms_norm(x, &layer.attn_norm, self.hyper.rms_eps)?;
        let [q, k, v] = <[Tensor; 3]>::try_from(layer.qkv.forward(&h)?)
            .map_err(|_| candle_core::Error::Msg("the QKV projection gave other than three parts".into()))?;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let q = attention::rotate(&q.reshape((rows, heads, head_dim))?, step.angles)?.affine(scale, 0.0)?;
        let k = attention::rotate(&k.reshape((rows, kv_heads, head_dim))?, step.angles)?;
        let v = v.reshape((rows, kv_heads, head_dim))?;
        let mut outputs = Vec::with_capacity(step.caches.len());
        for ((&(start, tokens), cache), mask) in step.batch.spans.iter().zip(step.caches).zip(step.masks) {
            // [tokens, kv_heads, head_dim] -> [kv_heads, tokens, head_dim], the cache layout.
            let new_k = k.narrow(0, start, tokens)?.transpose(0, 1)?.contiguous()?;
            let new_v = v.narrow(0, start, tokens)?.transpose(0, 1)?.contiguous()?;
            let (all_k, all_v) = cache.append(step.index, &new_k, &new_v)?;
            let q = q.narrow(0, start, tokens)?;
            outputs.push(attention::attend(&q, &all_k, &all_v, mask.as_ref(), &self.heads)?);
        }
        let attended = match outputs.len() {
            1 => outputs.swap_remove(0),
            _ => Tensor::cat(&outputs, 0)?,
        };
        let x = (x + layer.attn_output.forward(&attended)?)?;
        let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, self.hyper.rms_eps)?;
        let [gate, up] = <[Tensor; 2]>::try_from(layer.gate_up.forward(&h)?).map_err(|_| {
            candle_core::Error::Msg("the gate/up projection gave other than two parts".into())
        })?;
        let mlp = layer.down.forward(&(candle_nn::ops::silu(&gate)? * up)?)?;
        x + mlp
    }
}

/// What every layer of one forward pass shares.
struct LayerStep<'a> {
    index: usize,
    caches: &'a [&'a SeqCache],
    masks: &'a [Option<Tensor>],
    angles: &'a (Tensor, Tensor),
    batch: &'a Batch,
}

impl LanguageModel for GgufLlama {
    fn vocab_size(&self) -> usize {
        self.vocab
    }

    fn context_length(&self) -> usize {
        self.hyper.context_length
    }

    fn forward(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<Vec<f32>>, GenerateError> {
        if feeds.is_empty() {
            return Ok(Vec::new());
        }
        let batch = self.batch(feeds)?;
        let fresh: Vec<SeqId> = feeds
            .iter()
            .map(|f| f.seq)
            .filter(|s| !self.caches.contains_key(s))
            .collect();
        let reserved = feeds.iter().try_for_each(|feed| {
            let cache = self.caches.entry(feed.seq).or_default();
            cache.reserve(feed.tokens.len(), self.hyper.layers, &self.heads, &self.device)
        });
        let result = reserved.and_then(|()| self.run(feeds, &batch));
        match result {
            Ok(logits) => {
                for feed in feeds {
                    if let Some(cache) = self.caches.get_mut(&feed.seq) {
                        cache.commit(feed.tokens.len());
                    }
                }
                Ok(logits)
            }
            Err(e) => {
                // Sequences this pass created hold nothing yet; do not keep their buffers.
                for seq in fresh {
                    self.caches.remove(&seq);
                }
                Err(e.into())
            }
        }
    }

    fn release(&mut self, seq: SeqId) {
        self.caches.remove(&seq);
    }

    fn cached_tokens(&self, seq: SeqId) -> usize {
        self.caches.get(&seq).map_or(0, SeqCache::len)
    }
}
