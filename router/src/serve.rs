//! The router process: discovery (or the static table), the scrape loop, the API and the
//! metrics/health servers, and the drain on SIGTERM.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use axum::{extract::State, http::StatusCode, routing::get, serve::ListenerExt};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    activity::Activity,
    config::{Cli, RouterConfig},
    discovery::{self, DiscoveryConfig},
    keys::KeyStore,
    load::LoadBoard,
    proxy, scrape,
    state::Router,
    static_config,
    table::Table,
};

/// Why the router could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listen address is taken or not ours.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        error: std::io::Error,
    },
    /// `--static-config` is unreadable.
    #[error("--static-config {0}")]
    StaticConfig(String),
    /// No Kubernetes client configuration.
    #[error("no Kubernetes configuration (in-cluster or KUBECONFIG): {0}")]
    Kube(String),
}

/// A started router.
#[derive(Debug)]
pub struct Running {
    /// The API address.
    pub http_addr: SocketAddr,
    /// The metrics and health address.
    pub metrics_addr: SocketAddr,
    /// The Endpoint Picker's address (`--epp-addr`), if it serves one.
    pub epp_addr: Option<SocketAddr>,
    /// The shared state.
    pub router: Arc<Router>,
    /// Ends when the API has drained.
    pub served: tokio::task::JoinHandle<()>,
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|error| StartError::Bind { addr, error })?;
    let local = listener
        .local_addr()
        .map_err(|error| StartError::Bind { addr, error })?;
    Ok((listener, local))
}

/// Starts everything; the API stops taking connections after `shutdown` resolves and
/// `--drain-delay` has passed (readiness already failing), then finishes what is in flight.
pub async fn start(
    cli: &Cli,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<Running, StartError> {
    let mut config = RouterConfig::from(cli);
    let board = LoadBoard::default();
    let (table_tx, table_rx) = watch::channel(Arc::new(Table::default()));
    let (keys_tx, keys_rx) = watch::channel(Arc::new(KeyStore::default()));
    let static_table = match &cli.static_config {
        Some(path) => Some(static_config::load(path).map_err(StartError::StaticConfig)?),
        None => None,
    };
    if static_table.is_some() {
        // Not scraped: only the router's own counts and the servers' answers say how loaded
        // a static endpoint is, so none goes stale.
        config.pick.stale_after = Duration::from_secs(u64::from(u32::MAX));
    }
    let (reports_tx, reports_rx) = crate::activity::channel();
    let activity = Activity::new(static_table.is_none().then_some(reports_tx));
    let router = Arc::new(Router::new(config, table_rx, keys_rx, board.clone(), activity));
    match static_table {
        Some(file) => {
            table_tx.send_replace(Arc::new(static_config::table(&file, &board)));
            keys_tx.send_replace(Arc::new(static_config::key_store(&file).0));
            router.set_synced();
        }
        None => {
            let client = kube::Client::try_default()
                .await
                .map_err(|e| StartError::Kube(e.to_string()))?;
            let discovery = DiscoveryConfig {
                namespaces: cli.namespace.clone(),
                keys_namespace: cli.keys_namespace.clone(),
            };
            let synced = router.clone();
            tokio::spawn(crate::activity::run(client.clone(), reports_rx));
            tokio::spawn(discovery::run(
                client,
                discovery,
                board,
                table_tx,
                keys_tx,
                move || {
                    synced.set_synced();
                },
            ));
            tokio::spawn(scrape::run(router.clone(), cli.scrape_interval));
            if let Some(url) = &cli.operator_url {
                let config = crate::report::ReportConfig {
                    url: url.clone(),
                    token_file: cli.token_file.clone(),
                    interval: cli.report_interval,
                    router: cli.pod_name.clone(),
                };
                tokio::spawn(crate::report::run(router.clone(), config));
            }
        }
    }
    let (api, http_addr) = bind(cli.http_addr).await?;
    let (ops, metrics_addr) = bind(cli.metrics_addr).await?;
    let ops_app = axum::Router::new()
        .route(
            "/metrics",
            get(|State(r): State<Arc<Router>>| async move { r.metrics.render() }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(router.clone());
    tokio::spawn(async move {
        let _ = axum::serve(ops, ops_app).await;
    });
    let draining = router.clone();
    let drain_delay = cli.drain_delay;
    let stop = async move {
        shutdown.await;
        draining.drain();
        tracing::info!(
            delay_s = drain_delay.as_secs_f64(),
            "draining: not ready, still serving"
        );
        tokio::time::sleep(drain_delay).await;
    };
    let epp_addr = match cli.epp_addr {
        Some(addr) => {
            let (listener, local) = bind(addr).await?;
            let epp = crate::epp::serve(listener, router.clone(), router.metrics.epp.clone());
            tokio::spawn(async move {
                if let Err(e) = epp.await {
                    tracing::error!(error = %e, "the Endpoint Picker stopped");
                }
            });
            tracing::info!(addr = %local, "Endpoint Picker (ext_proc) listening");
            Some(local)
        }
        None => None,
    };
    let app = proxy::app(router.clone());
    // Answers go out at once: with Nagle on, a small answer could wait for the client's delayed
    // ACK (tens of ms).
    let api = api.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let served = tokio::spawn(async move {
        let _ = axum::serve(api, app).with_graceful_shutdown(stop).await;
        tracing::info!("drained");
    });
    Ok(Running {
        http_addr,
        metrics_addr,
        epp_addr,
        router,
        served,
    })
}

async fn readyz(State(router): State<Arc<Router>>) -> (StatusCode, &'static str) {
    if router.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}
