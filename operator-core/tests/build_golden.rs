//! `build` is pure: each example's desired objects are compared with a golden file
//! (`UPDATE_GOLDEN=1 cargo test -p modelfleet-operator-core --test build_golden` rewrites them), and
//! the properties a user relies on are asserted directly.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use modelfleet_crds::{ModelDeployment, manifest::model_deployments_from_yaml, revision::revision_hash};
use modelfleet_operator_core::{
    build::{DesiredObjects, build},
    observed::Observed,
    plan::{desired_replicas, plan},
};

const IMAGE: &str = "ghcr.io/modelfleet/server:test";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example(file: &str) -> ModelDeployment {
    let text = std::fs::read_to_string(root().join("examples").join(file)).expect("example");
    let mut md = model_deployments_from_yaml(&text)
        .expect("valid example")
        .remove(0);
    md.metadata.namespace.get_or_insert_with(|| "default".into());
    md.metadata.uid = Some("00000000-0000-0000-0000-000000000001".into());
    md
}

fn desired(md: &ModelDeployment) -> DesiredObjects {
    let current = revision_hash(&md.spec, IMAGE);
    build(
        md,
        &plan(desired_replicas(md, None), &current, None, &[]),
        &Observed::default(),
        IMAGE,
    )
}

fn server(d: &Deployment) -> k8s_openapi::api::core::v1::Container {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .map(|p| p.containers[0].clone())
        .expect("a container")
}

#[test]
fn every_example_matches_its_golden_file() {
    let files = [
        "minimal.yaml",
        "gpu-autoscaled.yaml",
        "canary.yaml",
        "shadow-then-canary.yaml",
        "gateway-canary.yaml",
        "external-hpa.yaml",
        "generation.yaml",
        "upstream-llama-cpp.yaml",
    ];
    for file in files {
        let yaml = serde_yaml::to_string(&desired(&example(file))).expect("serializes");
        let golden = root().join("operator-core/tests/golden").join(file);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::write(&golden, &yaml).expect("write golden");
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_default();
        assert!(
            expected == yaml,
            "{file}: built objects differ from {}; rerun with UPDATE_GOLDEN=1 and review the diff",
            golden.display()
        );
    }
}

#[test]
fn gpu_pods_request_gpus_tolerate_the_taint_and_pick_the_product() {
    let d = desired(&example("gpu-autoscaled.yaml"));
    assert_eq!(d.deployments.len(), 1);
    let dep = &d.deployments[0];
    // spec.scaling present: minReplicas until the autoscaler lands.
    assert_eq!(dep.spec.as_ref().and_then(|s| s.replicas), Some(1));
    let c = server(dep);
    let limits = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(limits["nvidia.com/gpu"].0, "1");
    let pod = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let json = serde_json::to_string(&pod).expect("json");
    assert!(
        json.contains(r#""key":"nvidia.com/gpu.product","operator":"In","values":["NVIDIA-H100-80GB-HBM3"]"#),
        "{json}"
    );
    assert!(
        json.contains(r#""key":"nvidia.com/gpu.memory","operator":"Gt","values":["39999"]"#),
        "{json}"
    );
    assert!(
        pod.tolerations
            .expect("tolerations")
            .iter()
            .any(|t| t.key.as_deref() == Some("nvidia.com/gpu"))
    );
    let args = c.args.expect("args");
    assert!(args.contains(&"--tier=free:10s:0.5".to_string()), "{args:?}");
    assert!(args.contains(&"--max-batch-size=64".to_string()), "{args:?}");
}

#[test]
fn cpu_pods_neither_request_gpus_nor_tolerate_the_taint() {
    let d = desired(&example("minimal.yaml"));
    let dep = &d.deployments[0];
    let pod = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    assert!(pod.tolerations.is_none());
    assert!(pod.affinity.is_none());
    let c = server(dep);
    assert!(
        c.resources
            .and_then(|r| r.limits)
            .is_some_and(|l| !l.contains_key("nvidia.com/gpu"))
    );
    assert_eq!(c.image.as_deref(), Some(IMAGE));
}

#[test]
fn pods_are_hardened_probed_and_drained() {
    let d = desired(&example("minimal.yaml"));
    let dep = &d.deployments[0];
    let pod = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let sc = pod.security_context.expect("pod security context");
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(
        sc.seccomp_profile.map(|p| p.type_).as_deref(),
        Some("RuntimeDefault")
    );
    let c = &pod.containers[0];
    let csc = c.security_context.clone().expect("container security context");
    assert_eq!(
        (csc.read_only_root_filesystem, csc.allow_privilege_escalation),
        (Some(true), Some(false))
    );
    let path = |p: &Option<k8s_openapi::api::core::v1::Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(path(&c.readiness_probe).as_deref(), Some("/health/ready"));
    assert_eq!(path(&c.liveness_probe).as_deref(), Some("/health/live"));
    assert!(
        c.startup_probe
            .as_ref()
            .and_then(|p| p.failure_threshold)
            .is_some_and(|f| f >= 60)
    );
    assert!(c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref()).is_some());
    assert!(pod.termination_grace_period_seconds.is_some_and(|g| g >= 30));
    let volumes: Vec<_> = pod
        .volumes
        .expect("volumes")
        .into_iter()
        .map(|v| v.name)
        .collect();
    assert_eq!(volumes, ["models", "routing", "tmp"]);
    let annotations = dep
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.clone())
        .and_then(|m| m.annotations)
        .expect("annotations");
    assert_eq!(annotations["prometheus.io/port"], "9090");
}

