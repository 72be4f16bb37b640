//! The local control plane behaves like a real GPU cluster: scheduling on `nvidia.com/gpu`,
//! Pending with a FailedScheduling event when GPUs run out, and the API server enforcing our
//! CRD's schema and CEL rules.

use std::time::Duration;

use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{Event, Pod},
};
use kube::{
    Api, Client, CustomResourceExt,
    api::{ApiResource, DynamicObject, ListParams, PostParams},
};
use modelfleet_crds::{ModelDeployment, rules};
use modelfleet_testkit::{
    testing::shared_namespace,
    wait::{poll_until, wait_for},
};
use serde_json::{Value, json};

fn gpu_pod_spec(gpus: u32) -> Value {
    json!({
        "containers": [{
            "name": "server",
            "image": "ghcr.io/modelfleet/server:test",
            "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}
        }],
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    })
}

#[tokio::test]
async fn a_gpu_deployment_is_scheduled_on_a_gpu_node_and_becomes_ready() {
    let (client, ns) = shared_namespace("gpu-sched").await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns.name());
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "gpu-app"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "gpu-app"}},
            "template": {"metadata": {"labels": {"app": "gpu-app"}}, "spec": gpu_pod_spec(1)}
        }
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    wait_for(
        &deployments,
        "gpu-app",
        Duration::from_secs(60),
        "2 ready replicas",
        |d: &Deployment| d.status.as_ref().and_then(|s| s.ready_replicas) == Some(2),
    )
    .await
    .unwrap();

    let pods: Api<Pod> = Api::namespaced(client, ns.name());
    let list = pods
        .list(&ListParams::default().labels("app=gpu-app"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 2);
    for pod in list.items {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(node.starts_with("gpu-node-"), "scheduled on {node:?}");
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Running"));
    }
}

#[tokio::test]
async fn a_pod_asking_for_16_gpus_stays_pending_with_a_failed_scheduling_event() {
    let (client, ns) = shared_namespace("gpu-pending").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": "too-big"}, "spec": gpu_pod_spec(16)})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    let events: Api<Event> = Api::namespaced(client, ns.name());
    let message = poll_until(
        Duration::from_secs(60),
        "a FailedScheduling event for too-big",
        || {
            let events = events.clone();
            async move {
                let list = events
                    .list(&ListParams::default())
                    .await
                    .map_err(|e| e.to_string())?;
                match list
                    .items
                    .iter()
                    .find(|e| e.reason.as_deref() == Some("FailedScheduling"))
                {
                    Some(e) => Ok(Some(e.message.clone().unwrap_or_default())),
                    None => {
                        let seen: Vec<_> = list.items.iter().map(|e| (&e.reason, &e.message)).collect();
                        Err(format!("events so far: {seen:?}"))
                    }
                }
            }
        },
    )
    .await
    .unwrap();
    assert!(message.contains("nvidia.com/gpu"), "{message}");
    let pod = pods.get("too-big").await.unwrap();
    assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Pending"));
    assert!(
        pod.spec.and_then(|s| s.node_name).is_none(),
        "it must not be bound"
    );
}

fn model_deployments(client: &Client, ns: &str) -> Api<DynamicObject> {
    Api::namespaced_with(client.clone(), ns, &ApiResource::erase::<ModelDeployment>(&()))
}

fn examples() -> Vec<(String, Vec<Value>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("examples/ is readable") {
        let path = entry.expect("an examples/ entry").path();
        let text = std::fs::read_to_string(&path).expect("an example is readable");
        let docs = serde_yaml::Deserializer::from_str(&text)
            .map(|d| {
                let yaml =
                    <serde_yaml::Value as serde::Deserialize>::deserialize(d).expect("an example is YAML");
                serde_json::to_value(yaml).expect("YAML converts to JSON")
            })
            .collect();
        out.push((
            path.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned(),
            docs,
        ));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[tokio::test]
async fn every_example_is_accepted_by_the_api_server() {
    let (client, ns) = shared_namespace("examples").await;
    let mds = model_deployments(&client, ns.name());
    let hpas: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns.name(),
        &ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
            "autoscaling",
            "v2",
            "HorizontalPodAutoscaler",
        )),
    );
    let examples = examples();
    assert!(examples.len() >= 6);
    for (file, docs) in examples {
        for mut doc in docs {
            // Examples name their own namespace; each test uses a fresh one.
            doc["metadata"]["namespace"] = json!(ns.name());
            let name = doc["metadata"]["name"].as_str().unwrap().to_string();
            let obj: DynamicObject = serde_json::from_value(doc.clone()).unwrap();
            let api = if doc["kind"] == "ModelDeployment" {
                &mds
            } else {
                &hpas
            };
            let created = api
                .create(&PostParams::default(), &obj)
                .await
                .unwrap_or_else(|e| panic!("examples/{file}: {} {name} rejected: {e}", doc["kind"]));
            if doc["kind"] == "ModelDeployment" {
                // The API server applied the schema defaults.
                assert!(
                    created.data["spec"]["batching"]["maxBatchSize"].is_number(),
                    "examples/{file}: no defaults"
                );
                mds.delete(&name, &Default::default()).await.unwrap();
            }
        }
    }
}

