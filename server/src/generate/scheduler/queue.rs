//! The scheduler's decisions, as pure state: the waiting queue of each tier, the running set and
//! its KV reservation, admission by strict tier priority, the choice of sequences to preempt,
//! and the plan of one forward step (chunked prefill next to decode). No channels, no model, no
//! clock: the actor feeds it facts and applies what it decides.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use super::TierConfig;
use crate::generate::SeqId;

/// A sequence as the schedule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub seq: SeqId,
    /// Index into the tiers, 0 the highest priority.
    pub tier: usize,
    /// KV tokens it may hold at most: prompt plus `max_tokens`.
    pub reserve: usize,
}

/// A running sequence and when it was admitted (a counter, larger is more recent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Running {
    slot: Slot,
    admitted: u64,
}

/// What admission did, in order; the actor applies each to the model and the streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Moved from waiting to running.
    Admitted(SeqId),
    /// Moved from running back to the front of its tier's queue; its KV must be released and
    /// recomputed when it is admitted again.
    Preempted(SeqId),
}

/// Capacity of the running set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    pub max_running: usize,
    pub kv_budget: usize,
}

/// Waiting and running sequences.
#[derive(Debug)]
pub struct Schedule {
    waiting: Vec<VecDeque<Slot>>,
    running: Vec<Running>,
    limits: RunLimits,
    kv_reserved: usize,
    admissions: u64,
}

impl Schedule {
    /// Empty queues for `tiers` tiers.
    pub fn new(tiers: usize, limits: RunLimits) -> Self {
        Self {
            waiting: vec![VecDeque::new(); tiers.max(1)],
            running: Vec::new(),
            limits,
            kv_reserved: 0,
            admissions: 0,
        }
    }

    /// Queues a new sequence at the back of its tier.
    pub fn enqueue(&mut self, slot: Slot) {
        let tier = slot.tier.min(self.waiting.len() - 1);
        self.waiting[tier].push_back(slot);
    }

    /// Whether nothing waits and nothing runs.
    pub fn is_idle(&self) -> bool {
        self.running.is_empty() && self.waiting.iter().all(VecDeque::is_empty)
    }

