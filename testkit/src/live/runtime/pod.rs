//! One live pod, as a task: its sandbox (pod IP on `lo` in the fleet namespace, GPU devices,
//! resolv.conf, hosts, volumes), one supervisor per container, status written as it changes,
//! Events for probe failures, and on deletion: preStop, SIGTERM, the grace period, SIGKILL, then
//! the pod object is removed and its IP, GPUs and files are released.

use std::{collections::BTreeMap, net::IpAddr, path::Path, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Event, EventSource, ObjectReference, Pod, PodStatus},
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions},
};
use tokio::sync::{mpsc, watch};

use super::{
    ContainerRecord, NodeCtx, PodRecord,
    container::{LaunchPlan, Mount},
    spec::{self, EnvSources},
    status::{PodFacts, pod_status},
    supervisor::{self, ContainerView, RunState, Stop, Supervised},
    volumes::PodVolumes,
};

/// How often volumes are re-synced from the API (kubelet: about a minute; here a ConfigMap edit
/// must reach a running server within seconds).
const VOLUME_REFRESH: Duration = Duration::from_secs(2);
const DEFAULT_GRACE: i64 = 30;

/// Runs the pod until it is deleted (or the runtime shuts down).
pub async fn run(ctx: Arc<NodeCtx>, mut updates: watch::Receiver<Option<Pod>>) {
    let Some(pod) = updates.borrow().clone() else {
        return;
    };
    let uid = pod.uid().unwrap_or_default();
    let Some(ip) = ctx.ips.lock().map(|mut p| p.allocate()).ok().flatten() else {
        tracing::error!(pod = %pod.name_any(), "no free pod IP on this node");
        return;
    };
    let dir = ctx.dir.join("pods").join(&uid);
    let mut sandbox = Sandbox {
        ctx: ctx.clone(),
        ip,
        dir: dir.clone(),
        uid: uid.clone(),
        gpus: Vec::new(),
    };
    if let Err(e) = sandbox.create(&pod) {
        tracing::error!(pod = %pod.name_any(), error = %e, "cannot create the pod sandbox");
        return;
    }
    let gpu_devices = match sandbox.allocate_gpus(&pod) {
        Ok(d) => d,
        Err(message) => {
            let facts = facts(&pod, "", Some(("UnexpectedAdmissionError".into(), message)));
            write_status(&ctx, &pod, pod_status(&facts, &[], Timestamp::now())).await;
            wait_deleted(&ctx, &mut updates, &pod).await;
            return;
        }
    };
    let mut sources = env_sources(&ctx, &pod, &ip.to_string()).await;
    // Volumes first: a missing ConfigMap keeps the pod waiting with the reason, as kubelet does.
    let volumes = loop {
        match PodVolumes::prepare(&ctx.client, &pod, &dir.join("volumes"), &sources).await {
            Ok(v) => break v,
            Err(message) => {
                let facts = facts(
                    &pod,
                    &ip.to_string(),
                    Some(("CreateContainerConfigError".into(), message)),
                );
                let views = waiting_views(&pod);
                write_status(&ctx, &pod, pod_status(&facts, &views, Timestamp::now())).await;
                tokio::select! {
                    _ = tokio::time::sleep(VOLUME_REFRESH) => {}
                    _ = updates.changed() => {}
                }
                if deleting(&updates).is_some() || ctx.shutting_down() {
                    finish(&ctx, &pod).await;
                    return;
                }
            }
        }
    };
    let mut containers = Vec::new();
    for (index, container) in containers_of(&pod).iter().enumerate() {
        sources.gpu_devices = gpu_devices.get(index).cloned().unwrap_or_default();
        containers.push(start_container(&ctx, &pod, container, &volumes, &sources, &sandbox).await);
    }
    ctx.index
        .lock()
        .map(|mut i| i.insert(uid.clone(), record(&pod, &containers, &gpu_devices)))
        .ok();
    let grace = serve(
        &ctx,
        &pod,
        &ip.to_string(),
        &containers,
        volumes,
        &sources,
        &mut updates,
    )
    .await;
    for c in &containers {
        let _ = c.stop.send(Stop(grace)).await;
    }
    let mut last_views = Vec::new();
    for c in containers {
        let _ = c.task.await;
        last_views.push(c.view.borrow().clone());
    }
    if !ctx.shutting_down() {
        let facts = facts(&pod, &ip.to_string(), None);
        write_status(&ctx, &pod, pod_status(&facts, &last_views, Timestamp::now())).await;
        finish(&ctx, &pod).await;
    }
    drop(sandbox);
}

