//! `/metrics`: DCGM-exporter names and labels for each GPU (so existing dashboards work, fresh
//! every interval instead of dcgm-exporter's 30 s) and `modelfleet_node_*` aggregates of the local
//! servers and of the agent itself. Every metric is listed in docs/metrics.md.

use std::sync::{Arc, atomic::AtomicU64};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{attribution::PodRef, gpu::GpuReading};

/// dcgm-exporter's label set.
#[allow(non_snake_case, reason = "the label names dcgm-exporter uses")]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GpuLabels {
    pub gpu: String,
    pub UUID: String,
    pub device: String,
    pub modelName: String,
    pub Hostname: String,
    pub container: String,
    pub namespace: String,
    pub pod: String,
    /// `true` when the reading is simulated.
    pub simulated: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The agent's metrics.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    registry: Arc<Registry>,
    gpu_util: Family<GpuLabels, F64Gauge>,
    mem_copy_util: Family<GpuLabels, F64Gauge>,
    fb_used: Family<GpuLabels, F64Gauge>,
    fb_free: Family<GpuLabels, F64Gauge>,
    power: Family<GpuLabels, F64Gauge>,
    temp: Family<GpuLabels, F64Gauge>,
    sm_clock: Family<GpuLabels, F64Gauge>,
    xid: Family<GpuLabels, F64Gauge>,
    pub servers: Gauge,
    pub queue_depth: F64Gauge,
    pub running: F64Gauge,
    pub request_rate: F64Gauge,
    pub error_rate: F64Gauge,
    pub busy_ratio: F64Gauge,
    pub scrape_errors: Family<ReasonLabel, Counter>,
    pub reports_sent: Counter,
    pub reports_dropped: Counter,
    pub stream_connected: Gauge,
    pub samples: Counter,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let mut r = Registry::default();
        let gpu = || Family::<GpuLabels, F64Gauge>::default();
        let (gpu_util, mem_copy_util, fb_used, fb_free, power, temp, sm_clock, xid) =
            (gpu(), gpu(), gpu(), gpu(), gpu(), gpu(), gpu(), gpu());
        r.register("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %)", gpu_util.clone());
        r.register(
            "DCGM_FI_DEV_MEM_COPY_UTIL",
            "Memory utilization (in %)",
            mem_copy_util.clone(),
        );
        r.register(
            "DCGM_FI_DEV_FB_USED",
            "Framebuffer memory used (in MiB)",
            fb_used.clone(),
        );
        r.register(
            "DCGM_FI_DEV_FB_FREE",
            "Framebuffer memory free (in MiB)",
            fb_free.clone(),
        );
        r.register("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W)", power.clone());
        r.register("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C)", temp.clone());
        r.register(
            "DCGM_FI_DEV_SM_CLOCK",
            "SM clock frequency (in MHz)",
            sm_clock.clone(),
        );
        r.register(
            "DCGM_FI_DEV_XID_ERRORS",
            "Critical XID errors seen since the agent started",
            xid.clone(),
        );
        let servers = Gauge::default();
        let queue_depth = F64Gauge::default();
        let running = F64Gauge::default();
        let request_rate = F64Gauge::default();
        let error_rate = F64Gauge::default();
        let busy_ratio = F64Gauge::default();
        let scrape_errors = Family::<ReasonLabel, Counter>::default();
        let reports_sent = Counter::default();
        let reports_dropped = Counter::default();
        let stream_connected = Gauge::default();
        let samples = Counter::default();
        let n = r.sub_registry_with_prefix("modelfleet_node");
        n.register(
            "servers",
            "modelfleet-server pods on this node, scraped or not",
            servers.clone(),
        );
        n.register(
            "queue_depth",
            "Requests queued in the node's servers",
            queue_depth.clone(),
        );
        n.register(
            "running_requests",
            "Requests running in the node's servers",
            running.clone(),
        );
        n.register(
            "request_rate",
            "Requests per second answered by the node's servers, last interval",
            request_rate.clone(),
        );
        n.register(
            "error_rate",
            "429 and 5xx answers per second of the node's servers, last interval",
            error_rate.clone(),
        );
        n.register(
            "busy_ratio",
            "Mean busy ratio (0 to 1) of the node's servers",
            busy_ratio.clone(),
        );
        n.register(
            "scrape_errors",
            "Failed server scrapes by reason (connect, timeout, status, garbage)",
            scrape_errors.clone(),
        );
        n.register(
            "reports_sent",
            "NodeReports sent to the operator",
            reports_sent.clone(),
        );
        n.register(
            "reports_dropped",
            "NodeReports dropped, oldest first, while the buffer was full (operator unreachable)",
            reports_dropped.clone(),
        );
        n.register(
            "stream_connected",
            "1 while the telemetry stream to the operator is open",
            stream_connected.clone(),
        );
        n.register("samples", "Sampling rounds run", samples.clone());
        Self {
            registry: Arc::new(r),
            gpu_util,
            mem_copy_util,
            fb_used,
            fb_free,
            power,
            temp,
            sm_clock,
            xid,
            servers,
            queue_depth,
            running,
            request_rate,
            error_rate,
            busy_ratio,
            scrape_errors,
            reports_sent,
            reports_dropped,
            stream_connected,
            samples,
        }
    }
}

