//! The dynamic batcher: one actor task owns the queue; backend slots run batches on their own OS
//! threads. A batch starts at once when the backend is idle; while another batch runs (with more
//! than one slot), it starts when it is full or its oldest request waited `maxQueueDelay`.

mod queue;
mod workers;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use modelfleet_contract::{BatchingArgs, TierArg, headers};
pub use queue::{BatchLimits, Deadline, Job, Refusal, TierQueues};
use tokio::sync::{mpsc, oneshot};

use crate::{
    backend::Backend,
    error::InferError,
    metrics::{Metrics, TierLabel},
};
use workers::{Done, Slots};

enum Command {
    Submit(Job),
    Done(Done),
    Drain(oneshot::Sender<()>),
}

/// Handle to the batcher actor; cheap to clone.
#[derive(Debug, Clone)]
pub struct Batcher {
    tx: mpsc::UnboundedSender<Command>,
    tiers: Arc<[TierArg]>,
    limits: BatchLimits,
}

impl Batcher {
    /// Starts the actor and `concurrent_batches` backend threads.
    pub fn spawn(
        config: &BatchingArgs,
        concurrent_batches: u32,
        backend: Arc<dyn Backend>,
        metrics: Metrics,
    ) -> Self {
        let tiers: Arc<[TierArg]> = config.effective_tiers().into();
        let limits = BatchLimits {
            max_inputs: config.max_batch_size as usize,
            max_padded_tokens: config.max_batch_tokens as usize,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let done_tx = tx.clone();
        let slots = Slots::start(
            concurrent_batches as usize,
            backend,
            metrics.clone(),
            move |done| {
                // The actor outlives the slots; a send error only happens at process exit.
                let _ = done_tx.send(Command::Done(done));
            },
        );
        for tier in tiers.iter() {
            metrics
                .queue_depth
                .get_or_create(&TierLabel {
                    tier: tier.name.clone(),
                })
                .set(0);
        }
        let actor = Actor {
            queue: TierQueues::new(&tiers, config.max_queue_size as usize),
            limits,
            max_queue_delay: config.max_queue_delay,
            slots,
            metrics,
            draining: false,
            drain_waiters: Vec::new(),
            running_jobs: 0,
            drain_rate: DrainRate::default(),
        };
        tokio::spawn(actor.run(rx));
        Self { tx, tiers, limits }
    }

    /// The configured tiers, highest priority first.
    pub fn tiers(&self) -> &[TierArg] {
        &self.tiers
    }

    /// The batch limits.
    pub fn limits(&self) -> BatchLimits {
        self.limits
    }

    /// Index of the tier named by the `x-modelfleet-tier` header; the last tier without one.
    pub fn tier_index(&self, name: Option<&str>) -> Result<usize, InferError> {
        match name {
            None => Ok(self.tiers.len() - 1),
            Some(name) => self.tiers.iter().position(|t| t.name == name).ok_or_else(|| {
                let known: Vec<_> = self.tiers.iter().map(|t| t.name.as_str()).collect();
                InferError::invalid(
                    headers::TIER,
                    format!("unknown tier `{name}`; this server has: {}", known.join(", ")),
                )
            }),
        }
    }

    /// Queues the inputs as one request and waits for their embeddings. Dropping the returned
    /// future (the client went away) drops the request before compute.
    pub async fn submit(
        &self,
        tier: usize,
        inputs: Vec<Vec<u32>>,
        timeout: Option<Duration>,
    ) -> Result<Vec<Vec<f32>>, InferError> {
        let now = Instant::now();
        let tier_timeout = self.tiers[tier].timeout;
        // A request may shorten its tier's timeout, never extend it.
        let deadline = match (tier_timeout, timeout) {
            (Some(t), Some(r)) if r < t => Some((r, headers::TIMEOUT)),
            (Some(t), _) => Some((t, "tier timeout")),
            (None, Some(r)) => Some((r, headers::TIMEOUT)),
            (None, None) => None,
        };
        let (reply, rx) = oneshot::channel();
        let job = Job {
            tier,
            inputs,
            enqueued: now,
            deadline: deadline.map(|(d, source)| Deadline { at: now + d, source }),
            reply,
        };
        self.tx.send(Command::Submit(job)).map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// Stops admitting (503) and resolves when the queue is empty and no batch runs.
    pub async fn drain(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Drain(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

fn stopped() -> InferError {
    InferError::Unavailable {
        message: "the batcher stopped".into(),
        retry_after: Duration::from_secs(1),
    }
}

/// Completed requests per second, smoothed; estimates `Retry-After` from the queue length.
#[derive(Debug, Default)]
struct DrainRate {
    per_second: f64,
    window_start: Option<Instant>,
    completed: u64,
}

impl DrainRate {
    fn record(&mut self, requests: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        self.completed += requests as u64;
        let elapsed = now.duration_since(start).as_secs_f64();
        if elapsed >= 0.5 {
            let rate = self.completed as f64 / elapsed;
            self.per_second = if self.per_second == 0.0 {
                rate
            } else {
                0.7 * self.per_second + 0.3 * rate
            };
            self.window_start = Some(now);
            self.completed = 0;
        }
    }

    /// Time to drain `queued` requests at the observed rate, between 1 s and 60 s.
    fn time_for(&self, queued: usize) -> Duration {
        if self.per_second <= 0.0 {
            return Duration::from_secs(1);
        }
        Duration::from_secs_f64((queued as f64 / self.per_second).clamp(1.0, 60.0))
    }
}

struct Actor {
    queue: TierQueues,
    limits: BatchLimits,
    max_queue_delay: Duration,
    slots: Slots,
    metrics: Metrics,
    draining: bool,
    drain_waiters: Vec<oneshot::Sender<()>>,
    running_jobs: usize,
    drain_rate: DrainRate,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Command>) {
        let mut busy_tick = tokio::time::interval(Duration::from_secs(1));
        busy_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let wake = self.next_wake();
            tokio::select! {
                command = rx.recv() => match command {
                    Some(command) => self.handle(command),
                    None => return,
                },
                () = sleep_until(wake) => {}
                _ = busy_tick.tick() => {
                    let ratio = self.slots.take_busy_ratio(Instant::now());
                    self.metrics.busy_ratio.set(ratio);
                }
            }
            self.expire(Instant::now());
            self.dispatch(Instant::now());
            self.publish_depths();
            if self.draining && self.queue.is_empty() && self.running_jobs == 0 {
                for waiter in self.drain_waiters.drain(..) {
                    let _ = waiter.send(());
                }
            }
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Submit(job) => self.admit(job),
            Command::Done(done) => {
                self.running_jobs -= done.requests;
                self.metrics.running.dec_by(done.requests as i64);
                self.drain_rate.record(done.requests, Instant::now());
                self.slots.release(done);
            }
            Command::Drain(waiter) => {
                self.draining = true;
                self.drain_waiters.push(waiter);
            }
        }
    }

    fn admit(&mut self, job: Job) {
        let tier = self.queue.tier_name(job.tier).to_owned();
        if self.draining {
            self.metrics.reject(&tier, "draining");
            let _ = job.reply.send(Err(InferError::Unavailable {
                message: "the server is shutting down; retry on another replica".into(),
                retry_after: Duration::from_secs(1),
            }));
            return;
        }
        if let Err((job, refusal)) = self.queue.admit(job) {
            self.metrics.reject(&tier, refusal.reason());
            let retry_after = self.drain_rate.time_for(self.queue.len());
            let message = match refusal {
                Refusal::QueueFull { queued, limit } => {
                    format!("queue full: {queued} requests queued, the limit (maxQueueSize) is {limit}")
                }
                Refusal::TierShare { queued, limit, share } => format!(
                    "tier `{tier}` holds its share of the queue: {queued} requests, the limit is {limit} \
                     (maxQueueShare {share} of maxQueueSize)"
                ),
            };
            let _ = job
                .reply
                .send(Err(InferError::Overloaded { message, retry_after }));
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        let deadline = self.queue.next_deadline();
        let batch_delay = (self.slots.any_busy() && self.slots.any_idle())
            .then(|| self.queue.oldest().map(|t| t + self.max_queue_delay))
            .flatten();
        [deadline, batch_delay].into_iter().flatten().min()
    }

    fn expire(&mut self, now: Instant) {
        for job in self.queue.expire(now) {
            let tier = self.queue.tier_name(job.tier).to_owned();
            self.metrics.reject(&tier, "queue_timeout");
            let limit = job
                .deadline
                .map_or(Duration::ZERO, |d| d.at.duration_since(job.enqueued));
            let _ = job.reply.send(Err(InferError::QueueTimeout {
                waited_ms: now.duration_since(job.enqueued).as_millis() as u64,
                limit_ms: limit.as_millis() as u64,
                source_of_limit: job.deadline.map_or("deadline", |d| d.source),
                retry_after: self.drain_rate.time_for(self.queue.len()),
            }));
        }
    }

    /// Starts batches while a slot is free and the start rule allows.
    fn dispatch(&mut self, now: Instant) {
        while self.slots.any_idle() && !self.queue.is_empty() {
            let start = !self.slots.any_busy()
                || self.queue.fills_batch(self.limits)
                || self
                    .queue
                    .oldest()
                    .is_some_and(|t| now >= t + self.max_queue_delay);
            if !start {
                return;
            }
            let taken = self.queue.take_batch(self.limits);
            for job in &taken.cancelled {
                let tier = self.queue.tier_name(job.tier).to_owned();
                self.metrics.cancelled.get_or_create(&TierLabel { tier }).inc();
            }
            if taken.batch.is_empty() {
                continue;
            }
            for job in &taken.batch {
                let tier = self.queue.tier_name(job.tier).to_owned();
                self.metrics
                    .queue_duration
                    .get_or_create(&TierLabel { tier })
                    .observe(now.duration_since(job.enqueued).as_secs_f64());
            }
            self.running_jobs += taken.batch.len();
            self.metrics.running.inc_by(taken.batch.len() as i64);
            self.slots.run(taken.batch, now);
        }
    }

    fn publish_depths(&self) {
        for (tier, depth) in self.queue.depths() {
            self.metrics
                .queue_depth
                .get_or_create(&TierLabel {
                    tier: tier.to_owned(),
                })
                .set(depth as i64);
        }
        self.metrics.queued.set(self.queue.len() as i64);
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