struct RunningContainer {
    view: watch::Receiver<ContainerView>,
    stop: mpsc::Sender<Stop>,
    task: tokio::task::JoinHandle<()>,
    log_dir: std::path::PathBuf,
    name: String,
}

/// The pod IP, GPUs and directory; released on drop.
struct Sandbox {
    ctx: Arc<NodeCtx>,
    ip: IpAddr,
    dir: std::path::PathBuf,
    uid: String,
    gpus: Vec<u32>,
}

impl Sandbox {
    fn create(&self, pod: &Pod) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let namespace = pod.namespace().unwrap_or_default();
        std::fs::write(self.dir.join("resolv.conf"), spec::resolv_conf(&namespace))?;
        let hostname = pod
            .spec
            .as_ref()
            .and_then(|s| s.hostname.clone())
            .unwrap_or_else(|| pod.name_any());
        std::fs::write(
            self.dir.join("hosts"),
            spec::hosts_file(&self.ip.to_string(), &hostname),
        )?;
        std::fs::write(self.dir.join("hostname"), format!("{hostname}\n"))?;
        self.ctx.net.add_address(self.ip).map_err(std::io::Error::other)
    }

    /// Distinct `nvidia.com/gpu` device IDs per container, as the device plugin allocates them.
    fn allocate_gpus(&mut self, pod: &Pod) -> Result<Vec<Vec<String>>, String> {
        let mut per_container = Vec::new();
        for container in containers_of(pod) {
            let wanted = gpu_limit(&container);
            let mut pool = self
                .ctx
                .gpus
                .lock()
                .map_err(|_| "GPU pool lock poisoned".to_string())?;
            let got = pool.allocate(wanted).ok_or_else(|| {
                format!(
                    "container {} asks for {wanted} nvidia.com/gpu, more than are free on this node",
                    container.name
                )
            })?;
            self.gpus.extend(&got);
            per_container.push(got.iter().map(|i| self.ctx.gpu_id(*i)).collect());
        }
        Ok(per_container)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ctx.net.remove_address(self.ip);
        if let Ok(mut pool) = self.ctx.ips.lock() {
            pool.release(self.ip);
        }
        if let Ok(mut pool) = self.ctx.gpus.lock() {
            pool.release(&self.gpus);
        }
        if let Ok(mut index) = self.ctx.index.lock() {
            index.remove(&self.uid);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn containers_of(pod: &Pod) -> Vec<Container> {
    pod.spec
        .as_ref()
        .map(|s| s.containers.clone())
        .unwrap_or_default()
}

fn gpu_limit(container: &Container) -> usize {
    container
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get(modelfleet_crds::constants::GPU_RESOURCE))
        .and_then(|q| q.0.parse().ok())
        .unwrap_or(0)
}

fn facts(pod: &Pod, ip: &str, problem: Option<(String, String)>) -> PodFacts {
    PodFacts {
        pod_ip: ip.to_string(),
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .map(|t| t.0)
            .unwrap_or_else(Timestamp::now),
        restart_policy: pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into()),
        problem,
    }
}

fn waiting_view(container: &Container) -> ContainerView {
    ContainerView {
        name: container.name.clone(),
        image: container.image.clone().unwrap_or_default(),
        state: RunState::Waiting("ContainerCreating".into(), String::new()),
        last: None,
        ready: false,
        started: false,
        restart_count: 0,
        init_pid: None,
        event: None,
    }
}

fn waiting_views(pod: &Pod) -> Vec<ContainerView> {
    containers_of(pod).iter().map(waiting_view).collect()
}

async fn env_sources(ctx: &NodeCtx, pod: &Pod, ip: &str) -> EnvSources {
    let namespace = pod.namespace().unwrap_or_default();
    let mut sources = EnvSources {
        pod_ip: ip.into(),
        host_ip: "127.0.0.1".into(),
        node_cpu: ctx.allocatable_cpu,
        node_memory: ctx.allocatable_memory,
        ..Default::default()
    };
    let mut config_maps = std::collections::BTreeSet::new();
    let mut secrets = std::collections::BTreeSet::new();
    for c in containers_of(pod) {
        for from in c.env_from.iter().flatten() {
            config_maps.extend(from.config_map_ref.as_ref().map(|r| r.name.clone()));
            secrets.extend(from.secret_ref.as_ref().map(|r| r.name.clone()));
        }
        for var in c.env.iter().flatten() {
            let from = var.value_from.as_ref();
            config_maps.extend(
                from.and_then(|f| f.config_map_key_ref.as_ref())
                    .map(|r| r.name.clone()),
            );
            secrets.extend(
                from.and_then(|f| f.secret_key_ref.as_ref())
                    .map(|r| r.name.clone()),
            );
        }
    }
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in config_maps {
        if let Ok(Some(cm)) = cms.get_opt(&name).await {
            sources.config_maps.insert(name, cm.data.unwrap_or_default());
        }
    }
    let ss: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in secrets {
        if let Ok(Some(s)) = ss.get_opt(&name).await {
            let data = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v.0).into_owned()))
                .collect();
            sources.secrets.insert(name, data);
        }
    }
    sources
}

