//! Discovery against a real API server (the shared local cluster; kwok runs the pods, so their IPs
//! are never dialled): the table follows ModelDeployment status and pod readiness, and a rollback
//! (the candidate gone from status) takes the canary's traffic to 0 % within one second.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use modelfleet_crds::ModelDeployment;
use modelfleet_router::{
    discovery::{self, DiscoveryConfig},
    keys::KeyStore,
    load::LoadBoard,
    pick,
    table::Table,
};
use modelfleet_testkit::testing::shared_namespace;
use serde_json::json;
use tokio::sync::watch;

fn pod(name: &str, revision: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"modelfleet.dev/deployment": "emb", "modelfleet.dev/revision": revision}},
        "spec": {"containers": [{"name": "server", "image": "ghcr.io/modelfleet/server:test"}]}
    }))
    .expect("a pod")
}

/// The share of 1,000 consecutive requests the table sends to the candidate.
fn candidate_share(table: &Table) -> f64 {
    let Some(model) = table.models().first() else {
        return -1.0;
    };
    let to_candidate = (0..1000)
        .filter(|n| {
            let chosen = pick::revision(model, *n, |r| !r.endpoints.is_empty());
            model
                .candidate
                .as_ref()
                .is_some_and(|(c, _)| c.name == chosen.name)
        })
        .count();
    to_candidate as f64 / 1000.0
}

async fn wait_table(rx: &mut watch::Receiver<Arc<Table>>, what: &str, check: impl Fn(&Table) -> bool) {
    let until = Instant::now() + Duration::from_secs(60);
    while !check(&rx.borrow_and_update()) {
        assert!(Instant::now() < until, "{what}: not within 60 s");
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_canary_weight_follows_status_and_a_rollback_takes_it_to_zero_within_a_second() {
    let (client, ns) = shared_namespace("router-discovery").await;
    let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    let md: ModelDeployment = serde_yaml::from_str(
        "apiVersion: modelfleet.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {name: emb}\nspec:\n  model: {name: emb, version: '2', uri: 'hf://o/m', task: embedding}\n  runtime: {device: cpu}\n  resources: {gpus: 0}\n",
    )
    .expect("yaml");
    mds.create(&PostParams::default(), &md).await.expect("create");
    // This test plays the operator: it writes the status the router follows.
    let status = |candidate: serde_json::Value| {
        json!({"status": {
            "stable": {"revision": "r1", "version": "1", "replicas": 1, "readyReplicas": 1},
            "candidate": candidate,
        }})
    };
    let canary = json!({"revision": "r2", "version": "2", "step": 1, "trafficWeight": 20, "mirrorPercent": 0, "replicas": 1, "readyReplicas": 1});
    mds.patch_status("emb", &PatchParams::default(), &Patch::Merge(status(canary)))
        .await
        .expect("status");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    for (name, revision) in [("emb-r1", "r1"), ("emb-r2", "r2")] {
        pods.create(&PostParams::default(), &pod(name, revision))
            .await
            .expect("pod");
    }

    let (table_tx, mut table_rx) = watch::channel(Arc::new(Table::default()));
    let (keys_tx, _keys_rx) = watch::channel(Arc::new(KeyStore::default()));
    let config = DiscoveryConfig {
        namespaces: vec![ns.name().to_owned()],
        keys_namespace: ns.name().to_owned(),
    };
    let watching = tokio::spawn(discovery::run(
        client.clone(),
        config,
        LoadBoard::default(),
        table_tx,
        keys_tx,
        || {},
    ));

    // Both pods Ready (kwok) and the weight from status: exactly 20 % of requests.
    wait_table(&mut table_rx, "both revisions with a Ready pod", |t| {
        t.models().first().is_some_and(|m| {
            !m.stable.endpoints.is_empty()
                && m.candidate.as_ref().is_some_and(|(c, _)| !c.endpoints.is_empty())
        })
    })
    .await;
    assert!((candidate_share(&table_rx.borrow()) - 0.20).abs() < 1e-9);

    // Rollback: the operator drops the candidate from status.
    let rolled_back = Instant::now();
    mds.patch_status(
        "emb",
        &PatchParams::default(),
        &Patch::Merge(status(serde_json::Value::Null)),
    )
    .await
    .expect("status");
    wait_table(&mut table_rx, "the candidate gone", |t| candidate_share(t) == 0.0).await;
    let took = rolled_back.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "the rollback reached the table after {took:?}"
    );
    eprintln!("rollback to 0 % canary traffic in the router's table after {took:?}");
    watching.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_of_namespaces_is_watched_and_no_other() {
    let mut namespaces = Vec::new();
    for prefix in ["router-ns-a", "router-ns-b", "router-ns-c"] {
        let (client, ns) = shared_namespace(prefix).await;
        let mds: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
        let md: ModelDeployment = serde_yaml::from_str(&format!(
            "apiVersion: modelfleet.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: m}}\nspec:\n  model: {{name: {prefix}, version: '1', uri: 'hf://o/m', task: embedding}}\n  runtime: {{device: cpu}}\n  resources: {{gpus: 0}}\n"
        ))
        .expect("yaml");
        mds.create(&PostParams::default(), &md).await.expect("create");
        let stable = json!({"status": {"stable": {"revision": "r1", "version": "1", "replicas": 0, "readyReplicas": 0}}});
        mds.patch_status("m", &PatchParams::default(), &Patch::Merge(stable))
            .await
            .expect("status");
        namespaces.push((client, ns));
    }
    let client = namespaces[0].0.clone();
    let (table_tx, mut table_rx) = watch::channel(Arc::new(Table::default()));
    let (keys_tx, _keys_rx) = watch::channel(Arc::new(KeyStore::default()));
    let config = DiscoveryConfig {
        namespaces: vec![
            namespaces[0].1.name().to_owned(),
            namespaces[1].1.name().to_owned(),
        ],
        keys_namespace: namespaces[0].1.name().to_owned(),
    };
    let watching = tokio::spawn(discovery::run(
        client,
        config,
        LoadBoard::default(),
        table_tx,
        keys_tx,
        || {},
    ));
    wait_table(&mut table_rx, "both watched namespaces' models", |t| {
        t.models().len() >= 2
    })
    .await;
    let mut served: Vec<String> = table_rx
        .borrow()
        .models()
        .iter()
        .map(|m| m.served.clone())
        .collect();
    served.sort();
    assert_eq!(
        served,
        ["router-ns-a", "router-ns-b"],
        "router-ns-c is not watched"
    );
    watching.abort();
}
