//! `kubectl modelfleet`: the kubectl plugin for ModelDeployments.

mod render;

use std::{fs, io::Read, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams},
};
use modelfleet_crds::{ModelDeployment, constants::annotations, manifest::model_deployments_from_yaml};

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
        /// Watch: print the tree again whenever it changes (every 2 s at most), until Ctrl-C.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// Skip the remaining rollout steps: the candidate grows to full size and becomes stable
    /// (sets the `modelfleet.dev/promote` annotation, which the operator consumes).
    Promote(Target),
    /// Roll the candidate back now: weight 0, mirror off, candidate scaled to 0 (sets the
    /// `modelfleet.dev/abort` annotation, which the operator consumes).
    Abort(Target),
    /// Freeze the rollout at its current step (sets `spec.rollout.paused: true`; a failing check
    /// still rolls back).
    Pause(Target),
    /// Let a paused rollout continue (sets `spec.rollout.paused: false`).
    Resume(Target),
}

/// The ModelDeployment a rollout command acts on.
#[derive(clap::Args, Debug)]
struct Target {
    /// The ModelDeployment.
    name: String,
    /// Namespace (default: the kubeconfig context's).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
}

/// What a rollout command changes.
#[derive(Debug, Clone, Copy)]
enum Control {
    Promote,
    Abort,
    Pause,
    Resume,
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

async fn get(api: &Api<ModelDeployment>, name: &str, namespace: &str) -> Result<ModelDeployment, String> {
    api.get(name).await.map_err(|e| match e {
        kube::Error::Api(s) if s.code == 404 => {
            format!("modeldeployment {name} not found in namespace {namespace}")
        }
        e => format!("cannot read modeldeployment {namespace}/{name}: {e}"),
    })
}

async fn status(name: &str, namespace: Option<String>, watch: bool) -> Result<String, String> {
    let (client, namespace) = client(namespace).await?;
    let api = Api::<ModelDeployment>::namespaced(client, &namespace);
    if !watch {
        return Ok(render::status_tree(
            &get(&api, name, &namespace).await?,
            Timestamp::now(),
        ));
    }
    // Registered before the first print, so an early Ctrl-C is never lost.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| format!("cannot watch for Ctrl-C: {e}"))?;
    let mut last = None;
    loop {
        let md = get(&api, name, &namespace).await?;
        // Print again when the operator wrote something new (or the spec changed).
        let seen = (md.metadata.generation, md.status.clone());
        if last.as_ref() != Some(&seen) {
            println!("--- {}", Timestamp::now().strftime("%H:%M:%S"));
            print!("{}", render::status_tree(&md, Timestamp::now()));
            use std::io::Write;
            let _ = std::io::stdout().flush();
            last = Some(seen);
        }
        tokio::select! {
            _ = interrupt.recv() => return Ok(String::new()),
            () = tokio::time::sleep(std::time::Duration::from_secs(2)) => {}
        }
    }
}

async fn control(target: Target, control: Control) -> Result<String, String> {
    let (client, namespace) = client(target.namespace).await?;
    let api = Api::<ModelDeployment>::namespaced(client, &namespace);
    let name = target.name;
    let md = get(&api, &name, &namespace).await?;
    if md.spec.rollout.is_none() {
        return Err(format!(
            "modeldeployment {namespace}/{name} has no spec.rollout: there is no rollout to steer"
        ));
    }
    let (patch, done) = match control {
        Control::Promote => (
            serde_json::json!({"metadata": {"annotations": {annotations::PROMOTE: "true"}}}),
            "promotion requested: the candidate skips its remaining steps",
        ),
        Control::Abort => (
            serde_json::json!({"metadata": {"annotations": {annotations::ABORT: "true"}}}),
            "abort requested: the candidate is rolled back",
        ),
        Control::Pause => (
            serde_json::json!({"spec": {"rollout": {"paused": true}}}),
            "rollout paused",
        ),
        Control::Resume => (
            serde_json::json!({"spec": {"rollout": {"paused": false}}}),
            "rollout resumed",
        ),
    };
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| format!("cannot update modeldeployment {namespace}/{name}: {e}"))?;
    Ok(format!("modeldeployment.modelfleet.dev/{name}: {done}\n"))
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
        Command::Status {
            name,
            namespace,
            watch,
        } => run_api(status(&name, namespace, watch)),
        Command::Promote(t) => run_api(control(t, Control::Promote)),
        Command::Abort(t) => run_api(control(t, Control::Abort)),
        Command::Pause(t) => run_api(control(t, Control::Pause)),
        Command::Resume(t) => run_api(control(t, Control::Resume)),
    }
}
