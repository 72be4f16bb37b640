//! The live runtime of one node: the local stand-in for kubelet on nodes kwok does not manage.
//! It watches the pods bound to its node and runs each as a [`pod`] task; it owns the node's pod
//! IPs and GPU devices, and an index of what runs where for the kubelet endpoint (logs) and the
//! PodResources socket.

pub mod container;
mod grpc_health;
mod pod;
pub mod probe;
pub mod spec;
pub mod status;
pub mod supervisor;
pub mod volumes;

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::{Arc, Mutex},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    runtime::watcher::{self, Event},
};
use tokio::{sync::watch, task::JoinHandle};

use super::netns::FleetNet;
pub use spec::LocalImages;

/// What the runtime knows of one container (for logs and PodResources).
#[derive(Debug, Clone)]
pub struct ContainerRecord {
    /// Container name.
    pub name: String,
    /// Its `nvidia.com/gpu` device IDs.
    pub devices: Vec<String>,
    /// Directory of its run logs (`<restart>.log`).
    pub log_dir: PathBuf,
}

/// One running pod.
#[derive(Debug, Clone)]
pub struct PodRecord {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Its containers.
    pub containers: Vec<ContainerRecord>,
}

/// Pod UID → the channel feeding its task, and the task.
type PodTasks = Arc<Mutex<HashMap<String, (watch::Sender<Option<Pod>>, JoinHandle<()>)>>>;

/// Pod UID → record.
pub type PodIndex = Arc<Mutex<BTreeMap<String, PodRecord>>>;

/// Free addresses of a node's podCIDR (a /24: .2 to .254).
#[derive(Debug)]
pub struct IpPool {
    base: [u8; 3],
    used: std::collections::BTreeSet<u8>,
}

impl IpPool {
    /// The pool of `a.b.c.0/24`.
    pub fn new(base: [u8; 3]) -> Self {
        Self {
            base,
            used: Default::default(),
        }
    }

    /// The lowest free address.
    pub fn allocate(&mut self) -> Option<IpAddr> {
        let host = (2..=254).find(|h| !self.used.contains(h))?;
        self.used.insert(host);
        let [a, b, c] = self.base;
        Some(IpAddr::V4(Ipv4Addr::new(a, b, c, host)))
    }

    /// Returns an address.
    pub fn release(&mut self, ip: IpAddr) {
        if let IpAddr::V4(v4) = ip {
            self.used.remove(&v4.octets()[3]);
        }
    }
}

/// The node's GPUs, by index.
#[derive(Debug)]
pub struct GpuPool {
    free: std::collections::BTreeSet<u32>,
}

impl GpuPool {
    /// `count` GPUs.
    pub fn new(count: u32) -> Self {
        Self {
            free: (0..count).collect(),
        }
    }

    /// `n` distinct free GPUs, highest first, or `None` if fewer are free. Kubelet's device
    /// manager promises no order; handing out the highest index first makes any consumer that
    /// assumes creation order (instead of asking PodResources) visibly wrong.
    pub fn allocate(&mut self, n: usize) -> Option<Vec<u32>> {
        if self.free.len() < n {
            return None;
        }
        let got: Vec<u32> = self.free.iter().rev().take(n).copied().collect();
        for g in &got {
            self.free.remove(g);
        }
        Some(got)
    }

    /// Returns GPUs.
    pub fn release(&mut self, gpus: &[u32]) {
        self.free.extend(gpus);
    }
}

/// Shared state of a node's runtime.
pub struct NodeCtx {
    /// API client.
    pub client: Client,
    /// The fleet namespace.
    pub net: Arc<FleetNet>,
    /// Node name.
    pub node: String,
    /// Images → binaries.
    pub images: LocalImages,
    /// The node's directory (pods, logs).
    pub dir: PathBuf,
    /// Pod IPs.
    pub ips: Mutex<IpPool>,
    /// GPUs.
    pub gpus: Mutex<GpuPool>,
    /// What runs where.
    pub index: PodIndex,
    /// Allocatable CPU cores (default of unset `limits.cpu` in resourceFieldRef).
    pub allocatable_cpu: f64,
    /// Allocatable memory bytes.
    pub allocatable_memory: f64,
    /// Set to true to stop every pod without deleting pod objects.
    pub shutdown: watch::Sender<bool>,
}

impl std::fmt::Debug for NodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCtx")
            .field("node", &self.node)
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl NodeCtx {
    /// The device ID of GPU `index` on this node: the simulated node agent's UUID.
    pub fn gpu_id(&self, index: u32) -> String {
        format!("GPU-sim-{}-{index}", self.node)
    }

    /// Whether the runtime is stopping.
    pub fn shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// A node's runtime: the pod watch and the pod tasks.
#[derive(Debug)]
pub struct NodeRuntime {
    ctx: Arc<NodeCtx>,
    watch: JoinHandle<()>,
    pods: PodTasks,
}

impl NodeRuntime {
    /// Starts watching the pods bound to `ctx.node`.
    pub fn start(ctx: Arc<NodeCtx>) -> Self {
        let pods: PodTasks = Default::default();
        let watch = tokio::spawn(watch_pods(ctx.clone(), pods.clone()));
        Self { ctx, watch, pods }
    }

    /// The shared state.
    pub fn ctx(&self) -> &Arc<NodeCtx> {
        &self.ctx
    }

    /// Stops every pod (SIGTERM, then SIGKILL after 2 s) without touching the API, and waits.
    pub async fn shutdown(&self) {
        self.watch.abort();
        let _ = self.ctx.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .pods
            .lock()
            .map(|mut p| p.drain().map(|(_, (_, task))| task).collect())
            .unwrap_or_default();
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for NodeRuntime {
    fn drop(&mut self) {
        self.watch.abort();
        let _ = self.ctx.shutdown.send(true);
    }
}

async fn watch_pods(ctx: Arc<NodeCtx>, pods: PodTasks) {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let config = watcher::Config::default().fields(&format!("spec.nodeName={}", ctx.node));
    let mut stream = watcher::watcher(api, config).boxed();
    while let Some(event) = stream.next().await {
        let (pod, gone) = match event {
            Ok(Event::Apply(pod) | Event::InitApply(pod)) => (pod, false),
            Ok(Event::Delete(pod)) => (pod, true),
            Ok(_) => continue,
            Err(error) => {
                tracing::debug!(node = %ctx.node, %error, "pod watch error (retrying)");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        let Some(uid) = pod.uid() else { continue };
        let Ok(mut map) = pods.lock() else { return };
        map.retain(|_, (_, task)| !task.is_finished());
        if let Some((tx, _)) = map.get(&uid) {
            let _ = tx.send(if gone { None } else { Some(pod) });
        } else if !gone && !terminal(&pod) {
            let (tx, rx) = watch::channel(Some(pod));
            let task = tokio::spawn(pod::run(ctx.clone(), rx));
            map.insert(uid, (tx, task));
        }
    }
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_hand_out_distinct_addresses_and_gpus() {
        let mut ips = IpPool::new([10, 246, 1]);
        let a = ips.allocate().unwrap();
        let b = ips.allocate().unwrap();
        assert_eq!(
            (a.to_string(), b.to_string()),
            ("10.246.1.2".into(), "10.246.1.3".into())
        );
        ips.release(a);
        assert_eq!(ips.allocate(), Some(a));
        let mut gpus = GpuPool::new(4);
        assert_eq!(gpus.allocate(3), Some(vec![3, 2, 1]));
        assert_eq!(gpus.allocate(2), None, "only one is left");
        gpus.release(&[2]);
        assert_eq!(gpus.allocate(2), Some(vec![2, 0]));
    }
}
