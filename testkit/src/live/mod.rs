//! The live fleet: pods on "live" GPU nodes run for real, as processes inside one network
//! namespace with their own pod IPs, behind real Services (kube-proxy) and DNS (CoreDNS).
//! See docs/local-cluster.md for the layout.
//!
//! [`LiveFleet::start`] creates the namespace ([`netns`]), relays the API server's port into it
//! ([`relay`]), starts kube-proxy and CoreDNS in it ([`services`]), and registers live nodes
//! ([`node`]) each with a runtime ([`runtime`]: the local stand-in for kubelet), a kubelet
//! endpoint for `kubectl logs` and a PodResources socket ([`kubelet_api`]).

pub mod client;
pub mod dns;
pub mod kubelet_api;
pub mod netns;
pub mod node;
pub mod relay;
pub mod router;
pub mod runtime;
pub mod scrape;
pub mod services;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::task::JoinHandle;

use crate::{Error, GpuNodePool, LocalCluster, Result, bin, process::ManagedProcess, prometheus::Prometheus};
use netns::FleetNet;
use runtime::{GpuPool, IpPool, LocalImages, NodeCtx, NodeRuntime};

/// The workspace binaries that live pods may run (their images map to them).
pub const LOCAL_BINARIES: [(&str, &str); 4] = [
    ("modelfleet-server", "modelfleet-server"),
    ("modelfleet-router", "modelfleet-router"),
    ("modelfleet-node-agent", "modelfleet-node-agent"),
    ("modelfleet-operator", "modelfleet-operator"),
];

/// How to start a [`LiveFleet`].
#[derive(Debug, Clone)]
pub struct LiveConfig {
    /// Live GPU nodes: `<prefix>-<i>`, `count`, GPUs per node, product and memory.
    pub pool: GpuNodePool,
    /// Untainted live nodes without GPUs, `live-cpu-<i>` (CPU models such as
    /// examples/minimal.yaml land there).
    pub cpu_nodes: usize,
    /// Binaries for images; `None` looks up the built [`LOCAL_BINARIES`] ([`local_images`]).
    pub images: Option<LocalImages>,
}

impl Default for LiveConfig {
    /// 2 nodes × 4 simulated H100s, `live-gpu-0` and `live-gpu-1`.
    fn default() -> Self {
        Self {
            pool: GpuNodePool {
                name_prefix: "live-gpu".into(),
                count: 2,
                gpus_per_node: 4,
                ..Default::default()
            },
            cpu_nodes: 1,
            images: None,
        }
    }
}

/// One live node and what serves it.
#[derive(Debug)]
pub struct LiveNode {
    /// Node name.
    pub name: String,
    /// Its simulated GPUs.
    pub gpus: u32,
    runtime: NodeRuntime,
    tasks: Vec<JoinHandle<()>>,
    pod_resources_socket: PathBuf,
}

impl LiveNode {
    /// The node's PodResources socket (`--pod-resources-socket` of its node agent).
    pub fn pod_resources_socket(&self) -> &Path {
        &self.pod_resources_socket
    }

    /// What runs on it.
    pub fn index(&self) -> runtime::PodIndex {
        self.runtime.ctx().index.clone()
    }

    /// The `nvidia.com/gpu` device IDs the node gave the containers of pod `namespace/name` (what
    /// its PodResources endpoint reports).
    pub fn gpu_devices(&self, namespace: &str, name: &str) -> Vec<String> {
        let index = self.runtime.ctx().index.lock();
        index
            .iter()
            .flat_map(|pods| pods.values())
            .filter(|p| p.namespace == namespace && p.name == name)
            .flat_map(|p| p.containers.iter().flat_map(|c| c.devices.clone()))
            .collect()
    }
}

/// A running live fleet; [`LiveFleet::stop`] (or drop) stops every pod, service and relay and
/// deletes the namespace.
#[derive(Debug)]
pub struct LiveFleet {
    net: Arc<FleetNet>,
    nodes: Vec<LiveNode>,
    services: Vec<ManagedProcess>,
    relays: Vec<relay::Relay>,
    /// Tasks of the fleet itself (the Prometheus pod targets), aborted on stop.
    background: Vec<JoinHandle<()>>,
    images: LocalImages,
    dir: PathBuf,
}

