//! The two load shapes. Closed loop: `concurrency` workers sending back to back, each with its
//! own tally. Open loop: Poisson arrivals against absolute times, latency measured from each
//! arrival's scheduled time (so a slow server cannot hide its queueing: no coordinated
//! omission), at most `max_in_flight` outstanding, all awaited by the one scheduling task.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{FutureExt, StreamExt, stream::FuturesUnordered};
use tokio::sync::watch;

use crate::{
    client::{Outcome, Pool, Target, send},
    schedule::Poisson,
    stats::Tally,
};

/// When to measure and when to stop.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Requests sent (scheduled, in the open loop) before this are warm-up, not counted.
    pub measure_from: Instant,
    /// No request is sent (scheduled) at or after this; `None`: only `max_requests` ends the run.
    pub stop: Option<Instant>,
    /// Stop after this many measured requests (arrivals, in the open loop).
    pub max_requests: Option<u64>,
}

impl Window {
    fn open_at(&self, t: Instant) -> bool {
        self.stop.is_none_or(|stop| t < stop)
    }
}

/// The early stop (Ctrl-C): once set, no new request is sent; those in flight finish.
#[derive(Debug, Clone)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A stop and the sender that sets it (`send(true)`).
    pub fn new() -> (watch::Sender<bool>, Self) {
        let (tx, rx) = watch::channel(false);
        (tx, Self(rx))
    }

    /// Whether the stop was set.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the stop is set; never, if its sender went away unset.
    async fn wait(&mut self) {
        if self.0.wait_for(|set| *set).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Takes one of the `max` measured-request slots shared by the workers; false when none is left.
fn take_ticket(taken: &AtomicU64, max: Option<u64>) -> bool {
    match max {
        None => true,
        Some(max) => taken.fetch_add(1, Ordering::Relaxed) < max,
    }
}

/// A pause after a failed connection, so a dead server is not dialled in a tight loop.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);

/// Closed loop: `concurrency` workers each send the next request as soon as the last one ended.
pub async fn closed_loop(
    pool: Arc<Pool>,
    target: Target,
    concurrency: usize,
    window: Window,
    stop: Stop,
) -> Tally {
    let taken = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..concurrency)
        .map(|w| {
            let (pool, target, taken, stop) = (pool.clone(), target.clone(), taken.clone(), stop.clone());
            tokio::spawn(async move {
                let mut tally = Tally::default();
                // Worker w sends bodies w, w + C, w + 2C, ...: the workers interleave the texts.
                let mut i = w as u64;
                loop {
                    let started = Instant::now();
                    if !window.open_at(started) || stop.is_set() {
                        break;
                    }
                    let counted = started >= window.measure_from;
                    if counted && !take_ticket(&taken, window.max_requests) {
                        break;
                    }
                    let outcome = send(&pool, &target, i).await;
                    let done = Instant::now();
                    if counted {
                        tally.record(outcome, done - started, done);
                    }
                    if outcome == Outcome::Connect {
                        tokio::time::sleep(CONNECT_BACKOFF).await;
                    }
                    i += concurrency as u64;
                }
                tally
            })
        })
        .collect();
    let mut total = Tally::default();
    for worker in workers {
        if let Ok(t) = worker.await {
            total.merge(t);
        }
    }
    total
}

/// Arrivals launched in one go before the open loop looks at answers again, when it is behind.
const BURST: usize = 256;

/// How late a tokio sleep can end: its timer ticks every 1 ms, a deadline is rounded up to a
/// tick, and the driver's wait to whole milliseconds.
const TIMER_SLACK: Duration = Duration::from_millis(2);

/// The open loop's arrival process and limits.
#[derive(Debug, Clone, Copy)]
pub struct Arrivals {
    /// Time zero of the schedule.
    pub start: Instant,
    /// Mean arrivals per second.
    pub rate: f64,
    /// Seed of the schedule.
    pub seed: u64,
    /// Most requests outstanding.
    pub max_in_flight: usize,
    /// Sleep only until `TIMER_SLACK` before each arrival and wait the rest by yielding: sends
    /// within microseconds of the schedule but keeps a core busy. Without, a send can be up to
    /// about 2 ms late, and that counts as latency.
    pub spin: bool,
}

