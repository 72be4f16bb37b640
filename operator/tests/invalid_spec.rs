//! A spec that only Rust validation rejects (here: created through a CRD without CEL rules, as
//! with an older CRD) gives Degraded/InvalidSpec with the message: no children, no crash loop,
//! one Event.

use std::time::Duration;

use k8s_openapi::{
    api::{apps::v1::Deployment, core::v1::Event},
    apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
};
use kube::{
    Api, CustomResourceExt,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use modelfleet_crds::{ModelDeployment, constants::FIELD_MANAGER};
use modelfleet_operator::{OperatorConfig, controller, http::HttpState};
use modelfleet_testkit::{ClusterConfig, LocalCluster, wait::wait_for};
use serde_json::Value;

fn strip_cel(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.remove("x-kubernetes-validations");
            map.values_mut().for_each(strip_cel);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_cel),
        _ => {}
    }
}

#[tokio::test]
async fn an_invalid_spec_is_reported_not_retried() {
    let cluster = LocalCluster::start(ClusterConfig::default()).await.unwrap();
    let client = cluster.client().await.unwrap();
    install_crd_without_cel(&client).await;

    let http = HttpState::default();
    let operator = tokio::spawn(controller::run(
        client.clone(),
        OperatorConfig::default(),
        http.clone(),
        std::future::pending(),
    ));

    let spec = serde_yaml::from_str(
        "model: {name: m, version: '1', uri: 'hf://o/m'}\nscaling: {minReplicas: 5, maxReplicas: 2, targets: {queueDepthPerReplica: 8}}\n",
    )
    .unwrap();
    let mut md = ModelDeployment::new("broken", spec);
    md.metadata.namespace = Some("default".into());
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &md)
        .await
        .expect("the CEL-less CRD accepts it");

    let md = wait_for(
        &api,
        "broken",
        Duration::from_secs(60),
        "Degraded/InvalidSpec",
        |md: &ModelDeployment| {
            md.status.as_ref().is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Degraded" && c.reason == "InvalidSpec")
            })
        },
    )
    .await
    .unwrap();
    let status = md.status.unwrap();
    let degraded = status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert!(
        degraded
            .message
            .contains("spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas"),
        "{}",
        degraded.message
    );
    assert_eq!(status.phase, Some(modelfleet_crds::v1alpha1::Phase::Failed));
    assert_eq!(status.observed_generation, md.metadata.generation);

    assert_nothing_else_happens(&client, &http).await;
    assert!(!operator.is_finished(), "the operator keeps running");
    operator.abort();
    cluster.stop();
}

/// The CRD without its CEL rules, as an older CRD would accept what this one refuses.
async fn install_crd_without_cel(client: &kube::Client) {
    let mut crd = serde_json::to_value(ModelDeployment::crd()).expect("the API answers");
    strip_cel(&mut crd);
    let crd: CustomResourceDefinition = serde_json::from_value(crd).expect("the API answers");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        ModelDeployment::crd_name(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("the API answers");
    wait_for(
        &crds,
        ModelDeployment::crd_name(),
        Duration::from_secs(30),
        "Established",
        |c: &CustomResourceDefinition| {
            c.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Established" && c.status == "True"))
        },
    )
    .await
    .expect("the API answers");
}

/// No child, one Event, no retries: an invalid spec waits for a change.
async fn assert_nothing_else_happens(client: &kube::Client, http: &HttpState) {
    // Give a crash loop or retry storm time to show, then look.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deployments = Api::<Deployment>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("the API answers");
    assert!(deployments.items.is_empty(), "no children for an invalid spec");
    let events = Api::<Event>::namespaced(client.clone(), "default")
        .list(&ListParams::default())
        .await
        .expect("the API answers");
    let invalid: Vec<_> = events
        .items
        .iter()
        .filter(|e| e.reason.as_deref() == Some("InvalidSpec"))
        .collect();
    assert_eq!(invalid.len(), 1, "one InvalidSpec Event: {invalid:?}");
    let metrics = http.metrics.render();
    let reconciles: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("modelfleet_operator_reconciles_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        (1.0..=4.0).contains(&reconciles),
        "an invalid spec waits for a change, not retries: {reconciles} reconciles\n{metrics}"
    );
}
