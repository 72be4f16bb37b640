//! What the routers report (`RouterReport`, one stream per router replica), summed per
//! ModelDeployment into `status.routing`. Each router's counters are cumulative, so the latest
//! report of each replica is all that is kept; a replica silent for [`STALE_AFTER`] no longer
//! counts (it stopped, or lost its stream).

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use k8s_openapi::{apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use modelfleet_crds::v1alpha1::RoutingStatus;
use modelfleet_proto::telemetry::{ModelDemand, RouterReport};

/// A router whose latest report is older than this is left out.
pub const STALE_AFTER: Duration = Duration::from_secs(60);
/// How often `status.routing` may change while traffic flows: between two refreshes the
/// published value stays, so the counters do not turn every reconcile into a status write.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);
/// Most router replicas kept (beyond it, reports of new names are dropped).
const MAX_ROUTERS: usize = 64;

/// The latest report of every router, and what was last published per ModelDeployment.
#[derive(Debug, Default)]
pub struct RouterReports {
    latest: HashMap<String, (Instant, Vec<ModelDemand>)>,
    published: HashMap<(String, String), (Instant, RoutingStatus)>,
}

impl RouterReports {
    /// Keeps `report` as its router's latest.
    pub fn ingest(&mut self, report: RouterReport, now: Instant) {
        if self.latest.len() >= MAX_ROUTERS && !self.latest.contains_key(&report.router) {
            return;
        }
        self.latest.insert(report.router, (now, report.models));
    }

    /// `status.routing` of ModelDeployment `name` in `namespace`: the sum over the routers that
    /// reported it recently, None when none did. The value published less than
    /// [`STATUS_REFRESH`] ago is returned again unchanged.
    pub fn routing(&mut self, namespace: &str, name: &str, now: Instant) -> Option<RoutingStatus> {
        let key = (namespace.to_owned(), name.to_owned());
        if let Some((at, status)) = self.published.get(&key)
            && now.saturating_duration_since(*at) < STATUS_REFRESH
        {
            return Some(status.clone());
        }
        let demands: Vec<&ModelDemand> = self.demands(namespace, name, now).collect();
        let status = sum(&demands)?;
        self.published.insert(key, (now, status.clone()));
        Some(status)
    }

    /// Whether `status.routing` of this ModelDeployment would change now: routers report it and
    /// nothing was published for it within [`STATUS_REFRESH`].
    pub fn due(&self, namespace: &str, name: &str, now: Instant) -> bool {
        let reported = self.demands(namespace, name, now).next().is_some();
        let fresh = self
            .published
            .get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) < STATUS_REFRESH);
        reported && !fresh
    }

    /// The demands for this ModelDeployment in the reports of the routers heard from within
    /// [`STALE_AFTER`].
    fn demands<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        now: Instant,
    ) -> impl Iterator<Item = &'a ModelDemand> {
        self.latest
            .values()
            .filter(move |(at, _)| now.saturating_duration_since(*at) < STALE_AFTER)
            .flat_map(|(_, models)| models.iter())
            .filter(move |d| d.namespace == namespace && d.deployment == name)
    }

    /// Whether any router reported within [`STALE_AFTER`].
    pub fn any(&self, now: Instant) -> bool {
        self.latest
            .values()
            .any(|(at, _)| now.saturating_duration_since(*at) < STALE_AFTER)
    }

    /// Drops routers silent for [`STALE_AFTER`] and publications older than that.
    pub fn forget_old(&mut self, now: Instant) {
        self.latest
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < STALE_AFTER);
        self.published
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < STALE_AFTER);
    }
}

