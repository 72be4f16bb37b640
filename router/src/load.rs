//! What the router knows of each endpoint's load: its own requests in flight there, and the
//! queue the server itself last reported (the `x-modelfleet-load` response header between the
//! once-a-second scrapes). Shared by every request through atomics; one [`LoadBoard`] keeps the
//! entries across table rebuilds so a pod's counts survive a watch event.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// One endpoint's load.
#[derive(Debug)]
pub struct EndpointLoad {
    /// The endpoint (`podIP:8080`).
    pub addr: SocketAddr,
    /// This router's requests in flight to it.
    outstanding: AtomicU32,
    /// Requests queued and running in the server, as it last reported.
    reported: AtomicU32,
    /// When the server last reported, in milliseconds since the board's epoch; 0: never.
    reported_at_ms: AtomicU64,
    /// Recent time to a response head, in microseconds (moving average; 0: none yet).
    latency_us: AtomicU64,
    /// When the board first saw it, in milliseconds since the epoch.
    added_at_ms: u64,
    epoch: Instant,
}

impl EndpointLoad {
    fn new(addr: SocketAddr, epoch: Instant) -> Self {
        Self {
            addr,
            outstanding: AtomicU32::new(0),
            reported: AtomicU32::new(0),
            reported_at_ms: AtomicU64::new(0),
            latency_us: AtomicU64::new(0),
            added_at_ms: millis_since(epoch, Instant::now()),
            epoch,
        }
    }

    /// The score least-loaded picking minimises: this router's requests in flight plus what the
    /// server reports queued or running (other routers' requests included).
    pub fn score(&self) -> u32 {
        self.outstanding
            .load(Ordering::Relaxed)
            .saturating_add(self.reported.load(Ordering::Relaxed))
    }

    /// What picking minimises: the requests ahead of a new one (in flight and reported, plus
    /// itself) times the endpoint's recent response time, so a server ten times slower takes a
    /// tenth of the traffic at the same queue. An endpoint not yet measured counts 1 µs a
    /// request, so it is tried early (which measures it) and queues still order it.
    pub fn cost(&self) -> u64 {
        let latency = self.latency_us.load(Ordering::Relaxed).max(1);
        u64::from(self.score()).saturating_add(1).saturating_mul(latency)
    }

    /// Records the time one request took to its response head (moving average, weight 1/4).
    pub fn observe_latency(&self, took: Duration) {
        let sample = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .latency_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample
                } else {
                    (old.saturating_mul(3)).saturating_add(sample) / 4
                })
            });
    }

    /// This router's requests in flight.
    pub fn outstanding(&self) -> u32 {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// The server's last reported load.
    pub fn reported(&self) -> u32 {
        self.reported.load(Ordering::Relaxed)
    }

    /// Records the server's own report (a response header or a scrape).
    pub fn report(&self, queued_and_running: u32, now: Instant) {
        self.reported.store(queued_and_running, Ordering::Relaxed);
        self.reported_at_ms
            .store(millis_since(self.epoch, now).max(1), Ordering::Relaxed);
    }

    /// Fresh: reported within `stale_after`, or new to the board within `stale_after` (a pod
    /// that just became Ready has not been scraped yet).
    pub fn is_fresh(&self, now: Instant, stale_after: Duration) -> bool {
        let now_ms = millis_since(self.epoch, now);
        let limit = u64::try_from(stale_after.as_millis()).unwrap_or(u64::MAX);
        let at = self.reported_at_ms.load(Ordering::Relaxed);
        let since = if at == 0 { self.added_at_ms } else { at };
        now_ms.saturating_sub(since) <= limit
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }
}

/// A request in flight to an endpoint; dropping it ends the count (also when the client goes away).
#[derive(Debug)]
pub struct InFlight(Arc<EndpointLoad>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

fn millis_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_millis()).unwrap_or(u64::MAX)
}

/// Every endpoint's load, by address. Table rebuilds ask it for the entries of the endpoints
/// they keep and [`LoadBoard::retain`] forgets the rest.
#[derive(Debug, Clone)]
pub struct LoadBoard {
    inner: Arc<Mutex<HashMap<SocketAddr, Arc<EndpointLoad>>>>,
    epoch: Instant,
}

impl Default for LoadBoard {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            epoch: Instant::now(),
        }
    }
}

impl LoadBoard {
    /// The entry of `addr`, created on first sight.
    pub fn entry(&self, addr: SocketAddr) -> Arc<EndpointLoad> {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(addr)
            .or_insert_with(|| Arc::new(EndpointLoad::new(addr, self.epoch)))
            .clone()
    }

    /// Forgets every endpoint not in `keep`.
    pub fn retain(&self, keep: &std::collections::HashSet<SocketAddr>) {
        let mut map = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|addr, _| keep.contains(addr));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last], 8080))
    }

    #[test]
    fn the_score_adds_own_requests_and_the_servers_report() {
        let board = LoadBoard::default();
        let e = board.entry(addr(1));
        let a = e.begin();
        let _b = e.begin();
        e.report(5, Instant::now());
        assert_eq!(e.score(), 7);
        drop(a);
        assert_eq!((e.outstanding(), e.score()), (1, 6));
        assert!(Arc::ptr_eq(&e, &board.entry(addr(1))), "one entry per address");
    }

    #[test]
    fn an_endpoint_goes_stale_without_reports_and_fresh_again_with_one() {
        let board = LoadBoard::default();
        let e = board.entry(addr(2));
        let now = Instant::now();
        let stale = Duration::from_secs(3);
        assert!(e.is_fresh(now, stale), "new endpoints get the grace period");
        assert!(!e.is_fresh(now + Duration::from_secs(4), stale));
        e.report(0, now + Duration::from_secs(4));
        assert!(e.is_fresh(now + Duration::from_secs(6), stale));
        assert!(!e.is_fresh(now + Duration::from_secs(8), stale));
    }

    #[test]
    fn the_cost_weighs_the_queue_by_recent_latency() {
        let board = LoadBoard::default();
        let (fast, slow) = (board.entry(addr(4)), board.entry(addr(5)));
        assert_eq!(fast.cost(), 1, "unmeasured endpoints are tried early");
        fast.observe_latency(Duration::from_millis(5));
        slow.observe_latency(Duration::from_millis(50));
        let _busy = [fast.begin(), fast.begin()];
        assert!(fast.cost() < slow.cost(), "3 × 5 ms ahead beats 1 × 50 ms");
        slow.observe_latency(Duration::from_millis(10));
        assert_eq!(slow.cost(), 40_000, "the average moves a quarter of the way");
    }

    #[test]
    fn retain_forgets_removed_endpoints() {
        let board = LoadBoard::default();
        let first = board.entry(addr(3));
        let _in_flight = first.begin();
        board.retain(&std::collections::HashSet::new());
        assert_eq!(board.entry(addr(3)).outstanding(), 0, "a new entry");
    }
}
