//! The operator against the real local control plane.

mod common;

use std::time::Duration;

use common::*;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, ResourceExt,
    api::{DeleteParams, ListParams, Patch, PatchParams, PostParams},
};
use modelfleet_crds::{ModelDeployment, v1alpha1::Phase};
use modelfleet_testkit::{nodes, wait::poll_until};
use serde_json::json;

const MINUTE: Duration = Duration::from_secs(60);

#[tokio::test]
async fn examples_without_rollout_steps_become_available_with_their_children() {
    for file in ["minimal.yaml", "gpu-autoscaled.yaml", "external-hpa.yaml"] {
        // A namespace each: the examples serve the same model name, which two ModelDeployments
        // of one namespace cannot share (the younger would be Degraded/ModelNameConflict).
        let (client, ns) = setup("examples").await;
        let md = create(&client, &example(file, ns.name())).await;
        let name = md.name_any();
        let md = wait_condition(
            &client,
            ns.name(),
            &name,
            "Available",
            "True",
            Some("AllReplicasReady"),
            MINUTE,
        )
        .await;
        assert_status_and_columns(&md, ns.name(), file);
        if file == "gpu-autoscaled.yaml" {
            // No node agents run here: the autoscaler holds minReplicas and says why.
            let md = wait_condition(
                &client,
                ns.name(),
                &name,
                "MetricsAvailable",
                "False",
                Some("NoTelemetry"),
                MINUTE,
            )
            .await;
            let (_, _, message) = condition(&md, "MetricsAvailable").expect("reported");
            assert!(message.contains("holding 1 replicas"), "{message}");
            let autoscaling = md.status.as_ref().and_then(|s| s.autoscaling.clone());
            assert_eq!(autoscaling.map(|a| a.desired_replicas), Some(1));
        }

        assert_children(&client, ns.name(), &name, file).await;
    }
}

#[tokio::test]
async fn a_role_service_an_earlier_version_gave_a_cluster_ip_keeps_it() {
    // Operators before headless role Services created `<name>-stable` with a cluster IP, and
    // `spec.clusterIP` is immutable: the operator must take the Service over as it is.
    let (client, ns) = setup("upgrade").await;
    let services: Api<Service> = Api::namespaced(client.clone(), ns.name());
    let old: Service = serde_json::from_value(json!({
        "metadata": {"name": "minilm-stable", "labels": {
            "app.kubernetes.io/managed-by": "modelfleet-operator",
            "modelfleet.dev/deployment": "minilm",
        }},
        "spec": {"selector": {"modelfleet.dev/deployment": "minilm"}, "ports": [{"name": "http", "port": 8080}]},
    }))
    .expect("service");
    let cluster_ip = |s: Service| s.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
    let ip = cluster_ip(
        services
            .create(&PostParams::default(), &old)
            .await
            .expect("create the old Service"),
    );
    assert!(!ip.is_empty() && ip != "None", "{ip:?}");
    create(&client, &example("minimal.yaml", ns.name())).await;
    let md = wait_condition(&client, ns.name(), "minilm", "Available", "True", None, MINUTE).await;
    assert!(
        condition(&md, "Degraded").is_some_and(|(s, _, _)| s == "False"),
        "{:?}",
        condition(&md, "Degraded")
    );
    let stable = services.get("minilm-stable").await.expect("the stable Service");
    let selector = stable
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    assert!(
        selector.contains_key("modelfleet.dev/revision"),
        "taken over: it selects the stable revision, {selector:?}"
    );
    assert_eq!(cluster_ip(stable), ip, "the cluster IP is kept");
    let canary = services.get("minilm-canary").await.expect("the canary Service");
    assert_eq!(cluster_ip(canary), "None", "a Service created now is headless");
}

const GPU_SPEC: &str = r#"
model: {name: all-MiniLM-L6-v2, version: "1", uri: "hf://sentence-transformers/all-MiniLM-L6-v2"}
resources: {gpus: 1, gpuProduct: NVIDIA-H100-80GB-HBM3}
replicas: 2
"#;

