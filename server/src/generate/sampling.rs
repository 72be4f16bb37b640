//! Choosing the next token from a sequence's logits: greedy, temperature, top-k and top-p
//! (nucleus), applied in that order (the order Hugging Face and vLLM use), on plain `&[f32]`.
//!
//! Each sequence has its own [`Sampler`] with its own seeded generator, so a request's output
//! depends only on its seed and its logits, never on which other sequences share its batches.

use std::cmp::Ordering;

/// How a request wants its tokens chosen, and when its generation ends.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 (or less, or not finite) means greedy: always the most likely
    /// token.
    pub temperature: f32,
    /// Nucleus: sample among the most likely tokens whose probabilities sum to at least this.
    /// `None` or 1 or more: no nucleus cut; 0 or less: only the most likely token.
    pub top_p: Option<f32>,
    /// Sample among the `k` most likely tokens. `None`, 0, or at least the vocabulary: no cut
    /// (0 disables it, as in Hugging Face and vLLM).
    pub top_k: Option<usize>,
    /// Seed of the sequence's generator; `None` draws a random one. The same seed and the same
    /// logits give the same tokens, run after run.
    pub seed: Option<u64>,
    /// Most tokens to generate, the end-of-sequence token included.
    pub max_tokens: usize,
    /// Strings that end the generation when they appear in its text (not included in it).
    pub stop: Vec<String>,
    /// Whether each token's log-probability is reported.
    pub logprobs: bool,
}

impl SamplingParams {
    /// Greedy decoding of at most `max_tokens` tokens with no stop strings.
    pub fn greedy(max_tokens: usize) -> Self {
        Self {
            temperature: 0.0,
            top_p: None,
            top_k: None,
            seed: None,
            max_tokens,
            stop: Vec::new(),
            logprobs: false,
        }
    }
}

/// The token chosen and its log-probability.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampled {
    /// Token id.
    pub id: u32,
    /// Natural log of the token's probability under the model's own distribution (log-softmax
    /// of the raw logits, before temperature, top-k or top-p), as OpenAI's `logprobs` reports.
    pub logprob: f32,
}

/// One vocabulary entry still in the running for sampling.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    id: u32,
    logit: f32,
}

/// Rank order: most likely first, ties to the lowest id (a total order, so the kept set and its
/// order never depend on the sort algorithm).
fn by_rank(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit.total_cmp(&a.logit).then(a.id.cmp(&b.id))
}

/// How many candidates the nucleus search sorts first; most nuclei of a trained model are far
/// smaller, so the whole vocabulary is rarely sorted.
const FIRST_NUCLEUS_WIDTH: usize = 64;

/// Per-sequence sampler: the request's settings and its seeded generator.
#[derive(Debug, Clone)]
pub struct Sampler {
    rng: fastrand::Rng,
    seed: u64,
    temperature: f32,
    top_k: Option<usize>,
    top_p: Option<f32>,
    /// Scratch space reused for every token, so sampling allocates once per sequence.
    candidates: Vec<Candidate>,
    weights: Vec<f32>,
}