    /// Sequences running.
    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    /// The running sequences, in admission order.
    pub fn running(&self) -> impl Iterator<Item = Slot> + '_ {
        self.running.iter().map(|r| r.slot)
    }

    /// KV tokens reserved by the running sequences.
    pub fn kv_reserved(&self) -> usize {
        self.kv_reserved
    }

    /// Removes and returns the waiting sequences `leaves` picks (cancelled, expired).
    pub fn remove_waiting(&mut self, mut leaves: impl FnMut(&Slot) -> bool) -> Vec<Slot> {
        let mut removed = Vec::new();
        for queue in &mut self.waiting {
            queue.retain(|slot| {
                let leave = leaves(slot);
                if leave {
                    removed.push(*slot);
                }
                !leave
            });
        }
        removed
    }

    /// Removes a running sequence (finished, failed, cancelled), freeing its reservation.
    pub fn finish(&mut self, seq: SeqId) -> Option<Slot> {
        let at = self.running.iter().position(|r| r.slot.seq == seq)?;
        let slot = self.running.remove(at).slot;
        self.kv_reserved -= slot.reserve;
        Some(slot)
    }

    /// Admits waiting sequences by strict tier priority, FIFO within a tier, while a running
    /// slot is free and the reservation fits the KV budget. The head of the highest waiting
    /// tier is never overtaken: when it does not fit, nothing below it is admitted. When it is
    /// blocked by the KV budget (not by the slot count, which frees up as streams finish), it
    /// preempts running sequences of lower tiers if that makes it fit.
    pub fn admit(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        while let Some(tier) = self.waiting.iter().position(|q| !q.is_empty()) {
            let head = self.waiting[tier][0];
            let fits_kv = self.kv_reserved + head.reserve <= self.limits.kv_budget;
            if fits_kv && self.running.len() < self.limits.max_running {
                self.waiting[tier].pop_front();
                self.start(head);
                changes.push(Change::Admitted(head.seq));
                continue;
            }
            if fits_kv {
                break;
            }
            let Some(victims) = self.preemption_victims(tier, head.reserve) else {
                break;
            };
            for seq in victims {
                if let Some(slot) = self.finish(seq) {
                    // Most recent first, each to the front: the tier's queue ends up in
                    // admission order, so the oldest preempted resumes first.
                    self.waiting[slot.tier].push_front(slot);
                    changes.push(Change::Preempted(seq));
                }
            }
        }
        changes
    }

    fn start(&mut self, slot: Slot) {
        self.admissions += 1;
        self.kv_reserved += slot.reserve;
        self.running.push(Running {
            slot,
            admitted: self.admissions,
        });
    }

    /// The fewest running sequences to preempt so that `need` KV tokens fit, taken from tiers
    /// below `tier` only, lowest tier first and most recently admitted first (the least work
    /// lost and the least waited-for stream); `None` when even all of them would not free enough.
    fn preemption_victims(&self, tier: usize, need: usize) -> Option<Vec<SeqId>> {
        let mut candidates: Vec<&Running> = self.running.iter().filter(|r| r.slot.tier > tier).collect();
        candidates.sort_by_key(|r| std::cmp::Reverse((r.slot.tier, r.admitted)));
        let mut reserved = self.kv_reserved;
        let mut victims = Vec::new();
        for r in candidates {
            if reserved + need <= self.limits.kv_budget {
                break;
            }
            reserved -= r.slot.reserve;
            victims.push(r.slot.seq);
        }
        (reserved + need <= self.limits.kv_budget).then_some(victims)
    }

    /// The tokens each running sequence feeds in the next forward, given each one's `pending`
    /// tokens (not yet in its KV cache): every decoding sequence (one pending token) feeds it,
    /// so streams keep their pace; then prefilling sequences, by tier and admission, feed chunks
    /// of at most `prefill_chunk` until the step holds `step_budget` tokens. Decode tokens
    /// always run, so a step may exceed the budget when more sequences decode than it allows.
    pub fn plan_step(
        &self,
        pending: impl Fn(SeqId) -> usize,
        prefill_chunk: usize,
        step_budget: usize,
    ) -> Vec<(SeqId, usize)> {
        let mut plan: Vec<(SeqId, usize)> = self
            .running
            .iter()
            .filter(|r| pending(r.slot.seq) == 1)
            .map(|r| (r.slot.seq, 1))
            .collect();
        let mut prefilling: Vec<&Running> = self.running.iter().filter(|r| pending(r.slot.seq) > 1).collect();
        prefilling.sort_by_key(|r| (r.slot.tier, r.admitted));
        let mut left = step_budget.saturating_sub(plan.len());
        for r in prefilling {
            if left == 0 {
                break;
            }
            let tokens = pending(r.slot.seq).min(prefill_chunk.max(1)).min(left);
            plan.push((r.slot.seq, tokens));
            left -= tokens;
        }
        plan
    }
}

/// Why a request was not queued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    QueueFull { queued: usize, limit: usize },
    TierShare { queued: usize, limit: usize, share: f64 },
}

impl Refusal {
    /// The message of the 429, naming the limit.
    pub fn message(&self, tier: &str) -> String {
        match *self {
            Self::QueueFull { queued, limit } => {
                format!("queue full: {queued} requests waiting, the limit is {limit}")
            }
            Self::TierShare { queued, limit, share } => format!(
                "tier `{tier}` holds its share of the queue: {queued} requests waiting, the limit \
                 is {limit} ({share} of the queue)"
            ),
        }
    }
}

/// How many sequences may wait, in all and per tier.
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingLimits {
    pub max_total: usize,
    pub per_tier: Vec<usize>,
    /// Each tier's configured share, named in refusals.
    shares: Vec<f64>,
}

impl WaitingLimits {
    /// `max_total` in all; each tier its share of it, at least one whatever the share.
    pub fn new(tiers: &[TierConfig], max_total: usize) -> Self {
        let shares: Vec<f64> = tiers.iter().map(|t| t.queue_share.clamp(0.0, 1.0)).collect();
        let per_tier = shares
            .iter()
            .map(|share| ((max_total as f64 * share).floor() as usize).max(1))
            .collect();
        Self {
            max_total,
            per_tier,
            shares,
        }
    }

    /// Why one more may not wait when `total` already wait, if it may not.
    pub fn refuse_total(&self, total: usize) -> Option<Refusal> {
        (total >= self.max_total).then_some(Refusal::QueueFull {
            queued: total,
            limit: self.max_total,
        })
    }

