//! Decode throughput of the generation model: one stream, then `--streams` (default 8)
//! sequences decoding together in one ragged batch per step.
//!
//!   cargo run --release -p modelfleet-server --example generate_bench -- [GGUF] [--streams N] [--tokens N]
//!
//! Without a GGUF path it uses `$MODELFLEET_TEST_LLM`, else what `server/scripts/fetch-llm.sh`
//! caches. Greedy decoding; end-of-sequence tokens are fed back like any other token so every
//! stream decodes the same number of tokens.

use std::{path::PathBuf, time::Instant};

use anyhow::Context;
use candle_core::Device;
use modelfleet_server::generate::{
    Feed, LanguageModel, SeqId,
    model::GgufLlama,
    tokenizer::{ChatMessage, GgufTokenizer},
};

const QUESTIONS: [&str; 8] = [
    "Write a short story about a dragon who learns to bake bread.",
    "Explain how a bicycle works to a ten year old.",
    "What are the three states of water? Answer in detail.",
    "Describe a walk through a forest in autumn.",
    "Give me a recipe for tomato soup.",
    "Why is the sky blue?",
    "List some tips for learning a new language.",
    "Tell me about the history of the printing press.",
];

struct Options {
    gguf: PathBuf,
    streams: usize,
    tokens: usize,
}

fn options() -> anyhow::Result<Options> {
    let mut gguf = None;
    let (mut streams, mut tokens) = (8, 64);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--streams" => streams = args.next().context("--streams N")?.parse()?,
            "--tokens" => tokens = args.next().context("--tokens N")?.parse()?,
            path => gguf = Some(PathBuf::from(path)),
        }
    }
    let gguf = match gguf.or_else(|| std::env::var_os("MODELFLEET_TEST_LLM").map(PathBuf::from)) {
        Some(path) => path,
        None => fetched_gguf()?,
    };
    Ok(Options {
        gguf,
        streams,
        tokens,
    })
}

fn fetched_gguf() -> anyhow::Result<PathBuf> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch-llm.sh");
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg("--print-path")
        .output()?;
    anyhow::ensure!(out.status.success(), "{} failed", script.display());
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn argmax(logits: &[f32]) -> u32 {
    let best = logits.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1));
    best.map_or(0, |(i, _)| i as u32)
}

fn prompt(tokenizer: &GgufTokenizer, question: &str) -> anyhow::Result<Vec<u32>> {
    let chat = [ChatMessage {
        role: "user".into(),
        content: question.into(),
    }];
    Ok(tokenizer.encode(&tokenizer.apply_chat_template(&chat, true)?)?)
}

/// Prefills `streams` sequences in one pass, then decodes `tokens` steps with all of them in
/// each pass; returns (prefill tokens/s, aggregate decode tokens/s).
fn run(model: &mut GgufLlama, prompts: &[Vec<u32>], tokens: usize) -> anyhow::Result<(f64, f64)> {
    let feeds: Vec<Feed<'_>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Feed {
            seq: i as SeqId,
            tokens: p,
        })
        .collect();
    let started = Instant::now();
    let mut next: Vec<u32> = model.forward(&feeds)?.iter().map(|l| argmax(l)).collect();
    let prefill = prompts.iter().map(Vec::len).sum::<usize>() as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    for _ in 0..tokens {
        let feeds: Vec<Feed<'_>> = next
            .iter()
            .enumerate()
            .map(|(i, t)| Feed {
                seq: i as SeqId,
                tokens: std::slice::from_ref(t),
            })
            .collect();
        next = model.forward(&feeds)?.iter().map(|l| argmax(l)).collect();
    }
    let decode = (tokens * prompts.len()) as f64 / started.elapsed().as_secs_f64();
    for i in 0..prompts.len() {
        model.release(i as SeqId);
    }
    Ok((prefill, decode))
}

fn main() -> anyhow::Result<()> {
    let options = options()?;
    let started = Instant::now();
    let (mut model, tokenizer) = GgufLlama::load(&options.gguf, &Device::Cpu)?;
    println!(
        "loaded {} in {:.2?}: {:?}",
        options.gguf.display(),
        started.elapsed(),
        model.info()
    );
    let prompts = (0..options.streams)
        .map(|i| prompt(&tokenizer, QUESTIONS[i % QUESTIONS.len()]))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Warm-up: first-touch allocation and the kernels' one-time weight repacking.
    run(&mut model, &prompts[..1], 4)?;
    let (prefill, single) = run(&mut model, &prompts[..1], options.tokens)?;
    println!("1 stream: prefill {prefill:.1} tokens/s, decode {single:.1} tokens/s");
    let (prefill, batched) = run(&mut model, &prompts, options.tokens)?;
    println!(
        "{} streams: prefill {prefill:.1} tokens/s, decode {batched:.1} tokens/s aggregate ({:.1} per stream)",
        options.streams,
        batched / options.streams as f64
    );
    Ok(())
}