/// The routers' demands for one ModelDeployment as one status; None without any.
pub fn sum(demands: &[&ModelDemand]) -> Option<RoutingStatus> {
    if demands.is_empty() {
        return None;
    }
    let total = |f: fn(&ModelDemand) -> u64| demands.iter().map(|d| f(d)).sum::<u64>();
    let (hits, misses) = (total(|d| d.cache_hits), total(|d| d.cache_misses));
    let last = demands.iter().map(|d| d.last_request_unix_ms).max().unwrap_or(0);
    Some(RoutingStatus {
        routers: i32::try_from(demands.len()).unwrap_or(i32::MAX),
        requests: i64::try_from(total(|d| d.requests)).unwrap_or(i64::MAX),
        cache_hit_ratio: (hits + misses > 0).then(|| {
            let ratio = hits as f64 / (hits + misses) as f64;
            (ratio * 1000.0).round() / 1000.0
        }),
        fallbacks: i64::try_from(total(|d| d.fallbacks)).unwrap_or(i64::MAX),
        held_requests: i32::try_from(demands.iter().map(|d| u64::from(d.held)).sum::<u64>())
            .unwrap_or(i32::MAX),
        last_request_time: (last > 0)
            .then(|| Timestamp::from_millisecond(last).ok().map(Time))
            .flatten(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(deployment: &str, requests: u64, hits: u64, misses: u64, last_ms: i64) -> ModelDemand {
        ModelDemand {
            namespace: "ns".into(),
            deployment: deployment.into(),
            requests,
            held: 1,
            cache_hits: hits,
            cache_misses: misses,
            fallbacks: 2,
            last_request_unix_ms: last_ms,
        }
    }

    fn report(router: &str, models: Vec<ModelDemand>) -> RouterReport {
        RouterReport {
            router: router.into(),
            sequence: 1,
            timestamp_unix_ms: 0,
            interval_ms: 5000,
            models,
        }
    }

    #[test]
    fn every_routers_latest_counts_are_summed_and_the_ratio_is_over_cacheable_requests() {
        let mut r = RouterReports::default();
        let t0 = Instant::now();
        r.ingest(
            report(
                "a",
                vec![demand("emb", 10, 1, 3, 1_000), demand("other", 5, 0, 0, 0)],
            ),
            t0,
        );
        r.ingest(report("b", vec![demand("emb", 30, 5, 1, 9_000)]), t0);
        // A newer report of router a replaces its older one (counts are cumulative).
        r.ingest(report("a", vec![demand("emb", 20, 1, 3, 2_000)]), t0);
        let s = r.routing("ns", "emb", t0).expect("reported");
        assert_eq!(
            (s.routers, s.requests, s.fallbacks, s.held_requests),
            (2, 50, 4, 2)
        );
        assert_eq!(s.cache_hit_ratio, Some(0.6), "6 hits of 10 cacheable");
        assert_eq!(s.last_request_time.map(|t| t.0.as_millisecond()), Some(9_000));
        assert!(r.routing("ns", "nobody", t0).is_none());
    }

    #[test]
    fn the_published_value_holds_for_the_refresh_period_and_silent_routers_drop_out() {
        let mut r = RouterReports::default();
        let t0 = Instant::now();
        r.ingest(report("a", vec![demand("emb", 10, 0, 0, 0)]), t0);
        assert!(r.due("ns", "emb", t0), "reported, never published");
        assert_eq!(r.routing("ns", "emb", t0).map(|s| s.requests), Some(10));
        assert!(!r.due("ns", "emb", t0 + Duration::from_secs(1)), "just published");
        r.ingest(
            report("a", vec![demand("emb", 11, 0, 0, 0)]),
            t0 + Duration::from_secs(1),
        );
        assert_eq!(
            r.routing("ns", "emb", t0 + Duration::from_secs(2))
                .map(|s| s.requests),
            Some(10),
            "no status write per request"
        );
        assert_eq!(
            r.routing("ns", "emb", t0 + STATUS_REFRESH).map(|s| s.requests),
            Some(11)
        );
        let later = t0 + STATUS_REFRESH + STALE_AFTER + Duration::from_secs(1);
        r.forget_old(later);
        assert!(r.routing("ns", "emb", later).is_none(), "the router went silent");
    }
}