impl AgentMetrics {
    /// Replaces the GPU series with this round's readings (a GPU that moved to another pod must
    /// not keep its old series).
    pub fn set_gpus(&self, host: &str, simulated: bool, gpus: &[(GpuReading, Option<PodRef>)]) {
        let families = [
            &self.gpu_util,
            &self.mem_copy_util,
            &self.fb_used,
            &self.fb_free,
            &self.power,
            &self.temp,
            &self.sm_clock,
            &self.xid,
        ];
        for f in families {
            f.clear();
        }
        const MIB: f64 = 1024.0 * 1024.0;
        for (g, pod) in gpus {
            let labels = GpuLabels {
                gpu: g.index.to_string(),
                UUID: g.uuid.clone(),
                device: format!("nvidia{}", g.index),
                modelName: g.product.clone(),
                Hostname: host.to_owned(),
                container: pod.as_ref().map(|p| p.container.clone()).unwrap_or_default(),
                namespace: pod.as_ref().map(|p| p.namespace.clone()).unwrap_or_default(),
                pod: pod.as_ref().map(|p| p.name.clone()).unwrap_or_default(),
                simulated: simulated.to_string(),
            };
            let free = g.memory_total_bytes.saturating_sub(g.memory_used_bytes);
            self.gpu_util.get_or_create(&labels).set(g.utilization_gpu);
            self.mem_copy_util
                .get_or_create(&labels)
                .set(g.utilization_memory);
            self.fb_used
                .get_or_create(&labels)
                .set((g.memory_used_bytes as f64 / MIB).round());
            self.fb_free
                .get_or_create(&labels)
                .set((free as f64 / MIB).round());
            self.power.get_or_create(&labels).set(g.power_watts);
            self.temp.get_or_create(&labels).set(g.temperature_celsius);
            self.sm_clock
                .get_or_create(&labels)
                .set(f64::from(g.sm_clock_mhz));
            self.xid.get_or_create(&labels).set(g.xid_errors as f64);
        }
    }

    /// Counts a failed scrape.
    pub fn scrape_error(&self, reason: &'static str) {
        self.scrape_errors.get_or_create(&ReasonLabel { reason }).inc();
    }

    /// Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_documented_in_docs_metrics_md() {
        let docs = include_str!("../../docs/metrics.md");
        let m = AgentMetrics::default();
        m.set_gpus("n", true, &[(GpuReading::default(), None)]);
        m.scrape_error("garbage");
        let text = m.render();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .collect();
        assert!(names.len() >= 19, "{names:?}");
        for name in names {
            assert!(
                docs.contains(&format!("`{name}")),
                "{name} is not in docs/metrics.md"
            );
        }
        assert!(text.contains(r#"DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="""#), "{text}");
    }
}
