//! Per-sequence attention: each sequence's KV cache, the rotary embedding at each token's own
//! position, and causal attention of a sequence's new tokens over its cached and new keys.

use candle_core::{DType, Device, Result, Tensor};

/// KV caches grow by this many token slots at a time: a decode step then writes into space
/// already there instead of concatenating (a copy of the whole cache) on every token, and a
/// sequence holds at most this many slots beyond its length.
pub const KV_CHUNK_TOKENS: usize = 256;

/// Attention geometry shared by the caches and the attention itself.
#[derive(Debug, Clone, Copy)]
pub(super) struct Heads {
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub context_length: usize,
}

impl Heads {
    /// Query heads per KV head (grouped-query attention).
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

/// One sequence's keys and values in every layer, `[kv_heads, capacity, head_dim]` each, of
/// which the first `len` token slots hold data.
#[derive(Debug, Default)]
pub(super) struct SeqCache {
    len: usize,
    capacity: usize,
    layers: Vec<(Tensor, Tensor)>,
}

impl SeqCache {
    /// Tokens cached.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Makes room for `tokens` more in every layer, growing by whole chunks (never past the
    /// context length).
    pub fn reserve(&mut self, tokens: usize, layers: usize, heads: &Heads, device: &Device) -> Result<()> {
        let needed = self.len + tokens;
        if needed <= self.capacity {
            return Ok(());
        }
        let capacity = needed
            .next_multiple_of(KV_CHUNK_TOKENS)
            .min(heads.context_length)
            .max(needed);
        let shape = (heads.kv_heads, capacity, heads.head_dim);
        let grow = |old: Option<&Tensor>| -> Result<Tensor> {
            let new = Tensor::zeros(shape, DType::F32, device)?;
            if let Some(old) = old {
                // The whole old buffer (contiguous) lands at the start of the new one's slots.
                new.slice_set(old, 1, 0)?;
            }
            Ok(new)
        };
        self.layers = (0..layers)
            .map(|layer| {
                let old = self.layers.get(layer);
                Ok((grow(old.map(|(k, _)| k))?, grow(old.map(|(_, v)| v))?))
            })
            .collect::<Result<_>>()?;
        self.capacity = capacity;
        Ok(())
    }

    /// Writes a layer's new keys and values (`[kv_heads, tokens, head_dim]`, contiguous) after
    /// the cached ones and returns views of all of them, `[kv_heads, len + tokens, head_dim]`.
    /// The length itself moves only on [`Self::commit`], so a forward pass that fails half-way
    /// leaves the sequence as it was (its partial writes lie beyond `len`).
    pub fn append(&self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let (k_cache, v_cache) = &self.layers[layer];
        k_cache.slice_set(k, 1, self.len)?;
        v_cache.slice_set(v, 1, self.len)?;
        let total = self.len + k.dim(1)?;
        Ok((k_cache.narrow(1, 0, total)?, v_cache.narrow(1, 0, total)?))
    }

    /// Counts `tokens` appended in every layer as cached.
    pub fn commit(&mut self, tokens: usize) {
        self.len += tokens;
    }
}

/// Rotary-embedding angles for every position up to the context length.
#[derive(Debug)]
pub(super) struct Rope {
    cos: Tensor,
    sin: Tensor,
}

impl Rope {
    pub fn new(heads: &Heads, base: f64, device: &Device) -> Result<Self> {
        let half = heads.head_dim / 2;
        let inverse_freq: Vec<f64> = (0..half)
            .map(|i| base.powf(-((2 * i) as f64) / heads.head_dim as f64))
            .collect();
        let angles: Vec<f32> = (0..heads.context_length)
            .flat_map(|pos| inverse_freq.iter().map(move |f| (pos as f64 * f) as f32))
            .collect();
        let angles = Tensor::from_vec(angles, (heads.context_length, half), device)?;
        Ok(Self {
            cos: angles.cos()?,
            sin: angles.sin()?,
        })
    }

    /// `(cos, sin)` rows at `positions` (`[tokens]`, u32), for [`rotate`].
    pub fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok((
            self.cos.index_select(positions, 0)?,
            self.sin.index_select(positions, 0)?,
        ))
    }
}

/// Applies the rotary embedding to `x` (`[tokens, heads, head_dim]`, halves layout, see
/// `weights::RawMatrix::deinterleave_heads`), each token at its own angle row.
pub(super) fn rotate(x: &Tensor, angles: &(Tensor, Tensor)) -> Result<Tensor> {
    let x = x.unsqueeze(0)?.contiguous()?;
    candle_nn::rotary_emb::rope_thd(&x, &angles.0, &angles.1)?.squeeze(0)
}

/// The additive causal mask of `tokens` new queries after `cached` tokens, for the grouped
/// query layout of [`attend`]: `[group * tokens, cached + tokens]`, 0 where a query may look and
/// -inf at keys after it. `None` for one token, which may look at everything.
pub(super) fn causal_mask(
    tokens: usize,
    cached: usize,
    heads: &Heads,
    device: &Device,
) -> Result<Option<Tensor>> {
    if tokens == 1 {
        return Ok(None);
    }
    let keys = cached + tokens;
    let row = |i: usize| (0..keys).map(move |j| if j <= cached + i { 0.0 } else { f32::NEG_INFINITY });
    let rows: Vec<f32> = (0..heads.group())
        .flat_map(|_| (0..tokens).flat_map(row))
        .collect();
    Tensor::from_vec(rows, (heads.group() * tokens, keys), device).map(Some)
}

/// Attention of one sequence's new queries `q` (`[tokens, heads, head_dim]`, rotated and scaled)
/// over its keys and values (`[kv_heads, keys, head_dim]`), returning `[tokens, heads *
/// head_dim]`. The query heads that share a KV head are stacked as rows of one matrix, so
/// grouped-query attention needs no copies of K and V.
pub(super) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    heads: &Heads,
) -> Result<Tensor> {
    let tokens = q.dim(0)?;
    let grouped =
        q.transpose(0, 1)?
            .contiguous()?
            .reshape((heads.kv_heads, heads.group() * tokens, heads.head_dim))?;
    let scores = grouped.matmul(&k.t()?)?;
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    let weights = candle_nn::ops::softmax_last_dim(&scores)?;
    weights
        .matmul(v)?
        .reshape((heads.heads, tokens, heads.head_dim))?
        .transpose(0, 1)?
        .reshape((tokens, heads.heads * heads.head_dim))
}
