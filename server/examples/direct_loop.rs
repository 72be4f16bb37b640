//! The limit the batching server is measured against: the candle backend called directly in a
//! loop, no server, at fixed batch sizes, on the same sentences as the load generator.
//!
//!   cargo run --release -p modelfleet-server --example direct_loop -- MODEL_DIR [SECONDS] [SIZES…]
//!
//! Prints one JSON object per batch size: {"batch": 32, "sentences_per_s": 197.3, ...}.

use std::time::{Duration, Instant};

use modelfleet_contract::Device;
use modelfleet_server::backend::{Backend, CandleBackend, TextEncoder, resolve_model};

const SENTENCES: &str = include_str!("../bench/sentences.txt");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: direct_loop MODEL_DIR [SECONDS] [SIZES…]")?;
    let seconds: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(8.0);
    let sizes: Vec<usize> = args.map(|s| s.parse()).collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() { vec![1, 32, 64] } else { sizes };
    let device = if std::env::var("DEVICE").as_deref() == Ok("cuda") {
        Device::Cuda
    } else {
        Device::Cpu
    };
    let files = resolve_model(&format!("file://{dir}"), std::path::Path::new("/tmp"))?;
    let backend = CandleBackend::load(&files, device)?;
    let encoder = TextEncoder::from_file(&files.tokenizer)?;
    let inputs: Vec<Vec<u32>> = SENTENCES
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| encoder.encode(l).map(|e| e.ids))
        .collect::<Result<_, _>>()?;
    for size in sizes {
        let mut next = 0;
        let mut batch = || {
            let b: Vec<&[u32]> = (0..size)
                .map(|k| inputs[(next + k) % inputs.len()].as_slice())
                .collect();
            next = (next + size) % inputs.len();
            b
        };
        backend.embed(&batch())?; // warm
        let started = Instant::now();
        let mut sentences = 0usize;
        let mut batches = 0usize;
        while started.elapsed() < Duration::from_secs_f64(seconds) {
            backend.embed(&batch())?;
            sentences += size;
            batches += 1;
        }
        let elapsed = started.elapsed().as_secs_f64();
        println!(
            "{}",
            serde_json::json!({
                "batch": size,
                "sentences_per_s": sentences as f64 / elapsed,
                "batch_ms": elapsed * 1000.0 / batches as f64,
                "device": backend.info().device,
            })
        );
    }
    Ok(())
}