/// Open loop: Poisson arrivals at `config.rate` per second, each sent at its scheduled
/// time whatever the earlier ones are waiting for. An arrival finding `max_in_flight` requests
/// outstanding is counted as dropped by the client.
///
/// One task runs the schedule and awaits every outstanding request (a `FuturesUnordered`): no
/// task or shared counter per request; the connections run in their own tasks.
pub async fn open_loop(
    pool: &Pool,
    target: &Target,
    config: Arrivals,
    window: Window,
    mut stop: Stop,
) -> Tally {
    let Arrivals {
        start,
        rate,
        seed,
        max_in_flight,
        spin,
    } = config;
    let mut arrivals = Poisson::new(start, rate, seed);
    let mut next = Some(arrivals.next_arrival());
    let mut tally = Tally::default();
    let (mut measured, mut i) = (0u64, 0u64);
    let mut in_flight = FuturesUnordered::new();
    let record = |tally: &mut Tally, (outcome, at, counted): (Outcome, Instant, bool)| {
        if counted {
            let done = Instant::now();
            // From the scheduled time: a send delayed in the client counts as latency too.
            tally.record(outcome, done.saturating_duration_since(at), done);
        }
    };
    let sleep = tokio::time::sleep_until(start.into());
    tokio::pin!(sleep);
    loop {
        // Send what is due.
        let now = Instant::now();
        for _ in 0..BURST {
            let Some(at) = next.filter(|&at| at <= now) else {
                break;
            };
            if !window.open_at(at) || stop.is_set() {
                next = None;
                break;
            }
            let counted = at >= window.measure_from;
            if counted {
                if window.max_requests.is_some_and(|max| measured >= max) {
                    next = None;
                    break;
                }
                measured += 1;
                tally.max_send_lag = tally.max_send_lag.max(now - at);
            }
            if in_flight.len() < max_in_flight {
                let n = i;
                in_flight.push(async move { (send(pool, target, n).await, at, counted) });
            } else {
                tally.dropped_by_client += u64::from(counted);
            }
            i += 1;
            next = Some(arrivals.next_arrival());
        }
        // Take the answers that are in.
        while let Some(Some(done)) = in_flight.next().now_or_never() {
            record(&mut tally, done);
        }
        let Some(at) = next else {
            break;
        };
        let wait = at.saturating_duration_since(Instant::now());
        if wait.is_zero() || (spin && wait <= TIMER_SLACK) {
            // Let the connections run, then look again.
            tokio::task::yield_now().await;
            continue;
        }
        // Sleep to the next arrival (`TIMER_SLACK` early when spinning), unless an answer or the
        // stop comes first.
        let wake = if spin { at - TIMER_SLACK } else { at };
        if sleep.deadline() != wake.into() {
            sleep.as_mut().reset(wake.into());
        }
        tokio::select! {
            biased;
            () = stop.wait() => next = None,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => record(&mut tally, done),
            () = &mut sleep => {}
        }
    }
    // Every outstanding request ends within --timeout.
    while let Some(done) = in_flight.next().await {
        record(&mut tally, done);
    }
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_budget_is_shared() {
        let taken = AtomicU64::new(0);
        assert!(take_ticket(&taken, Some(2)));
        assert!(take_ticket(&taken, Some(2)));
        assert!(!take_ticket(&taken, Some(2)));
        assert!(take_ticket(&AtomicU64::new(5), None));
    }

    #[test]
    fn windows_without_an_end_stay_open() {
        let now = Instant::now();
        let w = Window {
            measure_from: now,
            stop: None,
            max_requests: Some(3),
        };
        assert!(w.open_at(now + Duration::from_secs(3600)));
        let w = Window {
            stop: Some(now + Duration::from_secs(1)),
            ..w
        };
        assert!(w.open_at(now) && !w.open_at(now + Duration::from_secs(1)));
    }

    #[tokio::test]
    async fn a_stop_without_a_sender_never_fires() {
        let (tx, mut stop) = Stop::new();
        drop(tx);
        assert!(!stop.is_set());
        let waited = tokio::time::timeout(Duration::from_millis(20), stop.wait()).await;
        assert!(waited.is_err());
        let (tx, mut stop) = Stop::new();
        tx.send(true).unwrap();
        assert!(stop.is_set());
        stop.wait().await;
    }
}
