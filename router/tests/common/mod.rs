//! The test harness of the router's integration tests: a router on loopback ports from a
//! static table, in front of real `modelfleet-server` processes.

#![allow(dead_code)]

use std::path::PathBuf;

use clap::Parser;
use modelfleet_router::{config::Cli, serve};
use modelfleet_testkit::server::{Answer, get_text, post};
use serde_json::json;

pub struct Router {
    pub running: serve::Running,
    _dir: tempfile::TempDir,
}

impl Router {
    pub async fn start(config: &str, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file: PathBuf = dir.path().join("router.yaml");
        std::fs::write(&file, config).expect("write the static config");
        let mut args = vec![
            "modelfleet-router".to_owned(),
            format!("--static-config={}", file.display()),
            "--http-addr=127.0.0.1:0".into(),
            "--metrics-addr=127.0.0.1:0".into(),
            "--hold-timeout=1s".into(),
        ];
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let cli = Cli::parse_from(args);
        let running = serve::start(&cli, std::future::pending())
            .await
            .expect("router starts");
        Self { running, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    pub async fn metrics(&self) -> String {
        get_text(&format!("http://{}/metrics", self.running.metrics_addr)).await
    }

    pub async fn embed(&self, model: &str, input: &str, headers: &[(&str, &str)]) -> Answer {
        post(
            &self.url("/v1/embeddings"),
            &json!({"model": model, "input": input}),
            headers,
        )
        .await
    }
}

pub fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

pub fn dim(a: &Answer) -> usize {
    a.body["data"][0]["embedding"].as_array().map_or(0, Vec::len)
}

/// A router serving a table the test drives by hand (as discovery would publish it): its
/// `/v1/embeddings` URL and the table's sender.
pub async fn hand_driven(
    config: modelfleet_router::config::RouterConfig,
    board: modelfleet_router::load::LoadBoard,
    activity: modelfleet_router::activity::Activity,
    table: std::sync::Arc<modelfleet_router::table::Table>,
) -> (
    String,
    tokio::sync::watch::Sender<std::sync::Arc<modelfleet_router::table::Table>>,
) {
    use std::sync::Arc;

    use modelfleet_router::{keys::KeyStore, proxy, state};

    let (table_tx, table_rx) = tokio::sync::watch::channel(table);
    // The key store never changes: its sender may go.
    let (_keys_tx, keys_rx) = tokio::sync::watch::channel(Arc::new(KeyStore::default()));
    let router = Arc::new(state::Router::new(config, table_rx, keys_rx, board, activity));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let url = format!("http://{}/v1/embeddings", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, proxy::app(router)).await });
    (url, table_tx)
}

/// A table of one model `emb` (namespace `default`) whose stable revision `revision` has
/// `endpoints`.
pub fn one_model(
    revision: &str,
    endpoints: Vec<modelfleet_router::table::Endpoint>,
    scales_from_zero: bool,
) -> std::sync::Arc<modelfleet_router::table::Table> {
    use modelfleet_crds::v1alpha1::{ModelTask, RoutingSpec};
    use modelfleet_router::table::{DEFAULT_IDLE_PERIOD, ModelEntry, Revision, Table};
    let replicas = i32::try_from(endpoints.len()).unwrap_or(0);
    std::sync::Arc::new(Table::new(vec![ModelEntry {
        namespace: "default".into(),
        deployment: "emb".into(),
        served: "emb".into(),
        aliases: vec![],
        task: ModelTask::Embedding,
        stable: Revision {
            name: revision.into(),
            version: revision.into(),
            endpoints,
        },
        candidate: None,
        tiers: vec![],
        routing: RoutingSpec::default(),
        scales_from_zero,
        idle_period: DEFAULT_IDLE_PERIOD,
        replicas,
        created: 0,
    }]))
}

/// `server` as a Ready endpoint that reported its load just now.
pub fn endpoint(
    board: &modelfleet_router::load::LoadBoard,
    pod: &str,
    addr: std::net::SocketAddr,
) -> modelfleet_router::table::Endpoint {
    let load = board.entry(addr);
    load.report(0, std::time::Instant::now());
    modelfleet_router::table::Endpoint {
        pod: pod.into(),
        load,
    }
}
