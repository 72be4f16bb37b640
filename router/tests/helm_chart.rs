//! The Helm chart's router, rendered with the pinned helm (`helm template`, no cluster): a
//! Deployment of modelfleet-router behind a Service and a PodDisruptionBudget, read-only RBAC
//! scoped to what discovery watches, every namespaced object in a namespace, and values that reach
//! the flags.

use std::{collections::BTreeMap, path::PathBuf, process::Command};

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Container, Service},
    policy::v1::PodDisruptionBudget,
    rbac::v1::PolicyRule,
};
use modelfleet_testkit::Toolchain;
use serde::{Deserialize, de::DeserializeOwned};
use serde_json::Value;

const NAMESPACE: &str = "modelfleet-system";
const ROUTER: &str = "modelfleet-router";

fn chart() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../charts/modelfleet")
}

fn helm() -> PathBuf {
    Toolchain::ensure().expect("the local toolchain").bin("helm")
}

/// `helm template modelfleet charts/modelfleet` with `--set` overrides, as documents.
fn render(sets: &[&str]) -> Vec<Value> {
    let mut command = Command::new(helm());
    command.args(["template", "modelfleet"]).arg(chart()).args([
        "--namespace",
        NAMESPACE,
        "--kube-version",
        "1.36.3",
    ]);
    for set in sets {
        command.args(["--set", set]);
    }
    let out = command.output().expect("helm runs");
    assert!(
        out.status.success(),
        "helm template {sets:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml::Deserializer::from_str(&String::from_utf8_lossy(&out.stdout))
        .map(|doc| serde_yaml::Value::deserialize(doc).expect("helm prints YAML"))
        .filter(|doc| !doc.is_null())
        .map(|doc| serde_json::to_value(doc).expect("YAML as JSON"))
        .collect()
}

fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().unwrap_or_default()
}

/// The router's objects: those labelled as its component.
fn router_objects(docs: &[Value]) -> Vec<&Value> {
    docs.iter()
        .filter(|d| d["metadata"]["labels"]["app.kubernetes.io/name"] == ROUTER)
        .collect()
}

/// The one object of `kind` named `name`, typed.
fn one<T: DeserializeOwned>(docs: &[Value], kind_: &str, name_: &str) -> T {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|d| kind(d) == kind_ && name(d) == name_)
        .collect();
    assert_eq!(found.len(), 1, "one {kind_} {name_}, found {}", found.len());
    serde_json::from_value(found[0].clone()).unwrap_or_else(|e| panic!("{kind_} {name_}: {e}"))
}

fn router_container(deployment: &Deployment) -> Container {
    let pod = deployment.spec.as_ref().and_then(|s| s.template.spec.clone());
    let containers = pod.expect("a pod spec").containers;
    assert_eq!(containers.len(), 1, "one container");
    containers[0].clone()
}

fn args(container: &Container) -> Vec<String> {
    container.args.clone().unwrap_or_default()
}

fn pod_labels(deployment: &Deployment) -> BTreeMap<String, String> {
    let spec = deployment.spec.as_ref().expect("a spec");
    let metadata = spec.template.metadata.as_ref().expect("pod metadata");
    metadata.labels.clone().unwrap_or_default()
}

fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Every rule of the router's Roles and ClusterRoles, with the kind and namespace that grants it.
fn router_rules(docs: &[Value]) -> Vec<(String, Option<String>, PolicyRule)> {
    router_objects(docs)
        .into_iter()
        .filter(|d| kind(d) == "Role" || kind(d) == "ClusterRole")
        .flat_map(|d| {
            let namespace = d["metadata"]["namespace"].as_str().map(str::to_owned);
            let rules: Vec<PolicyRule> = serde_json::from_value(d["rules"].clone()).expect("RBAC rules");
            rules
                .into_iter()
                .map(move |r| (kind(d).to_owned(), namespace.clone(), r))
        })
        .collect()
}

