//! `spec.traffic`: exact traffic weights through the Gateway API.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules;

/// Traffic management.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficSpec {
    /// Route through a Gateway API HTTPRoute `<name>` with exact canary weights. Empty: canary
    /// traffic is split by replica share through the Service `<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayTraffic>,
    /// Write an `InferencePool` `<name>` (inference.networking.k8s.io/v1) selecting this
    /// ModelDeployment's pods on the HTTP port, for a Gateway API Inference Extension gateway;
    /// its Endpoint Picker is the Service named here (modelfleet-router `--epp-addr`, or any
    /// Inference Extension picker). Needs the InferencePool CRD in the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inference_pool: Option<InferencePoolTraffic>,
}

/// The InferencePool the operator owns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferencePoolTraffic {
    /// The Endpoint Picker Service in this namespace (`modelfleet-router --epp-addr`: the
    /// chart's `modelfleet-router` Service, port 9002; or any Gateway API Inference Extension
    /// picker).
    pub endpoint_picker: EndpointPickerRef,
}

/// An Endpoint Picker Service.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointPickerRef {
    /// Service name, in the ModelDeployment's namespace.
    #[x_kube(validation = rules::ENDPOINT_PICKER_NAME)]
    #[schemars(length(max = 63))]
    pub name: String,
    /// Service port of the picker's ext_proc gRPC.
    #[serde(default = "default_picker_port")]
    #[x_kube(validation = rules::ENDPOINT_PICKER_PORT)]
    pub port: i32,
    /// What the gateway does when the picker is down.
    #[serde(default)]
    pub failure_mode: PickerFailureMode,
}

/// `endpointPickerRef.failureMode` of the InferencePool.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PickerFailureMode {
    /// Reject requests while the picker is down.
    #[default]
    FailClose,
    /// Forward requests to an endpoint of the gateway's choosing.
    FailOpen,
}

fn default_picker_port() -> i32 {
    9002
}

/// The HTTPRoute the operator owns.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTraffic {
    /// Gateways the route attaches to.
    #[x_kube(validation = rules::GATEWAY_PARENTS)]
    #[schemars(length(max = 8))]
    pub parent_refs: Vec<ParentRef>,
    /// Host names the route matches. Empty: every host the Gateway accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hostnames: Vec<String>,
}

/// A Gateway reference.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    /// Gateway name.
    pub name: String,
    /// Gateway namespace. Empty: the ModelDeployment's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Listener name on the Gateway. Empty: all listeners.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}
