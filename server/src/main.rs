//! `modelfleet-server`: the dynamic-batching inference server run in modelfleet GPU pods.

use std::process::ExitCode;

use clap::Parser;
use modelfleet_server::{config::Cli, start};

/// Registers the SIGTERM and SIGINT handlers now; the future resolves on the first signal.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        match handlers {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
            }
            _ => std::future::pending().await,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modelfleet-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Handlers before loading: a SIGTERM while the model loads then drains cleanly instead of
        // killing the process.
        let shutdown = shutdown_signal();
        match start(cli.config, shutdown).await {
            Ok(listening) => {
                tracing::info!(
                    http = %listening.http,
                    grpc = %listening.grpc,
                    metrics = %listening.metrics,
                    backend = listening.engine.info.name,
                    simulated = listening.engine.info.simulated,
                    "listening"
                );
                let _ = listening.stopped.await;
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                ExitCode::FAILURE
            }
        }
    })
}
