//! The queue state the batcher actor owns: one FIFO per priority tier, admission limits, and batch
//! formation under the size and padded-token budgets. Pure: time comes in as arguments.

use std::{collections::VecDeque, time::Instant};

use modelfleet_contract::TierArg;
use tokio::sync::oneshot;

use crate::error::InferError;

/// The embeddings of every input of a request, in order, or why there are none.
pub type Outcome = Result<Vec<Vec<f32>>, InferError>;

/// Where a reply goes.
pub type Reply = oneshot::Sender<Outcome>;

/// The deadline of a queued request and what set it (named in the 503 message).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadline {
    pub at: Instant,
    /// `tier timeout` or `x-modelfleet-timeout`.
    pub source: &'static str,
}

/// One queued request: all its inputs run in the same batch.
#[derive(Debug)]
pub struct Job {
    pub tier: usize,
    pub inputs: Vec<Vec<u32>>,
    pub enqueued: Instant,
    pub deadline: Option<Deadline>,
    pub reply: Reply,
}

impl Job {
    /// Tokens of the longest input.
    pub fn longest(&self) -> usize {
        self.inputs.iter().map(Vec::len).max().unwrap_or(0)
    }

    /// Number of inputs.
    pub fn len(&self) -> usize {
        self.inputs.len()
    }

    /// Whether the job has no inputs (never admitted).
    pub fn is_empty(&self) -> bool {
        self.inputs.is_empty()
    }
}

/// Batch limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    pub max_inputs: usize,
    /// Inputs × longest input.
    pub max_padded_tokens: usize,
}

/// Why admission failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    QueueFull { queued: usize, limit: usize },
    TierShare { queued: usize, limit: usize, share: f64 },
}

impl Refusal {
    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::QueueFull { .. } => "queue_full",
            Self::TierShare { .. } => "tier_share",
        }
    }
}

#[derive(Debug)]
struct TierQueue {
    name: String,
    limit: usize,
    share: f64,
    jobs: VecDeque<Job>,
}

/// A batch taken from the queue, plus what was dropped on the way.
#[derive(Debug, Default)]
pub struct Taken {
    pub batch: Vec<Job>,
    /// Jobs whose client went away; never computed.
    pub cancelled: Vec<Job>,
}

/// Queues per tier, highest priority first.
#[derive(Debug)]
pub struct TierQueues {
    tiers: Vec<TierQueue>,
    max_total: usize,
    total: usize,
}

impl TierQueues {
    /// Empty queues for `tiers`, at most `max_total` requests in all.
    pub fn new(tiers: &[TierArg], max_total: usize) -> Self {
        let tiers = tiers
            .iter()
            .map(|t| TierQueue {
                name: t.name.clone(),
                // A tier always gets at least one slot, whatever its share.
                limit: ((max_total as f64 * t.share()).floor() as usize).max(1),
                share: t.share(),
                jobs: VecDeque::new(),
            })
            .collect();
        Self {
            tiers,
            max_total,
            total: 0,
        }
    }

    /// Queues `job` at the back of its tier, or refuses it.
    pub fn admit(&mut self, job: Job) -> Result<(), (Job, Refusal)> {
        if self.total >= self.max_total {
            let refusal = Refusal::QueueFull {
                queued: self.total,
                limit: self.max_total,
            };
            return Err((job, refusal));
        }
        let tier = &mut self.tiers[job.tier];
        if tier.jobs.len() >= tier.limit {
            let refusal = Refusal::TierShare {
                queued: tier.jobs.len(),
                limit: tier.limit,
                share: tier.share,
            };
            return Err((job, refusal));
        }
        tier.jobs.push_back(job);
        self.total += 1;
        Ok(())
    }

    /// Requests queued in all tiers.
    pub fn len(&self) -> usize {
        self.total
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Name and depth of each tier.
    pub fn depths(&self) -> impl Iterator<Item = (&str, usize)> {
        self.tiers.iter().map(|t| (t.name.as_str(), t.jobs.len()))
    }

    /// Name of tier `index`.
    pub fn tier_name(&self, index: usize) -> &str {
        &self.tiers[index].name
    }

    /// Arrival time of the oldest queued request.
    pub fn oldest(&self) -> Option<Instant> {
        self.tiers
            .iter()
            .filter_map(|t| t.jobs.front().map(|j| j.enqueued))
            .min()
    }

    /// The earliest deadline of any queued request.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tiers
            .iter()
            .flat_map(|t| t.jobs.iter().filter_map(|j| j.deadline.map(|d| d.at)))
            .min()
    }

    /// Removes and returns the requests whose deadline is at or before `now`.
    pub fn expire(&mut self, now: Instant) -> Vec<Job> {
        let mut expired = Vec::new();
        for tier in &mut self.tiers {
            if tier.jobs.iter().any(|j| j.deadline.is_some_and(|d| d.at <= now)) {
                let (gone, kept): (VecDeque<Job>, VecDeque<Job>) = tier
                    .jobs
                    .drain(..)
                    .partition(|j| j.deadline.is_some_and(|d| d.at <= now));
                tier.jobs = kept;
                expired.extend(gone);
            }
        }
        self.total -= expired.len();
        expired
    }

    /// Whether the queued requests already fill a batch (so waiting cannot make it bigger).
    pub fn fills_batch(&self, limits: BatchLimits) -> bool {
        let mut inputs = 0;
        let mut longest = 0;
        for job in self.tiers.iter().flat_map(|t| t.jobs.iter()) {
            let n = inputs + job.len();
            let l = longest.max(job.longest());
            if n > limits.max_inputs || n * l > limits.max_padded_tokens {
                return true;
            }
            (inputs, longest) = (n, l);
            if inputs == limits.max_inputs {
                return true;
            }
        }
        false
    }

