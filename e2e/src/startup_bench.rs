//! `modelfleet-e2e bench-start`: warm start time of the local cluster to its first Ready GPU node,
//! and the running cluster's memory. Results go to docs/benchmarks.md.

use std::time::{Duration, Instant};

use crate::{ClusterConfig, GpuNodePool, LocalCluster, Result, nodes};

/// One start-up measurement.
#[derive(Debug, Clone)]
pub struct StartupSample {
    /// From `LocalCluster::start` to every component ready.
    pub control_plane: Duration,
    /// From `LocalCluster::start` to the first GPU node Ready.
    pub first_gpu_node_ready: Duration,
    /// Resident memory of each component, MiB.
    pub rss_mib: Vec<(String, f64)>,
}

impl StartupSample {
    /// Total resident memory, MiB.
    pub fn total_rss_mib(&self) -> f64 {
        self.rss_mib.iter().map(|(_, m)| m).sum()
    }
}

/// Starts a cluster, adds one GPU node, measures, and stops it.
pub async fn measure_once() -> Result<StartupSample> {
    let t0 = Instant::now();
    let cluster = LocalCluster::start(ClusterConfig::default()).await?;
    let control_plane = t0.elapsed();
    let client = cluster.client().await?;
    nodes::add_gpu_pool(
        &client,
        &GpuNodePool {
            count: 1,
            ..Default::default()
        },
    )
    .await?;
    let first_gpu_node_ready = t0.elapsed();
    let rss_mib = cluster
        .components()
        .into_iter()
        .map(|(name, pid)| (name, rss_mib(pid)))
        .collect();
    cluster.stop();
    Ok(StartupSample {
        control_plane,
        first_gpu_node_ready,
        rss_mib,
    })
}

/// Resident set size of a process in MiB, from /proc (0 when unreadable).
pub fn rss_mib(pid: u32) -> f64 {
    proc_status_mib(pid, "VmRSS:")
}

/// A memory line of `/proc/<pid>/status` (`VmRSS:`, `VmHWM:` for the peak, …) in MiB; 0 when
/// unreadable.
pub fn proc_status_mib(pid: u32, key: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// CPU time (user + system) a process has used, in seconds, from `/proc/<pid>/stat`; 0 when
/// unreadable.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/pid/stat (11 and 12 after the command);
    // Linux counts them in 1/100 s.
    (ticks(11) + ticks(12)) / 100.0
}
