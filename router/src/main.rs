//! `modelfleet-router`: see `--help` and docs/router.md.

use clap::Parser;
use modelfleet_router::{config::Cli, serve};

// A proxied request allocates dozens of small buffers (headers, labels, body frames); mimalloc
// serves them in about half the time of glibc's malloc (docs/benchmarks.md, Router overhead).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.with_ansi(false).init();
    }
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        let _ = stop_rx.await;
    };
    let running = match serve::start(&cli, shutdown).await {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            eprintln!("modelfleet-router: {e}");
            std::process::exit(1);
        }
    };
    tracing::info!(
        "listening http={} metrics={}",
        running.http_addr,
        running.metrics_addr
    );
    wait_for_signal().await;
    let _ = stop_tx.send(());
    // Serving continues through the drain delay, then in-flight requests finish (bounded).
    let _ = tokio::time::timeout(cli.drain_delay + cli.request_timeout, running.served).await;
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