    /// Takes the next batch: strict priority across tiers, FIFO within one, stopping at the first
    /// request that does not fit (so no request is overtaken by a smaller one of its tier or a
    /// lower tier). Requests whose client went away are dropped on the way.
    pub fn take_batch(&mut self, limits: BatchLimits) -> Taken {
        let mut taken = Taken::default();
        let mut inputs = 0;
        let mut longest = 0;
        'tiers: for tier in &mut self.tiers {
            while let Some(job) = tier.jobs.front() {
                if job.reply.is_closed() {
                    taken.cancelled.extend(tier.jobs.pop_front());
                    continue;
                }
                let n = inputs + job.len();
                let l = longest.max(job.longest());
                if n > limits.max_inputs || n * l > limits.max_padded_tokens {
                    break 'tiers;
                }
                (inputs, longest) = (n, l);
                taken.batch.extend(tier.jobs.pop_front());
            }
        }
        self.total -= taken.batch.len() + taken.cancelled.len();
        taken
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn tiers() -> Vec<TierArg> {
        vec![
            TierArg {
                name: "high".into(),
                timeout: None,
                max_queue_share: None,
            },
            TierArg {
                name: "low".into(),
                timeout: None,
                max_queue_share: Some(0.5),
            },
        ]
    }

    fn job(tier: usize, inputs: usize, tokens: usize, at: Instant) -> (Job, oneshot::Receiver<Outcome>) {
        let (reply, rx) = oneshot::channel();
        let job = Job {
            tier,
            inputs: vec![vec![1; tokens]; inputs],
            enqueued: at,
            deadline: None,
            reply,
        };
        (job, rx)
    }

    const LIMITS: BatchLimits = BatchLimits {
        max_inputs: 4,
        max_padded_tokens: 64,
    };

    #[test]
    fn higher_tiers_go_first_and_each_tier_is_fifo() {
        let now = Instant::now();
        let mut q = TierQueues::new(&tiers(), 10);
        let mut receivers = Vec::new();
        for (tier, tokens) in [(1, 3), (0, 4), (1, 5), (0, 6)] {
            let (j, rx) = job(tier, 1, tokens, now);
            q.admit(j).unwrap();
            receivers.push(rx);
        }
        let order: Vec<_> = q
            .take_batch(LIMITS)
            .batch
            .iter()
            .map(|j| (j.tier, j.longest()))
            .collect();
        assert_eq!(order, [(0, 4), (0, 6), (1, 3), (1, 5)]);
        assert!(q.is_empty());
    }

    #[test]
    fn batches_respect_the_padded_token_budget_without_overtaking() {
        let now = Instant::now();
        let mut q = TierQueues::new(&tiers(), 10);
        let mut rx = Vec::new();
        // 2 inputs of 20 tokens = 40; adding a 30-token input makes 3 × 30 = 90 > 64.
        for tokens in [20, 20, 30, 2] {
            let (j, r) = job(0, 1, tokens, now);
            q.admit(j).unwrap();
            rx.push(r);
        }
        assert!(q.fills_batch(LIMITS));
        let first = q.take_batch(LIMITS).batch;
        assert_eq!(
            first.len(),
            2,
            "the 2-token request must not overtake the 30-token one"
        );
        assert_eq!(q.take_batch(LIMITS).batch.len(), 2);
    }

    #[test]
    fn a_tier_cannot_exceed_its_share_and_the_queue_has_a_cap() {
        let now = Instant::now();
        let mut q = TierQueues::new(&tiers(), 4);
        let mut rx = Vec::new();
        for _ in 0..2 {
            let (j, r) = job(1, 1, 3, now);
            q.admit(j).unwrap();
            rx.push(r);
        }
        let (j, _r) = job(1, 1, 3, now);
        let (_, refusal) = q.admit(j).unwrap_err();
        assert_eq!(
            refusal,
            Refusal::TierShare {
                queued: 2,
                limit: 2,
                share: 0.5
            }
        );
        for _ in 0..2 {
            let (j, r) = job(0, 1, 3, now);
            q.admit(j).unwrap();
            rx.push(r);
        }
        let (j, _r) = job(0, 1, 3, now);
        assert_eq!(
            q.admit(j).unwrap_err().1,
            Refusal::QueueFull { queued: 4, limit: 4 }
        );
    }

    #[test]
    fn requests_whose_client_left_are_dropped_not_batched() {
        let now = Instant::now();
        let mut q = TierQueues::new(&tiers(), 10);
        let (j, rx) = job(0, 1, 3, now);
        q.admit(j).unwrap();
        let (j, _kept) = job(0, 1, 3, now);
        q.admit(j).unwrap();
        drop(rx);
        let taken = q.take_batch(LIMITS);
        assert_eq!((taken.batch.len(), taken.cancelled.len()), (1, 1));
        assert!(q.is_empty());
    }

    #[test]
    fn expired_requests_leave_the_queue_in_any_tier() {
        let now = Instant::now();
        let mut q = TierQueues::new(&tiers(), 10);
        let (mut a, _ra) = job(1, 1, 3, now);
        a.deadline = Some(Deadline {
            at: now + Duration::from_millis(10),
            source: "tier timeout",
        });
        let (b, _rb) = job(1, 1, 3, now);
        q.admit(a).unwrap();
        q.admit(b).unwrap();
        assert_eq!(q.next_deadline(), Some(now + Duration::from_millis(10)));
        assert!(q.expire(now + Duration::from_millis(9)).is_empty());
        assert_eq!(q.expire(now + Duration::from_millis(10)).len(), 1);
        assert_eq!((q.len(), q.next_deadline()), (1, None));
    }
}
