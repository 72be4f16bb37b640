//! What the rollout tests share: a loopback `/metrics` endpoint whose values the tests set per
//! revision, a Prometheus scraping it, a rolling ModelDeployment, and views of its status, route
//! and routing ConfigMap.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::common::*;
use k8s_openapi::api::{core::v1::ConfigMap, events::v1::Event};
use kube::{
    Api, Client,
    api::{DynamicObject, ListParams, Patch, PatchParams},
};
use modelfleet_crds::{ModelDeployment, revision::revision_hash, v1alpha1::RolloutResultStatus};
use modelfleet_operator::config::DEFAULT_SERVER_IMAGE;
use modelfleet_operator_core::build::route;
use modelfleet_testkit::prometheus::{Prometheus, Target};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub(crate) const SCRAPE: Duration = Duration::from_millis(500);

/// A loopback `/metrics` serving `modelfleet_test_error_ratio{revision="…"}` from a map the test
/// changes.
#[derive(Clone, Default)]
pub(crate) struct Endpoint {
    values: Arc<Mutex<BTreeMap<String, f64>>>,
}

impl Endpoint {
    pub(crate) async fn start() -> (Self, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let endpoint = Self::default();
        let values = endpoint.values.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let values = values.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = socket.read(&mut buf).await;
                    let body: String = values
                        .lock()
                        .expect("values")
                        .iter()
                        .map(|(r, v)| format!("modelfleet_test_error_ratio{{revision=\"{r}\"}} {v}\n"))
                        .collect();
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = socket.write_all(reply.as_bytes()).await;
                });
            }
        });
        (endpoint, address)
    }

    pub(crate) fn set(&self, revision: &str, value: f64) {
        self.values.lock().expect("values").insert(revision.into(), value);
    }
}

pub(crate) async fn prometheus_scraping(address: &str) -> (Prometheus, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let prometheus = Prometheus::start(dir.path(), SCRAPE)
        .await
        .expect("Prometheus starts");
    prometheus
        .set_targets(&[Target {
            address: address.into(),
            labels: BTreeMap::new(),
        }])
        .expect("targets");
    (prometheus, dir)
}

/// A ModelDeployment whose rollout has `steps` and one Prometheus check on the error ratio.
pub(crate) fn rolling(name: &str, namespace: &str, prometheus: &str, steps: &str) -> ModelDeployment {
    model_deployment(
        name,
        namespace,
        &format!(
            r#"
model: {{name: all-MiniLM-L6-v2, version: "1", uri: "hf://sentence-transformers/all-MiniLM-L6-v2"}}
resources: {{gpus: 1}}
replicas: 4
rollout:
  steps: {steps}
  analysis:
    interval: 2s
    failureLimit: 2
    checks:
      - name: errorRatio
        prometheus:
          query: 'max(modelfleet_test_error_ratio{{revision="{{{{revision}}}}"}})'
          address: {prometheus}
        max: 0.01
  scaleDownDelay: 2s
traffic:
  gateway:
    parentRefs: [{{name: inference, namespace: gateway}}]
    hostnames: [minilm.example.com]
"#
        ),
    )
}

/// A ModelDeployment at version "1", Available, whose rollout has `steps` and one Prometheus
/// check on the error ratio; with the loopback endpoint (version 1 healthy) and the Prometheus
/// scraping it.
pub(crate) struct Rolling {
    pub(crate) client: Client,
    pub(crate) ns: String,
    pub(crate) endpoint: Endpoint,
    pub(crate) prometheus: Prometheus,
    pub(crate) md: ModelDeployment,
    pub(crate) _namespace: modelfleet_testkit::testing::TestNamespace,
    pub(crate) _dir: tempfile::TempDir,
}

impl Rolling {
    pub(crate) async fn available(prefix: &str, name: &str, steps: &str) -> Self {
        let (client, namespace) = setup(prefix).await;
        let ns = namespace.name().to_string();
        let (endpoint, address) = Endpoint::start().await;
        let (prometheus, dir) = prometheus_scraping(&address).await;
        let md = rolling(name, &ns, &prometheus.url(), steps);
        endpoint.set(&revision_hash(&md.spec, DEFAULT_SERVER_IMAGE), 0.0);
        create(&client, &md).await;
        wait_condition(
            &client,
            &ns,
            name,
            "Available",
            "True",
            None,
            Duration::from_secs(60),
        )
        .await;
        Self {
            client,
            ns,
            endpoint,
            prometheus,
            md,
            _namespace: namespace,
            _dir: dir,
        }
    }
}

