//! `spec.traffic.inferencePool`: the operator writes an InferencePool the real API server accepts
//! against the Gateway API Inference Extension's own CRD (v1.0.0, the strictest v1, installed in
//! the shared cluster), and keeps it when the ModelDeployment changes.

mod common;

use std::time::Duration;

use common::*;
use kube::{Api, api::DynamicObject};
use modelfleet_operator_core::build::pool;
use modelfleet_testkit::wait::poll_until;
use serde_json::json;

#[tokio::test]
async fn a_model_deployment_with_an_inference_pool_gets_one_the_api_server_validates() {
    let (client, ns) = setup("pool").await;
    create(&client, &example("inference-pool.yaml", ns.name())).await;
    let pools: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns.name(), &pool::api_resource());
    let written = poll_until(Duration::from_secs(60), "the InferencePool", || async {
        match pools.get_opt("pooled").await {
            Ok(Some(p)) => Ok(Some(p)),
            Ok(None) => Err("not written yet".to_string()),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("the operator writes the InferencePool");
    assert_eq!(
        written.data["spec"],
        json!({
            "selector": {"matchLabels": {"modelfleet.dev/deployment": "pooled"}},
            "targetPorts": [{"number": 8080}],
            "endpointPickerRef": {"group": "", "kind": "Service", "name": "modelfleet-router", "port": {"number": 9002}, "failureMode": "FailClose"}
        })
    );
    let owner = &written.metadata.owner_references.as_ref().expect("owned")[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("ModelDeployment", "pooled")
    );
}