    /// Why one more may not wait in `tier` when `in_tier` already wait there, if it may not.
    pub fn refuse_in_tier(&self, tier: usize, in_tier: usize) -> Option<Refusal> {
        let limit = self.per_tier.get(tier).copied().unwrap_or(self.max_total);
        (in_tier >= limit).then(|| Refusal::TierShare {
            queued: in_tier,
            limit,
            share: self.shares.get(tier).copied().unwrap_or(1.0),
        })
    }
}

/// Finished sequences per second, smoothed; estimates `Retry-After` from the queue length.
#[derive(Debug, Default, Clone)]
pub struct DrainRate {
    per_second: f64,
    window_start: Option<Instant>,
    finished: u64,
}

impl DrainRate {
    /// Counts `sequences` finished at `now`.
    pub fn record(&mut self, sequences: usize, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        self.finished += sequences as u64;
        let elapsed = now.duration_since(start).as_secs_f64();
        if elapsed >= 1.0 {
            let rate = self.finished as f64 / elapsed;
            self.per_second = if self.per_second == 0.0 {
                rate
            } else {
                0.7 * self.per_second + 0.3 * rate
            };
            self.window_start = Some(now);
            self.finished = 0;
        }
    }

    /// The smoothed rate (0 before the first full window).
    pub fn per_second(&self) -> f64 {
        self.per_second
    }
}