/// Waits until the control annotation `key` is gone: the operator consumed it.
pub(crate) async fn wait_consumed(api: &Api<ModelDeployment>, name: &str, key: &str) {
    modelfleet_testkit::wait::poll_until(Duration::from_secs(10), &format!("{key} consumed"), || async {
        let md = api.get(name).await.map_err(|e| e.to_string())?;
        if md.metadata.annotations.unwrap_or_default().contains_key(key) {
            Err("still set".to_string())
        } else {
            Ok(Some(()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// Sets `spec.model.version` and returns the new revision hash.
pub(crate) async fn set_version(client: &Client, md: &ModelDeployment, version: &str) -> String {
    let ns = md.metadata.namespace.as_deref().expect("ns");
    let name = md.metadata.name.as_deref().expect("name");
    let patch = serde_json::json!({"spec": {"model": {"version": version}}});
    let updated = Api::<ModelDeployment>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch version");
    revision_hash(&updated.spec, DEFAULT_SERVER_IMAGE)
}

/// Gives the revision that version `version` of `md` will be its error ratio in the endpoint,
/// and waits until Prometheus has scraped it, so the candidate's first analysis finds data (a
/// check without data is inconclusive and holds the step while its clock runs).
pub(crate) async fn seed_candidate(
    endpoint: &Endpoint,
    prometheus: &Prometheus,
    md: &ModelDeployment,
    version: &str,
    ratio: f64,
) {
    let mut spec = md.spec.clone();
    spec.model.version = version.into();
    let candidate = revision_hash(&spec, DEFAULT_SERVER_IMAGE);
    endpoint.set(&candidate, ratio);
    modelfleet_testkit::wait::poll_until(Duration::from_secs(30), "Prometheus has the value", || async {
        let result = prometheus
            .query(&format!(
                "modelfleet_test_error_ratio{{revision=\"{candidate}\"}}"
            ))
            .await
            .map_err(|e| e.to_string())?;
        if result.as_array().is_some_and(|a| !a.is_empty()) {
            Ok(Some(()))
        } else {
            Err("no sample".into())
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

/// What a kubectl user and the gateway see at one moment.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) step: Option<i32>,
    pub(crate) running: bool,
    pub(crate) route_canary_weight: i32,
    pub(crate) stable_mirror_percent: i64,
    pub(crate) last_rollout: Option<RolloutResultStatus>,
    pub(crate) stable_version: String,
}

pub(crate) async fn snapshot(client: &Client, ns: &str, name: &str) -> (ModelDeployment, Snapshot) {
    let md = Api::<ModelDeployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("get");
    let routes: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &route::api_resource());
    let route = routes.get_opt(name).await.expect("get HTTPRoute");
    let route_canary_weight = route
        .and_then(|r| {
            r.data["spec"]["rules"][0]["backendRefs"]
                .as_array()?
                .iter()
                .find(|b| b["name"] == format!("{name}-canary"))?["weight"]
                .as_i64()
        })
        .unwrap_or(-1) as i32;
    let status = md.status.clone().unwrap_or_default();
    let stable = status.stable.clone().unwrap_or_default();
    let routing = Api::<ConfigMap>::namespaced(client.clone(), ns)
        .get_opt(&format!("{name}-routing"))
        .await
        .expect("get routing ConfigMap");
    let stable_mirror_percent = routing
        .and_then(|cm| cm.data?.get(&format!("{}.json", stable.revision)).cloned())
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|v| v["mirror"]["percent"].as_i64())
        .unwrap_or(0);
    let snap = Snapshot {
        step: status.candidate.as_ref().map(|c| c.step),
        running: status
            .candidate
            .as_ref()
            .is_some_and(|c| c.step_remaining_seconds.is_some()),
        route_canary_weight,
        stable_mirror_percent,
        last_rollout: status.last_rollout.clone(),
        stable_version: stable.version,
    };
    (md, snap)
}

/// Waits until the HTTPRoute's canary weight is `weight` (it is written concurrently with the
/// status, so a status can show a rollback a moment before the route does).
pub(crate) async fn wait_route_weight(client: &Client, ns: &str, name: &str, weight: i32) {
    modelfleet_testkit::wait::poll_until(Duration::from_secs(5), "route weight", || async {
        let (_, snap) = snapshot(client, ns, name).await;
        if snap.route_canary_weight == weight {
            Ok(Some(()))
        } else {
            Err(format!("{snap:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
}

pub(crate) async fn events(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .expect("events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .collect()
}

pub(crate) fn condition_type_absent_or_false(
    conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
    type_: &str,
) -> bool {
    conditions.iter().all(|c| c.type_ != type_ || c.status == "False")
}
