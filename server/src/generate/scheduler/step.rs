//! The scheduler actor: owns the model on its own OS thread, takes submissions between steps,
//! and runs the step loop. What to admit, preempt and feed comes from [`Schedule`]; this file
//! applies it to the model and the streams.

use std::{
    collections::HashMap,
    panic::{self, AssertUnwindSafe},
    sync::{
        Arc,
        atomic::Ordering::Relaxed,
        mpsc::{Receiver, RecvTimeoutError},
    },
    thread,
    time::{Duration, Instant},
};

use super::{
    SchedulerConfig, SchedulerStats,
    queue::{Change, DrainRate, RunLimits, Schedule, Slot},
    sequence::{Progress, Sequence, TokenRules},
};
use crate::{
    error::InferError,
    generate::{Decode, Feed, LanguageModel, SeqId},
};

/// How long the loop waits for work when a step could run nothing although sequences remain
/// (a state admission rules out; the wait keeps a surprise from spinning a core).
const STALLED_POLL: Duration = Duration::from_millis(5);

/// The scheduler thread's state.
pub struct Actor {
    model: Box<dyn LanguageModel>,
    decode: Arc<dyn Decode>,
    config: SchedulerConfig,
    context_length: usize,
    schedule: Schedule,
    sequences: HashMap<SeqId, Sequence>,
    stats: Arc<SchedulerStats>,
    drain_rate: DrainRate,
}

impl Actor {
    /// An actor with nothing waiting or running.
    pub fn new(
        model: Box<dyn LanguageModel>,
        decode: Arc<dyn Decode>,
        config: SchedulerConfig,
        stats: Arc<SchedulerStats>,
    ) -> Self {
        let limits = RunLimits {
            max_running: config.max_running,
            kv_budget: config.kv_budget_tokens,
        };
        Self {
            context_length: model.context_length(),
            model,
            decode,
            schedule: Schedule::new(config.tiers.len(), limits),
            config,
            sequences: HashMap::new(),
            stats,
            drain_rate: DrainRate::default(),
        }
    }

    /// Runs steps while there is work; sleeps on the channel when there is none; returns when
    /// every handle is gone and the work is done.
    pub fn run(mut self, submissions: Receiver<Sequence>) {
        loop {
            if self.schedule.is_idle() {
                let Ok(sequence) = submissions.recv() else {
                    return;
                };
                self.accept(sequence);
            }
            // Whatever arrived during the last step joins the next one.
            while let Ok(sequence) = submissions.try_recv() {
                self.accept(sequence);
            }
            if !self.step(Instant::now()) {
                match submissions.recv_timeout(STALLED_POLL) {
                    Ok(sequence) => self.accept(sequence),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => thread::sleep(STALLED_POLL),
                }
            }
        }
    }

    fn accept(&mut self, sequence: Sequence) {
        self.schedule.enqueue(Slot {
            seq: sequence.id,
            tier: sequence.tier,
            reserve: sequence.reserve,
        });
        self.sequences.insert(sequence.id, sequence);
    }

    /// One scheduling step and at most one forward; false when nothing could run.
    fn step(&mut self, now: Instant) -> bool {
        self.drop_cancelled(now);
        self.expire(now);
        self.admit();
        let sequences = &self.sequences;
        let plan = self.schedule.plan_step(
            |seq| sequences.get(&seq).map_or(0, Sequence::pending),
            self.config.prefill_chunk,
            self.config.step_token_budget,
        );
        if !plan.is_empty() {
            match self.forward(&plan) {
                Ok(logits) => self.advance(&plan, &logits, now),
                Err(message) => self.fail_step(&plan, &message),
            }
        }
        self.publish();
        !plan.is_empty()
    }

    /// Drops the sequences whose client went away, freeing their KV cache before any compute.
    fn drop_cancelled(&mut self, now: Instant) {
        let sequences = &self.sequences;
        let gone = |seq: &SeqId| sequences.get(seq).is_none_or(Sequence::is_cancelled);
        let running: Vec<SeqId> = self.schedule.running().map(|s| s.seq).filter(gone).collect();
        let waiting = self.schedule.remove_waiting(|slot| gone(&slot.seq));
        for seq in running {
            self.retire(seq, now);
            self.stats.cancelled_total.fetch_add(1, Relaxed);
        }
        for slot in waiting {
            self.stats.remove_waiting(slot.tier);
            self.sequences.remove(&slot.seq);
            self.stats.cancelled_total.fetch_add(1, Relaxed);
        }
    }

    /// Ends the sequences past their deadline, waiting or running.
    fn expire(&mut self, now: Instant) {
        let retry_after = self.stats.retry_after();
        let sequences = &self.sequences;
        let expired = |seq: &SeqId| sequences.get(seq).is_some_and(|s| s.is_expired(now));
        let running: Vec<SeqId> = self.schedule.running().map(|s| s.seq).filter(expired).collect();
        let waiting = self.schedule.remove_waiting(|slot| expired(&slot.seq));
        let mut ended = Vec::new();
        for slot in waiting {
            self.stats.remove_waiting(slot.tier);
            ended.extend(self.sequences.remove(&slot.seq));
        }
        for seq in running {
            ended.extend(self.retire(seq, now));
        }
        for sequence in ended {
            self.stats.timed_out_total.fetch_add(1, Relaxed);
            sequence.time_out(now, retry_after);
        }
    }

