//! The desired objects of a ModelDeployment: a pure function of the object and the revision plan.

mod engine;
mod pod;
pub mod pool;
pub mod route;
mod startup;

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{ConfigMap, PodTemplateSpec, Service, ServicePort, ServiceSpec},
        policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec},
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use kube_core::{Resource, ResourceExt};
use modelfleet_contract::{MirrorTarget, RoutingFile, ports};
use modelfleet_crds::{ModelDeployment, constants::labels};

pub use self::pod::server_args;
use crate::{
    observed::{Observed, VERSION_ANNOTATION},
    plan::RevisionPlan,
};

/// The server's HTTP port as a container and Service port (Kubernetes types ports `i32`).
pub const HTTP_PORT: i32 = ports::HTTP as i32;
/// The server's gRPC port.
pub const GRPC_PORT: i32 = ports::GRPC as i32;
/// The server's metrics port.
pub const METRICS_PORT: i32 = ports::METRICS as i32;

/// Every object the operator applies for one ModelDeployment.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DesiredObjects {
    /// One Deployment per running revision.
    pub deployments: Vec<Deployment>,
    /// `<name>`, `<name>-stable`, `<name>-canary`, `<name>-shadow`.
    pub services: Vec<Service>,
    /// `<name>-routing`.
    pub routing: ConfigMap,
    /// `<name>`.
    pub pdb: PodDisruptionBudget,
    /// `<name>`, only with `spec.traffic.gateway`.
    pub route: Option<route::HttpRoute>,
    /// `<name>`, only with `spec.traffic.inferencePool`.
    pub pool: Option<pool::InferencePool>,
}

/// Name of a revision's Deployment.
pub fn deployment_name(md_name: &str, revision: &str) -> String {
    format!("{md_name}-{revision}")
}

/// Names of the Services: the entry `<name>`, `<name>-stable`, `<name>-canary`, `<name>-shadow`.
pub fn service_names(md_name: &str) -> [String; 4] {
    ["", "-stable", "-canary", "-shadow"].map(|suffix| format!("{md_name}{suffix}"))
}

/// Name of the routing ConfigMap.
pub fn routing_name(md_name: &str) -> String {
    format!("{md_name}-routing")
}

/// The routing ConfigMap's key a revision's pods read.
pub fn routing_key(revision: &str) -> String {
    format!("{revision}.json")
}

/// Labels every child carries.
pub fn common_labels(md_name: &str, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (labels::NAME.into(), labels::NAME_VALUE.into()),
        (labels::INSTANCE.into(), md_name.into()),
        (labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into()),
        (labels::COMPONENT.into(), component.into()),
        (labels::DEPLOYMENT.into(), md_name.into()),
    ])
}

/// Builds the desired objects. `observed` gives the revisions other than the current one their
/// own pod template and version (only the current revision is built from the spec), and the
/// existing Services their cluster IPs.
pub fn build(
    md: &ModelDeployment,
    plan: &RevisionPlan,
    observed: &Observed,
    default_image: &str,
) -> DesiredObjects {
    let name = md.name_any();
    let deployments = plan
        .replicas
        .iter()
        .map(|(revision, &replicas)| {
            let role = if *revision == plan.stable {
                labels::ROLE_STABLE
            } else {
                labels::ROLE_CANARY
            };
            // Only the current revision is built from the spec; the others keep what they run.
            let kept = observed
                .revisions
                .iter()
                .find(|r| r.revision == *revision && *revision != plan.current)
                .and_then(|r| Some((r.template.as_deref()?.clone(), r.version.as_str())));
            let (template, version) = kept.unwrap_or_else(|| {
                (
                    pod::pod_template(md, revision, default_image),
                    md.spec.model.version.as_str(),
                )
            });
            revision_deployment(md, revision, role, replicas, template, version)
        })
        .collect();
    let canary = plan.candidate.as_deref().unwrap_or("");
    let shadow = if plan.traffic.mirror > 0 { canary } else { "" };
    let entry = plan.traffic.entry_stable_only.then_some(plan.stable.as_str());
    let services = vec![
        service(md, &name, "server", entry),
        headless(
            service(
                md,
                &format!("{name}-stable"),
                labels::ROLE_STABLE,
                Some(&plan.stable),
            ),
            observed,
        ),
        headless(
            service(md, &format!("{name}-canary"), labels::ROLE_CANARY, Some(canary)),
            observed,
        ),
        // The shadow Service selects the candidate only while a shadow step mirrors to it. It
        // keeps a cluster IP: the servers' mirror client dials it, and kube-proxy spreads its
        // connections over the candidate's pods.
        service(md, &format!("{name}-shadow"), labels::ROLE_SHADOW, Some(shadow)),
    ];
    DesiredObjects {
        deployments,
        services,
        routing: routing_config_map(md, plan),
        pdb: pdb(md),
        route: route::http_route(md, plan),
        pool: pool::inference_pool(md),
    }
}