/// Who may read `resource`: (Role or ClusterRole, its namespace).
fn granted(docs: &[Value], resource: &str) -> Vec<(String, Option<String>)> {
    router_rules(docs)
        .into_iter()
        .filter(|(_, _, r)| r.resources.iter().flatten().any(|x| x == resource))
        .map(|(kind, namespace, _)| (kind, namespace))
        .collect()
}

fn crd_group() -> String {
    let crd = std::fs::read_to_string(chart().join("crds/modeldeployments.modelfleet.dev.yaml"))
        .expect("the CRD file");
    let crd: Value = serde_yaml::from_str(&crd).expect("CRD YAML");
    crd["spec"]["group"].as_str().expect("spec.group").to_owned()
}

fn app_version() -> String {
    let chart = std::fs::read_to_string(chart().join("Chart.yaml")).expect("Chart.yaml");
    let chart: Value = serde_yaml::from_str(&chart).expect("Chart.yaml YAML");
    chart["appVersion"].as_str().expect("appVersion").to_owned()
}

#[test]
fn the_chart_runs_two_routers_on_the_documented_ports() {
    let docs = render(&[]);
    let deployment: Deployment = one(&docs, "Deployment", ROUTER);
    let spec = deployment.spec.clone().expect("a spec");
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.clone().expect("a pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(ROUTER));
    let drain_and_request_timeout = 5 + 120;
    assert!(
        pod.termination_grace_period_seconds
            .is_some_and(|s| s > drain_and_request_timeout),
        "in-flight requests finish after the drain delay: {:?}",
        pod.termination_grace_period_seconds
    );
    let pod_security = pod.security_context.expect("a pod securityContext");
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(pod_security.run_as_user, Some(65532));
    assert_eq!(
        pod_security.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );

    let container = router_container(&deployment);
    let image = format!("ghcr.io/modelfleet/router:{}", app_version());
    assert_eq!(container.image.as_deref(), Some(image.as_str()));
    let args = args(&container);
    for flag in [
        "--http-addr=0.0.0.0:8000",
        "--metrics-addr=0.0.0.0:9090",
        "--keys-namespace=modelfleet-system",
        "--picker=least-loaded",
        "--cache-bytes=67108864",
        "--max-body-bytes=8388608",
        "--drain-delay=5s",
        "--log-format=json",
        "--epp-addr=0.0.0.0:9002",
        "--operator-url=http://modelfleet-telemetry.modelfleet-system.svc:9091",
        "--token-file=/var/run/secrets/modelfleet/token",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    assert!(!args.iter().any(|a| a == "--allow-anonymous"), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("--namespace")),
        "all namespaces: {args:?}"
    );

    let ports: Vec<(String, i32)> = container
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.clone().unwrap_or_default(), p.container_port))
        .collect();
    assert_eq!(
        ports,
        [
            ("http".to_owned(), 8000),
            ("metrics".to_owned(), 9090),
            ("epp".to_owned(), 9002)
        ]
    );
    for (probe, path) in [
        (container.liveness_probe.as_ref(), "/healthz"),
        (container.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe.and_then(|p| p.http_get.clone()).expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(get.port).expect("port"),
            "metrics",
            "{path} on the metrics port"
        );
    }
    // The report stream's credential: a projected token for the operator's hub.
    let token = serde_json::to_value(&pod.volumes).expect("volumes");
    assert_eq!(
        token[0]["projected"]["sources"][0]["serviceAccountToken"]["audience"], "modelfleet-operator",
        "{token}"
    );
    let security = container.security_context.expect("a container securityContext");
    assert_eq!(security.read_only_root_filesystem, Some(true));
    assert_eq!(security.allow_privilege_escalation, Some(false));
    let drop = security.capabilities.and_then(|c| c.drop).unwrap_or_default();
    assert_eq!(drop, ["ALL"]);
}