impl LiveFleet {
    /// Starts the fleet's network, services and nodes on `cluster`.
    pub async fn start(cluster: &LocalCluster, config: LiveConfig) -> Result<Self> {
        let images = match config.images {
            Some(images) => images,
            None => local_images()?,
        };
        static NEXT_FLEET: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "modelfleet-{}-{}",
            std::process::id(),
            NEXT_FLEET.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let net = Arc::new(FleetNet::create(&name, true)?);
        write_exec_resolv_conf(&name)?;
        let dir = cluster.dir().join("live");
        std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let mut fleet = Self {
            net,
            nodes: Vec::new(),
            services: Vec::new(),
            relays: Vec::new(),
            background: Vec::new(),
            images,
            dir,
        };
        fleet.relay_into_namespace(cluster.ports().apiserver).await?;
        fleet
            .services
            .push(services::start_coredns(cluster, &fleet.net).await?);
        let client = cluster.client().await?;
        for index in 0..config.pool.count {
            let node = fleet.add_node(&client, &config.pool, index, index, true).await?;
            fleet.nodes.push(node);
        }
        let cpu_pool = GpuNodePool {
            name_prefix: "live-cpu".into(),
            count: config.cpu_nodes,
            gpus_per_node: 0,
            ..Default::default()
        };
        for index in 0..config.cpu_nodes {
            let node = fleet
                .add_node(&client, &cpu_pool, index, config.pool.count + index, false)
                .await?;
            fleet.nodes.push(node);
        }
        // After the nodes: kube-proxy's healthz stays 503 until its own Node object exists.
        let first = fleet
            .nodes
            .first()
            .map(|n| n.name.clone())
            .ok_or_else(|| Error::Runtime("a live fleet needs at least one node".into()))?;
        fleet
            .services
            .push(services::start_kube_proxy(cluster, &fleet.net, &first).await?);
        fleet.net.check_isolated()?;
        Ok(fleet)
    }

    /// Registers node `<prefix>-<index>` with podCIDR `10.246.<subnet>.0/24`.
    async fn add_node(
        &self,
        client: &kube::Client,
        pool: &GpuNodePool,
        index: usize,
        subnet: usize,
        gpu: bool,
    ) -> Result<LiveNode> {
        let name = format!("{}-{index}", pool.name_prefix);
        let subnet = u8::try_from(subnet).map_err(|_| Error::Runtime("at most 256 live nodes".into()))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(Error::io("listen for a kubelet endpoint"))?;
        let kubelet_port = listener.local_addr().map_err(Error::io("kubelet port"))?.port();
        let dir = self.dir.join(&name);
        let (shutdown, _) = tokio::sync::watch::channel(false);
        let ctx = Arc::new(NodeCtx {
            client: client.clone(),
            net: self.net.clone(),
            node: name.clone(),
            images: self.images.clone(),
            dir: dir.clone(),
            ips: std::sync::Mutex::new(IpPool::new([10, 246, subnet])),
            gpus: std::sync::Mutex::new(GpuPool::new(pool.gpus_per_node)),
            index: Default::default(),
            allocatable_cpu: 64.0,
            allocatable_memory: 512.0 * 1024.0 * 1024.0 * 1024.0,
            shutdown,
        });
        let socket = dir.join("pod-resources/kubelet.sock");
        let tasks = vec![
            kubelet_api::serve_https(listener, ctx.index.clone())?,
            kubelet_api::serve_pod_resources(&socket, ctx.index.clone())?,
        ];
        let spec = node::LiveNodeSpec {
            name: name.clone(),
            pool: pool.clone(),
            pod_cidr: format!("10.246.{subnet}.0/24"),
            kubelet_port,
            gpu,
        };
        let runtime = NodeRuntime::start(ctx);
        node::register(client, &spec).await?;
        let mut tasks = tasks;
        tasks.push(node::heartbeat(client.clone(), name.clone()));
        Ok(LiveNode {
            name,
            gpus: pool.gpus_per_node,
            runtime,
            tasks,
            pod_resources_socket: socket,
        })
    }

    /// Makes host 127.0.0.1:`port` reachable at 127.0.0.1:`port` inside the namespace (the API
    /// server, the operator's telemetry hub).
    pub async fn relay_into_namespace(&mut self, port: u16) -> Result<()> {
        let relay = relay::into_host(&self.net, port).await?;
        self.relays.push(relay);
        Ok(())
    }

    /// Makes `target` inside the namespace reachable on the host at 127.0.0.1:`port` (0: any);
    /// returns the host address.
    pub async fn relay_out(
        &mut self,
        port: u16,
        target: std::net::SocketAddr,
    ) -> Result<std::net::SocketAddr> {
        let (relay, addr) = relay::out_of_namespace(self.net.clone(), port, target).await?;
        self.relays.push(relay);
        Ok(addr)
    }

