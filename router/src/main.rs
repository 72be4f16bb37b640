//! `modelfleet-router`. The serving path (discovery, proxy, Endpoint Picker) is in progress
//! (issue #17); this binary only prints what it is until then.

use clap::Parser;

/// One OpenAI-compatible entry point for a modelfleet fleet (in progress: the routing core is
/// built and unit-tested; the serving path is not wired yet, see docs/router.md).
#[derive(Parser, Debug)]
#[command(name = "modelfleet-router", version)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    eprintln!(
        "modelfleet-router {}: the serving path is not wired yet (issue #17)",
        env!("CARGO_PKG_VERSION")
    );
    std::process::exit(2);
}
