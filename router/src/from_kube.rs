//! The table from the watched ModelDeployments and their pods: pure, tested from fixtures.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use modelfleet_contract::ports;
use modelfleet_crds::{ModelDeployment, constants::labels};

use crate::{
    load::LoadBoard,
    table::{FoundEndpoint, ModelEntry, Revision, Table, endpoints_of},
};

/// The Ready endpoints of `pods`, by `namespace/deployment`: Ready condition true, a pod IP, not
/// terminating.
pub fn ready_endpoints(pods: &[Arc<Pod>]) -> HashMap<String, Vec<FoundEndpoint>> {
    let mut out: HashMap<String, Vec<FoundEndpoint>> = HashMap::new();
    for pod in pods {
        let Some(found) = ready_endpoint(pod) else {
            continue;
        };
        let deployment = pod.labels().get(labels::DEPLOYMENT).cloned().unwrap_or_default();
        let key = format!("{}/{deployment}", pod.namespace().unwrap_or_default());
        out.entry(key).or_default().push(found);
    }
    for list in out.values_mut() {
        list.sort_by(|a, b| a.pod.cmp(&b.pod));
    }
    out
}

fn ready_endpoint(pod: &Pod) -> Option<FoundEndpoint> {
    if pod.metadata.deletion_timestamp.is_some() {
        return None;
    }
    let status = pod.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let ip: std::net::IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let revision = pod.labels().get(labels::REVISION)?.clone();
    pod.labels().get(labels::DEPLOYMENT)?;
    ready.then(|| FoundEndpoint {
        pod: pod.name_any(),
        addr: SocketAddr::new(ip, ports::HTTP),
        revision,
    })
}

/// The table: one entry per ModelDeployment that has a stable revision in its status.
pub fn build(mds: &[Arc<ModelDeployment>], pods: &[Arc<Pod>], board: &LoadBoard) -> Table {
    let endpoints = ready_endpoints(pods);
    let none = Vec::new();
    let models = mds
        .iter()
        .filter_map(|md| {
            let key = format!("{}/{}", md.namespace().unwrap_or_default(), md.name_any());
            entry(md, endpoints.get(&key).unwrap_or(&none), board)
        })
        .collect();
    let table = Table::new(models);
    board.retain(&table.addresses());
    table
}

fn entry(md: &ModelDeployment, found: &[FoundEndpoint], board: &LoadBoard) -> Option<ModelEntry> {
    let status = md.status.as_ref()?;
    let stable = status.stable.as_ref()?;
    let revision = |name: &str, version: &str| Revision {
        name: name.to_owned(),
        version: version.to_owned(),
        endpoints: endpoints_of(board, found, name),
    };
    let candidate = status
        .candidate
        .as_ref()
        .filter(|c| c.revision != stable.revision)
        .map(|c| {
            let weight = u32::try_from(c.traffic_weight.clamp(0, 100)).unwrap_or(0);
            (revision(&c.revision, &c.version), weight)
        });
    let spec = &md.spec;
    Some(ModelEntry {
        namespace: md.namespace().unwrap_or_default(),
        deployment: md.name_any(),
        served: spec.model.name.clone(),
        aliases: spec.model.aliases.clone(),
        task: spec.model.task,
        stable: revision(&stable.revision, &stable.version),
        candidate,
        tiers: spec.batching.tiers.iter().map(|t| t.name.clone()).collect(),
        routing: spec.routing.clone().unwrap_or_default(),
        scales_from_zero: spec.scaling.as_ref().is_some_and(|s| s.min_replicas == 0),
        idle_period: spec
            .scaling
            .as_ref()
            .map_or(crate::table::DEFAULT_IDLE_PERIOD, |s| s.idle_period.into()),
        replicas: status.replicas,
        created: md
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(i64::MAX, |t| t.0.as_second()),
    })
}

#[cfg(test)]
mod tests;
