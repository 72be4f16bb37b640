//! BERT-family sentence embeddings with candle: mean pooling over the attention mask, then L2
//! normalisation (what sentence-transformers does for all-MiniLM-L6-v2 and its relatives).

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use modelfleet_contract::Device as DeviceKind;

use super::{Backend, BackendError, BackendInfo, ModelFiles};

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

/// The candle device of `--device`; the error says how to get CUDA.
pub fn device_for(kind: DeviceKind) -> Result<Device, String> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => Device::new_cuda(0).map_err(|e| {
            format!("--device=cuda: {e} (build with `--features cuda` on a machine with the CUDA toolkit)")
        }),
    }
}

impl CandleBackend {
    /// Loads the weights onto `device`.
    pub fn load(files: &ModelFiles, device: DeviceKind) -> Result<Self, BackendError> {
        let device = device_for(device).map_err(BackendError::Unsupported)?;
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
        let lengths: Vec<usize> = batch.iter().map(|ids| ids.len()).collect();
        let mut out = vec![Vec::new(); batch.len()];
        for group in length_groups(&lengths, MIN_GROUP) {
            let inputs: Vec<&[u32]> = group.iter().map(|&i| batch[i]).collect();
            for (i, v) in group.into_iter().zip(self.forward(&inputs)?) {
                out[i] = v;
            }
        }
        Ok(out)
    }
}

/// Smallest sub-batch worth running alone: on a CPU, batches of 8 already reach most of the
/// per-input throughput of 32.
const MIN_GROUP: usize = 8;

/// Splits a batch, by input length, into sub-batches padded separately when that saves at least
/// 15% of the padded tokens. Returns indices into the batch. The queue order is untouched; only
/// how the batch is computed changes.
pub fn length_groups(lengths: &[usize], min_group: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by_key(|&i| lengths[i]);
    let mut groups = Vec::new();
    split_by_length(&order, lengths, min_group.max(1), &mut groups);
    groups
}

fn split_by_length(order: &[usize], lengths: &[usize], min: usize, groups: &mut Vec<Vec<usize>>) {
    let n = order.len();
    if n >= 2 * min {
        let longest = lengths[order[n - 1]];
        let whole = n * longest;
        let best = (min..=n - min)
            .map(|k| (k, k * lengths[order[k - 1]] + (n - k) * longest))
            .min_by_key(|(_, cost)| *cost);
        if let Some((k, cost)) = best
            && cost * 100 <= whole * 85
        {
            split_by_length(&order[..k], lengths, min, groups);
            split_by_length(&order[k..], lengths, min, groups);
            return;
        }
    }
    if n > 0 {
        groups.push(order.to_vec());
    }
}

impl CandleBackend {
    /// One padded forward pass: mean pooling over real tokens, then L2 normalisation.
    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixed_lengths_split_into_separately_padded_groups() {
        // 8 short and 8 long inputs: padding all to 40 costs 640 tokens, two groups 8·5 + 8·40.
        let lengths: Vec<usize> = (0..16).map(|i| if i % 2 == 0 { 5 } else { 40 }).collect();
        let groups = length_groups(&lengths, 8);
        assert_eq!(groups.len(), 2);
        assert!(groups[0].iter().all(|&i| lengths[i] == 5));
        let mut all: Vec<usize> = groups.concat();
        all.sort_unstable();
        assert_eq!(all, (0..16).collect::<Vec<_>>(), "every input exactly once");
    }

    #[test]
    fn similar_lengths_and_small_batches_stay_whole() {
        assert_eq!(
            length_groups(
                &[10, 11, 12, 10, 11, 12, 10, 11, 12, 10, 11, 12, 10, 11, 12, 12],
                8
            )
            .len(),
            1
        );
        assert_eq!(length_groups(&[3, 50, 3], 8).len(), 1);
        assert!(length_groups(&[], 8).is_empty());
    }
}
