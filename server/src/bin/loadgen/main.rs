//! modelfleet-loadgen: closed- and open-loop load for modelfleet-server's OpenAI-compatible
//! `POST /v1/embeddings`, with a text or JSON report. `--help` describes the flags, the report
//! fields and gives examples.
//!
//! Modules: [`args`] (the command line), [`client`] (target, request bodies, the pool of
//! keep-alive connections), [`schedule`] (Poisson arrivals), [`drive`] (the two load loops),
//! [`stats`] (tallies, percentiles, the report).

mod args;
mod client;
mod drive;
mod schedule;
mod stats;
#[cfg(test)]
mod testserver;

use std::{io::Write, process::ExitCode, sync::Arc, time::Instant};

use clap::Parser;
use tokio::sync::watch;

use crate::{
    args::{Args, Mode},
    client::{Pool, Target, bodies, resolve, texts},
    drive::{Arrivals, Stop, Window},
    stats::{Report, RunInfo},
};

/// Runs the load `args` describe and builds its report; an `Err` is a usage problem (bad URL,
/// unreadable texts), never the server's behaviour, which the report describes.
async fn run(args: &Args, stop: Stop) -> Result<Report, String> {
    let endpoint = resolve(&args.url, args.allow_remote)?;
    let texts = texts(args.texts_file.as_deref())?;
    let bodies = bodies(&args.model, &texts, args.inputs_per_request)?;
    let target = Target::new(&endpoint, &args.headers, bodies, args.timeout);
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let window = Window {
        measure_from,
        stop: args.measure_for().map(|d| measure_from + d),
        max_requests: args.requests,
    };
    let (target_value, pool, tally) = match args.mode {
        Mode::Closed => {
            let pool = Arc::new(Pool::new(endpoint.addr, args.concurrency));
            let tally =
                drive::closed_loop(pool.clone(), target, args.concurrency, window, stop.clone()).await;
            (args.concurrency as f64, pool, tally)
        }
        Mode::Open => {
            let pool = Arc::new(Pool::new(endpoint.addr, args.max_in_flight));
            let arrivals = Arrivals {
                start,
                rate: args.rate,
                seed: args.seed,
                max_in_flight: args.max_in_flight,
                spin: args.timer.spins_at(args.rate),
            };
            let tally = drive::open_loop(&pool, &target, arrivals, window, stop.clone()).await;
            (args.rate, pool, tally)
        }
    };
    // Throughput is measured to the last answer: a run cut short by --requests is shorter, an
    // overloaded server answering after the window longer.
    let end = tally.last_answer.unwrap_or_else(Instant::now);
    let info = RunInfo {
        mode: args.mode.name(),
        target: target_value,
        inputs_per_request: args.inputs_per_request,
        window: end.saturating_duration_since(measure_from),
        connections: pool.opened(),
        interrupted: stop.is_set(),
    };
    Ok(Report::new(info, tally))
}