fn launch_plan(
    ctx: &NodeCtx,
    pod: &Pod,
    container: &Container,
    volumes: &PodVolumes,
    sources: &EnvSources,
    sandbox_dir: &Path,
) -> Result<LaunchPlan, (String, String)> {
    let image = container.image.clone().unwrap_or_default();
    let binary = ctx
        .images
        .binary_for(&image)
        .map_err(|m| ("ErrImageNotLocal".to_string(), m))?
        .to_path_buf();
    let config_error = |m: String| ("CreateContainerConfigError".to_string(), m);
    let env = spec::environment(pod, container, sources).map_err(config_error)?;
    let vars: BTreeMap<String, String> = env.iter().cloned().collect();
    let expand = |v: &Vec<String>| v.iter().map(|s| spec::expand(s, &vars)).collect::<Vec<_>>();
    let args = expand(&container.args.clone().unwrap_or_default());
    let (program, args) = match container.command.as_ref().filter(|c| !c.is_empty()) {
        Some(command) => {
            let command = expand(command);
            let same = Path::new(&command[0]).file_name() == binary.file_name();
            let program = if same {
                binary.clone()
            } else {
                command[0].clone().into()
            };
            (program, command[1..].iter().cloned().chain(args).collect())
        }
        None => (binary, args),
    };
    let mut mounts = Vec::new();
    for m in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .volumes
            .get(&m.name)
            .ok_or_else(|| config_error(format!("volumeMount {:?}: no volume of that name", m.name)))?;
        let source = match m.sub_path.as_deref().filter(|p| !p.is_empty()) {
            Some(sub) => volume.host_path.join(sub),
            None => volume.host_path.clone(),
        };
        mounts.push(Mount {
            source,
            target: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        });
    }
    for file in ["resolv.conf", "hosts", "hostname"] {
        mounts.push(Mount {
            source: sandbox_dir.join(file),
            target: format!("/etc/{file}"),
            read_only: false,
        });
    }
    let pod_security = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let security = container.security_context.as_ref();
    Ok(LaunchPlan {
        program,
        args,
        env,
        mounts,
        user: security
            .and_then(|s| s.run_as_user)
            .or(pod_security.and_then(|s| s.run_as_user)),
        group: security
            .and_then(|s| s.run_as_group)
            .or(pod_security.and_then(|s| s.run_as_group)),
        fs_group: pod_security.and_then(|s| s.fs_group),
        working_dir: container.working_dir.clone(),
        scratch: sandbox_dir.join("containers").join(&container.name),
    })
}

async fn start_container(
    ctx: &Arc<NodeCtx>,
    pod: &Pod,
    container: &Container,
    volumes: &PodVolumes,
    sources: &EnvSources,
    sandbox: &Sandbox,
) -> RunningContainer {
    let plan = launch_plan(ctx, pod, container, volumes, sources, &sandbox.dir);
    let log_dir = sandbox.dir.join("logs").join(&container.name);
    let input = Supervised {
        container: container.clone(),
        plan,
        restart_policy: facts(pod, "", None).restart_policy,
        net: ctx.net.clone(),
        pod_ip: sandbox.ip.to_string(),
        netns: ctx.net.path().to_path_buf(),
        log_dir: log_dir.clone(),
        pod_grace: seconds(
            pod.spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(DEFAULT_GRACE),
        ),
    };
    let (view_tx, view) = watch::channel(waiting_view(container));
    let (stop, stop_rx) = mpsc::channel(1);
    let task = tokio::spawn(supervisor::supervise(input, view_tx, stop_rx));
    RunningContainer {
        view,
        stop,
        task,
        log_dir,
        name: container.name.clone(),
    }
}

fn record(pod: &Pod, containers: &[RunningContainer], devices: &[Vec<String>]) -> PodRecord {
    PodRecord {
        namespace: pod.namespace().unwrap_or_default(),
        name: pod.name_any(),
        containers: containers
            .iter()
            .enumerate()
            .map(|(i, c)| ContainerRecord {
                name: c.name.clone(),
                devices: devices.get(i).cloned().unwrap_or_default(),
                log_dir: c.log_dir.clone(),
            })
            .collect(),
    }
}

