//! `modelfleet-operator`: reconciles ModelDeployments into GPU inference fleets.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use kube::CustomResourceExt;
use modelfleet_crds::ModelDeployment;
use modelfleet_operator::{OperatorConfig, controller, http};

/// Kubernetes operator for GPU inference fleets: reconciles ModelDeployments
/// (modelfleet.dev/v1alpha1) into serving Deployments, Services, ConfigMaps and PDBs.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
#[expect(clippy::large_enum_variant, reason = "parsed once at start-up")]
enum Command {
    /// Run the operator (uses the in-cluster config or $KUBECONFIG).
    Run {
        #[command(flatten)]
        config: OperatorConfig,
        /// Log format.
        #[arg(long, env = "MODELFLEET_LOG_FORMAT", default_value = "json", value_parser = ["json", "text"])]
        log_format: String,
    },
    /// Print the CRDs as YAML.
    Crd,
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {},
                _ = int.recv() => {},
            }
        }
        _ => std::future::pending().await,
    }
}

async fn run(config: OperatorConfig) -> Result<(), String> {
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    let state = http::HttpState::default();
    let (addr, server) = http::serve(config.http_addr, state.clone())
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.http_addr))?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    tokio::spawn(server);
    controller::run(client, config, state, shutdown_signal())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!("stopped");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match serde_yaml::to_string(&ModelDeployment::crd()) {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("modelfleet-operator: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, log_format } => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube=warn".into());
            if log_format == "json" {
                tracing_subscriber::fmt().json().with_env_filter(filter).init();
            } else {
                tracing_subscriber::fmt().with_env_filter(filter).init();
            }
            let result = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt.block_on(run(config)),
                Err(e) => Err(format!("cannot start a Tokio runtime: {e}")),
            };
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "operator failed");
                    eprintln!("modelfleet-operator: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
