//! The serving pod template: the modelfleet-server container and everything around it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{
        Affinity, Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
        EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, NodeAffinity,
        NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector,
        PersistentVolumeClaimVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
        ResourceFieldSelector, ResourceRequirements, SeccompProfile, SecurityContext, SleepAction,
        Toleration, Volume, VolumeMount,
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use kube_core::ResourceExt;
use modelfleet_contract::{BatchingArgs, GenerationArgs, PortArgs, ServerArgs, TierArg, paths, ports};
use modelfleet_crds::{
    ModelDeployment,
    constants::{GPU_RESOURCE, labels},
};

use super::{GRPC_PORT, HTTP_PORT, METRICS_PORT, engine, startup};

/// Seconds a pod keeps serving after removal from endpoints, so in-flight requests finish.
const DRAIN_SECONDS: i64 = 10;
/// Termination grace: drain plus the longest request.
const TERMINATION_GRACE_SECONDS: i64 = 60;
/// The image's non-root user.
const RUN_AS_USER: i64 = 65532;
/// The volume holding the model: an emptyDir cache or the claim of a `pvc://` URI.
const MODELS_VOLUME: &str = "models";
/// The volume of the routing ConfigMap.
const ROUTING_VOLUME: &str = "routing";

/// Where the server finds the model: a `pvc://claim/path` URI becomes the path inside the
/// mounted claim; any other URI is passed through.
fn model_uri(md: &ModelDeployment) -> String {
    let uri = &md.spec.model.uri;
    match uri.strip_prefix("pvc://") {
        Some(rest) => {
            let path = rest.split_once('/').map_or("", |(_, path)| path);
            format!("file://{}/{path}", paths::MODEL_DIR)
        }
        None => uri.clone(),
    }
}

/// The volume that holds the model: the claim of a `pvc://` URI (read-only), else a cache.
fn model_volume(md: &ModelDeployment) -> Volume {
    let claim = md.spec.model.uri.strip_prefix("pvc://").map(|rest| {
        let claim = rest.split_once('/').map_or(rest, |(claim, _)| claim);
        PersistentVolumeClaimVolumeSource {
            claim_name: claim.into(),
            read_only: Some(true),
        }
    });
    Volume {
        name: MODELS_VOLUME.into(),
        empty_dir: claim.is_none().then(EmptyDirVolumeSource::default),
        persistent_volume_claim: claim,
        ..Default::default()
    }
}

/// A count the CRD validates as positive. Out of range, 0 stands in: the server refuses it at
/// start-up, as it would the negative number.
fn count(n: i32) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

/// What the server is told, from the spec (the flags are modelfleet-contract's [`ServerArgs`],
/// listed in docs/server.md). `spec.runtime.args` come after these on the command line.
pub fn server_args(md: &ModelDeployment) -> ServerArgs {
    let spec = &md.spec;
    let b = &spec.batching;
    let tiers = b
        .tiers
        .iter()
        .map(|t| TierArg {
            name: t.name.clone(),
            timeout: t.timeout.map(|d| d.as_std()),
            max_queue_share: t.max_queue_share,
        })
        .collect();
    ServerArgs {
        model_name: spec.model.name.clone(),
        model_version: spec.model.version.clone(),
        model_uri: Some(model_uri(md)),
        task: spec.model.task,
        backend: spec.runtime.backend,
        device: spec.runtime.device,
        model_cache: paths::MODEL_DIR.into(),
        batching: BatchingArgs {
            max_batch_size: count(b.max_batch_size),
            max_batch_tokens: count(b.max_batch_tokens),
            max_queue_delay: b.max_queue_delay.as_std(),
            max_queue_size: count(b.max_queue_size),
            tiers,
        },
        ports: PortArgs::default(),
        routing_file: Some(paths::ROUTING_FILE.into()),
        upstream_url: engine::upstream(md).map(engine::upstream_url),
        generation: generation_args(md),
    }
}

/// `spec.generation` as server flags; the server's defaults where a field is empty.
fn generation_args(md: &ModelDeployment) -> GenerationArgs {
    let defaults = GenerationArgs::default();
    let Some(g) = &md.spec.generation else {
        return defaults;
    };
    let positive = |v: Option<i32>| v.and_then(|v| u32::try_from(v).ok()).filter(|v| *v > 0);
    GenerationArgs {
        max_running_sequences: positive(g.max_running_sequences).unwrap_or(defaults.max_running_sequences),
        kv_budget_tokens: positive(g.kv_budget_tokens),
        context_length: positive(g.context_length),
        default_max_tokens: positive(g.default_max_tokens).unwrap_or(defaults.default_max_tokens),
    }
}