    /// Starts Prometheus inside the namespace, scraping every live pod's `metrics` port (targets
    /// from [`scrape::follow_pods`]), reachable from the host at its [`Prometheus::url`].
    pub async fn start_prometheus(
        &mut self,
        cluster: &LocalCluster,
        scrape_interval: Duration,
    ) -> Result<Prometheus> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(Error::io("pick a port for Prometheus"))?
            .port();
        let inside = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        self.relay_out(port, inside).await?;
        let prometheus =
            Prometheus::start_in_fleet(&self.dir.join("prometheus"), scrape_interval, port, &self.net)
                .await?;
        let follow = scrape::follow_pods(cluster.client().await?, self.node_names(), prometheus.pods_file());
        self.background.push(follow);
        Ok(prometheus)
    }

    /// Starts the real node agent for every live node (one process each, in the namespace, with
    /// as many simulated GPUs as the node has and its node's PodResources socket), streaming to
    /// the telemetry hub at `hub_url` (relay it into the namespace first).
    pub async fn start_node_agents(
        &self,
        cluster: &LocalCluster,
        hub_url: &str,
    ) -> Result<Vec<crate::agents::NodeAgents>> {
        let binary = self
            .images
            .binary_for("modelfleet-node-agent")
            .map_err(Error::Runtime)?
            .to_path_buf();
        let mut started = Vec::new();
        for node in &self.nodes {
            let mut config = crate::agents::AgentsConfig::new([node.name.clone()], hub_url);
            config.binary = Some(binary.clone());
            config.netns = Some(self.net.clone());
            config.extra_args = vec![
                format!("--simulated-gpus={}", node.gpus),
                format!("--pod-resources-socket={}", node.pod_resources_socket.display()),
            ];
            started.push(crate::agents::NodeAgents::start(cluster, config).await?);
        }
        Ok(started)
    }

    /// Starts `modelfleet-router` in the namespace (it reaches pod IPs there) with `extra`
    /// flags, waits until it is ready, and relays its API to the host; see [`router`].
    pub async fn start_router(
        &mut self,
        cluster: &LocalCluster,
        extra: &[&str],
    ) -> Result<router::FleetRouter> {
        let binary = self
            .images
            .binary_for("modelfleet-router")
            .map_err(Error::Runtime)?
            .to_path_buf();
        let mut started = router::start(cluster, &self.net, &binary, extra).await?;
        started.url_addr = self.relay_out(0, router::HTTP_IN_NAMESPACE).await?;
        Ok(started)
    }

    /// The fleet namespace.
    pub fn net(&self) -> &Arc<FleetNet> {
        &self.net
    }

    /// The live nodes.
    pub fn nodes(&self) -> &[LiveNode] {
        &self.nodes
    }

    /// Node names.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// The images (binaries) live pods may run.
    pub fn images(&self) -> &LocalImages {
        &self.images
    }

    /// An HTTP request from inside the namespace (`http://<svc>.<ns>.svc:<port>/…` or a pod IP).
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Result<client::Answer> {
        client::request(&self.net, method, url, body, headers, Duration::from_secs(30)).await
    }

    /// Pids of the processes the fleet started itself (kube-proxy, CoreDNS) and of every
    /// container process now running on its nodes (their `unshare` parents).
    pub fn service_pids(&self) -> Vec<u32> {
        self.services.iter().flat_map(ManagedProcess::pids).collect()
    }

    /// Stops every pod (without touching the API), the services and relays, and deletes the
    /// namespace.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        for node in &self.nodes {
            node.runtime.shutdown().await;
            for task in &node.tasks {
                task.abort();
            }
        }
        self.nodes.clear();
        for task in self.background.drain(..) {
            task.abort();
        }
        for mut service in self.services.drain(..) {
            service.stop(Duration::from_secs(5));
        }
        self.relays.clear();
        self.net.delete();
    }
}

impl Drop for LiveFleet {
    fn drop(&mut self) {
        for task in &self.background {
            task.abort();
        }
        for node in &self.nodes {
            for task in &node.tasks {
                task.abort();
            }
        }
        // Dropping the runtimes aborts their watches; dropped container processes are killed.
    }
}

/// The built workspace binaries live pods run ([`LOCAL_BINARIES`], found by [`bin::path`]).
pub fn local_images() -> Result<LocalImages> {
    let mut images = LocalImages::default();
    for (_, name) in LOCAL_BINARIES {
        images.insert(name, bin::path(name)?);
    }
    Ok(images)
}

/// `ip netns exec <name>` bind-mounts `/etc/netns/<name>/resolv.conf` over `/etc/resolv.conf`:
/// `modelfleet-e2e exec` commands resolve through the fleet's CoreDNS.
fn write_exec_resolv_conf(name: &str) -> Result<()> {
    let dir = Path::new("/etc/netns").join(name);
    std::fs::create_dir_all(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
    std::fs::write(dir.join("resolv.conf"), runtime::spec::resolv_conf("default"))
        .map_err(Error::io("write the fleet's resolv.conf"))
}

/// Where [`stage_model`] publishes model directories: readable by the pods' non-root user
/// (the fetch cache under `/root` is not), outside `/tmp` (pods mount an emptyDir there).
pub const MODEL_ROOT: &str = "/run/modelfleet/models";

/// Publishes the model files of `dir` under [`MODEL_ROOT`]`/<name>` (hard links when on the same
/// file system, else copies) and returns the `file://` URI live pods load it from.
pub fn stage_model(dir: &Path, name: &str) -> Result<String> {
    let target = Path::new(MODEL_ROOT).join(name);
    std::fs::create_dir_all(&target).map_err(Error::io(format!("create {}", target.display())))?;
    let open = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    };
    open(Path::new("/run/modelfleet"));
    open(Path::new(MODEL_ROOT));
    open(&target);
    let entries = std::fs::read_dir(dir).map_err(Error::io(format!("read {}", dir.display())))?;
    for entry in entries.flatten() {
        let (from, to) = (entry.path(), target.join(entry.file_name()));
        if !from.is_file() || to.exists() {
            continue;
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to).map_err(Error::io(format!("copy {}", from.display())))?;
        }
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o644));
    }
    Ok(format!("file://{}", target.display()))
}
