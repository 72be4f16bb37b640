//! Kubernetes discovery: watches ModelDeployments, their pods and the key Secrets, and swaps in
//! a new table (and key store) after every change. The watches are the only writers; requests
//! read the latest through `watch` channels. Read-only: list and watch, nothing else (the one
//! write, the scale-from-zero annotation, is `activity`'s). One namespace, a list, or all.

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
    /// These namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// The key Secrets' namespace.
    pub keys_namespace: String,
}

type Events = futures::stream::BoxStream<'static, (bool, Seen)>;

/// A reflector of `K` on `api` whose events say whether they came from the key Secrets.
fn watch<K>(api: Api<K>, config: watcher::Config, keys: bool) -> (Store<K>, Events)
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let (store, writer) = reflector::store::<K>();
    let events = reflector::reflector(writer, watcher::watcher(api, config))
        .default_backoff()
        .map(move |e| (keys, seen(e)))
        .boxed();
    (store, events)
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
    let scopes: Vec<Option<&str>> = if config.namespaces.is_empty() {
        vec![None]
    } else {
        config.namespaces.iter().map(|n| Some(n.as_str())).collect()
    };
    let (mut models, mut pods, mut streams) = (Vec::new(), Vec::new(), Vec::new());
    for ns in scopes {
        let (store, events) = watch(
            api::<ModelDeployment>(&client, ns),
            watcher::Config::default(),
            false,
        );
        models.push(store);
        streams.push(events);
        let pod_watch = watcher::Config::default().labels(labels::DEPLOYMENT);
        let (store, events) = watch(api::<Pod>(&client, ns), pod_watch, false);
        pods.push(store);
        streams.push(events);
    }
    let key_watch = watcher::Config::default().labels(&format!("{KEY_LABEL}=true"));
    let secrets_api: Api<Secret> = Api::namespaced(client.clone(), &config.keys_namespace);
    let (secrets, events) = watch(secrets_api, key_watch, true);
    streams.push(events);
    let mut listed = vec![false; streams.len()];
    let mut events = stream::select_all(
        streams
            .into_iter()
            .enumerate()
            .map(|(i, s)| s.map(move |(keys, seen)| (i, keys, seen))),
    );
    let mut synced = Some(synced);
    while let Some((source, from_keys, seen)) = events.next().await {
        match seen {
            Seen::Nothing => continue,
            Seen::Listed => listed[source] = true,
            Seen::Changed => {}
        }
        if !listed.iter().all(|l| *l) {
            continue;
        }
        let first = synced.is_some();
        if first || from_keys {
            publish_keys(&secrets, &keys);
        }
        if first || !from_keys {
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
    models: &[Store<ModelDeployment>],
    pods: &[Store<Pod>],
    board: &LoadBoard,
    table: &watch::Sender<Arc<Table>>,
) {
    let models: Vec<_> = models.iter().flat_map(Store::state).collect();
    let pods: Vec<_> = pods.iter().flat_map(Store::state).collect();
    let built = from_kube::build(&models, &pods, board);
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
