//! Scale from zero, the router's half: it tells the operator that a model with
//! `minReplicas: 0` has requests by writing the ModelDeployment's `modelfleet.dev/last-request`
//! annotation (RFC 3339), the one write the router makes. At once (at most once a second) when a
//! request finds no replica, so the autoscaler wakes the model on its next tick; otherwise at
//! most every `idlePeriod / 4`, so the autoscaler sees the model is in use. It also remembers how
//! long the last wake took (the first held request's wait), for the Retry-After of requests that
//! could not wait that long.
//!
//! An annotation, not a call to the operator: it needs no new port or credentials, survives an
//! operator restart or leader change, and `kubectl get mdep -o yaml` shows it.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use modelfleet_crds::{ModelDeployment, constants::annotations::LAST_REQUEST};
use tokio::sync::mpsc;

use crate::table::ModelEntry;

/// Reports waiting to be written; beyond it a report is dropped (the next request sends another).
const QUEUE: usize = 64;
/// The Retry-After of a model whose wake has not been measured yet.
pub const UNMEASURED_COLD_START: Duration = Duration::from_secs(30);

/// A model to mark as used now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Its namespace.
    pub namespace: String,
    /// Its ModelDeployment.
    pub name: String,
}

/// What this router saw of one model since it started (the `ModelDemand` of its reports to the
/// operator: cumulative, so a lost report loses nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Demand {
    /// Requests that named it.
    pub requests: u64,
    /// Cacheable requests answered from the cache.
    pub cache_hits: u64,
    /// Cacheable requests that were not.
    pub cache_misses: u64,
    /// Requests its fallback answered instead.
    pub fallbacks: u64,
    /// When the newest request arrived, Unix milliseconds.
    pub last_request_unix_ms: i64,
}

/// What a counted event was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A request named the model.
    Request,
    /// A cache lookup for it hit.
    CacheHit,
    /// A cache lookup for it missed.
    CacheMiss,
    /// Its fallback answered a request for it.
    Fallback,
}

/// When each model was last reported, its measured cold starts, and its demand.
#[derive(Debug, Default)]
pub struct Activity {
    reports: Option<mpsc::Sender<Report>>,
    last: Mutex<HashMap<String, Instant>>,
    cold_starts: Mutex<HashMap<String, Duration>>,
    /// Namespace → ModelDeployment → demand: nested, so counting a request for a model seen
    /// before looks it up by `&str` without allocating its key.
    demand: Mutex<HashMap<String, HashMap<String, Demand>>>,
}

impl Activity {
    /// Reports go to `reports` (None: a static table, nothing to tell).
    pub fn new(reports: Option<mpsc::Sender<Report>>) -> Self {
        Self {
            reports,
            ..Self::default()
        }
    }