#[test]
fn the_service_and_pdb_select_the_router_pods_only() {
    let docs = render(&[]);
    let router: Deployment = one(&docs, "Deployment", ROUTER);
    let operator: Deployment = one(&docs, "Deployment", "modelfleet");
    let (router_pods, operator_pods) = (pod_labels(&router), pod_labels(&operator));

    let service: Service = one(&docs, "Service", ROUTER);
    let spec = service.spec.expect("a spec");
    assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
    let selector = spec.selector.expect("a selector");
    assert!(
        selects(&selector, &router_pods),
        "{selector:?} selects {router_pods:?}"
    );
    assert!(!selects(&selector, &operator_pods), "not the operator's pods");
    let ports: Vec<(String, i32, Value)> = spec
        .ports
        .iter()
        .flatten()
        .map(|p| {
            let target = serde_json::to_value(&p.target_port).expect("targetPort");
            (p.name.clone().unwrap_or_default(), p.port, target)
        })
        .collect();
    assert_eq!(
        ports,
        [
            ("http".to_owned(), 80, Value::from("http")),
            ("metrics".to_owned(), 9090, Value::from("metrics")),
            ("epp".to_owned(), 9002, Value::from("epp")),
        ]
    );

    // The operator's Services keep away from the router pods.
    for operator_service in ["modelfleet-metrics", "modelfleet-telemetry"] {
        let service: Service = one(&docs, "Service", operator_service);
        let selector = service.spec.and_then(|s| s.selector).expect("a selector");
        assert!(!selects(&selector, &router_pods), "{operator_service}");
    }

    let pdb: PodDisruptionBudget = one(&docs, "PodDisruptionBudget", ROUTER);
    let spec = pdb.spec.expect("a spec");
    assert_eq!(serde_json::to_value(spec.min_available).expect("minAvailable"), 1);
    let selector = spec.selector.and_then(|s| s.match_labels).expect("matchLabels");
    assert!(selects(&selector, &router_pods));
    assert!(!selects(&selector, &operator_pods));
}

#[test]
fn one_replica_gets_no_pdb_that_would_block_drains() {
    let docs = render(&["router.replicas=1"]);
    let deployment: Deployment = one(&docs, "Deployment", ROUTER);
    assert_eq!(deployment.spec.and_then(|s| s.replicas), Some(1));
    assert!(
        !docs.iter().any(|d| kind(d) == "PodDisruptionBudget"),
        "no PDB for a single router"
    );
}

#[test]
fn the_router_only_reads_what_it_watches_and_patches_only_modeldeployments() {
    let docs = render(&[]);
    let rules = router_rules(&docs);
    assert!(!rules.is_empty(), "the router has RBAC");
    let group = crd_group();
    for (kind, namespace, rule) in &rules {
        let groups = rule.api_groups.clone().unwrap_or_default();
        let resources = rule.resources.clone().unwrap_or_default();
        // Its one write: the last-request annotation that wakes a model from zero.
        let verbs: &[&str] = if resources == ["modeldeployments"] {
            &["get", "list", "watch", "patch"]
        } else {
            &["get", "list", "watch"]
        };
        assert_eq!(rule.verbs, verbs, "{kind} {namespace:?}: {rule:?}");
        let allowed = match groups.as_slice() {
            [g] if *g == group => resources == ["modeldeployments"],
            [g] if g.is_empty() => resources.iter().all(|r| r == "pods" || r == "secrets"),
            _ => false,
        };
        assert!(allowed, "{kind} {namespace:?} grants {groups:?} {resources:?}");
    }
    // All namespaces for the models and pods; the key Secrets in one namespace only.
    assert_eq!(
        granted(&docs, "modeldeployments"),
        [("ClusterRole".to_owned(), None)]
    );
    assert_eq!(granted(&docs, "pods"), [("ClusterRole".to_owned(), None)]);
    assert_eq!(
        granted(&docs, "secrets"),
        [("Role".to_owned(), Some(NAMESPACE.to_owned()))]
    );

    // The bindings name the router's own ServiceAccount.
    let bindings: Vec<&Value> = router_objects(&docs)
        .into_iter()
        .filter(|d| kind(d).ends_with("RoleBinding"))
        .collect();
    assert_eq!(bindings.len(), 2, "one for the watches, one for the keys");
    for binding in bindings {
        assert_eq!(
            binding["subjects"],
            serde_json::json!([{"kind": "ServiceAccount", "name": ROUTER, "namespace": NAMESPACE}]),
            "{}",
            name(binding)
        );
    }
    let _: Value = one(&docs, "ServiceAccount", ROUTER);
}

