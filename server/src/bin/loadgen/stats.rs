//! Counting: per-worker tallies (latency samples in microseconds, counts by status and error),
//! their merge, nearest-rank percentiles and the report as text or JSON.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::client::Outcome;

/// What one worker saw in the measured window; merged at the end.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Latencies of successful (2xx) requests, in microseconds.
    pub latencies_us: Vec<u32>,
    /// Requests sent: every recorded outcome.
    pub sent: u64,
    /// HTTP answers by status.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests for which no connection could be made.
    pub connect_errors: u64,
    /// Requests without a complete answer within `--timeout`.
    pub timeouts: u64,
    /// Requests that failed otherwise (connection broken, malformed answer).
    pub other_errors: u64,
    /// Open loop: arrivals not sent because `--max-in-flight` requests were outstanding.
    pub dropped_by_client: u64,
    /// Open loop: the largest delay of a send behind its scheduled time (the generator lagging).
    pub max_send_lag: Duration,
    /// When the last HTTP answer arrived: an overloaded server answers after the sending window,
    /// and throughput is measured to here.
    pub last_answer: Option<Instant>,
}

impl Tally {
    /// Records a request's outcome, `latency` after it was (scheduled to be) sent, seen at `now`.
    pub fn record(&mut self, outcome: Outcome, latency: Duration, now: Instant) {
        self.sent += 1;
        match outcome {
            Outcome::Status(status) => {
                *self.by_status.entry(status).or_default() += 1;
                self.last_answer = Some(self.last_answer.map_or(now, |t| t.max(now)));
                if (200..300).contains(&status) {
                    self.latencies_us
                        .push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
                }
            }
            Outcome::Connect => self.connect_errors += 1,
            Outcome::Timeout => self.timeouts += 1,
            Outcome::Other => self.other_errors += 1,
        }
    }

    /// Adds another worker's tally.
    pub fn merge(&mut self, other: Tally) {
        if self.latencies_us.is_empty() {
            self.latencies_us = other.latencies_us;
        } else {
            self.latencies_us.extend_from_slice(&other.latencies_us);
        }
        self.sent += other.sent;
        for (code, n) in other.by_status {
            *self.by_status.entry(code).or_default() += n;
        }
        self.connect_errors += other.connect_errors;
        self.timeouts += other.timeouts;
        self.other_errors += other.other_errors;
        self.dropped_by_client += other.dropped_by_client;
        self.max_send_lag = self.max_send_lag.max(other.max_send_lag);
        self.last_answer = self.last_answer.max(other.last_answer);
    }
}

/// The value at quantile `q` (0..=1) of ascending `sorted` samples, nearest rank: the smallest
/// sample with at least `q` of the samples at or below it. 0 for no samples.
pub fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Latency of successful requests in milliseconds.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 95th percentile.
    pub p95: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Slowest.
    pub max: f64,
    /// Arithmetic mean.
    pub mean: f64,
}

/// Requests that got no HTTP answer, by kind.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorKinds {
    /// No connection could be made.
    pub connect: u64,
    /// No complete answer within `--timeout`.
    pub timeout: u64,
    /// The connection broke or the answer was malformed.
    pub other: u64,
}

/// The run's result. The JSON field names are stable and documented in `--help`.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    /// `closed` or `open`.
    pub mode: String,
    /// The concurrency (closed loop) or the offered rate in requests/s (open loop).
    pub target: f64,
    /// The measured window in seconds: from the end of the warm-up to the last HTTP answer.
    pub duration_s: f64,
    /// Requests sent in the window, answered or failed.
    pub sent: u64,
    /// 2xx answers.
    pub completed: u64,
    /// `completed / duration_s`.
    pub throughput_rps: f64,
    /// `completed * inputs per request / duration_s`.
    pub inputs_per_s: f64,
    /// `None` (JSON null) without a successful request.
    pub latency_ms: Option<Latency>,
    /// HTTP answers by status, keyed by the status as a string.
    pub status_counts: BTreeMap<String, u64>,
    /// Requests that got no HTTP answer.
    pub errors: ErrorKinds,
    /// Open loop: arrivals not sent because `--max-in-flight` requests were outstanding.
    pub dropped_by_client: u64,
    /// Open loop: the largest delay of a send behind its scheduled time in ms; more than a few
    /// ms means the generator could not keep up with the rate. 0 in the closed loop.
    pub max_send_lag_ms: f64,
    /// TCP connections opened (warm-up included).
    pub connections: u64,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
}

/// What a report describes besides the tally.
#[derive(Debug, Clone, Copy)]
pub struct RunInfo {
    /// `closed` or `open`.
    pub mode: &'static str,
    /// The concurrency or the offered rate.
    pub target: f64,
    /// Inputs in each request, for `inputs_per_s`.
    pub inputs_per_request: usize,
    /// The measured window.
    pub window: Duration,
    /// TCP connections opened.
    pub connections: u64,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
}

