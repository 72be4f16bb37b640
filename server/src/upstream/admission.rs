//! Admission in front of the engine: at most `--max-running-sequences` requests are forwarded
//! at once; the others wait in one FIFO per tier, admitted in strict priority as forwarded
//! requests finish. A full queue or a tier holding its share is refused at once (429), a wait
//! past the tier's timeout or the request's deadline ends with 503 `queue_timeout`; both carry
//! `Retry-After` from the rate at which requests have been finishing.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use modelfleet_contract::headers;
use tokio::sync::oneshot;

use crate::{
    error::InferError,
    generate::scheduler::{self, DrainRate, TierConfig, drain_time},
    metrics::{Metrics, TierLabel},
};

/// The limits of an [`Admission`].
#[derive(Debug, Clone)]
pub struct AdmissionLimits {
    /// Tiers, highest priority first (at least one).
    pub tiers: Vec<TierConfig>,
    /// Requests forwarded at once at most.
    pub max_running: usize,
    /// Requests waiting at most, all tiers together.
    pub max_waiting: usize,
}

/// The gate every forwarded request passes; shared by the handlers through an `Arc`.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    /// Each tier's share of `max_waiting`, at least 1.
    per_tier: Vec<usize>,
    state: Mutex<State>,
    metrics: Metrics,
}

#[derive(Debug, Default)]
struct State {
    running: usize,
    waiting: Vec<VecDeque<Waiter>>,
    next_id: u64,
    rate: DrainRate,
}

#[derive(Debug)]
struct Waiter {
    id: u64,
    grant: oneshot::Sender<Permit>,
}

/// A forwarded request's place among the running ones; dropping it admits the next waiter.
#[derive(Debug)]
pub struct Permit {
    admission: Arc<Admission>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.admission.release();
    }
}

impl Admission {
    /// A gate with `limits`, its gauges in `metrics`.
    pub fn new(mut limits: AdmissionLimits, metrics: Metrics) -> Arc<Self> {
        if limits.tiers.is_empty() {
            limits.tiers.push(TierConfig {
                name: modelfleet_contract::BatchingArgs::DEFAULT_TIER.into(),
                timeout: None,
                queue_share: 1.0,
            });
        }
        limits.max_running = limits.max_running.max(1);
        let per_tier = limits
            .tiers
            .iter()
            .map(|t| ((limits.max_waiting as f64 * t.queue_share.clamp(0.0, 1.0)).floor() as usize).max(1))
            .collect();
        let state = State {
            waiting: limits.tiers.iter().map(|_| VecDeque::new()).collect(),
            ..State::default()
        };
        let admission = Arc::new(Self {
            limits,
            per_tier,
            state: Mutex::new(state),
            metrics,
        });
        admission.publish(&admission.lock());
        admission
    }

    /// The tiers, highest first.
    pub fn tiers(&self) -> &[TierConfig] {
        &self.limits.tiers
    }

    /// Index of the tier `x-modelfleet-tier` names; the lowest without one.
    pub fn tier_index(&self, name: Option<&str>) -> Result<usize, InferError> {
        scheduler::tier_index(self.tiers(), name)
    }

    /// The metric label of tier `index` (`none` for an unknown tier).
    pub fn tier_name(&self, index: Option<usize>) -> String {
        index
            .and_then(|i| self.tiers().get(i))
            .map_or_else(|| "none".to_owned(), |t| t.name.clone())
    }

    /// Requests waiting plus running.
    pub fn load(&self) -> usize {
        let state = self.lock();
        state.running + state.waiting.iter().map(VecDeque::len).sum::<usize>()
    }

    /// Waits for a place among the running requests, in `tier`, until the tier's timeout or
    /// `deadline`, whichever is first. Dropping the future (the client went away) leaves the
    /// queue at once.
    pub async fn acquire(
        self: &Arc<Self>,
        tier: usize,
        deadline: Option<Instant>,
    ) -> Result<Permit, InferError> {
        let arrived = Instant::now();
        let tier = tier.min(self.tiers().len() - 1);
        let (id, granted) = match self.enter(tier)? {
            Entry::Running(permit) => return Ok(permit),
            Entry::Queued { id, granted } => (id, granted),
        };
        let mut waiting = Waiting {
            admission: self,
            tier,
            id,
            timed_out: false,
        };
        let (limit, source) = self.wait_limit(tier, arrived, deadline);
        let outcome = match limit {
            Some(at) => tokio::time::timeout_at(at.into(), granted).await,
            None => Ok(granted.await),
        };
        match outcome {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(InferError::Unavailable {
                message: "the admission queue was closed".into(),
                retry_after: Duration::from_secs(1),
            }),
            Err(_) => {
                // A grant that raced the timeout is dropped with the receiver: released again.
                waiting.timed_out = true;
                let limit = limit.map_or(Duration::ZERO, |at| at.duration_since(arrived));
                Err(InferError::QueueTimeout {
                    waited_ms: arrived.elapsed().as_millis() as u64,
                    limit_ms: limit.as_millis() as u64,
                    source_of_limit: source,
                    retry_after: self.retry_after(),
                })
            }
        }
    }

