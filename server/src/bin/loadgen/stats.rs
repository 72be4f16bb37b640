//! Latency samples, counts and the report (text or JSON).

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use serde::Serialize;

/// What one worker saw; merged at the end.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    /// Latencies of successful (2xx) requests, in microseconds.
    pub latencies_us: Vec<u32>,
    pub sent: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub connect_errors: u64,
    pub timeouts: u64,
    pub other_errors: u64,
    pub dropped_by_client: u64,
    /// When the last counted answer arrived: an overloaded server answers after the sending
    /// window, and throughput must be measured to here.
    pub last_answer: Option<Instant>,
}

impl Tally {
    /// Adds another worker's counts.
    pub fn merge(&mut self, other: Tally) {
        self.latencies_us.extend(other.latencies_us);
        self.sent += other.sent;
        for (code, n) in other.by_status {
            *self.by_status.entry(code).or_default() += n;
        }
        self.connect_errors += other.connect_errors;
        self.timeouts += other.timeouts;
        self.other_errors += other.other_errors;
        self.dropped_by_client += other.dropped_by_client;
        self.last_answer = self.last_answer.max(other.last_answer);
    }

    /// Records an HTTP answer that took `latency`.
    pub fn answer(&mut self, status: u16, latency: Duration) {
        *self.by_status.entry(status).or_default() += 1;
        self.last_answer = Some(Instant::now());
        if (200..300).contains(&status) {
            self.latencies_us
                .push(latency.as_micros().min(u128::from(u32::MAX)) as u32);
        }
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Errors that are not HTTP answers.
#[derive(Debug, Serialize, PartialEq)]
pub struct ErrorKinds {
    pub connect: u64,
    pub timeout: u64,
    pub other: u64,
}

/// The run's result; the JSON form is stable (documented in `--help`).
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: &'static str,
    /// Offered rate (open loop) in requests/s, or the concurrency (closed loop).
    pub target: f64,
    pub duration_s: f64,
    pub sent: u64,
    /// 2xx answers.
    pub completed: u64,
    pub throughput_rps: f64,
    pub inputs_per_s: f64,
    pub latency_ms: Option<Latency>,
    pub status_counts: BTreeMap<String, u64>,
    pub errors: ErrorKinds,
    pub dropped_by_client: u64,
}

/// The value at quantile `q` (0..=1) of sorted samples, nearest-rank.
pub fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    /// Builds the report of a measured window.
    pub fn new(
        mode: &'static str,
        target: f64,
        window: Duration,
        inputs_per_request: usize,
        mut t: Tally,
    ) -> Self {
        t.latencies_us.sort_unstable();
        let completed = t.latencies_us.len() as u64;
        let secs = window.as_secs_f64().max(1e-9);
        let ms = |us: u32| f64::from(us) / 1000.0;
        let latency_ms = (!t.latencies_us.is_empty()).then(|| Latency {
            p50: ms(percentile(&t.latencies_us, 0.50)),
            p95: ms(percentile(&t.latencies_us, 0.95)),
            p99: ms(percentile(&t.latencies_us, 0.99)),
            max: ms(*t.latencies_us.last().unwrap_or(&0)),
            mean: t.latencies_us.iter().map(|&v| f64::from(v)).sum::<f64>() / completed as f64 / 1000.0,
        });
        Self {
            mode,
            target,
            duration_s: secs,
            sent: t.sent,
            completed,
            throughput_rps: completed as f64 / secs,
            inputs_per_s: (completed as usize * inputs_per_request) as f64 / secs,
            latency_ms,
            status_counts: t.by_status.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            errors: ErrorKinds {
                connect: t.connect_errors,
                timeout: t.timeouts,
                other: t.other_errors,
            },
            dropped_by_client: t.dropped_by_client,
        }
    }

    /// Human-readable form.
    pub fn text(&self) -> String {
        let target = match self.mode {
            "open" => format!("offered {:.0} req/s", self.target),
            _ => format!("concurrency {:.0}", self.target),
        };
        let latency = match &self.latency_ms {
            Some(l) => format!(
                "latency ms   p50 {:.2}  p95 {:.2}  p99 {:.2}  max {:.2}  mean {:.2}",
                l.p50, l.p95, l.p99, l.max, l.mean
            ),
            None => "latency ms   (no successful requests)".into(),
        };
        let statuses: Vec<String> = self
            .status_counts
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        format!(
            "mode {} ({target}), {:.2} s measured\n\
             sent {}  completed {}  throughput {:.1} req/s ({:.1} inputs/s)\n\
             {latency}\n\
             status {}\n\
             errors connect {}  timeout {}  other {}  dropped by client {}",
            self.mode,
            self.duration_s,
            self.sent,
            self.completed,
            self.throughput_rps,
            self.inputs_per_s,
            if statuses.is_empty() {
                "-".into()
            } else {
                statuses.join("  ")
            },
            self.errors.connect,
            self.errors.timeout,
            self.errors.other,
            self.dropped_by_client,
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
        assert_eq!(percentile(&[7], 0.99), 7);
        assert_eq!(percentile(&[], 0.5), 0);
    }

    #[test]
    fn reports_count_only_2xx_latencies() {
        let mut t = Tally {
            sent: 3,
            ..Default::default()
        };
        t.answer(200, Duration::from_millis(2));
        t.answer(200, Duration::from_millis(4));
        t.answer(429, Duration::from_millis(1));
        let r = Report::new("closed", 2.0, Duration::from_secs(1), 2, t);
        assert_eq!((r.completed, r.inputs_per_s), (2, 4.0));
        assert_eq!(r.status_counts["429"], 1);
        assert_eq!(r.latency_ms.as_ref().map(|l| l.max), Some(4.0));
        assert!(r.text().contains("429: 1"));
    }
}