fn pod_spec(d: &Deployment) -> k8s_openapi::api::core::v1::PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("a pod spec")
}

fn requests_gpu(c: &k8s_openapi::api::core::v1::Container) -> bool {
    c.resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .is_some_and(|l| l.contains_key("nvidia.com/gpu"))
}

#[test]
fn generation_pods_carry_the_generation_limits_and_a_startup_budget_from_the_model_size() {
    let d = desired(&example("generation.yaml"));
    let server = server(&d.deployments[0]);
    let args = server.args.clone().unwrap_or_default();
    for flag in [
        "--task=generation",
        "--context-length=2048",
        "--max-running-sequences=8",
        "--kv-budget-tokens=8192",
        "--default-max-tokens=256",
    ] {
        assert!(args.iter().any(|a| a == flag), "{flag} missing from {args:?}");
    }
    let startup = server.startup_probe.expect("a startup probe");
    // 98 MiB loads in seconds: the 5-minute floor, not the 15-minute default.
    assert_eq!(
        (startup.period_seconds, startup.failure_threshold),
        (Some(10), Some(30))
    );
    let embeddings = desired(&example("minimal.yaml"));
    let args = self::server(&embeddings.deployments[0]).args.unwrap_or_default();
    assert!(!args.iter().any(|a| a.contains("max-tokens")), "{args:?}");
}

#[test]
fn an_upstream_pod_runs_the_engine_beside_the_server_with_the_gpu() {
    let d = desired(&example("upstream-llama-cpp.yaml"));
    let pod = pod_spec(&d.deployments[0]);
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["server", "engine"]);
    let (server, engine) = (&pod.containers[0], &pod.containers[1]);
    let args = server.args.clone().unwrap_or_default();
    assert!(args.contains(&"--backend=upstream".to_string()), "{args:?}");
    assert!(
        args.contains(&"--upstream-url=http://127.0.0.1:8000".to_string()),
        "{args:?}"
    );
    assert!(requests_gpu(engine) && !requests_gpu(server));
    let port = engine
        .ports
        .as_ref()
        .and_then(|p| p.first())
        .map(|p| p.container_port);
    assert_eq!(port, Some(8000));
    assert_eq!(
        engine.image.as_deref(),
        Some("ghcr.io/ggml-org/llama.cpp:server-cuda")
    );
    let mounts: Vec<&str> = engine
        .volume_mounts
        .iter()
        .flatten()
        .map(|m| m.mount_path.as_str())
        .collect();
    assert!(mounts.contains(&"/var/lib/modelfleet/models"), "{mounts:?}");
}

#[test]
fn a_pvc_uri_mounts_the_claim_read_only() {
    let d = desired(&example("gateway-canary.yaml"));
    let pod = d.deployments[0]
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod spec");
    let models = pod
        .volumes
        .expect("volumes")
        .into_iter()
        .find(|v| v.name == "models")
        .expect("models volume");
    let claim = models.persistent_volume_claim.expect("a PVC volume");
    assert_eq!(
        (claim.claim_name.as_str(), claim.read_only),
        ("models", Some(true))
    );
    assert!(
        pod.containers[0]
            .args
            .as_ref()
            .expect("args")
            .contains(&"--model-uri=file:///var/lib/modelfleet/models/all-MiniLM-L6-v2/v3".to_string())
    );
}