    /// The earlier of the tier's timeout and the request's deadline, and which it is.
    fn wait_limit(
        &self,
        tier: usize,
        arrived: Instant,
        deadline: Option<Instant>,
    ) -> (Option<Instant>, &'static str) {
        let tier_limit = self.tiers()[tier].timeout.map(|t| arrived + t);
        match (tier_limit, deadline) {
            (Some(t), Some(d)) if d < t => (Some(d), headers::TIMEOUT),
            (Some(t), _) => (Some(t), "tier timeout"),
            (None, Some(d)) => (Some(d), headers::TIMEOUT),
            (None, None) => (None, "none"),
        }
    }

    /// Takes a running place at once when one is free and nobody waits; else queues, or
    /// refuses when the queue or the tier's share of it is full.
    fn enter(self: &Arc<Self>, tier: usize) -> Result<Entry, InferError> {
        let mut state = self.lock();
        let waiting: usize = state.waiting.iter().map(VecDeque::len).sum();
        if state.running < self.limits.max_running && waiting == 0 {
            state.running += 1;
            self.publish(&state);
            return Ok(Entry::Running(Permit {
                admission: self.clone(),
            }));
        }
        let name = &self.tiers()[tier].name;
        let in_tier = state.waiting[tier].len();
        let refusal = if waiting >= self.limits.max_waiting {
            Some((
                "queue_full",
                format!(
                    "queue full: {waiting} requests waiting, the limit is {}",
                    self.limits.max_waiting
                ),
            ))
        } else if in_tier >= self.per_tier[tier] {
            Some((
                "tier_share",
                format!(
                    "tier `{name}` holds its share of the queue: {in_tier} requests waiting, the limit is {} ({} of the queue)",
                    self.per_tier[tier],
                    self.tiers()[tier].queue_share
                ),
            ))
        } else {
            None
        };
        if let Some((reason, message)) = refusal {
            let retry_after = drain_time(waiting, state.rate.per_second());
            drop(state);
            self.metrics.reject(name, reason);
            return Err(InferError::Overloaded { message, retry_after });
        }
        let id = state.next_id;
        state.next_id += 1;
        let (grant, granted) = oneshot::channel();
        state.waiting[tier].push_back(Waiter { id, grant });
        self.publish(&state);
        Ok(Entry::Queued { id, granted })
    }

    /// A running request finished: admit waiters, highest tier first, while places are free.
    fn release(self: &Arc<Self>) {
        // Permits whose waiter went away between grant and receipt; dropped after the lock
        // is released (each drop releases again).
        let mut unclaimed = Vec::new();
        {
            let mut state = self.lock();
            state.running = state.running.saturating_sub(1);
            state.rate.record(1, Instant::now());
            while state.running < self.limits.max_running {
                let Some(waiter) = state.waiting.iter_mut().find_map(VecDeque::pop_front) else {
                    break;
                };
                state.running += 1;
                let permit = Permit {
                    admission: self.clone(),
                };
                if let Err(permit) = waiter.grant.send(permit) {
                    unclaimed.push(permit);
                }
            }
            self.publish(&state);
        }
        drop(unclaimed);
    }

    /// `Retry-After` for a refusal now.
    pub fn retry_after(&self) -> Duration {
        let state = self.lock();
        drain_time(
            state.waiting.iter().map(VecDeque::len).sum(),
            state.rate.per_second(),
        )
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The queue and running gauges, as a standard picker and the autoscaler read them.
    fn publish(&self, state: &State) {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let m = &self.metrics;
        m.running.set(gauge(state.running));
        m.queued.set(gauge(state.waiting.iter().map(VecDeque::len).sum()));
        for (tier, queue) in self.tiers().iter().zip(&state.waiting) {
            m.queue_depth
                .get_or_create(&TierLabel {
                    tier: tier.name.clone(),
                })
                .set(gauge(queue.len()));
        }
    }
}

enum Entry {
    Running(Permit),
    Queued {
        id: u64,
        granted: oneshot::Receiver<Permit>,
    },
}

/// A request in the queue; dropping it before its grant takes it out of the queue.
struct Waiting<'a> {
    admission: &'a Arc<Admission>,
    tier: usize,
    id: u64,
    timed_out: bool,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let a = self.admission;
        let mut state = a.lock();
        let queue = &mut state.waiting[self.tier];
        let Some(at) = queue.iter().position(|w| w.id == self.id) else {
            return; // granted
        };
        queue.remove(at);
        a.publish(&state);
        drop(state);
        let tier = a.tiers()[self.tier].name.clone();
        if self.timed_out {
            a.metrics.reject(&tier, "queue_timeout");
        } else {
            a.metrics.cancelled.get_or_create(&TierLabel { tier }).inc();
        }
    }
}

#[cfg(test)]
mod tests;