/// The grace period if the pod is being deleted (`None` if it is not).
fn deleting(updates: &watch::Receiver<Option<Pod>>) -> Option<Duration> {
    let pod = updates.borrow();
    let Some(pod) = pod.as_ref() else {
        return Some(Duration::ZERO);
    };
    pod.metadata.deletion_timestamp.as_ref()?;
    let grace = pod
        .metadata
        .deletion_grace_period_seconds
        .or(pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(DEFAULT_GRACE);
    Some(seconds(grace))
}

fn seconds(n: i64) -> Duration {
    Duration::from_secs(u64::try_from(n).unwrap_or(0))
}

/// Writes status while the containers run; returns the grace period once deletion starts.
async fn serve(
    ctx: &Arc<NodeCtx>,
    pod: &Pod,
    ip: &str,
    containers: &[RunningContainer],
    mut volumes: PodVolumes,
    sources: &EnvSources,
    updates: &mut watch::Receiver<Option<Pod>>,
) -> Duration {
    let facts = facts(pod, ip, None);
    let mut written: Option<Vec<ContainerView>> = None;
    let mut refresh = tokio::time::interval(VOLUME_REFRESH);
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut shutdown = ctx.shutdown.subscribe();
    let mut posted_events: Vec<Option<(String, String)>> = vec![None; containers.len()];
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = refresh.tick() => {
                let current = updates.borrow().clone();
                if let Some(current) = current
                    && let Err(e) = volumes.refresh(&ctx.client, &current, sources).await
                {
                    tracing::warn!(pod = %pod.name_any(), error = %e, "volume refresh failed");
                }
            }
            _ = updates.changed() => {}
            _ = shutdown.changed() => return Duration::from_secs(2),
        }
        if let Some(grace) = deleting(updates) {
            return grace;
        }
        let views: Vec<ContainerView> = containers.iter().map(|c| c.view.borrow().clone()).collect();
        for (posted, view) in posted_events.iter_mut().zip(&views) {
            if view.event.is_some() && *posted != view.event {
                if let Some((reason, message)) = &view.event {
                    post_event(ctx, pod, reason, message).await;
                }
                posted.clone_from(&view.event);
            }
        }
        let comparable: Vec<ContainerView> = views
            .iter()
            .cloned()
            .map(|mut v| {
                v.event = None;
                v
            })
            .collect();
        if written.as_ref() != Some(&comparable) {
            write_status(ctx, pod, pod_status(&facts, &views, Timestamp::now())).await;
            written = Some(comparable);
        }
    }
}

async fn write_status(ctx: &NodeCtx, pod: &Pod, status: PodStatus) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let patch = serde_json::json!({"status": status});
    if let Err(e) = api
        .patch_status(&pod.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        tracing::warn!(pod = %pod.name_any(), error = %e, "pod status write failed");
    }
}

async fn post_event(ctx: &NodeCtx, pod: &Pod, reason: &str, message: &str) {
    let namespace = pod.namespace().unwrap_or_default();
    let now = Timestamp::now();
    let event = Event {
        metadata: ObjectMeta {
            generate_name: Some(format!("{}.", pod.name_any())),
            namespace: Some(namespace.clone()),
            ..Default::default()
        },
        involved_object: ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(pod.name_any()),
            namespace: Some(namespace.clone()),
            uid: pod.uid(),
            ..Default::default()
        },
        reason: Some(reason.into()),
        message: Some(message.into()),
        type_: Some("Warning".into()),
        source: Some(EventSource {
            component: Some("kubelet".into()),
            host: Some(ctx.node.clone()),
        }),
        first_timestamp: Some(Time(now)),
        last_timestamp: Some(Time(now)),
        count: Some(1),
        ..Default::default()
    };
    let _ = Api::<Event>::namespaced(ctx.client.clone(), &namespace)
        .create(&PostParams::default(), &event)
        .await;
}

async fn wait_deleted(ctx: &NodeCtx, updates: &mut watch::Receiver<Option<Pod>>, pod: &Pod) {
    let mut shutdown = ctx.shutdown.subscribe();
    while deleting(updates).is_none() && !ctx.shutting_down() {
        tokio::select! {
            r = updates.changed() => if r.is_err() { break },
            _ = shutdown.changed() => break,
        }
    }
    if !ctx.shutting_down() {
        finish(ctx, pod).await;
    }
}

/// Removes the pod object once its containers are gone (kubelet's final delete, grace 0).
async fn finish(ctx: &NodeCtx, pod: &Pod) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &pod.namespace().unwrap_or_default());
    let params = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let _ = api.delete(&pod.name_any(), &params).await;
}
