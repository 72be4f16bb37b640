//! modelfleet-node-agent: streams GPU and server telemetry from a node to the operator.

use std::process::ExitCode;

use clap::Parser;

/// modelfleet-node-agent: streams GPU and server telemetry from a node to the operator.
///
/// This binary is a placeholder: it lands with issue #5 (see README.md, "State of the parts").
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("modelfleet-node-agent: not implemented yet (issue #5); see README.md");
    ExitCode::from(2)
}
