//! modelfleet-server: the dynamic-batching inference server run in modelfleet GPU pods.

use std::process::ExitCode;

use clap::Parser;

/// modelfleet-server: the dynamic-batching inference server run in modelfleet GPU pods.
///
/// This binary is a placeholder: it lands with issue #8 (see README.md, "State of the parts").
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {}

fn main() -> ExitCode {
    let _args = Args::parse();
    eprintln!("modelfleet-server: not implemented yet (issue #8); see README.md");
    ExitCode::from(2)
}
