//! The sampling loop: every interval, attribute GPUs to pods, scrape the local servers, read the
//! GPUs, publish `/metrics` and queue a NodeReport for the operator.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use bytes::Bytes;
use futures::future::join_all;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::Store;
use modelfleet_contract::paths;
use modelfleet_proto::telemetry::{self as pb, NodeReport};

use crate::{
    attribution::{self, NodePod, PodRef},
    config::AgentConfig,
    gpu::{GpuReading, GpuSampler},
    metrics::AgentMetrics,
    scrape::{self, ServerCounters, ServerLoad, parse},
    stream::Outbox,
};

/// One server pod's state between scrapes.
#[derive(Debug)]
struct ServerHistory {
    counters: ServerCounters,
    at: Instant,
}

/// The loop's state.
pub struct Agent {
    config: AgentConfig,
    sampler: Box<dyn GpuSampler>,
    pods: Store<Pod>,
    http: Client<HttpConnector, Empty<Bytes>>,
    history: HashMap<PodRef, ServerHistory>,
    busy: HashMap<String, f64>,
    metrics: AgentMetrics,
    outbox: Arc<Outbox>,
    sequence: u64,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("node", &self.config.node_name)
            .field("sequence", &self.sequence)
            .finish()
    }
}

/// A scrape's outcome for one server pod.
#[derive(Debug)]
struct Scraped {
    pod: NodePod,
    load: Option<ServerLoad>,
}

impl Agent {
    /// A loop over `pods` (a reflector store of the pods bound to this node).
    pub fn new(
        config: AgentConfig,
        sampler: Box<dyn GpuSampler>,
        pods: Store<Pod>,
        metrics: AgentMetrics,
        outbox: Arc<Outbox>,
    ) -> Self {
        Self {
            config,
            sampler,
            pods,
            http: Client::builder(TokioExecutor::new()).build_http(),
            history: HashMap::new(),
            busy: HashMap::new(),
            metrics,
            outbox,
            sequence: 0,
        }
    }

    /// Runs rounds every interval until `shutdown` resolves.
    pub async fn run(mut self, shutdown: impl std::future::Future<Output = ()>) {
        let mut tick = tokio::time::interval(self.config.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = tick.tick() => self.round().await,
                () = &mut shutdown => return,
            }
        }
    }

    /// One sampling round.
    pub async fn round(&mut self) {
        let pods: Vec<NodePod> = self
            .pods
            .state()
            .iter()
            .filter_map(|p| NodePod::from_pod(p))
            .collect();
        let readings = match self.sampler.sample(&self.busy) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "GPU sampling failed");
                Vec::new()
            }
        };
        let owners = self.attribute(&pods, &readings).await;
        let servers = self.scrape_servers(&pods).await;
        // The simulation follows the load of the server holding each GPU (next round).
        let busy_by_pod: HashMap<&PodRef, f64> = servers
            .iter()
            .filter_map(|s| s.load.as_ref().map(|l| (&s.pod.pod, l.busy_ratio)))
            .collect();
        self.busy = owners
            .iter()
            .map(|(uuid, pod)| (uuid.clone(), busy_by_pod.get(pod).copied().unwrap_or(0.0)))
            .collect();

        let with_pods: Vec<(GpuReading, Option<PodRef>)> = readings
            .into_iter()
            .map(|g| {
                let pod = owners.get(&g.uuid).cloned();
                (g, pod)
            })
            .collect();
        self.metrics
            .set_gpus(&self.config.node_name, self.sampler.simulated(), &with_pods);
        self.publish_aggregates(&servers);
        self.sequence += 1;
        self.metrics.samples.inc();
        let report = build_report(self, &with_pods, &servers);
        self.outbox.push(report);
    }

    async fn attribute(&self, pods: &[NodePod], readings: &[GpuReading]) -> HashMap<String, PodRef> {
        // Simulated GPUs on a kwok node have no kubelet and so no socket; the live fleet's
        // kubelet stand-in serves one, and then the real path is taken.
        if !self.sampler.simulated() || self.config.pod_resources_socket.exists() {
            match attribution::list_gpu_devices(&self.config.pod_resources_socket).await {
                Ok(devices) => return attribution::assign_from_devices(&devices),
                Err(e) => tracing::debug!(error = %e, "attributing GPUs from the pods bound to the node"),
            }
        }
        let uuids: Vec<String> = readings.iter().map(|g| g.uuid.clone()).collect();
        attribution::assign_in_order(pods, &uuids)
    }

    async fn scrape_servers(&mut self, pods: &[NodePod]) -> Vec<Scraped> {
        let servers: Vec<&NodePod> = pods.iter().filter(|p| p.deployment.is_some()).collect();
        let fetches = servers.iter().map(|p| self.fetch(p.scrape_address.clone()));
        let texts = join_all(fetches).await;
        let now = Instant::now();
        let mut out = Vec::with_capacity(servers.len());
        for (pod, text) in servers.into_iter().zip(texts) {
            let counters = text.and_then(|t| {
                scrape::read_counters(&parse::parse(&t)).map_err(|e| {
                    tracing::warn!(pod = %pod.pod.name, error = %e, "server metrics ignored");
                    "garbage"
                })
            });
            let load = match counters {
                Ok(c) => {
                    let previous = self.history.get(&pod.pod);
                    let seconds = previous.map_or(self.config.interval.as_secs_f64(), |h| {
                        now.duration_since(h.at).as_secs_f64()
                    });
                    // The first scrape of a pod is a baseline: its counters hold the server's
                    // whole life, not one interval, so its rates read zero until the next one.
                    let base = previous.map_or(&c, |h| &h.counters);
                    let load = scrape::load_between(Some(base), &c, seconds);
                    self.history
                        .insert(pod.pod.clone(), ServerHistory { counters: c, at: now });
                    Some(load)
                }
                Err(reason) => {
                    self.metrics.scrape_error(reason);
                    None
                }
            };
            out.push(Scraped {
                pod: pod.clone(),
                load,
            });
        }
        // Forget pods that left the node, so the history stays bounded.
        let present: std::collections::HashSet<&PodRef> = pods.iter().map(|p| &p.pod).collect();
        self.history.retain(|k, _| present.contains(k));
        out
    }

    async fn fetch(&self, address: Option<String>) -> Result<String, &'static str> {
        let address = address.ok_or("no_address")?;
        if self.config.scrape_loopback_only
            && !address.parse::<SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
        {
            return Err("not_loopback");
        }
        let uri: http::Uri = format!("http://{address}{}", paths::METRICS)
            .parse()
            .map_err(|_| "bad_address")?;
        let request = self.http.get(uri);
        let response = tokio::time::timeout(self.config.scrape_timeout, request)
            .await
            .map_err(|_| "timeout")?
            .map_err(|_| "connect")?;
        if !response.status().is_success() {
            return Err("status");
        }
        let body = tokio::time::timeout(self.config.scrape_timeout, response.into_body().collect())
            .await
            .map_err(|_| "timeout")?
            .map_err(|_| "connect")?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "garbage")
    }

    fn publish_aggregates(&self, servers: &[Scraped]) {
        let loads: Vec<&ServerLoad> = servers.iter().filter_map(|s| s.load.as_ref()).collect();
        let m = &self.metrics;
        m.servers.set(servers.len() as i64);
        m.queue_depth.set(loads.iter().map(|l| l.queue_depth).sum());
        m.running.set(loads.iter().map(|l| l.running).sum());
        m.request_rate.set(loads.iter().map(|l| l.request_rate).sum());
        m.error_rate.set(loads.iter().map(|l| l.error_rate).sum());
        let busy = if loads.is_empty() {
            0.0
        } else {
            loads.iter().map(|l| l.busy_ratio).sum::<f64>() / loads.len() as f64
        };
        m.busy_ratio.set(busy);
    }
}

