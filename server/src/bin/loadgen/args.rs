//! The command line: flags, their parsers (durations, headers, rates) and the long help, which
//! also documents the JSON report.

use std::{path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum, builder::RangedU64ValueParser};
use http::{HeaderName, HeaderValue};

/// The default run length when neither `--duration` nor `--requests` is given.
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);

/// Load generator for modelfleet-server's OpenAI-compatible `POST /v1/embeddings`.
///
/// Sends `{"model": <--model>, "input": [<--inputs-per-request sentences>]}` over HTTP/1.1
/// keep-alive connections (one request at a time on each, a new one only when none is idle) and
/// reports what came back.
///
/// MODES
///   closed (default)  --concurrency C workers, each sending its next request as soon as the
///                     last one is answered: finds the saturation throughput.
///   open              Poisson arrivals at --rate R requests/s (exponential gaps) scheduled
///                     against absolute times, so a slow server does not lower the offered load.
///                     Latency is measured from each request's scheduled send time (no
///                     coordinated omission). At most --max-in-flight requests are outstanding;
///                     an arrival beyond that is counted as dropped_by_client, never skipped.
///                     --timer: tokio's timer ticks every 1 ms, so a sleeping generator sends up
///                     to about 2 ms late (counted as latency; see max_send_lag_ms); a spinning
///                     one sleeps to 2 ms before each arrival and yields for the rest: it sends
///                     within microseconds but keeps a core busy. auto spins from 1000 req/s.
///
/// LENGTH
///   --duration and/or --requests: the run stops at whichever comes first; with neither it
///   lasts 10s. --warmup load is sent first and not counted (--requests counts measured
///   requests only). Every run stops by itself; Ctrl-C stops it early and still prints the
///   report (a second Ctrl-C exits at once).
///
/// REPORT
///   Latency percentiles are over successful (2xx) requests only. Text on stdout by default;
///   --json prints one JSON object on one line instead; --json-out FILE writes the same object
///   to FILE (in addition to the text, or to --json). Fields (stable):
///     mode               "closed" | "open"
///     target             the concurrency (closed) or the offered rate in req/s (open)
///     duration_s         measured window: end of the warm-up to the last HTTP answer
///     sent               requests sent in the window (answered or failed)
///     completed          2xx answers
///     throughput_rps     completed / duration_s
///     inputs_per_s       completed * inputs per request / duration_s
///     latency_ms         {p50, p95, p99, max, mean} in ms (nearest rank); null without a 2xx
///     status_counts      {"200": n, "429": n, ...}: HTTP answers by status
///     errors             {connect, timeout, other}: requests that got no HTTP answer
///     dropped_by_client  open loop: arrivals not sent because --max-in-flight were outstanding
///     max_send_lag_ms    open loop: largest delay of a send behind its scheduled time (over a
///                        few ms: the generator could not keep up; try --threads); 0 closed
///     connections        TCP connections opened (warm-up included): the concurrency in the
///                        closed loop, the peak in flight in the open loop, more if the server
///                        closed connections
///     interrupted        true when Ctrl-C ended the run early
///   sent = sum(status_counts) + errors.connect + errors.timeout + errors.other.
///
/// SAFETY
///   Only loopback targets (127.0.0.0/8, ::1) unless --allow-remote is given.
///
/// EXIT STATUS
///   0 the report was printed (whatever the server answered), 1 the report could not be
///   written, 2 bad arguments or an unusable --url / --texts-file.
///
/// EXAMPLES
///   modelfleet-loadgen --concurrency 64 --duration 20s --warmup 3s
///   modelfleet-loadgen --mode open --rate 150 --duration 30s --header x-modelfleet-tier:high
///   modelfleet-loadgen --concurrency 32 --requests 5000 --json-out result.json
///   modelfleet-loadgen --mode open --rate 20000 --duration 5s --threads 2 --json
///   modelfleet-loadgen --url http://127.0.0.1:9090 --inputs-per-request 8 --texts-file corpus.txt
#[derive(Parser, Debug, Clone)]
#[command(name = "modelfleet-loadgen", version, verbatim_doc_comment)]
pub struct Args {
    /// Base URL of the server; requests go to <URL>/v1/embeddings. Loopback only unless
    /// --allow-remote.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Allow a --url outside 127.0.0.0/8 and ::1.
    #[arg(long)]
    pub allow_remote: bool,
    /// Model name sent in each request.
    #[arg(long, default_value = "minilm")]
    pub model: String,
    /// Load shape: closed (fixed concurrency) or open (Poisson arrivals at --rate).
    #[arg(long, value_enum, default_value_t = Mode::Closed)]
    pub mode: Mode,
    /// Closed loop: workers sending back to back (also the connection pool size).
    #[arg(long, short = 'c', default_value_t = 16, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub concurrency: usize,
    /// Open loop: mean arrival rate in requests/s.
    #[arg(long, short = 'r', default_value_t = 100.0, value_parser = parse_rate)]
    pub rate: f64,
    /// Open loop: how to wait for the next arrival (see MODES above).
    #[arg(long, value_enum, default_value_t = Timer::Auto)]
    pub timer: Timer,
    /// Open loop: most requests outstanding; an arrival beyond it counts as dropped_by_client.
    /// Each outstanding request holds a connection: keep `ulimit -n` above it.
    #[arg(long, default_value_t = 4096, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1_000_000))]
    pub max_in_flight: usize,
    /// How long to measure (after the warm-up), e.g. 500ms, 10s, 1.5m [default: 10s unless
    /// --requests is given].
    #[arg(long, short = 'd', value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many measured requests (arrivals in the open loop).
    #[arg(long, short = 'n', value_parser = RangedU64ValueParser::<u64>::new().range(1..))]
    pub requests: Option<u64>,
    /// Load sent before measuring and not counted, e.g. 2s.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Inputs (sentences) per request.
    #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=100_000))]
    pub inputs_per_request: usize,
    /// File with one sentence per line (blank lines skipped) [default: 20 built-in sentences of
    /// 2 to 14 words].
    #[arg(long)]
    pub texts_file: Option<PathBuf>,
    /// Extra request header `name:value`, repeatable, e.g. `x-modelfleet-tier:high`.
    #[arg(long = "header", short = 'H', value_name = "NAME:VALUE", value_parser = parse_header)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Client-side timeout per request (connecting included).
    #[arg(long, default_value = "30s", value_parser = parse_positive_duration)]
    pub timeout: Duration,
    /// Print the report as one JSON object (one line) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub json_out: Option<PathBuf>,
    /// Async worker threads; 1 (a single-threaded runtime) leaves the other cores to the server.
    #[arg(long, default_value_t = 1, value_parser = RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub threads: usize,
    /// Seed of the open-loop arrival process (the same seed gives the same schedule).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

impl Args {
    /// The measured length: `--duration`, else unlimited when `--requests` bounds the run, else
    /// [`DEFAULT_DURATION`].
    pub fn measure_for(&self) -> Option<Duration> {
        match (self.duration, self.requests) {
            (Some(d), _) => Some(d),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_DURATION),
        }
    }
}

