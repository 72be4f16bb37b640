//! Picking: which revision a request goes to (the canary weight, exactly), and which endpoint of
//! it (power of two choices on the least score, never a stale endpoint).

use std::{
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use crate::{
    route::Health,
    table::{Endpoint, ModelEntry, Revision},
};

/// How endpoints are chosen among the eligible ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Strategy {
    /// Power of two choices on the least cost: requests ahead (the router's own in flight plus
    /// the server's reported queue) times recent response time.
    #[default]
    LeastLoaded,
    /// Each endpoint in turn, ignoring load (for comparison).
    RoundRobin,
}

/// Picking settings.
#[derive(Debug, Clone, Copy)]
pub struct PickConfig {
    /// The strategy.
    pub strategy: Strategy,
    /// An endpoint whose server has not reported its load for this long is not picked.
    pub stale_after: Duration,
}

impl PickConfig {
    /// Whether `endpoint` may be picked now: its load was read within `stale_after`.
    pub fn eligible(&self, endpoint: &Endpoint, now: Instant) -> bool {
        endpoint.load.is_fresh(now, self.stale_after)
    }
}

impl Default for PickConfig {
    fn default() -> Self {
        Self {
            strategy: Strategy::LeastLoaded,
            stale_after: Duration::from_secs(3),
        }
    }
}

/// The models' state as routing sees it at `now`, counting only the endpoints `allowed` admits
/// (every one on the HTTP path; those of the proxy's subset hint for the Endpoint Picker).
#[derive(Debug, Clone, Copy)]
pub struct LiveHealth<'a, F> {
    /// Picking settings (staleness).
    pub config: &'a PickConfig,
    /// Now.
    pub now: Instant,
    /// Which endpoints count.
    pub allowed: F,
}

impl<F: Fn(&Endpoint) -> bool> Health for LiveHealth<'_, F> {
    fn overloaded(&self, model: &ModelEntry) -> bool {
        let limit = model.routing.fallback.as_ref().and_then(|f| f.queue_depth_above);
        let endpoints = model.all_endpoints().filter(|e| (self.allowed)(e));
        overloaded(endpoints, limit, self.config, self.now)
    }

    fn available(&self, model: &ModelEntry) -> bool {
        model
            .all_endpoints()
            .any(|e| (self.allowed)(e) && self.config.eligible(e, self.now))
    }
}

/// Whether the `n`-th request (counting from 0) of a model goes to a candidate of `weight`
/// percent: exactly `weight` of every 100 consecutive requests do, spread evenly.
pub fn to_candidate(n: u64, weight: u32) -> bool {
    let w = u64::from(weight.min(100));
    (n + 1) * w / 100 > n * w / 100
}

/// The revision for the model's `n`-th request: the candidate by its weight when it has a
/// usable endpoint, else the stable one (and the other way round).
pub fn revision(model: &ModelEntry, n: u64, usable: impl Fn(&Revision) -> bool) -> &Revision {
    match &model.candidate {
        Some((candidate, weight)) if *weight > 0 => {
            let preferred = to_candidate(n, *weight);
            let (first, second) = if preferred {
                (candidate, &model.stable)
            } else {
                (&model.stable, candidate)
            };
            if usable(first) || !usable(second) {
                first
            } else {
                second
            }
        }
        _ => &model.stable,
    }
}

/// The picker's per-process state: the round-robin cursor.
#[derive(Debug, Default)]
pub struct Picker {
    cursor: AtomicU64,
}

impl Picker {
    /// The endpoint for a request among `endpoints`, skipping `exclude` (an endpoint already
    /// tried) and stale ones; None when none is eligible.
    pub fn pick<'a>(
        &self,
        config: &PickConfig,
        endpoints: &'a [Endpoint],
        exclude: &[SocketAddr],
        now: Instant,
    ) -> Option<&'a Endpoint> {
        let eligible = |e: &&Endpoint| !exclude.contains(&e.load.addr) && config.eligible(e, now);
        let count = endpoints.iter().filter(eligible).count();
        if count == 0 {
            return None;
        }
        let nth = |i: usize| endpoints.iter().filter(eligible).nth(i);
        match config.strategy {
            Strategy::RoundRobin => {
                let n = self.cursor.fetch_add(1, Ordering::Relaxed);
                nth(usize::try_from(n % count as u64).unwrap_or(0))
            }
            Strategy::LeastLoaded if count == 1 => nth(0),
            Strategy::LeastLoaded => {
                let a = fastrand::usize(..count);
                let b = (a + 1 + fastrand::usize(..count - 1)) % count;
                let (a, b) = (nth(a)?, nth(b)?);
                Some(if b.load.cost() < a.load.cost() { b } else { a })
            }
        }
    }

    /// Every eligible endpoint, least loaded first (the Endpoint Picker's fallback list).
    pub fn ranked<'a>(
        &self,
        config: &PickConfig,
        endpoints: &'a [Endpoint],
        now: Instant,
    ) -> Vec<&'a Endpoint> {
        let mut list: Vec<&Endpoint> = endpoints.iter().filter(|e| config.eligible(e, now)).collect();
        list.sort_by_key(|e| e.load.cost());
        list
    }
}

/// Whether a model counts as overloaded for `queue_depth_above`: the servers' reported load per
/// eligible endpoint above it (None: never by queue).
pub fn overloaded<'a>(
    endpoints: impl IntoIterator<Item = &'a Endpoint>,
    queue_depth_above: Option<f64>,
    config: &PickConfig,
    now: Instant,
) -> bool {
    let Some(limit) = queue_depth_above else {
        return false;
    };
    let fresh: Vec<&Endpoint> = endpoints
        .into_iter()
        .filter(|e| config.eligible(e, now))
        .collect();
    if fresh.is_empty() {
        return false;
    }
    let total: f64 = fresh.iter().map(|e| f64::from(e.load.score())).sum();
    total / fresh.len() as f64 > limit
}

#[cfg(test)]
mod tests;
