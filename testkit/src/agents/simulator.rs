//! [`LoadSimulator`]: a loopback `/metrics` endpoint per server pod of the local cluster, whose
//! load a test sets.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{WatchStreamExt, watcher},
};
use modelfleet_crds::constants::labels;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::oneshot,
    task::JoinHandle,
};

use super::load::{Counters, PodLoad};
use crate::{Error, Result, wait::poll_until};

/// The pod annotation the node agent scrapes (`http://<address>/metrics`) instead of the pod IP.
pub const SCRAPE_ADDRESS_ANNOTATION: &str = "modelfleet.dev/scrape-address";

/// How long [`LoadSimulator::start`] waits for the first list of pods.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest a `/metrics` connection may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest request head accepted.
const MAX_REQUEST_HEAD: usize = 16 * 1024;

/// `(namespace, name)`.
type Key = (String, String);

fn key(namespace: &str, name: &str) -> Key {
    (namespace.to_string(), name.to_string())
}

/// One served pod.
#[derive(Debug)]
struct ServedPod {
    deployment: String,
    address: SocketAddr,
    counters: Counters,
    scrapes: u64,
    /// Whether the pod's annotation holds `address`.
    annotated: bool,
    /// Running and Ready: it takes a share of its deployment's total load.
    serving: bool,
    server: JoinHandle<()>,
}

impl Drop for ServedPod {
    fn drop(&mut self) {
        // Aborting the accept loop drops its listener: the port closes.
        self.server.abort();
    }
}

#[derive(Debug, Default)]
struct State {
    /// `(namespace, ModelDeployment)` → load of each of its pods.
    deployments: HashMap<Key, PodLoad>,
    /// `(namespace, ModelDeployment)` → load of all its serving pods together, split evenly
    /// (as a Service spreads traffic), used where no per-pod load is set.
    totals: HashMap<Key, PodLoad>,
    /// `(namespace, pod)` → load overriding its deployment's.
    overrides: HashMap<Key, PodLoad>,
    pods: HashMap<Key, ServedPod>,
}

impl State {
    /// The load of served pod `k`.
    fn load_of(&self, k: &Key) -> PodLoad {
        let Some(pod) = self.pods.get(k) else {
            return PodLoad::default();
        };
        let deployment = key(&k.0, &pod.deployment);
        if let Some(load) = self
            .overrides
            .get(k)
            .or_else(|| self.deployments.get(&deployment))
        {
            return *load;
        }
        match self.totals.get(&deployment) {
            Some(total) if pod.serving => {
                let serving = self
                    .pods
                    .iter()
                    .filter(|(pk, p)| pk.0 == k.0 && p.deployment == pod.deployment && p.serving)
                    .count();
                total.split(serving)
            }
            _ => PodLoad::default(),
        }
    }

    /// Brings every pod's counters up to `now` under the loads in force until now (called before
    /// any load or share changes, so the counters stay continuous and monotonic).
    fn advance_all(&mut self, now: Instant) {
        let loads: Vec<(Key, PodLoad)> = self.pods.keys().map(|k| (k.clone(), self.load_of(k))).collect();
        for (k, load) in loads {
            if let Some(pod) = self.pods.get_mut(&k) {
                pod.counters.advance(&load, now);
            }
        }
    }

    /// A scrape of `pod`: its counters up to now and its gauges, counted.
    fn scrape(&mut self, pod: &Key) -> Option<String> {
        let load = self.load_of(pod);
        let served = self.pods.get_mut(pod)?;
        served.counters.advance(&load, Instant::now());
        served.scrapes += 1;
        Some(served.counters.render(&load))
    }

