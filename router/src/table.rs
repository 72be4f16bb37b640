//! The routing table: every ModelDeployment the router serves, its revisions and their Ready
//! endpoints, built by one pure function from what discovery watches (or a static file).
//! Requests read one `Arc<Table>`; discovery swaps in a new one on each watch event.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::Arc,
};

use modelfleet_crds::v1alpha1::{ModelTask, RoutingSpec};

use crate::load::{EndpointLoad, LoadBoard};

/// `idlePeriod` of a model without `spec.scaling` (the API's default).
pub const DEFAULT_IDLE_PERIOD: std::time::Duration = std::time::Duration::from_secs(900);

/// One Ready serving pod.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Pod name.
    pub pod: String,
    /// Its load (shared with every table that holds it).
    pub load: Arc<EndpointLoad>,
}

/// One revision and its Ready endpoints.
#[derive(Debug, Clone, Default)]
pub struct Revision {
    /// Revision hash (the pods' `modelfleet.dev/revision`).
    pub name: String,
    /// Model version it serves.
    pub version: String,
    /// Its Ready endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// A model the router serves.
#[derive(Debug, Clone)]
pub struct ModelEntry {
    /// The ModelDeployment's namespace.
    pub namespace: String,
    /// The ModelDeployment's name.
    pub deployment: String,
    /// `spec.model.name`.
    pub served: String,
    /// `spec.model.aliases`.
    pub aliases: Vec<String>,
    /// `spec.model.task`.
    pub task: ModelTask,
    /// The stable revision.
    pub stable: Revision,
    /// The candidate and its traffic weight in percent (0 during a shadow step).
    pub candidate: Option<(Revision, u32)>,
    /// `spec.batching.tiers` names, highest first (empty: the server's default tier only).
    pub tiers: Vec<String>,
    /// `spec.routing` (defaults when absent).
    pub routing: RoutingSpec,
    /// `spec.scaling.minReplicas` is 0: an empty model is held for, not failed.
    pub scales_from_zero: bool,
    /// `spec.scaling.idlePeriod` (how often the router reports the model in use).
    pub idle_period: std::time::Duration,
    /// Replicas the operator runs now (`status.replicas`).
    pub replicas: i32,
    /// `metadata.creationTimestamp` in seconds: the older of two claimants keeps a name.
    pub created: i64,
}

impl ModelEntry {
    /// `namespace/name`: the ModelDeployment's key in metrics and reports.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.deployment)
    }

    /// The Ready endpoints of every revision.
    pub fn all_endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        self.stable
            .endpoints
            .iter()
            .chain(self.candidate.iter().flat_map(|(r, _)| r.endpoints.iter()))
    }

    /// The lowest tier (anonymous callers' tier), if the model has tiers.
    pub fn lowest_tier(&self) -> Option<&str> {
        self.tiers.last().map(String::as_str)
    }

    /// The tier a caller entitled to `tier` gets here: that tier when the model has it, else the
    /// lowest.
    pub fn tier_for<'a>(&'a self, tier: Option<&'a str>) -> Option<&'a str> {
        match tier {
            Some(t) if self.tiers.iter().any(|x| x == t) => Some(t),
            _ => self.lowest_tier(),
        }
    }
}

/// Every model, and the index from `model` values to them.
#[derive(Debug, Default)]
pub struct Table {
    models: Vec<ModelEntry>,
    by_name: HashMap<String, usize>,
}

impl Table {
    /// A table of `models`. Each served name and alias selects one model: the oldest claimant
    /// (then the smallest key) wins; `namespace/name` always selects its own.
    pub fn new(mut models: Vec<ModelEntry>) -> Self {
        models.sort_by_key(|m| (m.created, m.key()));
        let mut by_name = HashMap::new();
        for (i, m) in models.iter().enumerate() {
            by_name.insert(m.key(), i);
            for name in std::iter::once(&m.served).chain(&m.aliases) {
                by_name.entry(name.clone()).or_insert(i);
            }
        }
        Self { models, by_name }
    }

    /// The model a request's `model` field selects.
    pub fn resolve(&self, model: &str) -> Option<&ModelEntry> {
        self.by_name.get(model).map(|&i| &self.models[i])
    }

    /// Every model, oldest first.
    pub fn models(&self) -> &[ModelEntry] {
        &self.models
    }

    /// Every endpoint address in the table.
    pub fn addresses(&self) -> HashSet<SocketAddr> {
        self.models
            .iter()
            .flat_map(|m| m.all_endpoints().map(|e| e.load.addr))
            .collect()
    }

    /// The model with `key` (`namespace/name`).
    pub fn by_key(&self, key: &str) -> Option<&ModelEntry> {
        self.by_name
            .get(key)
            .map(|&i| &self.models[i])
            .filter(|m| m.key() == key)
    }
}

/// An endpoint as discovery found it, before it is joined to the load board.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundEndpoint {
    /// Pod name.
    pub pod: String,
    /// `podIP:port`.
    pub addr: SocketAddr,
    /// The pod's revision.
    pub revision: String,
}

/// Joins found endpoints to `board` (same address: same load entry).
pub fn endpoints_of(board: &LoadBoard, found: &[FoundEndpoint], revision: &str) -> Vec<Endpoint> {
    found
        .iter()
        .filter(|f| f.revision == revision)
        .map(|f| Endpoint {
            pod: f.pod.clone(),
            load: board.entry(f.addr),
        })
        .collect()
}

/// Fixtures for the other modules' tests.
#[cfg(test)]
pub mod tests_support {
    use super::*;

    /// A model `emb` with stable `r1` (2 endpoints) and candidate `r2` (1 endpoint) at `weight`.
    pub fn model_with_candidate(board: &LoadBoard, weight: u32) -> ModelEntry {
        let endpoint = |i: u8| Endpoint {
            pod: format!("p{i}"),
            load: board.entry(SocketAddr::from(([10, 0, 1, i], 8080))),
        };
        ModelEntry {
            namespace: "ns".into(),
            deployment: "emb".into(),
            served: "emb".into(),
            aliases: vec![],
            task: ModelTask::Embedding,
            stable: Revision {
                name: "r1".into(),
                version: "1".into(),
                endpoints: vec![endpoint(1), endpoint(2)],
            },
            candidate: Some((
                Revision {
                    name: "r2".into(),
                    version: "2".into(),
                    endpoints: vec![endpoint(3)],
                },
                weight,
            )),
            tiers: vec!["paid".into(), "free".into()],
            routing: RoutingSpec::default(),
            scales_from_zero: false,
            idle_period: DEFAULT_IDLE_PERIOD,
            replicas: 3,
            created: 0,
        }
    }
}
