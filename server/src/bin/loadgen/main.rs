//! modelfleet-loadgen: load for modelfleet-server's OpenAI `/v1/embeddings`.

mod drive;
mod stats;

use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    path::PathBuf,
    process::ExitCode,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use http::{HeaderName, HeaderValue};

use crate::{
    drive::{Target, Window},
    stats::Report,
};

/// Load generator for modelfleet-server's OpenAI-compatible `POST /v1/embeddings`.
///
/// Closed loop: `--concurrency` workers each send the next request as soon as the last one
/// answered (one keep-alive connection each); it finds the saturation throughput. Open loop:
/// Poisson arrivals at `--rate` requests/s scheduled against absolute times, with latency measured
/// from each request's scheduled send time, so a slow server cannot hide its queueing.
///
/// The report gives sent and completed (2xx) requests, throughput (requests/s and inputs/s),
/// p50/p95/p99/max/mean latency of successful requests in ms, answers by HTTP status and errors by
/// kind. `--json` prints one object instead: mode, target, duration_s, sent, completed,
/// throughput_rps, inputs_per_s, latency_ms {p50, p95, p99, max, mean} (null without a success),
/// status_counts {"200": n, ...}, errors {connect, timeout, other}, dropped_by_client.
///
/// Examples:
///   modelfleet-loadgen --concurrency 64 --duration 20s --warmup 3s
///   modelfleet-loadgen --mode open --rate 150 --duration 30s --header x-modelfleet-tier:high
///   modelfleet-loadgen --concurrency 32 --requests 5000 --json-out result.json
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
struct Args {
    /// Base URL of the server (loopback only unless --allow-remote).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Allow a URL outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    allow_remote: bool,
    /// Model name sent in each request.
    #[arg(long, default_value = "minilm")]
    model: String,
    /// Load shape.
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    mode: Mode,
    /// Closed loop: workers sending back to back.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Open loop: mean arrival rate in requests/s.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Open loop: most requests outstanding; beyond it arrivals are counted as dropped by the
    /// client.
    #[arg(long, default_value_t = 4096)]
    max_in_flight: usize,
    /// How long to send (after the warm-up), e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Stop after this many requests (warm-up included); 0: no limit.
    #[arg(long, default_value_t = 0)]
    requests: u64,
    /// Load sent before measuring, not counted.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    warmup: Duration,
    /// Inputs (sentences) per request.
    #[arg(long, default_value_t = 1)]
    inputs_per_request: usize,
    /// File with one sentence per line (default: the 20 of server/bench/sentences.txt).
    #[arg(long)]
    texts_file: Option<PathBuf>,
    /// Extra header `name:value`, repeatable (e.g. `x-modelfleet-tier:high`).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Client-side timeout per request.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    timeout: Duration,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Async worker threads (1 leaves the other cores to the server).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Seed of the open-loop arrival process.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Closed,
    Open,
}