#[tokio::test]
async fn a_new_version_replaces_the_old_only_once_it_is_ready() {
    let (client, ns) = setup("versions").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    create(&client, &model_deployment("embed", ns.name(), GPU_SPEC)).await;
    let v1 = wait_condition(&client, ns.name(), "embed", "Available", "True", None, MINUTE).await;
    let rev1 = v1
        .status
        .as_ref()
        .and_then(|s| s.stable.clone())
        .expect("stable")
        .revision;

    // Version 2 asks for a GPU product no node has: its pods stay Pending.
    let patch = json!({"spec": {"model": {"version": "2"}, "resources": {"gpuProduct": "NVIDIA-B200"}}});
    api.patch("embed", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let rolling = wait_condition(
        &client,
        ns.name(),
        "embed",
        "Progressing",
        "True",
        Some("NewRevision"),
        MINUTE,
    )
    .await;
    let status = rolling.status.clone().unwrap();
    assert_eq!(
        status
            .stable
            .as_ref()
            .map(|s| (s.revision.as_str(), s.ready_replicas)),
        Some((rev1.as_str(), 2))
    );
    assert_eq!(status.candidate.as_ref().map(|c| c.version.as_str()), Some("2"));
    assert!(
        condition(&rolling, "Available").is_some_and(|(s, r, _)| s == "False" && r == "RevisionRollingOut")
    );
    // The old revision keeps full capacity while the new one cannot start.
    let deployments = revision_deployments(&client, ns.name(), "embed").await;
    assert_eq!(deployments.len(), 2);
    let old = deployments
        .iter()
        .find(|d| d.labels()["modelfleet.dev/revision"] == rev1)
        .expect("old revision");
    assert_eq!(old.status.as_ref().and_then(|s| s.ready_replicas), Some(2));

    // Version 3 fits: it becomes ready, then the old revision (and the stuck one) go.
    let patch =
        json!({"spec": {"model": {"version": "3"}, "resources": {"gpuProduct": "NVIDIA-H100-80GB-HBM3"}}});
    let patched = api
        .patch("embed", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let done = wait_condition(&client, ns.name(), "embed", "Available", "True", None, MINUTE).await;
    let status = done.status.clone().unwrap();
    assert_eq!(status.observed_generation, patched.metadata.generation);
    assert_eq!(status.stable.as_ref().map(|s| s.version.as_str()), Some("3"));
    assert!(status.candidate.is_none());
    let remaining = poll_until(MINUTE, "only the new revision's Deployment", || {
        let client = client.clone();
        let ns = ns.name().to_string();
        async move {
            let d = revision_deployments(&client, &ns, "embed").await;
            if d.len() == 1 {
                Ok(Some(d))
            } else {
                Err(format!("{} Deployments", d.len()))
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        remaining[0].labels()["modelfleet.dev/revision"],
        status.stable.unwrap().revision
    );
}

#[tokio::test]
async fn missing_gpus_degrade_with_insufficient_gpu_and_recover_when_nodes_arrive() {
    let (client, ns) = setup("gpu-short").await;
    let product = format!("NVIDIA-TEST-{}", ns.name().to_uppercase());
    nodes::add_gpu_pool(
        &client,
        &modelfleet_testkit::GpuNodePool {
            name_prefix: format!("{}-a", ns.name()),
            count: 1,
            product: product.clone(),
            gpus_per_node: 4,
            gpu_memory_mib: 81559,
        },
    )
    .await
    .unwrap();
    let spec = format!(
        "model: {{name: m, version: '1', uri: 'hf://o/m'}}\nresources: {{gpus: 4, gpuProduct: {product}}}\nreplicas: 2\n"
    );
    create(&client, &model_deployment("big", ns.name(), &spec)).await;
    let md = wait_condition(
        &client,
        ns.name(),
        "big",
        "Degraded",
        "True",
        Some("InsufficientGPU"),
        MINUTE,
    )
    .await;
    let (_, _, message) = condition(&md, "Degraded").unwrap();
    assert!(
        message.contains("1 of 2 replicas cannot be scheduled"),
        "{message}"
    );
    assert!(message.contains("lacks 4 nvidia.com/gpu"), "{message}");
    assert_eq!(md.status.as_ref().and_then(|s| s.phase), Some(Phase::Degraded));

    nodes::add_gpu_pool(
        &client,
        &modelfleet_testkit::GpuNodePool {
            name_prefix: format!("{}-b", ns.name()),
            count: 1,
            product,
            gpus_per_node: 4,
            gpu_memory_mib: 81559,
        },
    )
    .await
    .unwrap();
    let md = wait_condition(&client, ns.name(), "big", "Available", "True", None, MINUTE).await;
    assert!(condition(&md, "Degraded").is_some_and(|(s, _, _)| s == "False"));
}

const CPU_SPEC: &str = r#"
model: {name: m, version: "1", uri: "hf://o/m"}
runtime: {device: cpu}
resources: {gpus: 0}
replicas: 1
"#;

async fn wait_ready_replicas(client: &kube::Client, ns: &str, name: &str, n: i32, timeout: Duration) {
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns);
    modelfleet_testkit::wait::wait_for(
        &api,
        name,
        timeout,
        &format!("{n} ready replicas"),
        |md: &ModelDeployment| {
            md.status
                .as_ref()
                .is_some_and(|s| s.ready_replicas == n && s.replicas == n)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test]
async fn kubectl_scale_and_an_hpa_change_the_replicas() {
    let (client, ns) = setup("scale").await;
    create(&client, &model_deployment("scaled", ns.name(), CPU_SPEC)).await;
    wait_ready_replicas(&client, ns.name(), "scaled", 1, MINUTE).await;

    // What `kubectl scale mdep/scaled --replicas=3` does: write the scale subresource.
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.patch_scale(
        "scaled",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 3}})),
    )
    .await
    .unwrap();
    wait_ready_replicas(&client, ns.name(), "scaled", 3, MINUTE).await;
    let scale = api.get_scale("scaled").await.unwrap();
    assert_eq!(scale.status.as_ref().map(|s| s.replicas), Some(3));
    assert_eq!(
        scale.status.and_then(|s| s.selector).as_deref(),
        Some("modelfleet.dev/deployment=scaled")
    );

    // An HPA below its minimum scales the ModelDeployment up through the same subresource.
    let hpas: Api<k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler> =
        Api::namespaced(client.clone(), ns.name());
    let hpa = serde_json::from_value(json!({
        "metadata": {"name": "scaled"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "modelfleet.dev/v1alpha1", "kind": "ModelDeployment", "name": "scaled"},
            "minReplicas": 4, "maxReplicas": 6,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}]
        }
    }))
    .unwrap();
    hpas.create(&PostParams::default(), &hpa).await.unwrap();
    wait_ready_replicas(&client, ns.name(), "scaled", 4, Duration::from_secs(90)).await;
    let md = api.get("scaled").await.unwrap();
    assert_eq!(md.spec.replicas, 4, "the HPA wrote spec.replicas through /scale");
}