/// The load shape.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fixed concurrency, back-to-back requests.
    Closed,
    /// Poisson arrivals at a fixed rate.
    Open,
}

impl Mode {
    /// The name used in the report.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Closed => "closed",
            Mode::Open => "open",
        }
    }
}

/// How the open loop waits for an arrival.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Spin from 1000 req/s, sleep below.
    Auto,
    /// Sleep to each arrival: idle CPU, sends up to about 2 ms late.
    Sleep,
    /// Sleep to 2 ms before each arrival, then yield until it: sends on time, busy CPU.
    Spin,
}

impl Timer {
    /// The rate from which `auto` spins.
    pub const SPIN_FROM_RATE: f64 = 1000.0;

    /// Whether to spin at `rate` requests/s.
    pub fn spins_at(self, rate: f64) -> bool {
        match self {
            Timer::Auto => rate >= Self::SPIN_FROM_RATE,
            Timer::Sleep => false,
            Timer::Spin => true,
        }
    }
}

/// Parses `500ms`, `10s`, `1.5m`, `2h`, `250us` or a bare number of seconds. Clap prefixes the
/// error with the flag's name.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{s}` is not a duration; expected e.g. 500ms, 10s or 1m"))?;
    let seconds = match unit.trim() {
        "us" => value / 1e6,
        "ms" => value / 1e3,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("`{s}`: unknown unit `{other}`; use us, ms, s, m or h")),
    };
    match Duration::try_from_secs_f64(seconds) {
        Ok(d) if d <= MAX_DURATION => Ok(d),
        _ => Err(format!("`{s}` is out of range (at most 365 days)")),
    }
}