    /// A request for `model` arrived; `waiting` when no replica can take it now.
    pub fn seen(&self, model: &ModelEntry, waiting: bool, now: Instant) {
        let Some(reports) = self.reports.as_ref().filter(|_| model.scales_from_zero) else {
            return;
        };
        let every = if waiting {
            Duration::from_secs(1)
        } else {
            (model.idle_period / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
        };
        let key = model.key();
        {
            let mut last = crate::state::lock(&self.last);
            if last.get(&key).is_some_and(|t| now.duration_since(*t) < every) {
                return;
            }
            last.insert(key, now);
        }
        let report = Report {
            namespace: model.namespace.clone(),
            name: model.deployment.clone(),
        };
        if reports.try_send(report).is_err() {
            tracing::warn!(model = %model.key(), "activity report dropped: the writer is behind");
        }
    }

    /// Counts `what` for `model`.
    pub fn count(&self, model: &ModelEntry, what: Seen) {
        let mut demand = crate::state::lock(&self.demand);
        let Some(d) = slot(&mut demand, &model.namespace).and_then(|m| slot(m, &model.deployment)) else {
            return;
        };
        match what {
            Seen::Request => {
                d.requests += 1;
                d.last_request_unix_ms = k8s_openapi::jiff::Timestamp::now().as_millisecond();
            }
            Seen::CacheHit => d.cache_hits += 1,
            Seen::CacheMiss => d.cache_misses += 1,
            Seen::Fallback => d.fallbacks += 1,
        }
    }

    /// Every model's demand so far: `(namespace, deployment)` → counts.
    pub fn demand(&self) -> Vec<((String, String), Demand)> {
        let demand = crate::state::lock(&self.demand);
        demand
            .iter()
            .flat_map(|(ns, models)| {
                models
                    .iter()
                    .map(move |(name, d)| ((ns.clone(), name.clone()), d.clone()))
            })
            .collect()
    }

    /// A held request of `model` got a replica after `waited`.
    pub fn woke(&self, model: &str, waited: Duration) {
        let mut cold = crate::state::lock(&self.cold_starts);
        // Requests released together waited less than the first one did: keep the longest of a
        // wake, and let a later, shorter wake replace it once its first request reports.
        let entry = cold.entry(model.to_owned()).or_insert(waited);
        if waited > *entry || waited * 2 < *entry {
            *entry = waited;
        }
    }

    /// How long `model` took to wake last time.
    pub fn cold_start(&self, model: &str) -> Option<Duration> {
        crate::state::lock(&self.cold_starts).get(model).copied()
    }

    /// The `Retry-After` of a request for `model` that found no replica and could not wait:
    /// its measured cold start (rounded up, [`UNMEASURED_COLD_START`] before one) when it scales
    /// from zero, else 5 s.
    pub fn retry_after(&self, model: &ModelEntry) -> Duration {
        if !model.scales_from_zero {
            return Duration::from_secs(5);
        }
        let cold = self.cold_start(&model.key()).unwrap_or(UNMEASURED_COLD_START);
        Duration::from_secs(cold.as_secs_f64().ceil().max(1.0) as u64)
    }
}

/// `map[key]`, inserted as the default first when missing; the key is copied only then.
fn slot<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> Option<&'a mut V> {
    if !map.contains_key(key) {
        map.insert(key.to_owned(), V::default());
    }
    map.get_mut(key)
}

/// Writes each report's annotation until the channel closes.
pub async fn run(client: Client, mut reports: mpsc::Receiver<Report>) {
    let params = PatchParams::default();
    while let Some(r) = reports.recv().await {
        let api: Api<ModelDeployment> = Api::namespaced(client.clone(), &r.namespace);
        let now = k8s_openapi::jiff::Timestamp::now().to_string();
        let patch = serde_json::json!({"metadata": {"annotations": {LAST_REQUEST: now}}});
        if let Err(e) = api.patch(&r.name, &params, &Patch::Merge(&patch)).await {
            tracing::warn!(model = %format!("{}/{}", r.namespace, r.name), error = %e, "cannot write {LAST_REQUEST}");
        }
    }
}

/// The report channel.
pub fn channel() -> (mpsc::Sender<Report>, mpsc::Receiver<Report>) {
    mpsc::channel(QUEUE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{load::LoadBoard, table::tests_support::model_with_candidate};

    #[test]
    fn a_waiting_request_reports_at_once_and_busy_traffic_only_every_quarter_idle_period() {
        let (tx, mut rx) = channel();
        let activity = Activity::new(Some(tx));
        let board = LoadBoard::default();
        let mut model = model_with_candidate(&board, 0);
        model.scales_from_zero = true;
        model.idle_period = Duration::from_secs(40);
        let t0 = Instant::now();
        activity.seen(&model, false, t0);
        activity.seen(&model, false, t0 + Duration::from_secs(9));
        activity.seen(&model, true, t0 + Duration::from_millis(9500));
        activity.seen(&model, false, t0 + Duration::from_secs(20));
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        assert_eq!(n, 3, "t=0, the wait at 9.5 s, and 10 s later");
        let mut always_up = model_with_candidate(&board, 0);
        always_up.deployment = "n".into();
        always_up.idle_period = Duration::from_secs(40);
        activity.seen(&always_up, true, t0);
        assert!(rx.try_recv().is_err(), "only models that scale to zero report");
    }

    #[test]
    fn the_cold_start_is_the_longest_wait_of_the_last_wake() {
        let activity = Activity::new(None);
        assert_eq!(activity.cold_start("m"), None);
        activity.woke("m", Duration::from_secs(20));
        activity.woke("m", Duration::from_secs(12));
        assert_eq!(activity.cold_start("m"), Some(Duration::from_secs(20)));
        activity.woke("m", Duration::from_secs(8));
        assert_eq!(
            activity.cold_start("m"),
            Some(Duration::from_secs(8)),
            "a faster wake"
        );
    }
}
