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