impl Report {
    /// Builds the report from the merged tally (its samples are sorted here).
    pub fn new(info: RunInfo, mut t: Tally) -> Self {
        t.latencies_us.sort_unstable();
        let samples = &t.latencies_us;
        let completed = samples.len() as u64;
        let secs = info.window.as_secs_f64().max(1e-9);
        let ms = |us: u32| f64::from(us) / 1000.0;
        let latency_ms = (!samples.is_empty()).then(|| Latency {
            p50: ms(percentile(samples, 0.50)),
            p95: ms(percentile(samples, 0.95)),
            p99: ms(percentile(samples, 0.99)),
            max: ms(samples.last().copied().unwrap_or(0)),
            mean: samples.iter().map(|&v| u64::from(v)).sum::<u64>() as f64 / completed as f64 / 1000.0,
        });
        Self {
            mode: info.mode.to_owned(),
            target: info.target,
            duration_s: secs,
            sent: t.sent,
            completed,
            throughput_rps: completed as f64 / secs,
            inputs_per_s: (completed as f64 * info.inputs_per_request as f64) / secs,
            latency_ms,
            status_counts: t.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            errors: ErrorKinds {
                connect: t.connect_errors,
                timeout: t.timeouts,
                other: t.other_errors,
            },
            dropped_by_client: t.dropped_by_client,
            max_send_lag_ms: t.max_send_lag.as_secs_f64() * 1000.0,
            connections: info.connections,
            interrupted: info.interrupted,
        }
    }

    /// The JSON form on one line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// The human-readable form.
    pub fn text(&self) -> String {
        let target = match self.mode.as_str() {
            "open" => format!("offered {} req/s", self.target),
            _ => format!("concurrency {}", self.target),
        };
        let latency = match &self.latency_ms {
            Some(l) => format!(
                "latency ms  p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}  mean {:.3}",
                l.p50, l.p95, l.p99, l.max, l.mean
            ),
            None => "latency ms  - (no successful request)".into(),
        };
        let statuses = if self.status_counts.is_empty() {
            "-".to_owned()
        } else {
            let all: Vec<String> = self
                .status_counts
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            all.join("  ")
        };
        format!(
            "mode {} ({target}), {:.3} s measured{}\n\
             sent {}  completed {}  throughput {:.1} req/s  {:.1} inputs/s\n\
             {latency}\n\
             status      {statuses}\n\
             errors      connect {}  timeout {}  other {}  dropped by client {}\n\
             connections {} opened{}",
            self.mode,
            self.duration_s,
            if self.interrupted { " (interrupted)" } else { "" },
            self.sent,
            self.completed,
            self.throughput_rps,
            self.inputs_per_s,
            self.errors.connect,
            self.errors.timeout,
            self.errors.other,
            self.dropped_by_client,
            self.connections,
            if self.mode == "open" {
                format!("\nsend lag    max {:.3} ms behind schedule", self.max_send_lag_ms)
            } else {
                String::new()
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.5), 50);
        assert_eq!(percentile(&v, 0.95), 95);
        assert_eq!(percentile(&v, 0.99), 99);
        assert_eq!(percentile(&v, 1.0), 100);
        assert_eq!(percentile(&v, 0.0), 1);
        let ten = [10, 20, 30, 40, 50, 60, 70, 80, 90, 1000];
        assert_eq!(percentile(&ten, 0.5), 50);
        assert_eq!(percentile(&ten, 0.95), 1000);
        assert_eq!(percentile(&ten, 0.9), 90);
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn reports_count_2xx_latencies_and_every_outcome() {
        let now = Instant::now();
        let ms = Duration::from_millis;
        let mut a = Tally::default();
        a.record(Outcome::Status(200), ms(2), now);
        a.record(Outcome::Status(429), ms(1), now);
        a.record(Outcome::Timeout, ms(30), now);
        let mut b = Tally::default();
        b.record(Outcome::Status(200), ms(4), now);
        b.record(Outcome::Connect, ms(0), now);
        b.record(Outcome::Other, ms(0), now);
        b.dropped_by_client = 5;
        a.merge(b);
        let info = RunInfo {
            mode: "closed",
            target: 2.0,
            inputs_per_request: 2,
            window: Duration::from_secs(1),
            connections: 2,
            interrupted: false,
        };
        let r = Report::new(info, a);
        assert_eq!((r.sent, r.completed, r.inputs_per_s), (6, 2, 4.0));
        assert_eq!((r.status_counts["200"], r.status_counts["429"]), (2, 1));
        assert_eq!(
            r.errors,
            ErrorKinds {
                connect: 1,
                timeout: 1,
                other: 1
            }
        );
        let l = r.latency_ms.as_ref().unwrap();
        assert_eq!((l.p50, l.max, l.mean), (2.0, 4.0, 3.0));
        let answered: u64 = r.status_counts.values().sum();
        assert_eq!(
            r.sent,
            answered + r.errors.connect + r.errors.timeout + r.errors.other
        );
        assert!(r.text().contains("429: 1") && r.text().contains("dropped by client 5"));
        let back: Report = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn no_success_gives_null_latency() {
        let mut t = Tally::default();
        t.record(Outcome::Status(503), Duration::from_millis(1), Instant::now());
        let info = RunInfo {
            mode: "open",
            target: 50.0,
            inputs_per_request: 1,
            window: Duration::from_secs(2),
            connections: 0,
            interrupted: true,
        };
        let r = Report::new(info, t);
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert!(v["latency_ms"].is_null());
        assert_eq!(v["interrupted"], true);
        assert!(r.text().contains("no successful request") && r.text().contains("offered 50 req/s"));
    }
}
