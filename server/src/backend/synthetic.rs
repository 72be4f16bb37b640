//! A simulated model for load tests: deterministic pseudo-embeddings and a latency model
//! `t = a + b·batch + c·tokens` that emulates a GPU. Everything it produces is marked simulated.

use std::time::Duration;

use super::{Backend, BackendError, BackendInfo, text::fnv1a};

/// Time one batch takes: `per_batch + per_input_us·inputs + per_token_us·padded tokens`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LatencyModel {
    pub per_batch: Duration,
    pub per_input_us: f64,
    pub per_token_us: f64,
}

impl LatencyModel {
    /// Duration of a batch of `inputs` inputs padded to `padded_tokens` tokens in all.
    pub fn batch_time(&self, inputs: usize, padded_tokens: usize) -> Duration {
        let us = self.per_input_us * inputs as f64 + self.per_token_us * padded_tokens as f64;
        self.per_batch + Duration::from_secs_f64(us.max(0.0) / 1e6)
    }
}

/// The synthetic backend.
#[derive(Debug)]
pub struct SyntheticBackend {
    info: BackendInfo,
    latency: LatencyModel,
}

impl SyntheticBackend {
    /// A simulated model producing `dim`-long embeddings.
    pub fn new(dim: usize, max_input_tokens: usize, latency: LatencyModel) -> Self {
        Self {
            info: BackendInfo {
                name: "synthetic",
                device: "simulated".into(),
                dim: dim.max(1),
                max_input_tokens,
                simulated: true,
            },
            latency,
        }
    }
}

impl Backend for SyntheticBackend {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn embed(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        let longest = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        let wait = self.latency.batch_time(batch.len(), longest * batch.len());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        Ok(batch
            .iter()
            .map(|ids| pseudo_embedding(ids, self.info.dim))
            .collect())
    }
}

/// A unit vector that depends only on the token ids: equal inputs give equal outputs.
fn pseudo_embedding(ids: &[u32], dim: usize) -> Vec<f32> {
    let bytes: Vec<u8> = ids.iter().flat_map(|id| id.to_le_bytes()).collect();
    let mut rng = fastrand::Rng::with_seed(fnv1a(&bytes));
    let mut v: Vec<f32> = (0..dim).map(|_| rng.f32() * 2.0 - 1.0).collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(f32::EPSILON);
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_deterministic_unit_vectors() {
        let b = SyntheticBackend::new(8, 512, LatencyModel::default());
        let out = b
            .embed(&[&[101, 7, 102], &[101, 8, 102], &[101, 7, 102]])
            .unwrap();
        assert_eq!(out[0], out[2]);
        assert_ne!(out[0], out[1]);
        let norm: f32 = out[1].iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5);
        assert!(b.info().simulated);
    }

    #[test]
    fn the_latency_model_adds_its_three_terms() {
        let m = LatencyModel {
            per_batch: Duration::from_millis(2),
            per_input_us: 100.0,
            per_token_us: 1.0,
        };
        assert_eq!(m.batch_time(4, 400), Duration::from_micros(2000 + 400 + 400));
    }
}