/// The longest duration accepted, so that adding it to the current time cannot overflow.
const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Like [`parse_duration`] but refuses zero.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err(format!("`{s}` must be more than zero")),
        d => Ok(d),
    }
}

/// Parses a positive, finite rate in requests/s.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if (0.001..=10_000_000.0).contains(&r) => Ok(r),
        _ => Err(format!("`{s}`: expected requests/s from 0.001 to 10000000")),
    }
}

/// Parses `name:value` into a header; spaces around either part are trimmed.
pub fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (k, v) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected name:value"))?;
    let name = HeaderName::try_from(k.trim()).map_err(|e| format!("`{s}`: header name: {e}"))?;
    let value = HeaderValue::try_from(v.trim()).map_err(|e| format!("`{s}`: header value: {e}"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Args, String> {
        let argv = std::iter::once("modelfleet-loadgen").chain(extra.iter().copied());
        Args::try_parse_from(argv).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_parse_in_every_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("5d").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        assert!(parse_duration("-1s").is_err());
        assert!(
            parse_duration("99999999999999999999999h")
                .unwrap_err()
                .contains("out of range")
        );
        assert!(parse_duration("366d").is_err() && parse_duration("8761h").is_err());
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        assert!(parse_rate("0").is_err() && parse_rate("NaN").is_err() && parse_rate("inf").is_err());
    }

    #[test]
    fn bad_values_name_their_flag() {
        let e = parse(&["--duration", "5x"]).unwrap_err();
        assert!(e.contains("--duration") && e.contains("unknown unit"), "{e}");
        let e = parse(&["--warmup", "later"]).unwrap_err();
        assert!(e.contains("--warmup"), "{e}");
        let e = parse(&["--timeout", "0s"]).unwrap_err();
        assert!(e.contains("--timeout") && e.contains("more than zero"), "{e}");
        let e = parse(&["--rate=-3"]).unwrap_err();
        assert!(e.contains("--rate"), "{e}");
        let e = parse(&["--concurrency", "0"]).unwrap_err();
        assert!(e.contains("--concurrency"), "{e}");
        let e = parse(&["--header", "novalue"]).unwrap_err();
        assert!(e.contains("--header") && e.contains("name:value"), "{e}");
    }

    #[test]
    fn defaults_and_run_length() {
        let a = parse(&[]).unwrap();
        assert_eq!(a.url, "http://127.0.0.1:8080");
        assert_eq!((a.model.as_str(), a.mode, a.threads), ("minilm", Mode::Closed, 1));
        assert_eq!((a.max_in_flight, a.inputs_per_request), (4096, 1));
        assert_eq!(a.measure_for(), Some(DEFAULT_DURATION));
        assert!(!a.timer.spins_at(999.0) && a.timer.spins_at(1000.0));
        assert!(parse(&["--timer", "spin"]).unwrap().timer.spins_at(1.0));
        assert!(!parse(&["--timer", "sleep"]).unwrap().timer.spins_at(1e6));
        assert_eq!(parse(&["-n", "100"]).unwrap().measure_for(), None);
        let both = parse(&["-n", "100", "--duration", "2s"]).unwrap();
        assert_eq!(both.measure_for(), Some(Duration::from_secs(2)));
        let h = parse(&["-H", "x-modelfleet-tier: high", "--header", "a:b"]).unwrap();
        assert_eq!(h.headers.len(), 2);
        assert_eq!(h.headers[0].0.as_str(), "x-modelfleet-tier");
        assert_eq!(h.headers[0].1, "high");
    }

    #[test]
    fn the_long_help_documents_the_json_fields() {
        use clap::CommandFactory;
        let short = Args::command().render_help().to_string();
        assert!(short.starts_with("Load generator"), "{short}");
        let help = Args::command().render_long_help().to_string();
        for field in [
            "throughput_rps",
            "inputs_per_s",
            "latency_ms",
            "status_counts",
            "dropped_by_client",
            "EXAMPLES",
        ] {
            assert!(help.contains(field), "--help lacks {field}");
        }
    }
}
