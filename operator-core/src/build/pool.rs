//! The InferencePool `<name>` of `spec.traffic.inferencePool`: the ModelDeployment's serving pods
//! as a Gateway API Inference Extension pool, with the Endpoint Picker the user names
//! (`modelfleet-router --epp-addr`, or GAIE's own picker: our pods export the model-server
//! protocol gauges either reads).
//!
//! Our own typed subset of `inference.networking.k8s.io/v1` InferencePool (the fields of v1.0.0,
//! the strictest v1: one target port, `endpointPickerRef` required), applied as a dynamic object
//! like the HTTPRoute. The selector takes every pod of the ModelDeployment: a pool selects by
//! matchLabels only, so during a shadow step a standard picker may send live traffic to the shadow
//! revision's pods; modelfleet-router's picker follows `status` and does not.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::{ApiResource, ResourceExt};
use modelfleet_crds::{ModelDeployment, constants::labels, v1alpha1::PickerFailureMode};
use serde::Serialize;

use super::{HTTP_PORT, common_labels, meta};

/// Gateway API Inference Extension group.
pub const GROUP: &str = "inference.networking.k8s.io";

/// The API resource of InferencePool v1, for a dynamic `Api`.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: "InferencePool".into(),
        plural: "inferencepools".into(),
    }
}

/// An InferencePool as the operator writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InferencePool {
    /// `inference.networking.k8s.io/v1`.
    pub api_version: String,
    /// `InferencePool`.
    pub kind: String,
    /// Name, namespace, labels, owner.
    pub metadata: ObjectMeta,
    /// The pool.
    pub spec: InferencePoolSpec,
}

/// `spec` of an InferencePool.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolSpec {
    /// The ModelDeployment's pods.
    pub selector: LabelSelector,
    /// The servers' HTTP port.
    pub target_ports: Vec<Port>,
    /// The picker Service.
    pub endpoint_picker_ref: EndpointPickerRef,
}

/// `matchLabels` only, as the pool allows.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels every selected pod carries.
    pub match_labels: BTreeMap<String, String>,
}

/// A port number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Port {
    /// 1 to 65535.
    pub number: i32,
}

/// The Endpoint Picker Service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPickerRef {
    /// Core group (empty).
    pub group: String,
    /// `Service`.
    pub kind: String,
    /// Service name, in the pool's namespace.
    pub name: String,
    /// Its ext_proc Service port.
    pub port: Port,
    /// `FailClose` or `FailOpen`.
    pub failure_mode: &'static str,
}

/// The InferencePool for `spec.traffic.inferencePool`.
pub fn inference_pool(md: &ModelDeployment) -> Option<InferencePool> {
    let pool = md.spec.traffic.as_ref()?.inference_pool.as_ref()?;
    let name = md.name_any();
    let picker = &pool.endpoint_picker;
    Some(InferencePool {
        api_version: format!("{GROUP}/v1"),
        kind: "InferencePool".into(),
        metadata: meta(md, &name, common_labels(&name, "inference-pool")),
        spec: InferencePoolSpec {
            selector: LabelSelector {
                match_labels: BTreeMap::from([(labels::DEPLOYMENT.to_string(), name.clone())]),
            },
            target_ports: vec![Port { number: HTTP_PORT }],
            endpoint_picker_ref: EndpointPickerRef {
                group: String::new(),
                kind: "Service".into(),
                name: picker.name.clone(),
                port: Port { number: picker.port },
                failure_mode: match picker.failure_mode {
                    PickerFailureMode::FailClose => "FailClose",
                    PickerFailureMode::FailOpen => "FailOpen",
                },
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use modelfleet_crds::v1alpha1::{EndpointPickerRef as Ref, InferencePoolTraffic, TrafficSpec};

    use super::*;

    #[test]
    fn the_pool_selects_the_models_pods_on_the_http_port_and_names_the_picker() {
        let mut md: ModelDeployment = serde_yaml::from_str(
            "apiVersion: modelfleet.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: emb, namespace: team, uid: u1}\nspec:\n  model: {name: emb, version: '1', uri: 'hf://o/m'}\n",
        )
        .expect("yaml");
        assert!(
            inference_pool(&md).is_none(),
            "only with spec.traffic.inferencePool"
        );
        md.spec.traffic = Some(TrafficSpec {
            gateway: None,
            inference_pool: Some(InferencePoolTraffic {
                endpoint_picker: Ref {
                    name: "modelfleet-router".into(),
                    port: 9002,
                    failure_mode: PickerFailureMode::FailOpen,
                },
            }),
        });
        let pool = serde_json::to_value(inference_pool(&md).expect("a pool")).expect("json");
        assert_eq!(pool["metadata"]["name"], "emb");
        assert_eq!(pool["metadata"]["namespace"], "team");
        assert_eq!(pool["metadata"]["ownerReferences"][0]["uid"], "u1");
        assert_eq!(
            pool["spec"],
            serde_json::json!({
                "selector": {"matchLabels": {"modelfleet.dev/deployment": "emb"}},
                "targetPorts": [{"number": 8080}],
                "endpointPickerRef": {"group": "", "kind": "Service", "name": "modelfleet-router", "port": {"number": 9002}, "failureMode": "FailOpen"}
            })
        );
    }
}
