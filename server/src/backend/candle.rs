//! BERT-family sentence embeddings with candle: mean pooling over the attention mask, then L2
//! normalisation (what sentence-transformers does for all-MiniLM-L6-v2 and its relatives).

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};

use super::{Backend, BackendError, BackendInfo, ModelFiles};
use crate::config::DeviceKind;

/// A BERT encoder loaded from safetensors.
pub struct CandleBackend {
    model: BertModel,
    device: Device,
    info: BackendInfo,
}

impl std::fmt::Debug for CandleBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleBackend").field("info", &self.info).finish()
    }
}

impl CandleBackend {
    /// Loads the weights onto `device`.
    pub fn load(files: &ModelFiles, device: DeviceKind) -> Result<Self, BackendError> {
        let device = match device {
            DeviceKind::Cpu => Device::Cpu,
            DeviceKind::Cuda => Device::new_cuda(0).map_err(|e| {
                BackendError::Unsupported(format!(
                    "--device=cuda: {e} (build with `--features cuda` on a machine with the CUDA toolkit)"
                ))
            })?,
        };
        let text = std::fs::read_to_string(&files.config)
            .map_err(|e| BackendError::Files(format!("{}: {e}", files.config.display())))?;
        let config: Config = serde_json::from_str(&text)
            .map_err(|e| BackendError::Files(format!("{}: {e}", files.config.display())))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| BackendError::Files(format!("{}: {e}", files.config.display())))?;
        let max_positions = raw["max_position_embeddings"].as_u64().unwrap_or(512) as usize;
        // sentence-transformers models state the length they were trained for; longer inputs
        // would embed differently from the reference pipeline.
        let max_input_tokens = sentence_max_length(files)
            .unwrap_or(max_positions)
            .min(max_positions);
        let dim = raw["hidden_size"].as_u64().unwrap_or(384) as usize;
        // Read into memory instead of mmap: mmap is `unsafe` in candle, and this crate forbids it.
        // The buffer is freed once the tensors are built.
        let bytes = std::fs::read(&files.weights)
            .map_err(|e| BackendError::Files(format!("{}: {e}", files.weights.display())))?;
        let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &device)?;
        let model = BertModel::load(vb, &config)?;
        let info = BackendInfo {
            name: "candle",
            device: if device.is_cuda() { "cuda" } else { "cpu" }.into(),
            dim,
            max_input_tokens,
            simulated: false,
        };
        Ok(Self { model, device, info })
    }
}

/// `max_seq_length` of `sentence_bert_config.json` next to `config.json`, if present.
fn sentence_max_length(files: &ModelFiles) -> Option<usize> {
    let path = files.config.parent()?.join("sentence_bert_config.json");
    let text = std::fs::read_to_string(path).ok()?;
    let value: serde_json::Value = serde_json::from_str(&text).ok()?;
    value["max_seq_length"].as_u64().map(|v| v as usize)
}

impl Backend for CandleBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        let n = batch.len();
        let len = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        if n == 0 || len == 0 {
            return Ok(vec![Vec::new(); n]);
        }
        let mut ids = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (row, input) in batch.iter().enumerate() {
            ids[row * len..row * len + input.len()].copy_from_slice(input);
            mask[row * len..row * len + input.len()].fill(1);
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let token_types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &token_types, Some(&mask))?;
        // Mean over real tokens only: padding must not dilute short inputs.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?;
        let mean = summed.broadcast_div(&counts)?;
        let norm = mean.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
        let normalised = mean.broadcast_div(&norm)?;
        Ok(normalised.to_dtype(DType::F32)?.to_vec2::<f32>()?)
    }
}
