//! What the node agents reported, per pod, in short sliding windows, and its aggregation per
//! ModelDeployment and revision.
//!
//! Time is the operator's own clock at receipt (an argument, so tests drive it), never the
//! agent's timestamp: node clocks drift, and staleness must not depend on them. A pod's data is
//! fresh while its newest sample is younger than three of its agent's intervals.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use modelfleet_proto::telemetry::{NodeReport, RouterReport};

use crate::telemetry::routers::RouterReports;

/// Samples older than this are dropped from a pod's window.
pub const WINDOW: Duration = Duration::from_secs(30);
/// A pod whose newest sample is older than this is forgotten (it was deleted or moved).
const FORGET_AFTER: Duration = Duration::from_secs(300);
/// Interval assumed when an agent sends 0.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
/// Data older than this many intervals is stale (docs/autoscaler.md): the autoscaler holds and
/// the analysis is inconclusive rather than act on it.
const STALE_INTERVALS: u32 = 3;

/// A pod, by namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PodKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// One server pod's load at one instant, as its node agent measured it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PodSample {
    /// Queued requests, all tiers.
    pub queue_depth: f64,
    /// Requests in compute.
    pub running: f64,
    /// Requests per second.
    pub request_rate: f64,
    /// Failed requests (429 and 5xx) per second.
    pub error_rate: f64,
    /// Seconds.
    pub latency_p95: f64,
    /// Mean utilization of the GPUs attributed to the pod, percent; None without GPUs.
    pub gpu_utilization: Option<f64>,
    /// Cumulative shadow comparison counts.
    pub shadow_agree: u64,
    /// Cumulative shadow comparison counts.
    pub shadow_disagree: u64,
    /// Cumulative shadow comparison counts.
    pub shadow_error: u64,
    /// Generation: seconds to the first token, 95th percentile.
    pub ttft_p95: f64,
    /// Generation: tokens per second.
    pub generated_tokens_rate: f64,
    /// Generation: KV-cache utilisation, 0 to 1.
    pub kv_cache_utilization: f64,
}

#[derive(Debug)]
struct PodWindow {
    revision: String,
    /// The reporting agent's interval.
    interval: Duration,
    samples: VecDeque<(Instant, PodSample)>,
}

impl PodWindow {
    fn newest(&self) -> Option<&(Instant, PodSample)> {
        self.samples.back()
    }

    fn fresh_at(&self, now: Instant) -> bool {
        self.newest()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) <= self.interval * STALE_INTERVALS)
    }
}

pub use modelfleet_operator_core::telemetry::Aggregate;

/// A ModelDeployment, by namespace and name.
type DeploymentKey = (String, String);

#[derive(Debug, Default)]
struct Inner {
    /// Pods grouped by their ModelDeployment, so aggregation reads only that group.
    deployments: HashMap<DeploymentKey, HashMap<String, PodWindow>>,
    /// The routers' latest reports.
    routers: RouterReports,
    /// Node → when its last report arrived.
    nodes: HashMap<String, Instant>,
}

/// The telemetry of every server pod, shared by the hub (writer) and the autoscaler (reader).
#[derive(Debug, Clone, Default)]
pub struct TelemetryStore {
    inner: Arc<Mutex<Inner>>,
}