fn pod_ref(p: &PodRef) -> pb::PodRef {
    pb::PodRef {
        namespace: p.namespace.clone(),
        name: p.name.clone(),
        container: p.container.clone(),
    }
}

fn build_report(agent: &Agent, gpus: &[(GpuReading, Option<PodRef>)], servers: &[Scraped]) -> NodeReport {
    let timestamp_unix_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64;
    NodeReport {
        node: agent.config.node_name.clone(),
        sequence: agent.sequence,
        timestamp_unix_ms,
        interval_ms: agent.config.interval.as_millis() as u32,
        simulated: agent.sampler.simulated(),
        gpus: gpus
            .iter()
            .map(|(g, pod)| pb::GpuSample {
                uuid: g.uuid.clone(),
                index: g.index,
                product: g.product.clone(),
                utilization_gpu: g.utilization_gpu,
                utilization_memory: g.utilization_memory,
                memory_used_bytes: g.memory_used_bytes,
                memory_total_bytes: g.memory_total_bytes,
                power_watts: g.power_watts,
                temperature_celsius: g.temperature_celsius,
                sm_clock_mhz: g.sm_clock_mhz,
                xid_errors: g.xid_errors,
                ecc_errors: g.ecc_errors,
                pod: pod.as_ref().map(pod_ref),
            })
            .collect(),
        servers: servers
            .iter()
            .map(|s| {
                let l = s.load.clone().unwrap_or_default();
                pb::ServerSample {
                    pod: Some(pod_ref(&s.pod.pod)),
                    deployment: s.pod.deployment.clone().unwrap_or_default(),
                    revision: s.pod.revision.clone().unwrap_or_default(),
                    scraped: s.load.is_some(),
                    queues: l
                        .queues
                        .iter()
                        .map(|(tier, depth)| pb::TierLoad {
                            tier: tier.clone(),
                            queue_depth: *depth,
                        })
                        .collect(),
                    queue_depth: l.queue_depth,
                    running_requests: l.running,
                    request_rate: l.request_rate,
                    error_rate: l.error_rate,
                    latency_p50_seconds: l.latency_p50,
                    latency_p95_seconds: l.latency_p95,
                    latency_p99_seconds: l.latency_p99,
                    mean_batch_size: l.mean_batch_size,
                    busy_ratio: l.busy_ratio,
                    shadow_agree: l.shadow_agree as u64,
                    shadow_disagree: l.shadow_disagree as u64,
                    shadow_error: l.shadow_error as u64,
                    ttft_p95_seconds: l.ttft_p95,
                    generated_tokens_rate: l.generated_tokens_rate,
                    kv_cache_utilization: l.kv_cache_usage,
                }
            })
            .collect(),
        dropped_reports: agent.outbox.dropped(),
    }
}