#[test]
fn every_namespaced_router_object_names_its_namespace() {
    let cluster_scoped = ["ClusterRole", "ClusterRoleBinding"];
    for sets in [
        &[][..],
        &["router.namespace=team-a", "router.keysNamespace=router-keys"][..],
    ] {
        let docs = render(sets);
        let objects = router_objects(&docs);
        assert!(objects.len() >= 8, "{sets:?}: {} router objects", objects.len());
        for doc in objects {
            let namespace = doc["metadata"]["namespace"].as_str();
            if cluster_scoped.contains(&kind(doc)) {
                assert_eq!(namespace, None, "{sets:?}: {} {}", kind(doc), name(doc));
            } else {
                assert!(
                    namespace.is_some_and(|n| !n.is_empty()),
                    "{sets:?}: {} {} has no namespace",
                    kind(doc),
                    name(doc)
                );
            }
        }
    }
}

#[test]
fn one_watched_namespace_needs_no_cluster_role() {
    let docs = render(&["router.namespace=team-a", "router.keysNamespace=router-keys"]);
    let container = router_container(&one(&docs, "Deployment", ROUTER));
    let args = args(&container);
    assert!(args.iter().any(|a| a == "--namespace=team-a"), "{args:?}");
    assert!(
        args.iter().any(|a| a == "--keys-namespace=router-keys"),
        "{args:?}"
    );
    let team_a = [("Role".to_owned(), Some("team-a".to_owned()))];
    assert_eq!(granted(&docs, "modeldeployments"), team_a);
    assert_eq!(granted(&docs, "pods"), team_a);
    assert_eq!(
        granted(&docs, "secrets"),
        [("Role".to_owned(), Some("router-keys".to_owned()))]
    );
    assert!(
        !router_objects(&docs)
            .iter()
            .any(|d| kind(d).starts_with("Cluster")),
        "nothing cluster-wide"
    );
}

#[test]
fn values_reach_the_router_flags() {
    let docs = render(&[
        "router.replicas=3",
        "router.allowAnonymous=true",
        "router.picker=round-robin",
        "router.cacheBytes=0",
        "router.holdQueue=1024",
        "router.drainDelay=15s",
        "router.logFormat=text",
        "router.service.port=8080",
        "router.image.tag=dev",
    ]);
    let deployment: Deployment = one(&docs, "Deployment", ROUTER);
    assert_eq!(deployment.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let container = router_container(&deployment);
    assert_eq!(container.image.as_deref(), Some("ghcr.io/modelfleet/router:dev"));
    let args = args(&container);
    for flag in [
        "--allow-anonymous",
        "--picker=round-robin",
        "--cache-bytes=0",
        "--hold-queue=1024",
        "--drain-delay=15s",
        "--log-format=text",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} in {args:?}");
    }
    let service: Service = one(&docs, "Service", ROUTER);
    let http = service
        .spec
        .and_then(|s| s.ports)
        .and_then(|p| p.into_iter().find(|p| p.name.as_deref() == Some("http")))
        .expect("the http port");
    assert_eq!(http.port, 8080);
}

#[test]
fn router_enabled_false_removes_the_router() {
    let docs = render(&["router.enabled=false"]);
    let left: Vec<String> = docs
        .iter()
        .filter(|d| {
            d["metadata"]["labels"]["app.kubernetes.io/name"] == ROUTER || name(d).starts_with(ROUTER)
        })
        .map(|d| format!("{} {}", kind(d), name(d)))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // The rest of the chart is still there.
    let _: Deployment = one(&docs, "Deployment", "modelfleet");
}

#[test]
fn the_chart_lints_strictly() {
    let out = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .expect("helm runs");
    assert!(
        out.status.success(),
        "helm lint --strict: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
