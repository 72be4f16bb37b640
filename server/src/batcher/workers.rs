//! Backend slots: one OS thread per batch the backend may run at once, so model compute never
//! blocks the async runtime. Each slot answers its requests directly, then reports to the actor.

use std::{
    sync::{Arc, mpsc},
    thread,
    time::{Duration, Instant},
};

use super::queue::Job;
use crate::{backend::Backend, error::InferError, metrics::Metrics};

/// What a slot reports after a batch.
#[derive(Debug)]
pub struct Done {
    pub slot: usize,
    pub requests: usize,
    pub started: Instant,
    pub finished: Instant,
}

struct Work {
    batch: Vec<Job>,
}

/// The slots and which of them are idle; owned by the actor.
#[derive(Debug)]
pub struct Slots {
    senders: Vec<mpsc::Sender<Work>>,
    idle: Vec<usize>,
    /// Start of the batch running in each slot.
    running_since: Vec<Option<Instant>>,
    busy_in_window: Duration,
    window_start: Instant,
    metrics: Metrics,
}

impl Slots {
    /// Starts `count` slot threads; `on_done` is called from a slot thread after each batch.
    pub fn start(
        count: usize,
        backend: Arc<dyn Backend>,
        metrics: Metrics,
        on_done: impl Fn(Done) + Send + Sync + 'static,
    ) -> Self {
        let on_done = Arc::new(on_done);
        let mut senders = Vec::with_capacity(count);
        for slot in 0..count {
            let (tx, rx) = mpsc::channel::<Work>();
            let backend = backend.clone();
            let on_done = on_done.clone();
            let metrics = metrics.clone();
            thread::Builder::new()
                .name(format!("backend-{slot}"))
                .spawn(move || {
                    while let Ok(work) = rx.recv() {
                        let started = Instant::now();
                        let requests = work.batch.len();
                        run_batch(backend.as_ref(), &metrics, work.batch);
                        on_done(Done {
                            slot,
                            requests,
                            started,
                            finished: Instant::now(),
                        });
                    }
                })
                .expect("spawning a backend thread; the process cannot serve without it");
            senders.push(tx);
        }
        Self {
            senders,
            idle: (0..count).rev().collect(),
            running_since: vec![None; count],
            busy_in_window: Duration::ZERO,
            window_start: Instant::now(),
            metrics,
        }
    }

    /// Whether a slot can take a batch.
    pub fn any_idle(&self) -> bool {
        !self.idle.is_empty()
    }

    /// Whether some slot runs a batch.
    pub fn any_busy(&self) -> bool {
        self.idle.len() < self.senders.len()
    }

    /// Hands `batch` to an idle slot. Callers check `any_idle` first.
    pub fn run(&mut self, batch: Vec<Job>, now: Instant) {
        let Some(slot) = self.idle.pop() else {
            debug_assert!(false, "run without an idle slot");
            return;
        };
        self.running_since[slot] = Some(now);
        if let Err(mpsc::SendError(work)) = self.senders[slot].send(Work { batch }) {
            // The slot thread died (a panic in the backend): fail the batch, keep the slot out.
            for job in work.batch {
                let _ = job
                    .reply
                    .send(Err(InferError::Backend("the backend thread stopped".into())));
            }
        }
    }

    /// Marks the slot of `done` idle and accounts its busy time.
    pub fn release(&mut self, done: Done) {
        self.running_since[done.slot] = None;
        let counted_from = done.started.max(self.window_start);
        let busy = done.finished.saturating_duration_since(counted_from);
        self.busy_in_window += busy;
        self.metrics
            .busy_seconds
            .inc_by(done.finished.duration_since(done.started).as_secs_f64());
        self.idle.push(done.slot);
    }

    /// Share of the time since the last call the slots were busy (0 to 1), including batches
    /// still running; starts a new window.
    pub fn take_busy_ratio(&mut self, now: Instant) -> f64 {
        let window = now.saturating_duration_since(self.window_start);
        let mut busy = self.busy_in_window;
        for since in self.running_since.iter_mut().flatten() {
            busy += now.saturating_duration_since((*since).max(self.window_start));
        }
        self.busy_in_window = Duration::ZERO;
        self.window_start = now;
        let capacity = window.as_secs_f64() * self.senders.len() as f64;
        if capacity > 0.0 {
            (busy.as_secs_f64() / capacity).clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// Runs one batch and answers each request with its share of the outputs.
fn run_batch(backend: &dyn Backend, metrics: &Metrics, batch: Vec<Job>) {
    let inputs: Vec<&[u32]> = batch
        .iter()
        .flat_map(|j| j.inputs.iter().map(Vec::as_slice))
        .collect();
    let longest = inputs.iter().map(|i| i.len()).max().unwrap_or(0);
    let tokens: usize = inputs.iter().map(|i| i.len()).sum();
    let n = inputs.len();
    let started = Instant::now();
    let result = backend.embed(&inputs);
    metrics.batch_duration.observe(started.elapsed().as_secs_f64());
    metrics.batch_size.observe(n as f64);
    metrics.batch_tokens.observe((longest * n) as f64);
    match result {
        Ok(outputs) if outputs.len() == n => {
            metrics.inputs.inc_by(n as u64);
            metrics.input_tokens.inc_by(tokens as u64);
            let mut outputs = outputs.into_iter();
            for job in batch {
                let mine: Vec<Vec<f32>> = outputs.by_ref().take(job.inputs.len()).collect();
                let _ = job.reply.send(Ok(mine));
            }
        }
        Ok(outputs) => fail(
            batch,
            &format!("the backend returned {} outputs for {n} inputs", outputs.len()),
        ),
        Err(e) => fail(batch, &e.to_string()),
    }
}

fn fail(batch: Vec<Job>, message: &str) {
    tracing::error!(error = message, requests = batch.len(), "batch failed");
    for job in batch {
        let _ = job.reply.send(Err(InferError::Backend(message.to_owned())));
    }
}
