//! modelfleet-e2e: local Kubernetes control plane, end-to-end tests and the up/demo CLI.

use std::process::ExitCode;

use clap::Parser;

/// modelfleet-e2e: local Kubernetes control plane, end-to-end tests and the up/demo CLI.
///
/// This binary is a placeholder: it lands with issue #3 (see README.md, "State of the parts").
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("modelfleet-e2e: not implemented yet (issue #3); see README.md");
    ExitCode::from(2)
}