/// `(change to examples/minimal.yaml's spec as a JSON merge, the CEL message the API server must give)`.
fn bad_specs() -> Vec<(Value, rules::CelRule)> {
    vec![
        (
            json!({"model": {"uri": "http://example.com/m"}}),
            rules::MODEL_URI,
        ),
        (json!({"resources": {"gpus": -1}}), rules::GPUS),
        (json!({"runtime": {"device": "cuda"}}), rules::CUDA_NEEDS_GPU),
        (json!({"batching": {"maxBatchSize": 0}}), rules::MAX_BATCH_SIZE),
        (
            json!({"batching": {"tiers": [{"name": "paid"}, {"name": "paid"}]}}),
            rules::TIER_NAMES_UNIQUE,
        ),
        (
            json!({"batching": {"tiers": [{"name": "Paid_Tier"}]}}),
            rules::TIER_NAME,
        ),
        (
            json!({"batching": {"tiers": [{"name": "free", "maxQueueShare": 1.5}]}}),
            rules::TIER_QUEUE_SHARE,
        ),
        (
            json!({"scaling": {"minReplicas": 5, "maxReplicas": 2, "targets": {"queueDepthPerReplica": 8}}}),
            rules::SCALING_MIN_LE_MAX,
        ),
        (
            json!({"scaling": {"maxReplicas": 0, "minReplicas": 0, "targets": {"queueDepthPerReplica": 8}}}),
            rules::SCALING_MAX,
        ),
        (
            json!({"scaling": {"maxReplicas": 3, "targets": {}}}),
            rules::SCALING_TARGETS,
        ),
        (
            json!({"scaling": {"maxReplicas": 3, "panicWindow": "2m", "targets": {"inFlightPerReplica": 8}}}),
            rules::PANIC_WINDOW_LE_STABLE,
        ),
        (
            json!({"rollout": {"steps": [{"canary": {"weight": 150, "duration": "5m"}}]}}),
            rules::CANARY_WEIGHT,
        ),
        (
            json!({"rollout": {"steps": [{"canary": {"weight": 50, "duration": "5m"}}, {"canary": {"weight": 10, "duration": "5m"}}]}}),
            rules::CANARY_WEIGHTS_ORDER,
        ),
        (
            json!({"rollout": {"steps": [{"shadow": {"percent": 0, "duration": "5m"}}]}}),
            rules::SHADOW_PERCENT,
        ),
        (
            json!({"rollout": {"steps": [{"canary": {"weight": 10, "duration": "0s"}}]}}),
            rules::CANARY_DURATION,
        ),
        (
            json!({"rollout": {"steps": [{"canary": {"weight": 10, "duration": "1m"}, "shadow": {"percent": 5, "duration": "1m"}}]}}),
            rules::STEP_ONE_KIND,
        ),
        (
            json!({"rollout": {"analysis": {"checks": [{"builtin": "errorRate"}]}}}),
            rules::CHECK_THRESHOLD,
        ),
        (
            json!({"rollout": {"analysis": {"checks": [{"builtin": "errorRate", "prometheus": {"query": "up"}, "max": 1}]}}}),
            rules::CHECK_ONE_SOURCE,
        ),
        (
            json!({"traffic": {"gateway": {"parentRefs": []}}}),
            rules::GATEWAY_PARENTS,
        ),
    ]
}

fn merge(base: &mut Value, patch: &Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p.clone(),
    }
}

#[tokio::test]
async fn bad_specs_are_rejected_with_the_cel_rule_message() {
    let (client, ns) = shared_namespace("bad-specs").await;
    let mds = model_deployments(&client, ns.name());
    let (_, docs) = examples().into_iter().find(|(f, _)| f == "minimal.yaml").unwrap();
    let cases = bad_specs();
    assert!(cases.len() >= 10);
    for (i, (patch, rule)) in cases.into_iter().enumerate() {
        let mut doc = docs[0].clone();
        doc["metadata"]["name"] = json!(format!("bad-{i}"));
        doc["metadata"]["namespace"] = json!(ns.name());
        merge(&mut doc["spec"], &patch);
        let obj: DynamicObject = serde_json::from_value(doc).unwrap();
        match mds.create(&PostParams::default(), &obj).await {
            Ok(_) => panic!("case {i} ({patch}) was accepted; expected «{}»", rule.message),
            Err(kube::Error::Api(status)) => {
                assert_eq!(status.code, 422, "case {i}: {status:?}");
                assert!(
                    status.message.contains(rule.message),
                    "case {i}: expected «{}» in «{}»",
                    rule.message,
                    status.message
                );
            }
            Err(e) => panic!("case {i}: {e}"),
        }
    }
}

#[tokio::test]
async fn the_crd_is_served_with_its_printer_columns_and_scale_subresource() {
    let (client, _ns) = shared_namespace("crd").await;
    let crds: Api<
        k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
    > = Api::all(client);
    let served = crds.get(ModelDeployment::crd_name()).await.unwrap();
    let version = &served.spec.versions[0];
    let columns: Vec<_> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.to_uppercase())
        .collect();
    assert_eq!(columns, ["READY", "STABLE", "CANARY", "WEIGHT", "PHASE", "AGE"]);
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.scale.as_ref())
            .is_some()
    );
}

#[tokio::test]
async fn wait_for_reports_the_last_state_on_timeout() {
    let (client, ns) = shared_namespace("wait-for").await;
    let pods: Api<Pod> = Api::namespaced(client, ns.name());
    let pod: Pod =
        serde_json::from_value(json!({"metadata": {"name": "never"}, "spec": gpu_pod_spec(64)})).unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    let err = wait_for(
        &pods,
        "never",
        Duration::from_millis(500),
        "pod Running",
        |p: &Pod| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("timed out after 500ms waiting for pod Running of never"),
        "{err}"
    );
    assert!(
        err.contains("name: never") && err.contains("nvidia.com/gpu: '64'"),
        "last state as YAML: {err}"
    );
}
