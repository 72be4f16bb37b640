//! `modelfleet-node-agent`: GPU and server telemetry from one node to the operator.

use std::process::ExitCode;

use clap::Parser;
use modelfleet_node_agent::{AgentConfig, run};

/// GPU and server telemetry from a GPU node to the modelfleet operator.
///
/// Every interval (default 1 s) it reads the node's GPUs through NVML (or simulates them with
/// --gpu-backend=simulated), attributes each GPU to the pod holding it (kubelet PodResources, or
/// the pods bound to the node), scrapes the local modelfleet-server pods, serves DCGM-compatible
/// `/metrics`, and streams a NodeReport to the operator's telemetry service. Every option also
/// reads the environment variable shown.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    config: AgentConfig,
    /// Log format.
    #[arg(long, env = "MODELFLEET_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
    log_format: String,
}

/// Registers SIGTERM and SIGINT now; resolves on the first.
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
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modelfleet-node-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = shutdown_signal();
        // The GPUs first: a node without NVML gets the message that says what to do.
        let sampler = match run::sampler(&cli.config) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the GPUs");
                return ExitCode::FAILURE;
            }
        };
        let client = match kube::Client::try_default().await {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "cannot reach the Kubernetes API");
                return ExitCode::FAILURE;
            }
        };
        let node = cli.config.node_name.clone();
        match run::start_with_sampler(cli.config, sampler, client, shutdown).await {
            Ok(running) => {
                tracing::info!(node = %node, metrics = %running.metrics_addr, "listening");
                let _ = running.stopped.await;
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                ExitCode::FAILURE
            }
        }
    })
}