/// The default texts: the same file the batching benchmark feeds the direct candle loop.
const SENTENCES: &str = include_str!("../../../bench/sentences.txt");

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit) = s.split_at(
        s.find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(s.len()),
    );
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration like 500ms, 10s or 1m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}`; use ms, s or m")),
    };
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected name:value"))?;
    let name = HeaderName::try_from(k.trim()).map_err(|e| format!("`{s}`: header name: {e}"))?;
    let value = HeaderValue::try_from(v.trim()).map_err(|e| format!("`{s}`: header value: {e}"))?;
    Ok((name, value))
}

/// Resolves `url` to an address and the embeddings path; refuses non-loopback hosts unless
/// allowed.
fn resolve(url: &str, allow_remote: bool) -> Result<(SocketAddr, http::Uri), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("--url `{url}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("--url `{url}`: only http:// is supported"));
    }
    let host = uri.host().ok_or_else(|| format!("--url `{url}`: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let addr = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("--url `{url}`: {e}"))?
        .next()
        .ok_or_else(|| format!("--url `{url}`: the host has no address"))?;
    let loopback = match addr.ip() {
        IpAddr::V4(ip) => ip.is_loopback(),
        IpAddr::V6(ip) => ip.is_loopback(),
    };
    if !loopback && !allow_remote {
        return Err(format!(
            "--url `{url}` is not a loopback address; pass --allow-remote to load another machine"
        ));
    }
    let path = format!("{}/v1/embeddings", uri.path().trim_end_matches('/'));
    let target: http::Uri = path.parse().map_err(|e| format!("--url `{url}`: {e}"))?;
    Ok((addr, target))
}

fn bodies(model: &str, texts: &[String], per_request: usize) -> Result<Arc<[Bytes]>, String> {
    if texts.is_empty() {
        return Err("--texts-file has no sentences".into());
    }
    let per_request = per_request.max(1);
    (0..texts.len())
        .map(|start| {
            let input: Vec<&String> = (0..per_request)
                .map(|k| &texts[(start + k) % texts.len()])
                .collect();
            serde_json::to_vec(&serde_json::json!({"model": model, "input": input}))
                .map(Bytes::from)
                .map_err(|e| e.to_string())
        })
        .collect()
}

async fn run(args: Args) -> Result<Report, String> {
    let (addr, uri) = resolve(&args.url, args.allow_remote)?;
    let texts: Vec<String> = match &args.texts_file {
        Some(path) => std::fs::read_to_string(path)
            .map_err(|e| format!("--texts-file {}: {e}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
        None => SENTENCES
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_owned)
            .collect(),
    };
    let target = Target {
        addr,
        uri,
        headers: args.headers.clone(),
        bodies: bodies(&args.model, &texts, args.inputs_per_request)?,
        timeout: args.timeout,
    };
    let start = Instant::now();
    let window = Window {
        measure_from: start + args.warmup,
        stop: start + args.warmup + args.duration,
        max_requests: args.requests,
    };
    let (mode, target_value, tally) = match args.mode {
        Mode::Closed => {
            if args.concurrency == 0 {
                return Err("--concurrency must be at least 1".into());
            }
            let t = drive::closed_loop(target, args.concurrency, window).await;
            ("closed", args.concurrency as f64, t)
        }
        Mode::Open => {
            if !(args.rate > 0.0 && args.rate.is_finite()) {
                return Err(format!("--rate must be a positive number, got {}", args.rate));
            }
            let t = drive::open_loop(target, args.rate, args.max_in_flight.max(1), window, args.seed).await;
            ("open", args.rate, t)
        }
    };
    // Throughput is measured from the start of the window to the last answer: a run cut short by
    // --requests is shorter, an overloaded server answering after the window is longer.
    let last = tally.last_answer.unwrap_or(window.stop).max(window.measure_from);
    let window_len = last
        .duration_since(window.measure_from)
        .max(Duration::from_millis(1));
    Ok(Report::new(
        mode,
        target_value,
        window_len,
        args.inputs_per_request.max(1),
        tally,
    ))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modelfleet-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (json, json_out) = (args.json, args.json_out.clone());
    match runtime.block_on(run(args)) {
        Ok(report) => {
            let encoded = serde_json::to_string_pretty(&report).unwrap_or_default();
            if let Some(path) = json_out
                && let Err(e) = std::fs::write(&path, format!("{encoded}\n"))
            {
                eprintln!("modelfleet-loadgen: --json-out {}: {e}", path.display());
                return ExitCode::FAILURE;
            }
            if json {
                println!("{encoded}");
            } else {
                println!("{}", report.text());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("modelfleet-loadgen: {e}");
            ExitCode::from(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_headers_parse_with_clear_errors() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("5h").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        assert!(parse_header("x-modelfleet-tier:high").is_ok());
        assert!(parse_header("novalue").unwrap_err().contains("name:value"));
    }

    #[test]
    fn only_loopback_targets_unless_allowed() {
        let (addr, uri) = resolve("http://127.0.0.1:9000", false).unwrap();
        assert_eq!((addr.port(), uri.path()), (9000, "/v1/embeddings"));
        assert!(
            resolve("http://10.0.0.1:80", false)
                .unwrap_err()
                .contains("--allow-remote")
        );
        assert!(
            resolve("https://127.0.0.1", false)
                .unwrap_err()
                .contains("http://")
        );
    }

    /// A minimal HTTP/1.1 keep-alive server on 127.0.0.1: every 5th answer is a 429.
    async fn tiny_server() -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let count = Arc::new(std::sync::atomic::AtomicU64::new(0));
            while let Ok((mut socket, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        let i = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let (status, body) = if i % 5 == 4 {
                            ("429 Too Many Requests", "{}")
                        } else {
                            ("200 OK", "{\"data\":[]}")
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn run_against(extra: &[&str]) -> Report {
        let url = format!("http://{}", tiny_server().await);
        let mut argv = vec!["loadgen", "--url", &url, "--duration", "300ms"];
        argv.extend_from_slice(extra);
        run(Args::parse_from(argv)).await.unwrap()
    }

    #[tokio::test]
    async fn a_closed_loop_reports_statuses_and_json() {
        let report = run_against(&["--concurrency", "4"]).await;
        assert!(report.completed > 0);
        assert!(
            report.status_counts.get("429").copied().unwrap_or(0) > 0,
            "{report:?}"
        );
        let json: serde_json::Value = serde_json::to_value(&report).unwrap();
        assert_eq!(json["mode"], "closed");
        assert!(json["latency_ms"]["p99"].as_f64().unwrap() >= 0.0);
    }

    #[tokio::test]
    async fn an_open_loop_offers_its_rate() {
        let report = run_against(&["--mode", "open", "--rate", "200"]).await;
        // About 60 arrivals in 300 ms; every one answered, none lost to errors.
        assert!((30..=100).contains(&report.sent), "{report:?}");
        assert_eq!(
            report.errors,
            stats::ErrorKinds {
                connect: 0,
                timeout: 0,
                other: 0
            }
        );
        assert_eq!(report.sent, report.status_counts.values().sum::<u64>());
        assert!(report.completed > 0);
    }
}
