//! Reading a llama-family GGUF into the form the forward pass runs on: hyperparameters from the
//! metadata, and the weights of every block (see `linear` for how matrices are rearranged).

use std::{
    io::{Read, Seek, SeekFrom},
    sync::Arc,
};

use candle_core::{
    Device, Tensor,
    quantized::{GgmlDType, QTensor, ggml_file::qtensor_from_ggml, gguf_file::Content},
};

use super::{
    WeightFormat,
    linear::{InputPrecision, Linear, MatmulKind, Projection, RawMatrix},
};
use crate::generate::GenerateError;

/// Model shape and numerics, from the `llama.*` metadata.
#[derive(Debug, Clone)]
pub(super) struct Hyper {
    pub architecture: String,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub hidden: usize,
    pub context_length: usize,
    pub rms_eps: f32,
    pub rope_base: f64,
}

impl Hyper {
    pub fn from_gguf(content: &Content) -> Result<Self, GenerateError> {
        let get = |key: &str| content.metadata.get(key);
        let architecture = get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_default();
        // Other architectures share tensor names but differ in numerics (biases, norms, rope
        // layout); running them as llama would produce plausible-looking garbage.
        if architecture != "llama" {
            return Err(GenerateError::Files(format!(
                "general.architecture is {architecture:?}; only \"llama\" GGUFs are supported"
            )));
        }
        let number = |key: &str| -> Result<usize, GenerateError> {
            let value = get(&format!("llama.{key}"))
                .ok_or_else(|| GenerateError::Files(format!("the GGUF has no llama.{key}")))?;
            value
                .to_u32()
                .map(|v| v as usize)
                .or_else(|_| value.to_u64().map(|v| v as usize))
                .map_err(|e| GenerateError::Files(format!("llama.{key}: {e}")))
        };
        let float = |key: &str, default: f64| -> Result<f64, GenerateError> {
            match get(&format!("llama.{key}")) {
                None => Ok(default),
                Some(v) => v
                    .to_f32()
                    .map(f64::from)
                    .map_err(|e| GenerateError::Files(format!("llama.{key}: {e}"))),
            }
        };
        if number("expert_count").unwrap_or(0) > 1 {
            return Err(GenerateError::Files(
                "mixture-of-experts GGUFs are not supported".into(),
            ));
        }
        if let Some(scaling) = get("llama.rope.scaling.type").and_then(|v| v.to_string().ok())
            && scaling != "none"
        {
            return Err(GenerateError::Files(format!(
                "rope scaling {scaling:?} is not supported"
            )));
        }
        // Llama 3.1's frequency factors: without them long positions rotate wrongly.
        if content.tensor_infos.contains_key("rope_freqs.weight") {
            return Err(GenerateError::Files(
                "rope frequency factors (rope_freqs.weight) are not supported".into(),
            ));
        }
        let hidden = number("embedding_length")?;
        let heads = number("attention.head_count")?;
        let kv_heads = number("attention.head_count_kv").unwrap_or(heads);
        let head_dim = number("attention.key_length").unwrap_or(hidden / heads.max(1));
        let hyper = Self {
            architecture,
            layers: number("block_count")?,
            heads,
            kv_heads,
            head_dim,
            hidden,
            context_length: number("context_length")?,
            rms_eps: float("attention.layer_norm_rms_epsilon", 1e-5)? as f32,
            rope_base: float("rope.freq_base", 10_000.0)?,
        };
        hyper.check(number("rope.dimension_count").unwrap_or(head_dim))?;
        Ok(hyper)
    }

    fn check(&self, rope_dim: usize) -> Result<(), GenerateError> {
        let Self {
            heads,
            kv_heads,
            head_dim,
            ..
        } = *self;
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || heads * head_dim != self.hidden {
            return Err(GenerateError::Files(format!(
                "unsupported attention shape: {heads} heads, {kv_heads} KV heads, head dim {head_dim}, \
                 embedding {}",
                self.hidden
            )));
        }
        if rope_dim != head_dim || !head_dim.is_multiple_of(2) {
            return Err(GenerateError::Files(format!(
                "rotary embedding over {rope_dim} of {head_dim} dimensions is not supported"
            )));
        }
        Ok(())
    }
}

/// One transformer block.
#[derive(Debug)]
pub(super) struct Layer {
    pub attn_norm: Tensor,
    /// Outputs Q, K, V.
    pub qkv: Projection,
    pub attn_output: Linear,
    pub ffn_norm: Tensor,
    /// Outputs gate, up.
    pub gate_up: Projection,
    pub down: Linear,
}

/// All weights, on the model's device.
#[derive(Debug)]
pub(super) struct Weights {
    /// Token embeddings, kept quantised (rows are dequantised per lookup).
    pub embedding: Arc<QTensor>,
    pub layers: Vec<Layer>,
    pub output_norm: Tensor,
    /// `output.weight`, or the embedding matrix for tied-embedding models.
    pub output: Linear,
}