#[tokio::test]
async fn deleting_the_model_deployment_removes_every_child() {
    let (client, ns) = setup("delete").await;
    create(&client, &model_deployment("gone", ns.name(), CPU_SPEC)).await;
    wait_condition(&client, ns.name(), "gone", "Available", "True", None, MINUTE).await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.delete("gone", &DeleteParams::foreground()).await.unwrap();
    let selector = ListParams::default().labels("modelfleet.dev/deployment=gone");
    poll_until(MINUTE, "no children left", || {
        let client = client.clone();
        let ns = ns.name().to_string();
        let selector = selector.clone();
        async move {
            let count = |n: usize, what: &str| {
                if n > 0 {
                    Err(format!("{n} {what} left"))
                } else {
                    Ok(())
                }
            };
            let deployments = Api::<Deployment>::namespaced(client.clone(), &ns)
                .list(&selector)
                .await
                .map_err(|e| e.to_string())?;
            count(deployments.items.len(), "Deployments")?;
            let services = Api::<Service>::namespaced(client.clone(), &ns)
                .list(&selector)
                .await
                .map_err(|e| e.to_string())?;
            count(services.items.len(), "Services")?;
            let cms = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                .list(&selector)
                .await
                .map_err(|e| e.to_string())?;
            count(cms.items.len(), "ConfigMaps")?;
            let pdbs = Api::<PodDisruptionBudget>::namespaced(client, &ns)
                .list(&selector)
                .await
                .map_err(|e| e.to_string())?;
            count(pdbs.items.len(), "PodDisruptionBudgets")?;
            Ok(Some(()))
        }
    })
    .await
    .unwrap();
}

