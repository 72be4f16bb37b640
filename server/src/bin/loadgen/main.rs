//! modelfleet-loadgen: placeholder, being written.
fn main() {}
