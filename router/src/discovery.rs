//! Kubernetes discovery: watches ModelDeployments, their pods and the key Secrets, and swaps in
//! a new table (and key store) after every change. The watches are the only writers; requests
//! read the latest through `watch` channels. Read-only: list and watch, nothing else.

use std::{collections::BTreeMap, sync::Arc};

use futures::{StreamExt, stream};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::{
    Api, Client, Resource, ResourceExt,
    runtime::{
        WatchStreamExt,
        reflector::{self, Store},
        watcher::{self, Event},
    },
};
use modelfleet_crds::{ModelDeployment, constants::labels};
use tokio::sync::watch;

use crate::{from_kube, keys::KEY_LABEL, keys::KeyStore, load::LoadBoard, table::Table};

/// What discovery watches.
#[derive(Debug, Clone)]
pub struct DiscoveryConfig {
    /// One namespace, or all.
    pub namespace: Option<String>,
    /// The key Secrets' namespace.
    pub keys_namespace: String,
}

/// Which watch an event came from (its index in the listed flags).
#[derive(Clone, Copy)]
enum Source {
    Models,
    Pods,
    Keys,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    K::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Watches until the process ends; `synced` is called once every watch has listed once.
pub async fn run(
    client: Client,
    config: DiscoveryConfig,
    board: LoadBoard,
    table: watch::Sender<Arc<Table>>,
    keys: watch::Sender<Arc<KeyStore>>,
    synced: impl FnOnce() + Send,
) {
    let ns = config.namespace.as_deref();
    let (models, models_writer) = reflector::store::<ModelDeployment>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (secrets, secrets_writer) = reflector::store::<Secret>();
    let pod_watch = watcher::Config::default().labels(labels::DEPLOYMENT);
    let key_watch = watcher::Config::default().labels(&format!("{KEY_LABEL}=true"));
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &config.keys_namespace);
    let events = stream::select(
        stream::select(
            reflector::reflector(
                models_writer,
                watcher::watcher(api(&client, ns), watcher::Config::default()),
            )
            .default_backoff()
            .map(|e| (Source::Models, seen(e))),
            reflector::reflector(pods_writer, watcher::watcher(api(&client, ns), pod_watch))
                .default_backoff()
                .map(|e| (Source::Pods, seen(e))),
        ),
        reflector::reflector(secrets_writer, watcher::watcher(secrets_api, key_watch))
            .default_backoff()
            .map(|e| (Source::Keys, seen(e))),
    );
    let mut events = std::pin::pin!(events);
    let mut listed = [false; 3];
    let mut synced = Some(synced);
    while let Some((source, seen)) = events.next().await {
        match seen {
            Seen::Nothing => continue,
            Seen::Listed => listed[source as usize] = true,
            Seen::Changed => {}
        }
        if !listed.iter().all(|l| *l) {
            continue;
        }
        let first = synced.is_some();
        if first || matches!(source, Source::Keys) {
            publish_keys(&secrets, &keys);
        }
        if first || !matches!(source, Source::Keys) {
            publish_table(&models, &pods, &board, &table);
        }
        if let Some(done) = synced.take() {
            done();
        }
    }
}

/// What a watch event means for the table.
enum Seen {
    /// Part of a (re)list, or an error the watch retries after.
    Nothing,
    /// A (re)list is complete.
    Listed,
    /// An object changed or went away.
    Changed,
}

fn seen<K>(event: Result<Event<K>, watcher::Error>) -> Seen {
    match event {
        Err(e) => {
            tracing::warn!(error = %e, "watch error; retrying");
            Seen::Nothing
        }
        Ok(Event::Init | Event::InitApply(_)) => Seen::Nothing,
        Ok(Event::InitDone) => Seen::Listed,
        Ok(Event::Apply(_) | Event::Delete(_)) => Seen::Changed,
    }
}

fn publish_table(
    models: &Store<ModelDeployment>,
    pods: &Store<Pod>,
    board: &LoadBoard,
    table: &watch::Sender<Arc<Table>>,
) {
    let built = from_kube::build(&models.state(), &pods.state(), board);
    table.send_replace(Arc::new(built));
}

fn publish_keys(secrets: &Store<Secret>, keys: &watch::Sender<Arc<KeyStore>>) {
    let state = secrets.state();
    let data: Vec<(String, BTreeMap<String, Vec<u8>>)> = state
        .iter()
        .map(|s| {
            let name = format!("{}/{}", s.namespace().unwrap_or_default(), s.name_any());
            let data = s
                .data
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect();
            (name, data)
        })
        .collect();
    let (store, errors) = KeyStore::from_secrets(data.iter().map(|(n, d)| (n.clone(), d)));
    for e in &errors {
        tracing::warn!(error = %e, "key Secret ignored");
    }
    keys.send_replace(Arc::new(store));
}
