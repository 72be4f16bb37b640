//! modelfleet-operator: reconciles ModelDeployments into GPU inference fleets.

use std::process::ExitCode;

use clap::Parser;

/// modelfleet-operator: reconciles ModelDeployments into GPU inference fleets.
///
/// This binary is a placeholder: it lands with issue #4 (see README.md, "State of the parts").
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("modelfleet-operator: not implemented yet (issue #4); see README.md");
    ExitCode::from(2)
}
