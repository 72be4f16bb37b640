//! `kubectl modelfleet`: the kubectl plugin for ModelDeployments.

use std::{fs, io::Read, path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use modelfleet_crds::manifest::model_deployments_from_yaml;

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
    }
}
