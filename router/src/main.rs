//! `modelfleet-router`.

fn main() {
    println!("modelfleet-router {}", env!("CARGO_PKG_VERSION"));
}