    fn info(&self, k: &Key, pod: &ServedPod) -> SimulatedPod {
        SimulatedPod {
            namespace: k.0.clone(),
            name: k.1.clone(),
            deployment: pod.deployment.clone(),
            address: pod.address,
            annotated: pod.annotated,
            scrapes: pod.scrapes,
            load: self.load_of(k),
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent data (plain counters): keep going.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A served pod, as [`LoadSimulator::pods`] reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedPod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its `modelfleet.dev/deployment` label.
    pub deployment: String,
    /// Where its `/metrics` listens (127.0.0.1).
    pub address: SocketAddr,
    /// Whether its `modelfleet.dev/scrape-address` annotation names `address` yet.
    pub annotated: bool,
    /// `/metrics` requests answered so far.
    pub scrapes: u64,
    /// The load it reports now.
    pub load: PodLoad,
}

/// Simulated modelfleet-server metrics for the pods of the local cluster, where no container
/// runs: every pod labelled `modelfleet.dev/deployment` (in one namespace, or all) gets its own
/// `127.0.0.1:<port>/metrics`, named in its `modelfleet.dev/scrape-address` annotation for the
/// node agent (run with `--scrape-loopback-only`). A test sets the load per ModelDeployment or
/// per pod. Deleted pods lose their listener; dropping the simulator stops everything.
#[derive(Debug)]
pub struct LoadSimulator {
    shared: Arc<Shared>,
    watch: Option<JoinHandle<()>>,
}

impl LoadSimulator {
    /// Starts watching the server pods of `namespace` (all namespaces with `None`) and returns
    /// once the pods present now are served (their annotations may follow a moment later: see
    /// [`LoadSimulator::wait_pods`]). Run one simulator per namespace: two over the same pods
    /// would overwrite each other's annotations.
    pub async fn start(client: Client, namespace: Option<String>) -> Result<Self> {
        let api: Api<Pod> = match &namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let shared = Arc::new(Shared::default());
        let (synced_tx, synced_rx) = oneshot::channel();
        let watch = tokio::spawn(watch_pods(api, client, shared.clone(), synced_tx));
        let mut simulator = Self {
            shared,
            watch: Some(watch),
        };
        let scope = namespace.unwrap_or_else(|| "all namespaces".into());
        match tokio::time::timeout(SYNC_TIMEOUT, synced_rx).await {
            Ok(Ok(())) => Ok(simulator),
            outcome => {
                simulator.stop();
                Err(Error::Timeout {
                    what: format!("the first list of server pods in {scope}"),
                    timeout: SYNC_TIMEOUT,
                    last_state: match outcome {
                        Ok(Err(_)) => "(the pod watch stopped)".into(),
                        _ => "(no answer from the pod watch; see the warnings logged)".into(),
                    },
                })
            }
        }
    }

    /// Sets the load of every pod of ModelDeployment `deployment` (label
    /// `modelfleet.dev/deployment`) in `namespace`, present and future, except pods with their
    /// own [`LoadSimulator::set_pod_load`].
    pub fn set_deployment_load(&self, namespace: &str, deployment: &str, load: PodLoad) {
        let mut state = self.shared.lock();
        state.advance_all(Instant::now());
        state.totals.remove(&key(namespace, deployment));
        state.deployments.insert(key(namespace, deployment), load);
    }

    /// Sets the load of ModelDeployment `deployment` as a whole: split evenly over its pods that
    /// are Running and Ready (as a Service spreads traffic), so adding replicas lowers each
    /// pod's share. A [`LoadSimulator::set_deployment_load`] of the same deployment wins.
    pub fn set_deployment_total_load(&self, namespace: &str, deployment: &str, load: PodLoad) {
        let mut state = self.shared.lock();
        state.advance_all(Instant::now());
        state.deployments.remove(&key(namespace, deployment));
        state.totals.insert(key(namespace, deployment), load);
    }

    /// Sets the load of one pod, overriding its deployment's.
    pub fn set_pod_load(&self, namespace: &str, pod: &str, load: PodLoad) {
        let mut state = self.shared.lock();
        state.advance_all(Instant::now());
        state.overrides.insert(key(namespace, pod), load);
    }

    /// Removes a pod's own load: it follows its deployment's again.
    pub fn clear_pod_load(&self, namespace: &str, pod: &str) {
        let mut state = self.shared.lock();
        state.advance_all(Instant::now());
        state.overrides.remove(&key(namespace, pod));
    }

    /// The loopback address serving the `/metrics` of `pod`, once the simulator has seen it.
    pub fn scrape_address(&self, namespace: &str, pod: &str) -> Option<SocketAddr> {
        self.shared
            .lock()
            .pods
            .get(&key(namespace, pod))
            .map(|p| p.address)
    }

    /// `/metrics` requests `pod` has answered (0 for an unknown pod).
    pub fn scrapes(&self, namespace: &str, pod: &str) -> u64 {
        self.shared
            .lock()
            .pods
            .get(&key(namespace, pod))
            .map_or(0, |p| p.scrapes)
    }

    /// Every served pod, sorted by namespace and name.
    pub fn pods(&self) -> Vec<SimulatedPod> {
        let state = self.shared.lock();
        let mut out: Vec<SimulatedPod> = state.pods.iter().map(|(k, p)| state.info(k, p)).collect();
        out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        out
    }

    /// Waits until at least `count` pods of `deployment` in `namespace` are served and
    /// annotated, and returns them.
    pub async fn wait_pods(
        &self,
        namespace: &str,
        deployment: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<SimulatedPod>> {
        let what = format!("{count} annotated simulated pods of {namespace}/{deployment}");
        poll_until(timeout, &what, || async {
            let pods: Vec<SimulatedPod> = self
                .pods()
                .into_iter()
                .filter(|p| p.namespace == namespace && p.deployment == deployment)
                .collect();
            if pods.iter().filter(|p| p.annotated).count() >= count {
                Ok(Some(pods.into_iter().filter(|p| p.annotated).collect()))
            } else {
                Err(format!("{pods:#?}"))
            }
        })
        .await
    }

    /// Waits until `pod` has answered at least `at_least` scrapes; returns the count.
    pub async fn wait_scraped(
        &self,
        namespace: &str,
        pod: &str,
        at_least: u64,
        timeout: Duration,
    ) -> Result<u64> {
        let what = format!("{at_least} scrapes of {namespace}/{pod}");
        poll_until(timeout, &what, || async {
            let n = self.scrapes(namespace, pod);
            if n >= at_least {
                Ok(Some(n))
            } else {
                Err(format!("{n} scrapes"))
            }
        })
        .await
    }

    /// Stops the watch and closes every listener. Idempotent; `Drop` does it too.
    pub fn stop(&mut self) {
        if let Some(watch) = self.watch.take() {
            watch.abort();
        }
        self.shared.lock().pods.clear();
    }
}

impl Drop for LoadSimulator {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The watch loop: serves new pods, forgets deleted ones; signals `synced` after the first list.
async fn watch_pods(api: Api<Pod>, client: Client, shared: Arc<Shared>, synced: oneshot::Sender<()>) {
    let config = watcher::Config::default().labels(labels::DEPLOYMENT);
    let mut events = watcher(api, config).default_backoff().boxed();
    let mut synced = Some(synced);
    // Pods of a (re-)list in progress: those absent from it were deleted meanwhile.
    let mut listing: Option<HashSet<Key>> = None;
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Init) => listing = Some(HashSet::new()),
            Ok(watcher::Event::InitApply(pod)) => {
                if let Some(listing) = listing.as_mut() {
                    listing.insert(key(&pod.namespace().unwrap_or_default(), &pod.name_any()));
                }
                serve_pod(&client, &shared, &pod).await;
            }
            Ok(watcher::Event::InitDone) => {
                if let Some(listing) = listing.take() {
                    shared.lock().pods.retain(|k, _| listing.contains(k));
                }
                if let Some(synced) = synced.take() {
                    let _ = synced.send(());
                }
            }
            Ok(watcher::Event::Apply(pod)) => serve_pod(&client, &shared, &pod).await,
            Ok(watcher::Event::Delete(pod)) => {
                let k = key(&pod.namespace().unwrap_or_default(), &pod.name_any());
                shared.lock().pods.remove(&k);
            }
            Err(e) => tracing::warn!(error = %e, "load simulator: pod watch error; retrying"),
        }
    }
}

/// Makes sure `pod` has a listener and its annotation names it.
async fn serve_pod(client: &Client, shared: &Arc<Shared>, pod: &Pod) {
    let Some(namespace) = pod.namespace() else {
        return;
    };
    let name = pod.name_any();
    let Some(deployment) = pod.labels().get(labels::DEPLOYMENT).cloned() else {
        return;
    };
    let k = key(&namespace, &name);
    let serving = is_serving(pod);
    let known = {
        let mut state = shared.lock();
        // A pod joining or leaving the serving set changes every share of a total load.
        if state.pods.get(&k).is_some_and(|p| p.serving != serving) {
            state.advance_all(Instant::now());
            if let Some(p) = state.pods.get_mut(&k) {
                p.serving = serving;
            }
        }
        state.pods.get(&k).map(|p| p.address)
    };
    let address = match known {
        Some(address) => address,
        None => match start_listener(shared.clone(), k.clone()).await {
            Ok((address, server)) => {
                shared.lock().pods.insert(
                    k.clone(),
                    ServedPod {
                        deployment,
                        address,
                        counters: Counters::new(Instant::now()),
                        scrapes: 0,
                        annotated: false,
                        serving,
                        server,
                    },
                );
                address
            }
            Err(e) => {
                tracing::warn!(pod = %name, namespace = %namespace, error = %e, "load simulator: cannot listen");
                return;
            }
        },
    };
    let wanted = address.to_string();
    let annotated = pod.annotations().get(SCRAPE_ADDRESS_ANNOTATION) == Some(&wanted);
    let annotated = annotated
        || {
            let patch = serde_json::json!({"metadata": {"annotations": {SCRAPE_ADDRESS_ANNOTATION: wanted}}});
            match Api::<Pod>::namespaced(client.clone(), &namespace)
                .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => true,
                Err(e) => {
                    // A pod deleted meanwhile; the Delete event closes its listener.
                    tracing::debug!(pod = %name, namespace = %namespace, error = %e, "load simulator: cannot annotate");
                    false
                }
            }
        };
    if let Some(served) = shared.lock().pods.get_mut(&k) {
        served.annotated = annotated;
    }
}

