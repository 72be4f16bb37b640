//! `modelfleet-e2e bench-start`: warm start time of the local cluster to its first Ready GPU node,
//! and the running cluster's memory. Results go to docs/benchmarks.md.

use std::time::{Duration, Instant};

use modelfleet_testkit::{ClusterConfig, GpuNodePool, LocalCluster, Result, nodes, procfs::rss_mib};

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
