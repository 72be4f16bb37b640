//! `--static-config`: a fixed table from a file instead of Kubernetes (benchmarks, tests, a
//! router in front of servers outside a cluster). Static endpoints are not scraped: picking uses
//! the router's own requests in flight and the servers' `x-modelfleet-load` answers.
//!
//! ```yaml
//! models:
//!   - name: minilm            # the `model` clients send
//!     aliases: [embed]
//!     namespace: default      # default: default
//!     task: embedding         # default: embedding
//!     tiers: [paid, free]     # highest first; default: none
//!     endpoints: ["127.0.0.1:8080", "127.0.0.1:8081"]
//!     candidate:              # optional: a second revision and its traffic weight
//!       {version: v2, weight: 20, endpoints: ["127.0.0.1:8082"]}
//!     routing:                # optional: spec.routing of a ModelDeployment
//!       fallback: {model: small, queueDepthAbove: 4}
//! keys:                       # optional; the fields of a key Secret (docs/router.md)
//!   - {key: sk-0123456789abcdef, tenant: acme, tier: paid}
//! ```

use std::{collections::BTreeMap, net::SocketAddr, path::Path};

use modelfleet_crds::v1alpha1::{ModelTask, RoutingSpec};
use serde::Deserialize;

use crate::{
    keys::KeyStore,
    load::LoadBoard,
    table::{Endpoint, ModelEntry, Revision, Table},
};

/// The file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// The models.
    pub models: Vec<StaticModel>,
    /// API keys, each with the data fields of a key Secret.
    #[serde(default)]
    pub keys: Vec<BTreeMap<String, String>>,
}

/// One model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StaticModel {
    /// Served name.
    pub name: String,
    /// Other names.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Namespace shown in `/v1/models` and metrics.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Task.
    #[serde(default)]
    pub task: ModelTask,
    /// Tiers, highest first.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// `host:port` of each server.
    pub endpoints: Vec<SocketAddr>,
    /// A candidate revision beside the stable one.
    #[serde(default)]
    pub candidate: Option<StaticCandidate>,
    /// What `spec.routing` of a ModelDeployment says.
    #[serde(default)]
    pub routing: RoutingSpec,
}

/// A candidate revision of a static model.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticCandidate {
    /// Its model version (also its revision name).
    pub version: String,
    /// Percent of requests it gets, 0..=100.
    pub weight: u32,
    /// `host:port` of each of its servers.
    pub endpoints: Vec<SocketAddr>,
}

fn default_namespace() -> String {
    "default".into()
}

/// Reads and checks `path`; the error names the file and what is wrong.
pub fn load(path: &Path) -> Result<StaticConfig, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let config: StaticConfig = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (i, m) in config.models.iter().enumerate() {
        if m.name.is_empty() {
            return Err(format!("{}: models[{i}].name must not be empty", path.display()));
        }
        if m.endpoints.is_empty() {
            return Err(format!(
                "{}: models[{i}].endpoints needs at least one host:port",
                path.display()
            ));
        }
        if let Some(c) = &m.candidate
            && (c.weight > 100 || c.endpoints.is_empty())
        {
            return Err(format!(
                "{}: models[{i}].candidate needs a weight of 0 to 100 (is {}) and at least one endpoint",
                path.display(),
                c.weight
            ));
        }
    }
    let (_, errors) = key_store(&config);
    if let Some(e) = errors.first() {
        return Err(format!("{}: {e}", path.display()));
    }
    Ok(config)
}

/// The keys of `config` (entry `i` is named `keys[i]` in errors).
pub fn key_store(config: &StaticConfig) -> (KeyStore, Vec<crate::keys::KeyError>) {
    let data: Vec<(String, BTreeMap<String, Vec<u8>>)> = config
        .keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let fields = k
                .iter()
                .map(|(f, v)| (f.clone(), v.clone().into_bytes()))
                .collect();
            (format!("keys[{i}]"), fields)
        })
        .collect();
    KeyStore::from_secrets(data.iter().map(|(n, d)| (n.clone(), d)))
}

/// The table of `config`, with endpoints' load on `board`.
pub fn table(config: &StaticConfig, board: &LoadBoard) -> Table {
    let models = config
        .models
        .iter()
        .enumerate()
        .map(|(i, m)| ModelEntry {
            namespace: m.namespace.clone(),
            deployment: m.name.clone(),
            served: m.name.clone(),
            aliases: m.aliases.clone(),
            task: m.task,
            stable: revision("static", &m.endpoints, board),
            candidate: m
                .candidate
                .as_ref()
                .map(|c| (revision(&c.version, &c.endpoints, board), c.weight)),
            tiers: m.tiers.clone(),
            routing: m.routing.clone(),
            scales_from_zero: false,
            idle_period: crate::table::DEFAULT_IDLE_PERIOD,
            replicas: i32::try_from(m.endpoints.len()).unwrap_or(i32::MAX),
            created: i64::try_from(i).unwrap_or(i64::MAX),
        })
        .collect();
    Table::new(models)
}

fn revision(name: &str, endpoints: &[SocketAddr], board: &LoadBoard) -> Revision {
    Revision {
        name: name.into(),
        version: name.into(),
        endpoints: endpoints
            .iter()
            .map(|addr| Endpoint {
                pod: addr.to_string(),
                load: board.entry(*addr),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_becomes_a_table_and_mistakes_name_the_field() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good.yaml");
        std::fs::write(
            &good,
            "models:\n  - name: m\n    aliases: [a]\n    endpoints: ['127.0.0.1:1']\n",
        )
        .expect("write");
        let t = table(&load(&good).expect("valid"), &LoadBoard::default());
        assert_eq!(t.resolve("a").map(|m| m.key()), Some("default/m".into()));
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "models:\n  - name: m\n    endpoints: []\n").expect("write");
        let err = load(&bad).unwrap_err();
        assert!(err.contains("models[0].endpoints"), "{err}");
        std::fs::write(&bad, "models: []\nkeys:\n  - {key: short}\n").expect("write");
        let err = load(&bad).unwrap_err();
        assert!(err.contains("keys[0]: key: must be at least 16"), "{err}");
    }
}