/// Time for `waiting` sequences to drain at `per_second`, between 1 s and 60 s (1 s when the
/// rate is not known yet).
pub fn drain_time(waiting: usize, per_second: f64) -> Duration {
    if per_second <= 0.0 || !per_second.is_finite() {
        return Duration::from_secs(1);
    }
    Duration::from_secs_f64((waiting as f64 / per_second).clamp(1.0, 60.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAID: usize = 0;
    const FREE: usize = 1;

    fn slot(seq: SeqId, tier: usize, reserve: usize) -> Slot {
        Slot { seq, tier, reserve }
    }

    fn schedule(max_running: usize, kv_budget: usize) -> Schedule {
        Schedule::new(
            2,
            RunLimits {
                max_running,
                kv_budget,
            },
        )
    }

    fn running_ids(s: &Schedule) -> Vec<SeqId> {
        s.running().map(|r| r.seq).collect()
    }

    #[test]
    fn admission_is_strict_priority_then_fifo() {
        let mut s = schedule(3, 1000);
        for (seq, tier) in [(1, FREE), (2, PAID), (3, FREE), (4, PAID)] {
            s.enqueue(slot(seq, tier, 10));
        }
        use Change::Admitted;
        assert_eq!(s.admit(), [Admitted(2), Admitted(4), Admitted(1)]);
        assert_eq!(s.kv_reserved(), 30);
        assert!(s.admit().is_empty(), "no slot is free");
        s.finish(4);
        assert_eq!(s.admit(), [Admitted(3)]);
    }

    #[test]
    fn the_head_of_a_higher_tier_is_not_overtaken_by_a_smaller_lower_one() {
        let mut s = schedule(4, 100);
        s.enqueue(slot(1, PAID, 60));
        s.admit();
        s.enqueue(slot(2, PAID, 60));
        s.enqueue(slot(3, FREE, 10));
        assert!(
            s.admit().is_empty(),
            "paid 2 waits for KV; free 3 must not pass it"
        );
        s.finish(1);
        assert_eq!(s.admit(), [Change::Admitted(2), Change::Admitted(3)]);
    }

    #[test]
    fn a_higher_tier_blocked_by_kv_preempts_the_newest_of_the_lowest_tier() {
        let mut s = schedule(4, 30);
        s.enqueue(slot(1, FREE, 10));
        s.enqueue(slot(2, FREE, 10));
        s.enqueue(slot(3, PAID, 10));
        s.admit();
        s.enqueue(slot(4, PAID, 10));
        assert_eq!(s.admit(), [Change::Preempted(2), Change::Admitted(4)]);
        assert_eq!(running_ids(&s), [3, 1, 4]);
        // Back at the front of the free queue, ahead of later free arrivals.
        s.enqueue(slot(5, FREE, 10));
        s.finish(1);
        assert_eq!(s.admit(), [Change::Admitted(2)]);
    }

    #[test]
    fn preemption_takes_as_few_as_needed_and_only_when_it_suffices() {
        let mut s = schedule(8, 40);
        for seq in 1..=4 {
            s.enqueue(slot(seq, FREE, 10));
        }
        s.admit();
        s.enqueue(slot(9, PAID, 25));
        let changes = s.admit();
        assert_eq!(
            changes,
            [
                Change::Preempted(4),
                Change::Preempted(3),
                Change::Preempted(2),
                Change::Admitted(9)
            ]
        );
        // Resumed in admission order.
        s.finish(9);
        assert_eq!(
            s.admit(),
            [Change::Admitted(2), Change::Admitted(3), Change::Admitted(4)]
        );

        // Same tier never preempts; a lower tier alone too small to free enough is left alone.
        let mut s = schedule(8, 30);
        s.enqueue(slot(1, PAID, 20));
        s.enqueue(slot(2, FREE, 10));
        s.admit();
        s.enqueue(slot(3, PAID, 20));
        assert!(s.admit().is_empty());
        assert_eq!(running_ids(&s), [1, 2]);
    }

    #[test]
    fn a_full_slot_count_does_not_preempt() {
        let mut s = schedule(1, 100);
        s.enqueue(slot(1, FREE, 10));
        s.admit();
        s.enqueue(slot(2, PAID, 10));
        assert!(s.admit().is_empty());
    }

    #[test]
    fn a_step_feeds_every_decode_and_chunks_prefills_within_the_budget() {
        let mut s = schedule(8, 1000);
        for (seq, tier) in [(1, FREE), (2, FREE), (3, FREE), (4, PAID)] {
            s.enqueue(slot(seq, tier, 100));
        }
        s.admit();
        // 1 and 3 decode; 2 has 100 prompt tokens left, 4 (paid, admitted first) has 5.
        let pending = |seq| match seq {
            1 | 3 => 1,
            2 => 100,
            _ => 5,
        };
        assert_eq!(s.plan_step(pending, 8, 12), [(1, 1), (3, 1), (4, 5), (2, 5)]);
        assert_eq!(s.plan_step(pending, 8, 100), [(1, 1), (3, 1), (4, 5), (2, 8)]);
        assert_eq!(s.plan_step(pending, 8, 2), [(1, 1), (3, 1)], "decodes first");
    }

    #[test]
    fn removed_waiting_sequences_leave_their_queues() {
        let mut s = schedule(1, 100);
        for seq in 1..=4 {
            s.enqueue(slot(seq, (seq % 2) as usize, 10));
        }
        let removed = s.remove_waiting(|w| w.seq % 2 == 0);
        assert_eq!(removed.iter().map(|w| w.seq).collect::<Vec<_>>(), [2, 4]);
        assert_eq!(s.admit(), [Change::Admitted(1)]);
        s.finish(1);
        assert_eq!(s.admit(), [Change::Admitted(3)]);
        s.finish(3);
        assert!(s.is_idle());
    }

    fn tiers() -> Vec<TierConfig> {
        vec![
            TierConfig {
                name: "paid".into(),
                timeout: None,
                queue_share: 1.0,
            },
            TierConfig {
                name: "free".into(),
                timeout: None,
                queue_share: 0.25,
            },
        ]
    }

    #[test]
    fn waiting_limits_cap_the_queue_and_each_tier_share() {
        let tiers = tiers();
        let limits = WaitingLimits::new(&tiers, 8);
        assert_eq!(limits.per_tier, [8, 2]);
        assert_eq!(limits.refuse_total(7), None);
        assert_eq!(
            limits.refuse_total(8),
            Some(Refusal::QueueFull { queued: 8, limit: 8 })
        );
        assert_eq!(limits.refuse_in_tier(FREE, 1), None);
        assert_eq!(
            limits.refuse_in_tier(FREE, 2),
            Some(Refusal::TierShare {
                queued: 2,
                limit: 2,
                share: 0.25
            })
        );
        assert_eq!(limits.refuse_in_tier(PAID, 7), None);
        assert_eq!(
            WaitingLimits::new(&tiers, 2).per_tier,
            [2, 1],
            "a share never rounds to 0"
        );
    }

    #[test]
    fn retry_after_follows_the_drain_rate() {
        let t0 = Instant::now();
        let mut rate = DrainRate::default();
        assert_eq!(drain_time(100, rate.per_second()), Duration::from_secs(1));
        rate.record(0, t0);
        rate.record(10, t0 + Duration::from_secs(2));
        assert!((rate.per_second() - 5.0).abs() < 1e-9);
        assert_eq!(drain_time(20, rate.per_second()), Duration::from_secs(4));
        assert_eq!(drain_time(10_000, rate.per_second()), Duration::from_secs(60));
    }
}
