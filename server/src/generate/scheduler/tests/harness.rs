//! The test harness: a fake model that records every forward and runs only as far as a gate
//! lets it, a fake tokenizer, and a collector of each request's events.

use std::{
    collections::HashMap,
    sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use tokio::sync::mpsc::{Receiver, error::TryRecvError};

use super::super::*;
use crate::generate::{Feed, GenerateError, sampling::SamplingParams};

pub const VOCAB: usize = 64;
pub const CONTEXT: usize = 256;
pub const EOS: u32 = 0;
/// A token the fake model fails on, and one it panics on.
pub const ERROR_TOKEN: u32 = 62;
pub const PANIC_TOKEN: u32 = 63;
pub const WAIT: Duration = Duration::from_secs(10);

/// How many forwards the fake model may run: `None` is open.
#[derive(Default)]
pub struct Gate {
    permits: Mutex<Option<usize>>,
    changed: Condvar,
}

impl Gate {
    pub fn set(&self, permits: Option<usize>) {
        *lock(&self.permits) = permits;
        self.changed.notify_all();
    }

    pub fn allow_one(&self) {
        let mut permits = lock(&self.permits);
        *permits = Some(permits.map_or(1, |n| n + 1));
        self.changed.notify_all();
    }

    pub fn is_exhausted(&self) -> bool {
        *lock(&self.permits) == Some(0)
    }

    fn pass(&self) {
        let mut permits = lock(&self.permits);
        while *permits == Some(0) {
            permits = self.changed.wait(permits).unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(n) = permits.as_mut() {
            *n -= 1;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the fake model saw.
#[derive(Default)]
pub struct Record {
    caches: HashMap<SeqId, Vec<u32>>,
    /// Every forward's feeds, in order.
    pub forwards: Vec<Vec<(SeqId, Vec<u32>)>>,
    pub released: Vec<(SeqId, usize)>,
    pub dropped: bool,
}

#[derive(Default)]
pub struct Probe {
    record: Mutex<Record>,
    pub gate: Gate,
}

impl Probe {
    pub fn record(&self) -> MutexGuard<'_, Record> {
        lock(&self.record)
    }

    pub fn forwards(&self) -> Vec<Vec<(SeqId, Vec<u32>)>> {
        self.record().forwards.clone()
    }

    pub fn released(&self, seq: SeqId) -> bool {
        self.record().released.iter().any(|&(s, _)| s == seq)
    }
}

/// A model whose next token follows from its last (`last % 59 + 1`; with `positional`, the
/// cache length mixes in, so a wrong recompute shows), with eos once a cache holds
/// `eos_at` tokens. `peak` is the next token's logit over a 0 floor.
pub struct FakeModel {
    probe: Arc<Probe>,
    pub eos_at: Option<usize>,
    pub positional: bool,
    pub peak: f32,
}

impl FakeModel {
    pub fn new() -> (Self, Arc<Probe>) {
        let probe = Arc::new(Probe::default());
        let model = Self {
            probe: probe.clone(),
            eos_at: None,
            positional: false,
            peak: 10.0,
        };
        (model, probe)
    }

    fn logits(&self, cache: &[u32]) -> Vec<f32> {
        let last = cache.last().copied().unwrap_or(1);
        let next = match self.eos_at {
            Some(n) if cache.len() >= n => EOS,
            _ if self.positional => ((last as usize * 7 + cache.len()) % 59 + 1) as u32,
            _ => last % 59 + 1,
        };
        // Ids outside 1..=59 are never sampled unless they are the target.
        let mut logits: Vec<f32> = (0..VOCAB)
            .map(|id| {
                if (1..=59).contains(&id) {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect();
        logits[next as usize] = self.peak;
        logits
    }
}

impl LanguageModel for FakeModel {
    fn vocab_size(&self) -> usize {
        VOCAB
    }

    fn context_length(&self) -> usize {
        CONTEXT
    }

    fn forward(&mut self, feeds: &[Feed<'_>]) -> Result<Vec<Vec<f32>>, GenerateError> {
        self.probe.gate.pass();
        let fed = |t| feeds.iter().any(|f| f.tokens.contains(&t));
        let (error, panic) = (fed(ERROR_TOKEN), fed(PANIC_TOKEN));
        let logits = {
            let mut record = self.probe.record();
            record
                .forwards
                .push(feeds.iter().map(|f| (f.seq, f.tokens.to_vec())).collect());
            feeds
                .iter()
                .map(|f| {
                    let cache = record.caches.entry(f.seq).or_default();
                    cache.extend_from_slice(f.tokens);
                    self.logits(cache)
                })
                .collect()
        };
        if panic {
            panic!("injected panic");
        }
        if error {
            return Err(GenerateError::Model(candle_core::Error::Msg(
                "injected error".into(),
            )));
        }
        Ok(logits)
    }

    fn release(&mut self, seq: SeqId) {
        let mut record = self.probe.record();
        if let Some(cache) = record.caches.remove(&seq) {
            record.released.push((seq, cache.len()));
        }
    }

    fn cached_tokens(&self, seq: SeqId) -> usize {
        self.probe.record().caches.get(&seq).map_or(0, Vec::len)
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        self.probe.record().dropped = true;
    }
}

/// Ids 1..=26 are `a`..`z`, 27..=52 `A`..`Z`, 53..=59 `0`..`6`; eos has no text.
pub struct Letters;

impl Decode for Letters {
    fn decode(&self, ids: &[u32]) -> String {
        ids.iter()
            .filter_map(|&id| match id {
                1..=26 => Some(char::from(b'a' + (id - 1) as u8)),
                27..=52 => Some(char::from(b'A' + (id - 27) as u8)),
                53..=59 => Some(char::from(b'0' + (id - 53) as u8)),
                EOS => None,
                _ => Some('?'),
            })
            .collect()
    }
}

pub fn config() -> SchedulerConfig {
    SchedulerConfig {
        max_running: 8,
        kv_budget_tokens: 4096,
        prefill_chunk: 64,
        step_token_budget: 256,
        tiers: vec![tier("paid", 1.0), tier("free", 1.0)],
        max_waiting: 64,
        eos_ids: vec![EOS],
        context_length: None,
    }
}

pub fn tier(name: &str, queue_share: f64) -> TierConfig {
    TierConfig {
        name: name.into(),
        timeout: None,
        queue_share,
    }
}

pub const PAID: usize = 0;
pub const FREE: usize = 1;

pub fn request(prompt: &[u32], max_tokens: usize) -> GenerationRequest {
    GenerationRequest {
        prompt: prompt.to_vec(),
        params: SamplingParams::greedy(max_tokens),
        tier: FREE,
        deadline: None,
    }
}

/// One request's events as they arrive.
pub struct Stream {
    rx: Receiver<Event>,
    pub tokens: Vec<u32>,
    pub texts: Vec<String>,
    pub end: Option<Event>,
}

impl Stream {
    pub fn new(rx: Receiver<Event>) -> Self {
        Self {
            rx,
            tokens: Vec::new(),
            texts: Vec::new(),
            end: None,
        }
    }

    /// Takes what has arrived.
    pub fn poll(&mut self) {
        while self.end.is_none() {
            match self.rx.try_recv() {
                Ok(Event::Token { id, text, .. }) => {
                    self.tokens.push(id);
                    self.texts.push(text);
                }
                Ok(end) => self.end = Some(end),
                Err(TryRecvError::Empty) => return,
                Err(TryRecvError::Disconnected) => panic!("stream ended without Done or Failed"),
            }
        }
    }

    pub fn text(&self) -> String {
        self.texts.concat()
    }

    pub fn done(&self) -> Option<(FinishReason, usize, usize)> {
        match self.end {
            Some(Event::Done {
                finish,
                prompt_tokens,
                completion_tokens,
            }) => Some((finish, prompt_tokens, completion_tokens)),
            _ => None,
        }
    }
}

/// Polls until `ready` holds, letting the model run one forward at a time when gated.
pub fn step_until(probe: &Probe, streams: &mut [&mut Stream], mut ready: impl FnMut(&[&mut Stream]) -> bool) {
    let started = Instant::now();
    loop {
        streams.iter_mut().for_each(|s| s.poll());
        if ready(streams) {
            return;
        }
        assert!(started.elapsed() < WAIT, "timed out waiting for the scheduler");
        if probe.gate.is_exhausted() {
            probe.gate.allow_one();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn finish_all(probe: &Probe, streams: &mut [&mut Stream]) {
    probe.gate.set(None);
    step_until(probe, streams, |s| s.iter().all(|s| s.end.is_some()));
}

pub fn start(model: FakeModel, config: SchedulerConfig) -> Scheduler {
    Scheduler::start(Box::new(model), Arc::new(Letters), config)
}

pub fn run_alone(scheduler: &Scheduler, probe: &Probe, request: GenerationRequest) -> Stream {
    let mut stream = Stream::new(scheduler.submit(request).expect("admitted"));
    finish_all(probe, &mut [&mut stream]);
    stream
}

/// The sequence id of the forward feed that starts with `prompt`.
pub fn seq_of(forwards: &[Vec<(SeqId, Vec<u32>)>], prompt: &[u32]) -> SeqId {
    forwards
        .iter()
        .flatten()
        .find(|(_, tokens)| tokens.starts_with(prompt))
        .map(|(seq, _)| *seq)
        .expect("the prompt was fed")
}
