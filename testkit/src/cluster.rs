//! [`LocalCluster`]: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok on
//! 127.0.0.1, started in order, each awaited on its readiness endpoint.

use std::{
    future::Future,
    net::TcpListener,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::{
    Api, Client, Config,
    config::{KubeConfigOptions, Kubeconfig},
};

use crate::{
    Error, Result, Toolchain,
    pki::{self, Pki},
    process::{ManagedProcess, STOP_GRACE},
};

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Directory for certificates, data and logs. Empty: a new temporary directory.
    pub dir: Option<PathBuf>,
    /// Keep the directory (logs, kubeconfig) after stop.
    pub keep_dir: bool,
    /// Kill the components when this process exits, even without a clean stop (tests).
    /// `modelfleet-e2e up --keep` turns it off.
    pub guarded: bool,
    /// Longest wait for each component to become ready.
    pub component_timeout: Duration,
    /// Extra command-line flags per component (`"kube-apiserver"` → `["--feature-gates=…"]`),
    /// appended after the harness's own.
    pub extra_args: std::collections::BTreeMap<String, Vec<String>>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            dir: None,
            keep_dir: false,
            guarded: true,
            component_timeout: Duration::from_secs(120),
            extra_args: Default::default(),
        }
    }
}

/// Loopback ports of the components, picked free at start.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// etcd client port.
    pub etcd_client: u16,
    /// etcd peer port.
    pub etcd_peer: u16,
    /// kube-apiserver secure port.
    pub apiserver: u16,
    /// kube-controller-manager secure port.
    pub controller_manager: u16,
    /// kube-scheduler secure port.
    pub scheduler: u16,
    /// kwok's server (healthz, and the fake kubelet endpoint nodes advertise).
    pub kwok: u16,
}

impl Ports {
    fn pick() -> Result<Self> {
        // Hold every listener until all are chosen so no two components get the same port.
        let listeners: Vec<TcpListener> = (0..6)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<std::io::Result<_>>()
            .map_err(Error::io("pick a free loopback port"))?;
        let port = |i: usize| {
            listeners[i]
                .local_addr()
                .map(|a| a.port())
                .map_err(Error::io("read a port"))
        };
        Ok(Self {
            etcd_client: port(0)?,
            etcd_peer: port(1)?,
            apiserver: port(2)?,
            controller_manager: port(3)?,
            scheduler: port(4)?,
            kwok: port(5)?,
        })
    }
}

/// A running local control plane. Dropping it stops every component (SIGTERM, then SIGKILL) and
/// removes its directory unless [`ClusterConfig::keep_dir`] is set.
#[derive(Debug)]
pub struct LocalCluster {
    toolchain: Toolchain,
    dir: PathBuf,
    tempdir: Option<tempfile::TempDir>,
    cleanup_guard: Option<std::process::Child>,
    processes: Vec<ManagedProcess>,
    kubeconfig: PathBuf,
    ports: Ports,
    started_in: Duration,
}