fn resources(md: &ModelDeployment) -> ResourceRequirements {
    let r = &md.spec.resources;
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    if let Some(cpu) = &r.cpu {
        requests.insert("cpu".to_string(), cpu.clone());
    }
    if let Some(memory) = &r.memory {
        requests.insert("memory".to_string(), memory.clone());
        limits.insert("memory".to_string(), memory.clone());
    }
    if r.gpus > 0 {
        let gpus = Quantity(r.gpus.to_string());
        requests.insert(GPU_RESOURCE.to_string(), gpus.clone());
        limits.insert(GPU_RESOURCE.to_string(), gpus);
    }
    // The escape hatch wins key by key.
    if let Some(extra) = &md.spec.runtime.resources {
        requests.extend(extra.requests.clone().unwrap_or_default());
        limits.extend(extra.limits.clone().unwrap_or_default());
    }
    ResourceRequirements {
        requests: (!requests.is_empty()).then_some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

fn node_affinity(md: &ModelDeployment) -> Option<Affinity> {
    let r = &md.spec.resources;
    let mut requirements = Vec::new();
    let requirement = |key: &str, operator: &str, value: String| NodeSelectorRequirement {
        key: key.into(),
        operator: operator.into(),
        values: Some(vec![value]),
    };
    if r.gpus > 0 {
        requirements.push(requirement("nvidia.com/gpu.present", "In", "true".into()));
    }
    if let Some(product) = &r.gpu_product {
        requirements.push(requirement("nvidia.com/gpu.product", "In", product.clone()));
    }
    if let Some(min) = r.min_gpu_memory_mib {
        // `Gt` is strict; the label is MiB per GPU.
        requirements.push(requirement("nvidia.com/gpu.memory", "Gt", (min - 1).to_string()));
    }
    (!requirements.is_empty()).then(|| Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector {
                node_selector_terms: vec![NodeSelectorTerm {
                    match_expressions: Some(requirements),
                    ..Default::default()
                }],
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn gpu_tolerations(md: &ModelDeployment) -> Option<Vec<Toleration>> {
    (md.spec.resources.gpus > 0).then(|| {
        vec![Toleration {
            key: Some(GPU_RESOURCE.into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Default::default()
        }]
    })
}

fn probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(ports::HTTP_NAME.into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn value_env(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The thread count of candle's CPU kernels: the container's CPU request in whole cores
/// (rounded up) through the Downward API. Without it candle counts the node's CPUs, ignoring the
/// container's share, and re-reads them in every f32 matmul.
const CPU_THREADS_ENV: &str = "RAYON_NUM_THREADS";

fn cpu_threads_env() -> EnvVar {
    EnvVar {
        name: CPU_THREADS_ENV.into(),
        value_from: Some(EnvVarSource {
            resource_field_ref: Some(ResourceFieldSelector {
                container_name: Some("server".into()),
                resource: "requests.cpu".into(),
                divisor: Some(Quantity("1".into())),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The pod's identity, the CPU thread count when `spec.resources.cpu` is set (and candle, not an
/// upstream engine, computes), then
/// `spec.runtime.env` (which may override any of them).
fn env(md: &ModelDeployment, revision: &str) -> Vec<EnvVar> {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_NAMESPACE", "metadata.namespace"),
        value_env("MODELFLEET_DEPLOYMENT", &md.name_any()),
        value_env("MODELFLEET_REVISION", revision),
    ];
    let user = &md.spec.runtime.env;
    let runs_candle = engine::upstream(md).is_none();
    if runs_candle && md.spec.resources.cpu.is_some() && !user.iter().any(|e| e.name == CPU_THREADS_ENV) {
        env.push(cpu_threads_env());
    }
    env.extend(user.iter().cloned());
    env
}

fn container_ports() -> Vec<ContainerPort> {
    let port = |name: &str, port: i32| ContainerPort {
        name: Some(name.into()),
        container_port: port,
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    vec![
        port(ports::HTTP_NAME, HTTP_PORT),
        port(ports::GRPC_NAME, GRPC_PORT),
        port(ports::METRICS_NAME, METRICS_PORT),
    ]
}

fn volume_mounts(model_read_only: bool) -> Vec<VolumeMount> {
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: Some(read_only),
        ..Default::default()
    };
    vec![
        mount(MODELS_VOLUME, paths::MODEL_DIR, model_read_only),
        mount(ROUTING_VOLUME, paths::ROUTING_DIR, true),
        mount("tmp", "/tmp", false),
    ]
}

/// preStop sleeps so the endpoints drop the pod before the server starts draining.
fn drain_lifecycle() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            sleep: Some(SleepAction {
                seconds: DRAIN_SECONDS,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn pod_security() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS_USER),
        run_as_group: Some(RUN_AS_USER),
        fs_group: Some(RUN_AS_USER),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `server` container of one revision. With `backend: upstream` the engine container holds
/// the GPUs, memory and CPU of `spec.resources`; the server in front of it takes what is left.
fn server_container(
    md: &ModelDeployment,
    revision: &str,
    default_image: &str,
    model_read_only: bool,
) -> Container {
    let runtime = &md.spec.runtime;
    let mut args = server_args(md).to_args();
    args.extend(runtime.args.iter().cloned());
    Container {
        name: "server".into(),
        image: Some(runtime.image.clone().unwrap_or_else(|| default_image.to_string())),
        image_pull_policy: Some("IfNotPresent".into()),
        args: Some(args),
        env: Some(env(md, revision)),
        ports: Some(container_ports()),
        resources: Some(if engine::upstream(md).is_some() {
            ResourceRequirements::default()
        } else {
            resources(md)
        }),
        readiness_probe: Some(probe(paths::READY, 5, 3)),
        liveness_probe: Some(probe(paths::LIVE, 10, 3)),
        // Model loading (download, GPU upload) may take minutes: a budget from the model's size
        // before the liveness probe starts counting.
        startup_probe: Some(probe(
            paths::READY,
            startup::PERIOD_SECONDS,
            startup::failure_threshold(md.spec.model.size.as_ref()),
        )),
        lifecycle: Some(drain_lifecycle()),
        security_context: Some(container_security()),
        volume_mounts: Some(volume_mounts(model_read_only)),
        ..Default::default()
    }
}

/// The model volume, the revision's routing key, and a writable `/tmp`.
fn volumes(md: &ModelDeployment, revision: &str, model: Volume) -> Vec<Volume> {
    let routing = Volume {
        name: ROUTING_VOLUME.into(),
        // Each revision reads its own key: only the stable revision mirrors.
        config_map: Some(ConfigMapVolumeSource {
            name: super::routing_name(&md.name_any()),
            items: Some(vec![KeyToPath {
                key: super::routing_key(revision),
                path: paths::ROUTING_FILE_NAME.into(),
                mode: None,
            }]),
            optional: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let tmp = Volume {
        name: "tmp".into(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Default::default()
    };
    vec![model, routing, tmp]
}

/// The revision's labels and Prometheus's scrape annotations.
fn pod_metadata(md: &ModelDeployment, revision: &str) -> ObjectMeta {
    let mut pod_labels = super::common_labels(&md.name_any(), "server");
    pod_labels.insert(labels::REVISION.into(), revision.into());
    ObjectMeta {
        labels: Some(pod_labels),
        annotations: Some(BTreeMap::from([
            ("prometheus.io/scrape".to_string(), "true".to_string()),
            ("prometheus.io/port".to_string(), ports::METRICS.to_string()),
            ("prometheus.io/path".to_string(), paths::METRICS.to_string()),
        ])),
        ..Default::default()
    }
}

/// The server, and with `backend: upstream` the engine after it.
fn containers(
    md: &ModelDeployment,
    revision: &str,
    default_image: &str,
    model_read_only: bool,
) -> Vec<Container> {
    let mut containers = vec![server_container(md, revision, default_image, model_read_only)];
    if let Some(upstream) = engine::upstream(md) {
        containers.push(engine::engine_container(
            upstream,
            resources(md),
            container_security(),
            volume_mounts(model_read_only)
                .into_iter()
                .filter(|m| m.name != ROUTING_VOLUME)
                .collect(),
        ));
    }
    containers
}

/// The pod template of one revision.
pub fn pod_template(md: &ModelDeployment, revision: &str, default_image: &str) -> PodTemplateSpec {
    let model = model_volume(md);
    let model_read_only = model.persistent_volume_claim.is_some();
    PodTemplateSpec {
        metadata: Some(pod_metadata(md, revision)),
        spec: Some(PodSpec {
            containers: containers(md, revision, default_image, model_read_only),
            affinity: node_affinity(md),
            tolerations: gpu_tolerations(md),
            termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
            security_context: Some(pod_security()),
            volumes: Some(volumes(md, revision, model)),
            ..Default::default()
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(resources: serde_json::Value, env: serde_json::Value) -> ModelDeployment {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "m", "namespace": "ns"},
            "spec": {"model": {"name": "m", "version": "1", "uri": "hf://org/m"},
                     "resources": resources, "runtime": {"env": env}}
        }))
        .expect("a ModelDeployment")
    }

    fn threads(md: &ModelDeployment) -> Vec<EnvVar> {
        env(md, "r1")
            .into_iter()
            .filter(|e| e.name == CPU_THREADS_ENV)
            .collect()
    }

    #[test]
    fn the_cpu_request_sets_candles_thread_count_unless_the_user_does() {
        let with_cpu = md(serde_json::json!({"gpus": 1, "cpu": "2"}), serde_json::json!([]));
        let set = threads(&with_cpu);
        assert_eq!(set.len(), 1);
        let field = set[0]
            .value_from
            .as_ref()
            .and_then(|f| f.resource_field_ref.as_ref())
            .expect("a resourceFieldRef");
        assert_eq!(
            (field.resource.as_str(), field.container_name.as_deref()),
            ("requests.cpu", Some("server"))
        );
        assert!(threads(&md(serde_json::json!({"gpus": 1}), serde_json::json!([]))).is_empty());
        let user = md(
            serde_json::json!({"gpus": 1, "cpu": "2"}),
            serde_json::json!([{"name": "RAYON_NUM_THREADS", "value": "1"}]),
        );
        let only = threads(&user);
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].value.as_deref(), Some("1"), "the user's value, alone");
    }
}