    /// Applies admission: counts moves in and out of the queue, drops preempted KV caches.
    fn admit(&mut self) {
        for change in self.schedule.admit() {
            match change {
                Change::Admitted(seq) => {
                    let Some(sequence) = self.sequences.get_mut(&seq) else {
                        continue;
                    };
                    self.stats.remove_waiting(sequence.tier);
                    if sequence.admitted() {
                        let prompt = sequence.prompt_len() as u64;
                        self.stats.prompt_tokens_total.fetch_add(prompt, Relaxed);
                    }
                }
                Change::Preempted(seq) => {
                    self.model.release(seq);
                    self.stats.preemptions_total.fetch_add(1, Relaxed);
                    if let Some(sequence) = self.sequences.get_mut(&seq) {
                        sequence.preempted();
                        self.stats.add_waiting(sequence.tier);
                        tracing::debug!(seq, generated = sequence.generated(), "preempted");
                    }
                }
            }
        }
    }

    /// Runs the model on `plan`; a model error or panic becomes the step's error message.
    fn forward(&mut self, plan: &[(SeqId, usize)]) -> Result<Vec<Vec<f32>>, String> {
        let sequences = &self.sequences;
        let feeds: Vec<Feed<'_>> = plan
            .iter()
            .map(|&(seq, n)| Feed {
                seq,
                tokens: sequences.get(&seq).map_or(&[], |s| s.next_feed(n)),
            })
            .collect();
        let tokens: usize = feeds.iter().map(|f| f.tokens.len()).sum();
        self.stats.steps_total.fetch_add(1, Relaxed);
        self.stats.last_step_batch_size.store(feeds.len(), Relaxed);
        self.stats
            .step_sequences_total
            .fetch_add(feeds.len() as u64, Relaxed);
        self.stats.last_step_tokens.store(tokens, Relaxed);
        let model = &mut self.model;
        // A backend panic must fail this step's requests, not kill the thread every stream
        // depends on; the failed sequences' caches are released, so no half state survives.
        match panic::catch_unwind(AssertUnwindSafe(|| model.forward(&feeds))) {
            Ok(Ok(logits)) if logits.len() == feeds.len() => Ok(logits),
            Ok(Ok(logits)) => Err(format!(
                "the model returned {} logits for {} sequences",
                logits.len(),
                feeds.len()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(payload) => Err(format!("the model panicked: {}", panic_message(payload.as_ref()))),
        }
    }

    /// Records what each sequence fed; samples and streams for those whose input is complete.
    fn advance(&mut self, plan: &[(SeqId, usize)], logits: &[Vec<f32>], now: Instant) {
        let rules = TokenRules {
            decode: self.decode.as_ref(),
            eos_ids: &self.config.eos_ids,
            context_length: self.context_length,
        };
        let mut ends = Vec::new();
        for (&(seq, n), logits) in plan.iter().zip(logits) {
            let Some(sequence) = self.sequences.get_mut(&seq) else {
                continue;
            };
            sequence.fed(n);
            if sequence.pending() > 0 {
                continue;
            }
            self.stats.generated_tokens_total.fetch_add(1, Relaxed);
            // Sampling and decoding run the tokenizer: a panic there fails this sequence only.
            match panic::catch_unwind(AssertUnwindSafe(|| sequence.take_token(logits, rules))) {
                Ok(Progress::Continues) => {}
                Ok(ended) => ends.push((seq, Ok(ended))),
                Err(payload) => ends.push((seq, Err(panic_message(payload.as_ref())))),
            }
        }
        for (seq, ended) in ends {
            let sequence = self.retire(seq, now);
            let counter = match ended {
                Ok(Progress::ClientGone) => &self.stats.cancelled_total,
                Ok(_) => &self.stats.finished_total,
                Err(message) => {
                    tracing::error!(seq, error = message, "decoding a token panicked");
                    if let Some(sequence) = sequence {
                        sequence.fail(InferError::Backend(format!("decoding panicked: {message}")));
                    }
                    &self.stats.failed_total
                }
            };
            counter.fetch_add(1, Relaxed);
        }
    }

    /// Fails every sequence of a failed forward and frees their caches; the others go on.
    fn fail_step(&mut self, plan: &[(SeqId, usize)], message: &str) {
        tracing::error!(error = message, sequences = plan.len(), "generation step failed");
        for &(seq, _) in plan {
            if let Some(sequence) = self.retire(seq, Instant::now()) {
                self.stats.failed_total.fetch_add(1, Relaxed);
                sequence.fail(InferError::Backend(message.to_owned()));
            }
        }
    }

    /// Takes a running sequence out: frees its reservation and its KV cache at once.
    fn retire(&mut self, seq: SeqId, now: Instant) -> Option<Sequence> {
        self.schedule.finish(seq);
        self.model.release(seq);
        self.drain_rate.record(1, now);
        self.sequences.remove(&seq)
    }

    fn publish(&self) {
        self.stats.running.store(self.schedule.running_len(), Relaxed);
        self.stats
            .kv_reserved_tokens
            .store(self.schedule.kv_reserved(), Relaxed);
        self.stats.set_drain_rate(self.drain_rate.per_second());
    }
}

/// The message a panic was raised with.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
