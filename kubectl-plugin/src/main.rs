//! `kubectl modelfleet`: the kubectl plugin for ModelDeployments.

mod render;

use std::{fs, io::Read, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, api::ListParams};
use modelfleet_crds::{ModelDeployment, manifest::model_deployments_from_yaml};

/// kubectl plugin for modelfleet ModelDeployments.
///
/// Installed as `kubectl-modelfleet` on the PATH, it runs as `kubectl modelfleet …`.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check ModelDeployment manifests offline with the same rules and messages as the API server.
    ///
    /// Exits 0 when every ModelDeployment in the files is valid, 1 otherwise. Documents of other
    /// kinds are skipped.
    Validate {
        /// Manifest files (YAML, multi-document allowed); `-` reads standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// List ModelDeployments: readiness, versions, traffic, phase and the autoscaler's count.
    List {
        /// Namespace (default: the kubeconfig context's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long, conflicts_with = "namespace")]
        all_namespaces: bool,
    },
    /// Show one ModelDeployment as a tree: revisions, rollout step, analysis, the autoscaler's
    /// metrics and last decisions, and the conditions.
    Status {
        /// The ModelDeployment.
        name: String,
        /// Namespace (default: the kubeconfig context's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
}

/// A client from the kubeconfig, as kubectl finds it, and the namespace to use.
async fn client(namespace: Option<String>) -> Result<(kube::Client, String), String> {
    let config = kube::Config::infer()
        .await
        .map_err(|e| format!("cannot load a kubeconfig ($KUBECONFIG or ~/.kube/config): {e}"))?;
    let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
    let client = kube::Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))?;
    Ok((client, namespace))
}

async fn list(namespace: Option<String>, all: bool) -> Result<String, String> {
    let (client, namespace) = client(namespace).await?;
    let api: Api<ModelDeployment> = if all {
        Api::all(client)
    } else {
        Api::namespaced(client, &namespace)
    };
    let items = api
        .list(&ListParams::default())
        .await
        .map_err(|e| format!("cannot list ModelDeployments: {e}"))?
        .items;
    Ok(render::list_table(&items, all))
}

async fn status(name: &str, namespace: Option<String>) -> Result<String, String> {
    let (client, namespace) = client(namespace).await?;
    let md = Api::<ModelDeployment>::namespaced(client, &namespace)
        .get(name)
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => {
                format!("modeldeployment {name} not found in namespace {namespace}")
            }
            e => format!("cannot read modeldeployment {namespace}/{name}: {e}"),
        })?;
    Ok(render::status_tree(&md, Timestamp::now()))
}

/// Runs an API command and prints its output or its error.
fn run_api(command: impl std::future::Future<Output = Result<String, String>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("kubectl-modelfleet: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(command) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("kubectl-modelfleet: {e}");
            ExitCode::FAILURE
        }
    }
}

fn read(path: &PathBuf) -> Result<String, String> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("-: cannot read stdin: {e}"))?;
        Ok(text)
    } else {
        fs::read_to_string(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
    }
}

fn validate(files: &[PathBuf]) -> ExitCode {
    let mut ok = true;
    for path in files {
        let result = read(path).and_then(|text| {
            model_deployments_from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
        });
        match result {
            Ok(found) => {
                for md in found {
                    let name = md.metadata.name.unwrap_or_default();
                    println!("{}: modeldeployment/{name} is valid", path.display());
                }
            }
            Err(e) => {
                ok = false;
                eprintln!("{e}");
            }
        }
    }
    if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Validate { files } => validate(&files),
        Command::List {
            namespace,
            all_namespaces,
        } => run_api(list(namespace, all_namespaces)),
        Command::Status { name, namespace } => run_api(status(&name, namespace)),
    }
}