impl Sampler {
    /// A sampler for `params`, seeded with `params.seed` or a random seed.
    pub fn new(params: &SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| fastrand::u64(..));
        Self {
            rng: fastrand::Rng::with_seed(seed),
            seed,
            temperature: params.temperature,
            top_k: params.top_k.filter(|&k| k > 0),
            top_p: params.top_p.filter(|&p| p < 1.0),
            candidates: Vec::new(),
            weights: Vec::new(),
        }
    }

    /// The seed in use (the drawn one when the request gave none), to reproduce an output.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Whether every choice is the most likely token, with no randomness.
    fn is_greedy(&self) -> bool {
        !(self.temperature > 0.0 && self.temperature.is_finite()) || self.top_k == Some(1)
    }

    /// Chooses the next token from `logits` (one per vocabulary entry; NaN counts as -inf) and
    /// its log-probability. Empty or all -inf logits give token 0.
    pub fn sample(&mut self, logits: &[f32]) -> Sampled {
        let id = self.sample_id(logits);
        Sampled {
            id,
            logprob: self.log_softmax_at(logits, id as usize),
        }
    }

    /// The same choice as [`Self::sample`] (the generator advances the same way) without the
    /// log-probability, which costs one more pass over the vocabulary.
    pub fn sample_id(&mut self, logits: &[f32]) -> u32 {
        if self.is_greedy() {
            argmax(logits)
        } else {
            self.sample_random(logits)
        }
    }

    fn sample_random(&mut self, logits: &[f32]) -> u32 {
        let inv_temperature = 1.0 / self.temperature;
        let top_k = self.top_k.filter(|&k| k < logits.len());
        if top_k.is_none() && self.top_p.is_none() {
            // The whole softmax: no candidate list, no sort.
            let max = finite_max(logits);
            fill_weights(&mut self.weights, logits.iter().copied(), max, inv_temperature);
            return draw_index(&mut self.rng, &self.weights).map_or_else(|| argmax(logits), |i| i as u32);
        }
        let mut candidates = std::mem::take(&mut self.candidates);
        candidates.clear();
        candidates.extend(logits.iter().enumerate().map(|(id, &logit)| Candidate {
            id: id as u32,
            logit: if logit.is_nan() { f32::NEG_INFINITY } else { logit },
        }));
        if let Some(k) = top_k {
            // Linear-time selection of the k best, then a sort of those k only.
            candidates.select_nth_unstable_by(k - 1, by_rank);
            candidates.truncate(k);
            candidates.sort_unstable_by(by_rank);
        }
        if let Some(p) = self.top_p {
            let nucleus = Nucleus {
                inv_temperature,
                top_p: p,
                sorted: top_k.is_some(),
            };
            nucleus.cut(&mut candidates, &mut self.weights);
        }
        let max = candidates.first().map_or(f32::NEG_INFINITY, |c| c.logit);
        let kept = candidates.iter().map(|c| c.logit);
        fill_weights(&mut self.weights, kept, max, inv_temperature);
        let id = draw_index(&mut self.rng, &self.weights)
            .and_then(|i| candidates.get(i))
            .or(candidates.first())
            .map_or(0, |c| c.id);
        self.candidates = candidates;
        id
    }

    /// `log_softmax(logits)[id]`: the max, then one pass of weights, then their sum.
    fn log_softmax_at(&mut self, logits: &[f32], id: usize) -> f32 {
        let max = finite_max(logits);
        let Some(&logit) = logits.get(id) else {
            return f32::NEG_INFINITY;
        };
        if max == f32::NEG_INFINITY || logit.is_nan() {
            return f32::NEG_INFINITY;
        }
        fill_weights(&mut self.weights, logits.iter().copied(), max, 1.0);
        logit - max - lane_sum(&self.weights).ln() as f32
    }
}

/// Independent accumulators for the reductions over the vocabulary: floating-point sums and
/// maxima may not be reordered, so one accumulator means scalar code; eight let the compiler
/// use SIMD, with a fixed order (so the same result on every run and machine).
const LANES: usize = 8;