impl LocalCluster {
    /// Builds or finds the toolchain and starts the control plane.
    pub async fn start(config: ClusterConfig) -> Result<Self> {
        let begin = Instant::now();
        let toolchain = tokio::task::spawn_blocking(Toolchain::ensure)
            .await
            .map_err(|e| Error::Toolchain(format!("toolchain task failed: {e}")))??;
        let (dir, tempdir) = match &config.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
                (dir.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("modelfleet-e2e.")
                    .tempdir()
                    .map_err(Error::io("create a temporary directory"))?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let tempdir = match tempdir {
            Some(t) if config.keep_dir => {
                let _ = t.keep();
                None
            }
            other => other,
        };
        let pki = pki::generate(&dir)?;
        let ports = Ports::pick()?;
        let kubeconfig = dir.join("kubeconfig");
        write_kubeconfig(&kubeconfig, &pki, ports.apiserver)?;

        let cleanup_guard = match &tempdir {
            Some(t) if config.guarded => Some(crate::process::spawn_cleanup_guard(t.path())?),
            _ => None,
        };
        let mut cluster = Self {
            toolchain,
            dir,
            tempdir,
            cleanup_guard,
            processes: Vec::new(),
            kubeconfig,
            ports,
            started_in: Duration::ZERO,
        };
        // On any error below, dropping `cluster` stops what was started.
        cluster.start_components(&config, &pki).await?;
        cluster.started_in = begin.elapsed();
        tracing::info!(dir = %cluster.dir.display(), took = ?cluster.started_in, "local cluster ready");
        Ok(cluster)
    }

    async fn start_components(&mut self, config: &ClusterConfig, pki: &Pki) -> Result<()> {
        let p = self.ports;
        let f = &pki.files;
        let timeout = config.component_timeout;
        let data = self.dir.join("etcd-data");

        let etcd = self.spawn(
            config,
            "etcd",
            vec![
                "--name=node0".into(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls=http://127.0.0.1:{}", p.etcd_client),
                format!("--advertise-client-urls=http://127.0.0.1:{}", p.etcd_client),
                format!("--listen-peer-urls=http://127.0.0.1:{}", p.etcd_peer),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{}", p.etcd_peer),
                format!("--initial-cluster=node0=http://127.0.0.1:{}", p.etcd_peer),
                "--auto-compaction-retention=1".into(),
                "--quota-backend-bytes=8589934592".into(),
                "--unsafe-no-fsync=true".into(),
            ],
        )?;
        let port = p.etcd_client;
        self.wait_ready(etcd, timeout, || async move {
            crate::http::get(port, "/health")
                .await
                .is_some_and(|(s, b)| s == 200 && b.contains("true"))
        })
        .await?;

        let apiserver = self.spawn(
            config,
            "kube-apiserver",
            vec![
                format!("--etcd-servers=http://127.0.0.1:{}", p.etcd_client),
                "--etcd-prefix=/registry".into(),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={}", p.apiserver),
                format!("--tls-cert-file={}", f.serving_cert),
                format!("--tls-private-key-file={}", f.serving_key),
                format!("--client-ca-file={}", f.ca_cert),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", f.sa_pub),
                format!("--service-account-signing-key-file={}", f.sa_key),
                "--service-cluster-ip-range=10.96.0.0/16".into(),
                "--authorization-mode=Node,RBAC".into(),
                "--allow-privileged=true".into(),
                "--endpoint-reconciler-type=none".into(),
                format!("--cert-dir={}", self.dir.join("apiserver-certs").display()),
            ],
        )?;
        let admin = self.admin_config().await?;
        self.wait_ready(apiserver, timeout, || healthy(admin.clone(), "/readyz"))
            .await?;

        let kubeconfig = self.kubeconfig.display().to_string();
        let common = |port: u16| {
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".to_string(),
                format!("--secure-port={port}"),
                format!("--tls-cert-file={}", f.serving_cert),
                format!("--tls-private-key-file={}", f.serving_key),
                "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics".to_string(),
                "--leader-elect=false".to_string(),
            ]
        };
        let mut kcm_args = common(p.controller_manager);
        kcm_args.extend([
            format!("--root-ca-file={}", f.ca_cert),
            format!("--service-account-private-key-file={}", f.sa_key),
            "--use-service-account-credentials=false".into(),
            "--node-monitor-period=5s".into(),
            "--node-monitor-grace-period=40s".into(),
        ]);
        let kcm = self.spawn(config, "kube-controller-manager", kcm_args)?;
        let scheduler = self.spawn(config, "kube-scheduler", common(p.scheduler))?;

        let mut kwok_args = vec![format!("--kubeconfig={kubeconfig}")];
        for stage in self.toolchain.kwok_stages()? {
            kwok_args.push(format!("--config={}", stage.display()));
        }
        kwok_args.extend([
            "--manage-all-nodes=false".into(),
            format!(
                "--manage-nodes-with-annotation-selector={}=fake",
                crate::nodes::KWOK_ANNOTATION
            ),
            "--node-lease-duration-seconds=40".into(),
            "--cidr=10.244.0.0/16".into(),
            "--node-ip=127.0.0.1".into(),
            "--node-name=localhost".into(),
            format!("--node-port={}", p.kwok),
            format!("--server-address=127.0.0.1:{}", p.kwok),
        ]);
        let kwok = self.spawn(config, "kwok", kwok_args)?;

        let kcm_health = with_url(&admin, p.controller_manager)?;
        self.wait_ready(kcm, timeout, || healthy(kcm_health.clone(), "/healthz"))
            .await?;
        let scheduler_health = with_url(&admin, p.scheduler)?;
        self.wait_ready(scheduler, timeout, || {
            healthy(scheduler_health.clone(), "/healthz")
        })
        .await?;
        let kwok_port = p.kwok;
        self.wait_ready(kwok, timeout, || async move {
            crate::http::get(kwok_port, "/healthz")
                .await
                .is_some_and(|(s, _)| s == 200)
        })
        .await?;

        // Pods need the `default` ServiceAccount, which the controller manager creates.
        let client = Client::try_from(admin)?;
        let sa: Api<ServiceAccount> = Api::namespaced(client, "default");
        self.wait_ready(kcm, timeout, || {
            let sa = sa.clone();
            async move { sa.get_opt("default").await.ok().flatten().is_some() }
        })
        .await
    }

    fn spawn(&mut self, config: &ClusterConfig, name: &str, mut args: Vec<String>) -> Result<usize> {
        tracing::info!(component = name, "starting");
        args.extend(config.extra_args.get(name).into_iter().flatten().cloned());
        let process =
            ManagedProcess::spawn(name, &self.toolchain.bin(name), &args, &self.dir, config.guarded)?;
        self.processes.push(process);
        Ok(self.processes.len() - 1)
    }

    async fn wait_ready<F, Fut>(&mut self, index: usize, timeout: Duration, ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        self.processes[index].wait_ready(timeout, ready).await
    }

    /// The admin kubeconfig file (client certificate in `system:masters`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// The cluster directory: certificates, etcd data, one `<component>.log` per component.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The toolchain the cluster runs.
    pub fn toolchain(&self) -> &Toolchain {
        &self.toolchain
    }

    /// Component ports.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The API server URL.
    pub fn api_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.ports.apiserver)
    }

    /// How long [`LocalCluster::start`] took.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// Every pid the cluster started (components, their guards and the directory guard).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self.processes.iter().flat_map(ManagedProcess::pids).collect();
        pids.extend(self.cleanup_guard.as_ref().map(std::process::Child::id));
        pids
    }

    /// `(component, pid)` of each component.
    pub fn components(&self) -> Vec<(String, u32)> {
        self.processes
            .iter()
            .map(|p| (p.name().to_string(), p.pid()))
            .collect()
    }

    /// The last `lines` lines of a component's log.
    pub fn component_log(&self, component: &str, lines: usize) -> Option<String> {
        self.processes
            .iter()
            .find(|p| p.name() == component)
            .map(|p| p.log_tail(lines))
    }

    async fn admin_config(&self) -> Result<Config> {
        let kubeconfig = Kubeconfig::read_from(&self.kubeconfig)?;
        Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
    }

    /// A new client with admin rights. Each test should make its own: a client is tied to the
    /// Tokio runtime that created it.
    pub async fn client(&self) -> Result<Client> {
        Ok(Client::try_from(self.admin_config().await?)?)
    }

    /// Stops every component in reverse start order and removes the directory unless kept.
    pub fn stop(mut self) {
        self.stop_all();
    }

    fn stop_all(&mut self) {
        while let Some(mut p) = self.processes.pop() {
            p.stop(STOP_GRACE);
        }
        if let Some(t) = self.tempdir.take() {
            let _ = t.close();
        }
        self.stop_cleanup_guard();
    }

    fn stop_cleanup_guard(&mut self) {
        if let Some(mut guard) = self.cleanup_guard.take() {
            let _ = guard.kill();
            let _ = guard.wait();
        }
    }

    /// Leaves the components running (for `modelfleet-e2e up --keep`) and returns
    /// `(component, pid)` of each and the directory, which is kept.
    pub fn detach(mut self) -> (Vec<(String, u32)>, PathBuf) {
        let pids = self
            .processes
            .drain(..)
            .map(|p| (p.name().to_string(), p.detach()))
            .collect();
        if let Some(t) = self.tempdir.take() {
            let _ = t.keep();
        }
        self.stop_cleanup_guard();
        (pids, self.dir.clone())
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// `config` pointed at another loopback port (the controller manager's or scheduler's secure port,
/// which serve our CA-signed certificate).
fn with_url(config: &Config, port: u16) -> Result<Config> {
    let mut c = config.clone();
    c.cluster_url = format!("https://127.0.0.1:{port}")
        .parse()
        .map_err(|e| Error::Toolchain(format!("bad loopback URL: {e}")))?;
    Ok(c)
}

async fn healthy(config: Config, path: &'static str) -> bool {
    let Ok(client) = Client::try_from(config) else {
        return false;
    };
    let Ok(request) = http::Request::get(path).body(Vec::new()) else {
        return false;
    };
    client
        .request_text(request)
        .await
        .is_ok_and(|body| body.trim() == "ok")
}

fn write_kubeconfig(path: &Path, pki: &Pki, port: u16) -> Result<()> {
    let yaml = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: modelfleet-e2e
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority-data: {ca}
users:
- name: admin
  user:
    client-certificate-data: {cert}
    client-key-data: {key}
contexts:
- name: modelfleet-e2e
  context: {{cluster: modelfleet-e2e, user: admin, namespace: default}}
current-context: modelfleet-e2e
",
        ca = B64.encode(&pki.ca_cert_pem),
        cert = B64.encode(&pki.admin_cert_pem),
        key = B64.encode(&pki.admin_key_pem),
    );
    std::fs::write(path, yaml).map_err(Error::io(format!("write {}", path.display())))
}