/// Reads tensors of one GGUF onto a device.
pub(super) struct Loader<'a, R> {
    content: &'a Content,
    reader: &'a mut R,
    device: &'a Device,
    format: WeightFormat,
}

impl<'a, R: Read + Seek> Loader<'a, R> {
    pub fn new(content: &'a Content, reader: &'a mut R, device: &'a Device, format: WeightFormat) -> Self {
        Self {
            content,
            reader,
            device,
            format,
        }
    }

    fn kind(&self, precision: InputPrecision) -> MatmulKind {
        MatmulKind {
            format: self.format,
            precision,
        }
    }

    pub fn weights(&mut self, hyper: &Hyper) -> Result<Weights, GenerateError> {
        let embedding = self.matrix("token_embd.weight", None, hyper.hidden)?;
        let vocab = embedding.rows;
        let output = match self.content.tensor_infos.contains_key("output.weight") {
            true => self.matrix("output.weight", Some(vocab), hyper.hidden)?,
            false => embedding.clone(),
        };
        let embedding = Arc::new(embedding.into_lookup(self.device)?);
        let output = output.into_linear(self.device, Some(&embedding), self.kind(InputPrecision::Tiled))?;
        let layers = (0..hyper.layers)
            .map(|index| self.layer(index, hyper))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Weights {
            embedding,
            layers,
            output_norm: self.vector("output_norm.weight")?,
            output,
        })
    }

    fn layer(&mut self, index: usize, hyper: &Hyper) -> Result<Layer, GenerateError> {
        let name = |part: &str| format!("blk.{index}.{part}.weight");
        let (hidden, q_rows) = (hyper.hidden, hyper.heads * hyper.head_dim);
        let kv_rows = hyper.kv_heads * hyper.head_dim;
        let q = self.matrix(&name("attn_q"), Some(q_rows), hidden)?;
        let k = self.matrix(&name("attn_k"), Some(kv_rows), hidden)?;
        let v = self.matrix(&name("attn_v"), Some(kv_rows), hidden)?;
        let gate = self.matrix(&name("ffn_gate"), None, hidden)?;
        let up = self.matrix(&name("ffn_up"), Some(gate.rows), hidden)?;
        let down = self.matrix(&name("ffn_down"), Some(hidden), gate.rows)?;
        let q = q.deinterleave_heads(hyper.head_dim);
        let k = k.deinterleave_heads(hyper.head_dim);
        let (fine, tiled) = (self.kind(InputPrecision::Fine), self.kind(InputPrecision::Tiled));
        Ok(Layer {
            attn_norm: self.vector(&name("attn_norm"))?,
            qkv: Projection::new(vec![q, k, v], self.device, fine)?,
            attn_output: self
                .matrix(&name("attn_output"), Some(hidden), q_rows)?
                .into_linear(self.device, None, tiled)?,
            ffn_norm: self.vector(&name("ffn_norm"))?,
            gate_up: Projection::new(vec![gate, up], self.device, tiled)?,
            down: down.into_linear(self.device, None, tiled)?,
        })
    }

    fn bytes(&mut self, name: &str) -> Result<(GgmlDType, Vec<usize>, Vec<u8>), GenerateError> {
        let info = self
            .content
            .tensor_infos
            .get(name)
            .ok_or_else(|| GenerateError::Files(format!("the GGUF has no tensor {name}")))?;
        let dims = info.shape.dims().to_vec();
        let elements: usize = dims.iter().product();
        let size = elements / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        let mut bytes = vec![0u8; size];
        let read = self
            .reader
            .seek(SeekFrom::Start(self.content.tensor_data_offset + info.offset))
            .and_then(|_| self.reader.read_exact(&mut bytes));
        read.map_err(|e| GenerateError::Files(format!("reading tensor {name}: {e}")))?;
        Ok((info.ggml_dtype, dims, bytes))
    }

    /// A matrix of `cols` inputs and `rows` outputs (any number when `None`).
    fn matrix(&mut self, name: &str, rows: Option<usize>, cols: usize) -> Result<RawMatrix, GenerateError> {
        let (dtype, dims, bytes) = self.bytes(name)?;
        match dims[..] {
            [r, c] if c == cols && rows.is_none_or(|rows| rows == r) => Ok(RawMatrix {
                dtype,
                rows: r,
                cols,
                bytes,
            }),
            _ => Err(GenerateError::Files(format!(
                "tensor {name} has shape {dims:?}; expected [{}, {cols}]",
                rows.map_or("_".to_owned(), |r| r.to_string())
            ))),
        }
    }

    /// A norm weight, as f32 on the device.
    fn vector(&mut self, name: &str) -> Result<Tensor, GenerateError> {
        let (dtype, dims, bytes) = self.bytes(name)?;
        Ok(qtensor_from_ggml(dtype, &bytes, dims, &Device::Cpu)?.dequantize(self.device)?)
    }
}