impl TelemetryStore {
    /// Records one node report received at `now`.
    pub fn ingest(&self, report: &NodeReport, now: Instant) {
        let interval = match report.interval_ms {
            0 => DEFAULT_INTERVAL,
            ms => Duration::from_millis(u64::from(ms)),
        };
        // Mean utilization of the GPUs each pod holds, from the same report.
        let mut gpu: HashMap<PodKey, (f64, u32)> = HashMap::new();
        for g in &report.gpus {
            if let Some(p) = &g.pod {
                let e = gpu
                    .entry(PodKey {
                        namespace: p.namespace.clone(),
                        name: p.name.clone(),
                    })
                    .or_default();
                e.0 += g.utilization_gpu;
                e.1 += 1;
            }
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        inner.nodes.insert(report.node.clone(), now);
        for s in &report.servers {
            // A failed scrape carries zeros, not measurements: leave the pod's data to age.
            let Some(pod) = s.pod.as_ref().filter(|_| s.scraped) else {
                continue;
            };
            let key = PodKey {
                namespace: pod.namespace.clone(),
                name: pod.name.clone(),
            };
            let sample = PodSample {
                queue_depth: s.queue_depth,
                running: s.running_requests,
                request_rate: s.request_rate,
                error_rate: s.error_rate,
                latency_p95: s.latency_p95_seconds,
                gpu_utilization: gpu.get(&key).map(|(sum, n)| sum / f64::from(*n)),
                shadow_agree: s.shadow_agree,
                shadow_disagree: s.shadow_disagree,
                shadow_error: s.shadow_error,
                ttft_p95: s.ttft_p95_seconds,
                generated_tokens_rate: s.generated_tokens_rate,
                kv_cache_utilization: s.kv_cache_utilization,
            };
            let window = inner
                .deployments
                .entry((key.namespace, s.deployment.clone()))
                .or_default()
                .entry(key.name)
                .or_insert_with(|| PodWindow {
                    revision: s.revision.clone(),
                    interval,
                    samples: VecDeque::new(),
                });
            window.revision.clone_from(&s.revision);
            window.interval = interval;
            window.samples.push_back((now, sample));
            while window
                .samples
                .front()
                .is_some_and(|(t, _)| now.saturating_duration_since(*t) > WINDOW)
            {
                window.samples.pop_front();
            }
        }
    }

    /// Records one router report received at `now`.
    pub fn ingest_router(&self, report: RouterReport, now: Instant) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.routers.ingest(report, now);
        }
    }

    /// `status.routing` of a ModelDeployment from the routers' reports ([`RouterReports::routing`]).
    pub fn routing(
        &self,
        namespace: &str,
        name: &str,
        now: Instant,
    ) -> Option<modelfleet_crds::v1alpha1::RoutingStatus> {
        self.inner.lock().ok()?.routers.routing(namespace, name, now)
    }

    /// Whether any router reports (reconciles then look again within
    /// [`crate::telemetry::routers::STATUS_REFRESH`]).
    pub fn routers_reporting(&self, now: Instant) -> bool {
        self.inner.lock().is_ok_and(|i| i.routers.any(now))
    }

    /// Whether a reconcile would write a new `status.routing` for this ModelDeployment now
    /// ([`RouterReports::due`]); the decision loop asks for one then.
    pub fn routing_due(&self, namespace: &str, name: &str, now: Instant) -> bool {
        self.inner
            .lock()
            .is_ok_and(|i| i.routers.due(namespace, name, now))
    }

    /// Drops pods and nodes not heard of for five minutes, and silent routers.
    pub fn forget_old(&self, now: Instant) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.routers.forget_old(now);
            for pods in inner.deployments.values_mut() {
                pods.retain(|_, w| {
                    w.newest()
                        .is_some_and(|(t, _)| now.saturating_duration_since(*t) < FORGET_AFTER)
                });
            }
            inner.deployments.retain(|_, pods| !pods.is_empty());
            inner
                .nodes
                .retain(|_, t| now.saturating_duration_since(*t) < FORGET_AFTER);
        }
    }

    /// The load of ModelDeployment `deployment` in `namespace`, over all its revisions or over
    /// `revision` only, from the newest fresh sample of each pod. Shadow counts are the growth
    /// over each pod's window.
    pub fn aggregate(
        &self,
        namespace: &str,
        deployment: &str,
        revision: Option<&str>,
        now: Instant,
    ) -> Aggregate {
        let Ok(inner) = self.inner.lock() else {
            return Aggregate::default();
        };
        let mut a = Aggregate::default();
        // (p95 latency, TTFT p95) weighted by request rate, and plain sums.
        let (mut weighted, mut plain) = ((0.0, 0.0), (0.0, 0.0));
        let mut kv = 0.0;
        let mut gpu = (0.0, 0u32);
        let pods = inner
            .deployments
            .get(&(namespace.to_string(), deployment.to_string()));
        for w in pods.into_iter().flat_map(|p| p.values()) {
            if revision.is_some_and(|r| r != w.revision) {
                continue;
            }
            let Some((t, s)) = w.newest() else { continue };
            let age = now.saturating_duration_since(*t);
            a.newest_age = Some(a.newest_age.map_or(age, |x: Duration| x.min(age)));
            if !w.fresh_at(now) {
                a.stale_pods += 1;
                continue;
            }
            a.fresh_pods += 1;
            a.queue_depth += s.queue_depth;
            a.running += s.running;
            a.request_rate += s.request_rate;
            a.error_rate += s.error_rate;
            weighted.0 += s.latency_p95 * s.request_rate;
            weighted.1 += s.ttft_p95 * s.request_rate;
            plain.0 += s.latency_p95;
            plain.1 += s.ttft_p95;
            a.generated_tokens_rate += s.generated_tokens_rate;
            kv += s.kv_cache_utilization;
            if let Some(u) = s.gpu_utilization {
                gpu.0 += u;
                gpu.1 += 1;
            }
            if let Some((_, oldest)) = w.samples.front() {
                a.shadow_agree += s.shadow_agree.saturating_sub(oldest.shadow_agree);
                a.shadow_disagree += s.shadow_disagree.saturating_sub(oldest.shadow_disagree);
                a.shadow_error += s.shadow_error.saturating_sub(oldest.shadow_error);
            }
        }
        if a.fresh_pods > 0 {
            let pods = f64::from(a.fresh_pods);
            (a.latency_p95, a.ttft_p95) = if a.request_rate > 0.0 {
                (weighted.0 / a.request_rate, weighted.1 / a.request_rate)
            } else {
                (plain.0 / pods, plain.1 / pods)
            };
            a.kv_cache_utilization = kv / pods;
        }
        if gpu.1 > 0 {
            a.gpu_utilization = Some(gpu.0 / f64::from(gpu.1));
        }
        a
    }

    /// Pods currently tracked.
    pub fn pods(&self) -> usize {
        self.inner
            .lock()
            .map(|i| i.deployments.values().map(HashMap::len).sum())
            .unwrap_or(0)
    }

    /// Nodes that reported within five minutes.
    pub fn nodes(&self) -> usize {
        self.inner.lock().map(|i| i.nodes.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use modelfleet_proto::telemetry::{GpuSample, PodRef, ServerSample};

    use super::*;

    fn server(pod: &str, revision: &str, queue: f64, rate: f64, p95: f64) -> ServerSample {
        ServerSample {
            pod: Some(PodRef {
                namespace: "ns".into(),
                name: pod.into(),
                container: "server".into(),
            }),
            deployment: "md".into(),
            revision: revision.into(),
            scraped: true,
            queue_depth: queue,
            running_requests: 1.0,
            request_rate: rate,
            latency_p95_seconds: p95,
            ..Default::default()
        }
    }

    fn report(node: &str, servers: Vec<ServerSample>) -> NodeReport {
        NodeReport {
            node: node.into(),
            interval_ms: 1000,
            servers,
            ..Default::default()
        }
    }

    #[test]
    fn sums_counts_and_weights_latency_by_requests() {
        let store = TelemetryStore::default();
        let t0 = Instant::now();
        store.ingest(
            &report(
                "n1",
                vec![
                    server("a", "r1", 4.0, 30.0, 0.1),
                    server("b", "r1", 6.0, 10.0, 0.5),
                ],
            ),
            t0,
        );
        let a = store.aggregate("ns", "md", None, t0);
        assert_eq!((a.fresh_pods, a.queue_depth, a.running), (2, 10.0, 2.0));
        assert!((a.latency_p95 - 0.2).abs() < 1e-9, "{}", a.latency_p95);
        assert_eq!(store.aggregate("ns", "other", None, t0).fresh_pods, 0);
    }

    #[test]
    fn data_older_than_three_intervals_is_stale() {
        let store = TelemetryStore::default();
        let t0 = Instant::now();
        store.ingest(&report("n1", vec![server("a", "r1", 4.0, 1.0, 0.1)]), t0);
        assert_eq!(
            store
                .aggregate("ns", "md", None, t0 + Duration::from_secs(3))
                .fresh_pods,
            1
        );
        let late = store.aggregate("ns", "md", None, t0 + Duration::from_millis(3100));
        assert_eq!((late.fresh_pods, late.stale_pods), (0, 1));
        assert_eq!(late.queue_depth, 0.0, "stale data is not summed");
    }

    #[test]
    fn failed_scrapes_are_not_measurements() {
        let store = TelemetryStore::default();
        let t0 = Instant::now();
        store.ingest(&report("n1", vec![server("a", "r1", 8.0, 1.0, 0.1)]), t0);
        let mut failed = server("a", "r1", 0.0, 0.0, 0.0);
        failed.scraped = false;
        store.ingest(&report("n1", vec![failed]), t0 + Duration::from_secs(1));
        let a = store.aggregate("ns", "md", None, t0 + Duration::from_secs(1));
        assert_eq!(
            a.queue_depth, 8.0,
            "the last real sample stands until it is stale"
        );
    }

    #[test]
    fn revisions_aggregate_apart_and_gpus_attach_to_their_pod() {
        let store = TelemetryStore::default();
        let t0 = Instant::now();
        let mut r = report(
            "n1",
            vec![server("a", "r1", 4.0, 1.0, 0.1), server("b", "r2", 6.0, 1.0, 0.1)],
        );
        for (i, util) in [(0, 80.0), (1, 60.0)] {
            r.gpus.push(GpuSample {
                index: i,
                utilization_gpu: util,
                pod: Some(PodRef {
                    namespace: "ns".into(),
                    name: "a".into(),
                    container: "server".into(),
                }),
                ..Default::default()
            });
        }
        store.ingest(&r, t0);
        let r1 = store.aggregate("ns", "md", Some("r1"), t0);
        assert_eq!(
            (r1.fresh_pods, r1.queue_depth, r1.gpu_utilization),
            (1, 4.0, Some(70.0))
        );
        assert_eq!(store.aggregate("ns", "md", Some("r2"), t0).gpu_utilization, None);
    }

    #[test]
    fn shadow_counts_are_the_growth_over_the_window() {
        let store = TelemetryStore::default();
        let t0 = Instant::now();
        for (s, agree) in [(0u64, 100u64), (1, 110), (2, 130)] {
            let mut x = server("a", "r1", 0.0, 1.0, 0.1);
            x.shadow_agree = agree;
            x.shadow_disagree = s;
            store.ingest(&report("n1", vec![x]), t0 + Duration::from_secs(s));
        }
        let a = store.aggregate("ns", "md", None, t0 + Duration::from_secs(2));
        assert_eq!((a.shadow_agree, a.shadow_disagree), (30, 2));
    }

    #[test]
    fn old_pods_are_forgotten() {
        let store = TelemetryStore::default();
        let t0 = Instant::now();
        store.ingest(&report("n1", vec![server("a", "r1", 1.0, 1.0, 0.1)]), t0);
        store.forget_old(t0 + Duration::from_secs(301));
        assert_eq!((store.pods(), store.nodes()), (0, 0));
    }
}