/// Running with the Ready condition True.
fn is_serving(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Binds `127.0.0.1:0` for `pod` and serves it until aborted.
async fn start_listener(shared: Arc<Shared>, pod: Key) -> std::io::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
    let address = listener.local_addr()?;
    let server = tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(answer(stream, shared.clone(), pod.clone()));
                }
                Err(e) => {
                    tracing::debug!(error = %e, "load simulator: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    Ok((address, server))
}

/// Answers one HTTP/1.x request on `stream` and closes it: `GET /metrics` with the pod's
/// exposition, 404 for other paths, 405 for other methods.
async fn answer(mut stream: TcpStream, shared: Arc<Shared>, pod: Key) {
    let exchange = async {
        let Some(head) = read_head(&mut stream).await else {
            return;
        };
        let mut parts = head.lines().next().unwrap_or_default().split_whitespace();
        let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
        let path = target.split('?').next().unwrap_or_default();
        let (status, content_type, body) = match (method, path) {
            ("GET", "/metrics") => match shared.lock().scrape(&pod) {
                Some(body) => (
                    "200 OK",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    body,
                ),
                None => ("404 Not Found", "text/plain", "pod no longer served\n".into()),
            },
            ("GET", _) => ("404 Not Found", "text/plain", "not found\n".into()),
            _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
        };
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(REQUEST_TIMEOUT, exchange).await;
}

/// Reads up to the end of the request head; None when the peer closes first or sends too much.
async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Some(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_REQUEST_HEAD {
            return None;
        }
    }
}