/// Sum of `values` in f64, by lanes.
fn lane_sum(values: &[f32]) -> f64 {
    let mut lanes = [0f64; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest: f64 = chunks.remainder().iter().map(|&v| f64::from(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f64::from(v);
        }
    }
    lanes.iter().sum::<f64>() + rest
}

/// The largest logit that is not NaN (-inf when there is none), by lanes.
fn finite_max(logits: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let chunks = logits.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &l) in lanes.iter_mut().zip(chunk) {
            // `f32::max` ignores NaN.
            *lane = lane.max(l);
        }
    }
    lanes
        .into_iter()
        .chain(rest.iter().copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Index of the largest logit, ties to the lowest index, NaN never chosen; 0 when none.
fn argmax(logits: &[f32]) -> u32 {
    let max = finite_max(logits);
    if max == f32::NEG_INFINITY {
        return 0;
    }
    logits.iter().position(|&l| l == max).unwrap_or(0) as u32
}

/// Replaces `weights` with the softmax weights of `logits` at `1 / inv_temperature` relative to
/// `max` (so the largest weighs 1 and nothing overflows); NaN and -inf weigh 0. An element-wise
/// loop into a buffer, which vectorises (fused into a sum, it would not).
fn fill_weights(weights: &mut Vec<f32>, logits: impl Iterator<Item = f32>, max: f32, inv_temperature: f32) {
    weights.clear();
    weights.extend(logits.map(|l| exp_of_nonpositive((l - max) * inv_temperature)));
}

/// Draws an index in proportion to `weights`; `None` when they are all 0. Skips whole blocks
/// by their sums, so a draw reads the weights about once and a half, not element by element.
fn draw_index(rng: &mut fastrand::Rng, weights: &[f32]) -> Option<usize> {
    const BLOCK: usize = 256;
    let total = lane_sum(weights);
    if total <= 0.0 {
        return None;
    }
    let mut left = rng.f64() * total;
    let mut last_possible = None;
    for (b, block) in weights.chunks(BLOCK).enumerate() {
        let block_sum = lane_sum(block);
        if block_sum <= 0.0 {
            continue;
        }
        if left >= block_sum {
            left -= block_sum;
            last_possible = block.iter().rposition(|&w| w > 0.0).map(|i| b * BLOCK + i);
            continue;
        }
        for (i, &w) in block.iter().enumerate() {
            if w > 0.0 {
                let w = f64::from(w);
                if left < w {
                    return Some(b * BLOCK + i);
                }
                left -= w;
                last_possible = Some(b * BLOCK + i);
            }
        }
    }
    // Only rounding gets here: the draw landed at the very top of the range.
    last_possible
}

/// `e^x` for `x <= 0` to within a few ulp (Cephes `expf`: range reduction by ln 2 and a
/// degree-6 polynomial), 0 below -87 (the f32 normal range), for -inf and for NaN. Plain
/// branch-free arithmetic, so loops over the vocabulary vectorise: with a libm call per entry
/// the weights of a 49,152-token vocabulary took ~4× as long.
fn exp_of_nonpositive(x: f32) -> f32 {
    // Adding 1.5 * 2^23 rounds to an integer in the mantissa, without a libm call.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 0.0);
    let shifted = clamped * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // 2^n from its exponent bits; n is in -126..=0, a normal exponent.
    let n_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let scale = f32::from_bits(((n_int + 127) as u32) << 23);
    if x >= -87.0 { e * scale } else { 0.0 }
}

/// The nucleus (top-p) cut.
struct Nucleus {
    inv_temperature: f32,
    top_p: f32,
    /// Whether the candidates are already in rank order (after top-k).
    sorted: bool,
}

impl Nucleus {
    /// Cuts `candidates` to the smallest most-likely prefix whose probability reaches `top_p`,
    /// in rank order. Unsorted candidates are ranked only as far as the nucleus needs: the best
    /// 64, then each round the next best of the rest (4× as many), selected in linear time and
    /// sorted alone, so nothing is sorted twice.
    fn cut(&self, candidates: &mut Vec<Candidate>, scratch: &mut Vec<f32>) {
        let max = candidates
            .iter()
            .map(|c| c.logit)
            .fold(f32::NEG_INFINITY, f32::max);
        if max == f32::NEG_INFINITY {
            return;
        }
        fill_weights(
            scratch,
            candidates.iter().map(|c| c.logit),
            max,
            self.inv_temperature,
        );
        let target = f64::from(self.top_p) * lane_sum(scratch);
        let len = candidates.len();
        let mut ranked = 0;
        let mut width = if self.sorted {
            len
        } else {
            FIRST_NUCLEUS_WIDTH.min(len)
        };
        let mut mass = 0.0;
        loop {
            if !self.sorted {
                let rest = &mut candidates[ranked..];
                let take = width - ranked;
                if take < rest.len() {
                    rest.select_nth_unstable_by(take - 1, by_rank);
                }
                rest[..take].sort_unstable_by(by_rank);
            }
            for (i, c) in candidates.iter().enumerate().take(width).skip(ranked) {
                mass += f64::from(exp_of_nonpositive((c.logit - max) * self.inv_temperature));
                if mass >= target {
                    candidates.truncate(i + 1);
                    return;
                }
            }
            if width == len {
                // Rounding kept the sum just under the target: the whole list is the nucleus.
                return;
            }
            ranked = width;
            width = (width * 4).min(len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(temperature: f32, top_k: Option<usize>, top_p: Option<f32>, seed: u64) -> SamplingParams {
        SamplingParams {
            temperature,
            top_k,
            top_p,
            seed: Some(seed),
            ..SamplingParams::greedy(16)
        }
    }

    /// A vocabulary-sized vector of logits with some structure: a few peaks over a sloped floor.
    fn spread_logits(len: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - if i % 97 == 0 { 0.0 } else { 3.0 })
            .collect()
    }

    fn draws(sampler: &mut Sampler, logits: &[f32], n: usize) -> Vec<u32> {
        (0..n).map(|_| sampler.sample(logits).id).collect()
    }

    #[test]
    fn greedy_takes_the_argmax_with_ties_to_the_lowest_id_and_skips_nan() {
        let mut s = Sampler::new(&SamplingParams::greedy(4));
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]).id, 1);
        assert_eq!(s.sample(&[f32::NAN, 0.5, 2.0, f32::NAN]).id, 2);
        assert_eq!(s.sample(&[]).id, 0);
        assert_eq!(s.sample(&[f32::NEG_INFINITY; 3]).id, 0);
        // A temperature of 0 or below, or not finite, is greedy.
        for t in [0.0, -1.0, f32::NAN, f32::INFINITY] {
            let mut s = Sampler::new(&params(t, None, None, 1));
            assert_eq!(s.sample(&[0.0, 1.0, 0.5]).id, 1, "temperature {t}");
        }
    }

    #[test]
    fn logprob_is_the_log_softmax_of_the_raw_logits() {
        let logits = [1.0f32, 2.0, 3.0];
        let denominator: f32 = logits.iter().map(|l| l.exp()).sum();
        let mut s = Sampler::new(&SamplingParams::greedy(1));
        let sampled = s.sample(&logits);
        assert_eq!(sampled.id, 2);
        assert!((sampled.logprob - (3.0f32.exp() / denominator).ln()).abs() < 1e-5);
    }

    #[test]
    fn the_same_seed_gives_the_same_tokens_and_another_seed_others() {
        // A smaller vocabulary than the real 49,152 keeps the unoptimised test build quick.
        let logits = spread_logits(8192);
        for (top_k, top_p) in [
            (None, None),
            (Some(50), None),
            (None, Some(0.9)),
            (Some(200), Some(0.8)),
        ] {
            let run = |seed| draws(&mut Sampler::new(&params(1.5, top_k, top_p, seed)), &logits, 32);
            assert_eq!(run(7), run(7), "top_k {top_k:?} top_p {top_p:?}");
            assert_ne!(run(7), run(8), "top_k {top_k:?} top_p {top_p:?}");
        }
    }

    #[test]
    fn top_k_of_one_is_greedy() {
        let logits = spread_logits(1000);
        let greedy = draws(&mut Sampler::new(&SamplingParams::greedy(1)), &logits, 20);
        let top1 = draws(&mut Sampler::new(&params(2.0, Some(1), None, 3)), &logits, 20);
        assert_eq!(greedy, top1);
    }

    #[test]
    fn top_k_samples_only_among_the_k_most_likely() {
        let logits: Vec<f32> = (0..1000).map(|i| (i % 10) as f32 + i as f32 / 1000.0).collect();
        // The 3 most likely: the largest values among ids ending in 9.
        let mut best: Vec<u32> = (0..1000).collect();
        best.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]));
        let best = &best[..3];
        let mut s = Sampler::new(&params(5.0, Some(3), None, 11));
        let seen = draws(&mut s, &logits, 300);
        assert!(seen.iter().all(|id| best.contains(id)), "{seen:?}");
        for id in best {
            assert!(seen.contains(id), "a high temperature reaches all of the top 3");
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_nucleus_that_reaches_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        for (top_p, allowed) in [(0.7, 2), (0.85, 3), (0.0, 1)] {
            let mut s = Sampler::new(&params(1.0, None, Some(top_p), 5));
            let seen = draws(&mut s, &logits, 500);
            let max = *seen.iter().max().unwrap_or(&0);
            assert_eq!(max as usize, allowed - 1, "top_p {top_p}");
        }
    }

    #[test]
    fn a_wide_nucleus_widens_the_partial_sort_until_it_reaches_p() {
        // Flat logits: the nucleus for 0.5 is half the vocabulary, in rank order the lowest ids;
        // reaching it takes four rounds of widening (64, 256, 1024, 4096).
        let logits = vec![0.0f32; 8192];
        let mut s = Sampler::new(&params(1.0, None, Some(0.5), 9));
        let seen = draws(&mut s, &logits, 100);
        assert!(seen.iter().all(|&id| id < 4096), "{seen:?}");
        assert!(
            seen.iter().any(|&id| id > 3000),
            "the nucleus spans far past the first 64 candidates"
        );
    }

    #[test]
    fn temperature_sampling_follows_the_softmax() {
        let logits = [0.0f32, 1.0, 2.0];
        let mut s = Sampler::new(&params(1.0, None, None, 42));
        let n = 20_000;
        let mut counts = [0usize; 3];
        for id in draws(&mut s, &logits, n) {
            counts[id as usize] += 1;
        }
        let denominator: f32 = logits.iter().map(|l| l.exp()).sum();
        for (id, &count) in counts.iter().enumerate() {
            let expected = logits[id].exp() / denominator;
            let observed = count as f32 / n as f32;
            assert!(
                (observed - expected).abs() < 0.02,
                "id {id}: {observed} vs {expected}"
            );
        }
    }

    #[test]
    fn the_fast_exp_matches_the_library_exp() {
        let mut x = 0.0f32;
        while x >= -87.0 {
            let (fast, exact) = (exp_of_nonpositive(x), x.exp());
            let tolerance = 4.0 * f32::EPSILON * exact + f32::MIN_POSITIVE;
            assert!((fast - exact).abs() <= tolerance, "e^{x}: {fast} vs {exact}");
            x -= 0.0137;
        }
        assert_eq!(exp_of_nonpositive(0.0), 1.0);
        assert_eq!(exp_of_nonpositive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_of_nonpositive(f32::NAN), 0.0);
        assert_eq!(exp_of_nonpositive(-100.0), 0.0);
    }

    #[test]
    fn sample_id_makes_the_same_choices_as_sample() {
        let logits = spread_logits(2000);
        let mut a = Sampler::new(&params(1.0, Some(100), Some(0.9), 3));
        let mut b = a.clone();
        let with_logprob: Vec<u32> = (0..50).map(|_| a.sample(&logits).id).collect();
        let without: Vec<u32> = (0..50).map(|_| b.sample_id(&logits)).collect();
        assert_eq!(with_logprob, without);
    }

    #[test]
    fn nan_and_minus_infinity_are_never_sampled() {
        let logits = [f32::NAN, 0.0, f32::NEG_INFINITY, 0.0];
        for (top_k, top_p) in [(None, None), (Some(3), None), (None, Some(0.99))] {
            let mut s = Sampler::new(&params(1.0, top_k, top_p, 1));
            let seen = draws(&mut s, &logits, 200);
            assert!(seen.iter().all(|&id| id == 1 || id == 3), "{seen:?}");
        }
    }
}