/// What `kubectl get mdep` and the status show for an Available example.
fn assert_status_and_columns(md: &ModelDeployment, namespace: &str, file: &str) {
    let name = md.name_any();
    let status = md.status.clone().expect("status");
    // What `kubectl get mdep` shows: a value in every column, none `<none>`.
    let row = kubectl_get_mdep(namespace, &name);
    let columns: Vec<_> = row.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        columns,
        ["NAME", "READY", "STABLE", "CANARY", "WEIGHT", "PHASE", "AGE"],
        "{file}"
    );
    assert!(row.iter().all(|(_, v)| v != "<none>"), "{file}: {row:?}");
    let cell = |c: &str| row.iter().find(|(h, _)| h == c).map(|(_, v)| v.as_str());
    assert_eq!((cell("CANARY"), cell("WEIGHT")), (Some("-"), Some("0")), "{file}");
    let want = if file == "external-hpa.yaml" { 2 } else { 1 };
    assert_eq!(
        status.ready.as_deref(),
        Some(format!("{want}/{want}").as_str()),
        "{file}"
    );
    assert_eq!(
        status.stable.as_ref().map(|s| s.version.as_str()),
        Some("1"),
        "{file}"
    );
    assert_eq!(status.phase, Some(Phase::Available), "{file}");
    assert_eq!(
        status.selector.as_deref(),
        Some(format!("modelfleet.dev/deployment={name}").as_str())
    );
    assert_eq!(status.observed_generation, md.metadata.generation);
    assert!(
        condition(md, "Degraded").is_some_and(|(s, _, _)| s == "False"),
        "{file}"
    );
}

/// One revision Deployment, the four Services (only the Gateway's two headless), the routing
/// ConfigMap and the PDB.
async fn assert_children(client: &kube::Client, namespace: &str, name: &str, file: &str) {
    assert_eq!(
        revision_deployments(client, namespace, name).await.len(),
        1,
        "{file}"
    );
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    for suffix in ["", "-stable", "-canary", "-shadow"] {
        let service = services
            .get(&format!("{name}{suffix}"))
            .await
            .unwrap_or_else(|e| panic!("{file}: Service {name}{suffix}: {e}"));
        // Clients dial the entry Service and servers the shadow one through a cluster IP;
        // the Gateway's backends are headless.
        let ip = service.spec.and_then(|s| s.cluster_ip).unwrap_or_default();
        let headless = matches!(suffix, "-stable" | "-canary");
        assert_eq!(
            ip == "None",
            headless,
            "{file}: Service {name}{suffix} clusterIP {ip:?}"
        );
        assert!(!ip.is_empty(), "{file}: Service {name}{suffix} has no clusterIP");
    }
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(&format!("{name}-routing"))
        .await
        .expect("exists");
    Api::<PodDisruptionBudget>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .expect("exists");
}

#[tokio::test]
async fn a_second_model_deployment_claiming_a_served_name_is_degraded_and_says_who_holds_it() {
    let (client, ns) = setup("names").await;
    create(&client, &model_deployment("first", ns.name(), CPU_SPEC)).await;
    wait_condition(&client, ns.name(), "first", "Available", "True", None, MINUTE).await;
    // Created later, with the same served name `m` (CPU_SPEC's).
    create(&client, &model_deployment("second", ns.name(), CPU_SPEC)).await;
    let second = wait_condition(
        &client,
        ns.name(),
        "second",
        "Degraded",
        "True",
        Some("ModelNameConflict"),
        MINUTE,
    )
    .await;
    let (_, _, message) = condition(&second, "Degraded").expect("reported");
    assert!(
        message.contains("\"m\"") && message.contains("first"),
        "{message}"
    );
    let first = wait_condition(&client, ns.name(), "first", "Degraded", "False", None, MINUTE).await;
    assert_eq!(
        first.status.and_then(|s| s.phase),
        Some(Phase::Available),
        "the older keeps it"
    );
}
