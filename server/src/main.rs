//! `modelfleet-server`: the dynamic-batching inference server run in modelfleet GPU pods.

use std::process::ExitCode;

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

/// The command line; a generation model's name defaults to its GGUF file's stem unless
/// `--model-name` (or its variable) names one.
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches, parser::ValueSource};
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let named = matches.value_source("model_name") != Some(ValueSource::DefaultValue);
    let served = &mut cli.config.contract;
    if !named
        && served.task == modelfleet_contract::ModelTask::Generation
        && let Some(path) = served
            .model_uri
            .as_deref()
            .and_then(|uri| modelfleet_server::generate::start::gguf_path(uri).ok())
    {
        served.model_name = modelfleet_server::generate::start::default_model_name(&path);
    }
    cli
}

fn main() -> ExitCode {
    let cli = parse_cli();
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
                    backend = listening.backend,
                    simulated = listening.simulated,
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