/// First Ctrl-C: stop sending and report; a second one exits at once.
async fn interrupt(stop: watch::Sender<bool>) {
    if tokio::signal::ctrl_c().await.is_ok() {
        let _ = stop.send(true);
        eprintln!("modelfleet-loadgen: stopping; waiting for the requests in flight (Ctrl-C again to quit)");
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut builder = if args.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(args.threads);
        b
    };
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("modelfleet-loadgen: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (stop_tx, stop) = Stop::new();
    let result = runtime.block_on(async {
        tokio::spawn(interrupt(stop_tx));
        // Spawned, so that with --threads N the open loop's scheduler runs on a worker too.
        let run_args = args.clone();
        tokio::spawn(async move { run(&run_args, stop).await })
            .await
            .unwrap_or_else(|e| Err(format!("the run failed: {e}")))
    });
    let report = match result {
        Ok(report) => report,
        Err(e) => {
            eprintln!("modelfleet-loadgen: {e}");
            return ExitCode::from(2);
        }
    };
    let mut code = ExitCode::SUCCESS;
    if let Some(path) = &args.json_out {
        let pretty = serde_json::to_string_pretty(&report).unwrap_or_else(|_| report.json());
        if let Err(e) = std::fs::write(path, pretty + "\n") {
            eprintln!("modelfleet-loadgen: --json-out {}: {e}", path.display());
            code = ExitCode::FAILURE;
        }
    }
    let out = if args.json { report.json() } else { report.text() };
    // A closed pipe (`| head`) is not worth a panic.
    let _ = writeln!(std::io::stdout().lock(), "{out}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn run_with(url: &str, extra: &[&str]) -> Report {
        let mut argv = vec!["modelfleet-loadgen", "--url", url];
        argv.extend_from_slice(extra);
        let (_tx, stop) = Stop::new();
        run(&Args::parse_from(argv), stop).await.unwrap()
    }

    fn accounted(r: &Report) -> bool {
        let answered: u64 = r.status_counts.values().sum();
        r.sent == answered + r.errors.connect + r.errors.timeout + r.errors.other
    }

    #[tokio::test]
    async fn a_closed_loop_reports_statuses_and_json() {
        let url = format!("http://{}", testserver::spawn(5).await);
        let report = run_with(&url, &["--concurrency", "4", "--duration", "300ms"]).await;
        assert!(report.completed > 0, "{report:?}");
        let rejected = report.status_counts.get("429").copied().unwrap_or(0);
        assert!(rejected > 0, "{report:?}");
        // Every 5th answer of the server is a 429 (some went to requests outside the window).
        assert!(rejected.abs_diff(report.sent / 5) <= 5, "{report:?}");
        assert_eq!(report.completed, report.status_counts["200"]);
        assert!(accounted(&report) && report.errors == stats::ErrorKinds::default());
        assert!((0.25..1.0).contains(&report.duration_s), "{report:?}");
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["mode"], "closed");
        assert_eq!(json["status_counts"]["429"], rejected);
        assert_eq!(json["completed"], report.completed);
        assert!(json["throughput_rps"].as_f64().unwrap() > 0.0);
        assert!(json["latency_ms"]["p99"].as_f64().unwrap() >= json["latency_ms"]["p50"].as_f64().unwrap());
        let text = report.text();
        assert!(text.contains("429: ") && text.contains("throughput"), "{text}");
    }

    /// On a multi-threaded runtime, as with `--threads 2`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_open_loop_offers_its_rate_after_the_warmup() {
        let url = format!("http://{}", testserver::spawn(0).await);
        let mut sent = Vec::new();
        for timer in ["sleep", "spin"] {
            let extra = [
                "--mode",
                "open",
                "--rate",
                "400",
                "--warmup",
                "100ms",
                "--duration",
                "300ms",
            ];
            let report = run_with(&url, &[&extra[..], &["--timer", timer]].concat()).await;
            // About 120 arrivals in the measured 300 ms (standard deviation 11); all answered.
            assert!((80..=160).contains(&report.sent), "{report:?}");
            assert_eq!(report.completed, report.sent);
            assert_eq!((report.dropped_by_client, report.mode.as_str()), (0, "open"));
            assert!(accounted(&report));
            sent.push(report.sent);
        }
        // The schedule depends on the seed only, not on how the generator waits.
        assert_eq!(sent[0], sent[1]);
    }

    #[tokio::test]
    async fn requests_bound_the_run_and_in_flight_is_capped() {
        let url = format!("http://{}", testserver::spawn(0).await);
        let report = run_with(
            &url,
            &[
                "--concurrency",
                "3",
                "--requests",
                "50",
                "--inputs-per-request",
                "4",
            ],
        )
        .await;
        assert_eq!((report.sent, report.completed), (50, 50));
        assert!((report.inputs_per_s / report.throughput_rps - 4.0).abs() < 1e-9);
        // A rate far above what 1 in-flight request can carry: the excess is dropped, not hidden.
        let extra = [
            "--mode",
            "open",
            "--rate",
            "100000",
            "--max-in-flight",
            "1",
            "--requests",
            "2000",
        ];
        let report = run_with(&url, &extra).await;
        assert!(report.dropped_by_client > 0, "{report:?}");
        assert_eq!(report.sent + report.dropped_by_client, 2000);
    }

    #[tokio::test]
    async fn connections_are_reused_and_reopened() {
        let url = format!("http://{}", testserver::spawn(0).await);
        let report = run_with(&url, &["-c", "4", "-n", "200"]).await;
        assert_eq!((report.completed, report.connections), (200, 4), "{report:?}");
        // A server closing every connection after one answer: each request opens its own.
        let url = format!("http://{}", testserver::spawn_with(0, true).await);
        let report = run_with(&url, &["-c", "4", "-n", "40"]).await;
        assert_eq!((report.completed, report.connections), (40, 40), "{report:?}");
        let extra = ["--mode", "open", "--rate", "2000", "-n", "100"];
        let report = run_with(&url, &extra).await;
        assert_eq!((report.completed, report.connections), (100, 100), "{report:?}");
    }

    #[tokio::test]
    async fn unreachable_and_silent_servers_count_as_errors() {
        // A port that was free a moment ago: connection refused.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let report = run_with(&format!("http://{closed}"), &["-c", "2", "--duration", "100ms"]).await;
        assert!(report.errors.connect > 0 && report.completed == 0, "{report:?}");
        assert!(report.latency_ms.is_none() && accounted(&report));
        // A server that accepts and never answers: client-side timeouts.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let extra = ["-c", "2", "--duration", "50ms", "--timeout", "150ms"];
        let report = run_with(&format!("http://{silent}"), &extra).await;
        assert_eq!((report.errors.timeout, report.sent), (2, 2), "{report:?}");
    }

    #[tokio::test]
    async fn remote_targets_are_refused_before_any_traffic() {
        let argv = ["modelfleet-loadgen", "--url", "http://203.0.113.7:8080"];
        let (_tx, stop) = Stop::new();
        let err = run(&Args::parse_from(argv), stop).await.unwrap_err();
        assert!(err.contains("--allow-remote"), "{err}");
    }

    /// User plus system CPU seconds of `/proc/<which>/stat` (`self`: the process,
    /// `thread-self`: this thread); 0 where there is no such file.
    fn cpu_seconds(which: &str) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{which}/stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        // After the command: state is field 3, utime 14 and stime 15 (1-based), in 1/100 s.
        let ticks = |i: usize| {
            fields
                .get(i - 3)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(14) + ticks(15)) / 100.0
    }

    /// The throughput benchmark: the trivial server on its own thread (one core), the load
    /// generator on a single-threaded runtime on this one (the other core), closed loop then open
    /// loop. `cargo test --release -p modelfleet-server --bin modelfleet-loadgen -- --ignored
    /// --nocapture throughput`.
    #[test]
    #[ignore = "benchmark: run in release with --ignored --nocapture"]
    fn throughput_against_a_trivial_server() {
        let addr = testserver::spawn_on_own_thread(0);
        let url = format!("http://{addr}");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // LOADGEN_BENCH_RUNS: runs separated by `;`, each the flags of one run.
        let runs = std::env::var("LOADGEN_BENCH_RUNS").unwrap_or_else(|_| {
            "--concurrency 64; --concurrency 16; --mode open --rate 20000; --mode open --rate 25000".into()
        });
        for flags in runs.split(';') {
            let extra: Vec<&str> = flags.split_whitespace().collect();
            let (cpu_before, total_before) = (cpu_seconds("thread-self"), cpu_seconds("self"));
            let wall = Instant::now();
            let accepted = testserver::ACCEPTED.load(std::sync::atomic::Ordering::Relaxed);
            let report = runtime.block_on(async {
                let mut argv = extra.clone();
                for (flag, default) in [("--warmup", "500ms"), ("--duration", "3s")] {
                    if !argv.contains(&flag) {
                        argv.extend([flag, default]);
                    }
                }
                run_with(&url, &argv).await
            });
            // Cores busy over the whole run, warm-up included.
            let wall = wall.elapsed().as_secs_f64();
            let busy = |after: f64, before: f64| (after - before) / wall;
            let loadgen = busy(cpu_seconds("thread-self"), cpu_before);
            let server = busy(cpu_seconds("self"), total_before) - loadgen;
            println!(
                "{}\n{}\ncpu         loadgen {:.2} cores, server {:.2} cores; {} connections\n",
                extra.join(" "),
                report.text(),
                loadgen,
                server,
                testserver::ACCEPTED.load(std::sync::atomic::Ordering::Relaxed) - accepted,
            );
        }
    }
}