#[test]
fn children_are_named_labelled_and_owned() {
    let md = example("minimal.yaml");
    let d = desired(&md);
    let rev = revision_hash(&md.spec, IMAGE);
    assert_eq!(
        d.deployments[0].metadata.name.as_deref(),
        Some(format!("minilm-{rev}").as_str())
    );
    let names: Vec<_> = d
        .services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    assert_eq!(
        names,
        ["minilm", "minilm-stable", "minilm-canary", "minilm-shadow"]
    );
    assert_eq!(d.routing.metadata.name.as_deref(), Some("minilm-routing"));
    for meta in d.services.iter().map(|s| &s.metadata).chain([
        &d.deployments[0].metadata,
        &d.pdb.metadata,
        &d.routing.metadata,
    ]) {
        let labels = meta.labels.clone().expect("labels");
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/component",
            "modelfleet.dev/deployment",
        ] {
            assert!(labels.contains_key(key), "{:?} lacks {key}", meta.name);
        }
        let owner = &meta.owner_references.as_ref().expect("owner")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("ModelDeployment", Some(true))
        );
    }
    let stable_selector = d.services[1]
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .expect("selector");
    assert_eq!(stable_selector["modelfleet.dev/revision"], rev);
}

#[test]
fn during_a_rollout_the_stable_revision_keeps_its_own_template_and_the_shadow_mirror_is_on_stable_only() {
    use modelfleet_operator_core::{observed::ObservedRevision, plan::Traffic};
    let old = example("minimal.yaml");
    let old_rev = revision_hash(&old.spec, IMAGE);
    let old_template = desired(&old).deployments[0]
        .spec
        .as_ref()
        .expect("spec")
        .template
        .clone();
    let mut new = old.clone();
    new.spec.model.version = "99".into();
    let new_rev = revision_hash(&new.spec, IMAGE);
    let observed = [ObservedRevision {
        revision: old_rev.clone(),
        version: old.spec.model.version.clone(),
        replicas: 2,
        ready_replicas: 2,
        template: Some(Box::new(old_template.clone())),
    }];
    let mut p = plan(2, &new_rev, Some(&old_rev), &observed);
    p.traffic = Traffic {
        weight: 0,
        mirror: 20,
        entry_stable_only: true,
    };
    let observed = Observed {
        revisions: observed.to_vec(),
        ..Default::default()
    };
    let d = build(&new, &p, &observed, IMAGE);
    let stable = d
        .deployments
        .iter()
        .find(|d| d.metadata.name.as_deref() == Some(&format!("minilm-{old_rev}")))
        .expect("the stable Deployment");
    assert_eq!(stable.spec.as_ref().map(|s| &s.template), Some(&old_template));
    assert_eq!(
        stable
            .metadata
            .annotations
            .as_ref()
            .map(|a| a["modelfleet.dev/model-version"].as_str()),
        Some(old.spec.model.version.as_str()),
        "the stable revision keeps its version"
    );
    let data = d.routing.data.expect("routing data");
    let mirror: serde_json::Value = serde_json::from_str(&data[&format!("{old_rev}.json")]).expect("json");
    assert_eq!(mirror["mirror"]["percent"], 20);
    assert!(
        mirror["mirror"]["url"]
            .as_str()
            .is_some_and(|u| u.starts_with("http://minilm-shadow."))
    );
    assert_eq!(
        data[&format!("{new_rev}.json")],
        r#"{"mirror":null}"#,
        "the candidate mirrors nothing"
    );
    let entry = d
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some("minilm"))
        .expect("entry");
    assert_eq!(
        entry
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| s.get("modelfleet.dev/revision")),
        Some(&old_rev),
        "at weight 0 the entry Service selects only the stable revision"
    );
}

fn cluster_ip(d: &DesiredObjects, name: &str) -> Option<String> {
    d.services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(name))
        .and_then(|s| s.spec.as_ref()?.cluster_ip.clone())
}

#[test]
fn only_the_entry_and_shadow_services_get_a_cluster_ip_and_an_allocated_one_is_kept() {
    let md = example("minimal.yaml");
    let d = desired(&md);
    // No clusterIP field: the API server allocates one.
    assert_eq!(cluster_ip(&d, "minilm"), None);
    assert_eq!(cluster_ip(&d, "minilm-shadow"), None);
    // The Gateway's backends are headless.
    assert_eq!(cluster_ip(&d, "minilm-stable").as_deref(), Some("None"));
    assert_eq!(cluster_ip(&d, "minilm-canary").as_deref(), Some("None"));

    // A role Service an earlier version created with a cluster IP keeps it (the field is
    // immutable, so asking for None would fail every apply).
    let current = revision_hash(&md.spec, IMAGE);
    let observed = Observed {
        cluster_ips: [("minilm-stable".to_string(), "10.96.0.20".to_string())].into(),
        ..Default::default()
    };
    let d = build(
        &md,
        &plan(desired_replicas(&md, None), &current, None, &[]),
        &observed,
        IMAGE,
    );
    assert_eq!(cluster_ip(&d, "minilm-stable"), None);
    assert_eq!(cluster_ip(&d, "minilm-canary").as_deref(), Some("None"));
}