fn meta(md: &ModelDeployment, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: md.namespace(),
        labels: Some(labels),
        owner_references: md.controller_owner_ref(&()).map(|r| vec![r]),
        ..Default::default()
    }
}

fn revision_deployment(
    md: &ModelDeployment,
    revision: &str,
    role: &str,
    replicas: i32,
    template: PodTemplateSpec,
    version: &str,
) -> Deployment {
    let name = md.name_any();
    let mut labels = common_labels(&name, "server");
    labels.insert(labels::REVISION.into(), revision.into());
    labels.insert(labels::ROLE.into(), role.into());
    let selector = BTreeMap::from([
        (labels::DEPLOYMENT.to_string(), name.clone()),
        (labels::REVISION.to_string(), revision.to_string()),
    ]);
    let mut metadata = meta(md, &deployment_name(&name, revision), labels);
    metadata.annotations = Some(BTreeMap::from([(VERSION_ANNOTATION.into(), version.to_string())]));
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(replicas),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            },
            // Never below the requested capacity while pods roll (a node drain, an image pull).
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::String("25%".into())),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            template,
            ..Default::default()
        }),
        status: None,
    }
}

fn service(md: &ModelDeployment, name: &str, component: &str, revision: Option<&str>) -> Service {
    let md_name = md.name_any();
    let mut selector = BTreeMap::from([(labels::DEPLOYMENT.to_string(), md_name.clone())]);
    if let Some(revision) = revision {
        // An empty revision selects no pod: the Service exists, with no endpoints, until a
        // revision takes that role.
        selector.insert(labels::REVISION.into(), revision.into());
    }
    let port = |name: &str, port: i32| ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    Service {
        metadata: meta(md, name, common_labels(&md_name, component)),
        spec: Some(ServiceSpec {
            selector: Some(selector),
            ports: Some(vec![
                port(ports::HTTP_NAME, HTTP_PORT),
                port(ports::GRPC_NAME, GRPC_PORT),
                port(ports::METRICS_NAME, METRICS_PORT),
            ]),
            ..Default::default()
        }),
        status: None,
    }
}

/// Makes a Service headless. `<name>-stable` and `<name>-canary` are addressed only by a
/// Gateway, which routes to their endpoints (headless backends are part of Gateway API's
/// `HTTPRouteServiceTypes` conformance test), so they need no cluster IP. Allocating one is
/// costly: kube-apiserver (1.33 and later) hands out cluster IPs one at a time under a global
/// lock, each with an IPAddress object, and the Service range of a cluster is finite. A Service
/// that an earlier version created with a cluster IP keeps it: `spec.clusterIP` is immutable.
fn headless(mut service: Service, observed: &Observed) -> Service {
    let allocated = service
        .metadata
        .name
        .as_ref()
        .and_then(|n| observed.cluster_ips.get(n))
        .is_some_and(|ip| ip != "None");
    if let Some(spec) = service.spec.as_mut().filter(|_| !allocated) {
        spec.cluster_ip = Some("None".into());
    }
    service
}

/// The routing file of each running revision, `{"mirror": {url, percent}}` (modelfleet-contract's
/// [`RoutingFile`]): during a shadow step the stable revision mirrors `percent` of its requests to
/// the `<name>-shadow` Service; every other revision (the candidate included) mirrors nothing.
/// Servers reload the file.
fn routing_config_map(md: &ModelDeployment, plan: &RevisionPlan) -> ConfigMap {
    let name = md.name_any();
    let namespace = md.namespace().unwrap_or_default();
    let data = plan
        .replicas
        .keys()
        .map(|revision| {
            let mirror = (plan.candidate.is_some() && plan.traffic.mirror > 0 && *revision == plan.stable)
                .then(|| MirrorTarget {
                    url: format!("http://{name}-shadow.{namespace}.svc:{}", ports::HTTP),
                    percent: f64::from(plan.traffic.mirror),
                });
            (routing_key(revision), RoutingFile { mirror }.to_json())
        })
        .collect();
    ConfigMap {
        metadata: meta(md, &routing_name(&name), common_labels(&name, "routing")),
        data: Some(data),
        ..Default::default()
    }
}

fn pdb(md: &ModelDeployment) -> PodDisruptionBudget {
    let name = md.name_any();
    PodDisruptionBudget {
        metadata: meta(md, &name, common_labels(&name, "server")),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(labels::DEPLOYMENT.to_string(), name.clone())])),
                ..Default::default()
            }),
            ..Default::default()
        }),
        status: None,
    }
}
