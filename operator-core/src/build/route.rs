//! The HTTPRoute `<name>` of `spec.traffic.gateway`: weighted backendRefs to `<name>-stable` and
//! `<name>-canary`.
//!
//! Our own typed subset of Gateway API `gateway.networking.k8s.io/v1` HTTPRoute, not the
//! `gateway-api` crate: its latest release (0.22) still builds on kube 4.2 / k8s-openapi 0.28 and
//! cannot share a dependency tree with our kube 5. The subset holds only the fields the operator
//! writes (parentRefs, hostnames, one rule with two weighted backendRefs); server-side apply
//! leaves every other field to other managers. It is applied as a dynamic object.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube_core::{ApiResource, ResourceExt};
use modelfleet_crds::ModelDeployment;
use serde::Serialize;

use super::{HTTP_PORT, common_labels, meta};
use crate::plan::RevisionPlan;

/// Gateway API group.
pub const GROUP: &str = "gateway.networking.k8s.io";

/// The API resource of HTTPRoute v1, for a dynamic `Api`.
pub fn api_resource() -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: "v1".into(),
        api_version: format!("{GROUP}/v1"),
        kind: "HTTPRoute".into(),
        plural: "httproutes".into(),
    }
}

/// An HTTPRoute as the operator writes it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRoute {
    /// `gateway.networking.k8s.io/v1`.
    pub api_version: String,
    /// `HTTPRoute`.
    pub kind: String,
    /// Name, namespace, labels, owner.
    pub metadata: ObjectMeta,
    /// The route.
    pub spec: HttpRouteSpec,
}

/// `spec` of an HTTPRoute.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    /// Gateways it attaches to.
    pub parent_refs: Vec<ParentReference>,
    /// Host names it matches.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    /// One rule: every request, split by weight.
    pub rules: Vec<RouteRule>,
}

/// A Gateway reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentReference {
    /// `gateway.networking.k8s.io`.
    pub group: String,
    /// `Gateway`.
    pub kind: String,
    /// Gateway name.
    pub name: String,
    /// Gateway namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Listener.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// A routing rule.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    /// Weighted Services.
    pub backend_refs: Vec<BackendRef>,
}

/// A weighted Service.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Core group (empty).
    pub group: String,
    /// `Service`.
    pub kind: String,
    /// Service name.
    pub name: String,
    /// Service port.
    pub port: i32,
    /// Relative weight (the two add up to 100).
    pub weight: i32,
}

/// The HTTPRoute for `spec.traffic.gateway`, with the plan's weight on `<name>-canary`.
pub fn http_route(md: &ModelDeployment, plan: &RevisionPlan) -> Option<HttpRoute> {
    let gateway = md.spec.traffic.as_ref()?.gateway.as_ref()?;
    let name = md.name_any();
    let canary = if plan.candidate.is_some() {
        plan.traffic.weight.clamp(0, 100)
    } else {
        0
    };
    let backend = |service: String, weight: i32| BackendRef {
        group: String::new(),
        kind: "Service".into(),
        name: service,
        port: HTTP_PORT,
        weight,
    };
    Some(HttpRoute {
        api_version: format!("{GROUP}/v1"),
        kind: "HTTPRoute".into(),
        metadata: meta(md, &name, common_labels(&name, "traffic")),
        spec: HttpRouteSpec {
            parent_refs: gateway
                .parent_refs
                .iter()
                .map(|p| ParentReference {
                    group: GROUP.into(),
                    kind: "Gateway".into(),
                    name: p.name.clone(),
                    namespace: p.namespace.clone(),
                    section_name: p.section_name.clone(),
                })
                .collect(),
            hostnames: gateway.hostnames.clone(),
            rules: vec![RouteRule {
                backend_refs: vec![
                    backend(format!("{name}-stable"), 100 - canary),
                    backend(format!("{name}-canary"), canary),
                ],
            }],
        },
    })
}
