//! The simulated load of one server pod: the settings a test chooses ([`PodLoad`]) and the
//! counters they accumulate over time, rendered in modelfleet-server's exposition format (the
//! families and label shapes of `node-agent/tests/fixtures/server-metrics.txt`).

use modelfleet_contract::metrics::{self, labels, shadow_result};
use std::time::Instant;

/// Upper bounds (seconds) of modelfleet-server's request-duration buckets: 0.5 ms doubling to
/// 65.536 s, then `+Inf`.
pub const DURATION_BUCKETS: [f64; 18] = [
    0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192,
    16.384, 32.768, 65.536,
];

/// Upper bounds of modelfleet-server's batch-size buckets (inputs per batch), then `+Inf`.
pub const BATCH_BUCKETS: [f64; 13] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// The tier every simulated request belongs to.
pub const TIER: &str = "default";

/// What a simulated server pod reports. Gauges (`queued`, `running`, `busy_ratio`) are read as
/// they are at scrape time; rates make the counters grow by rate × elapsed time. The default is
/// an idle server: everything zero.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PodLoad {
    /// Requests waiting, all in tier `default` (`modelfleet_requests_queued` and
    /// `modelfleet_queue_depth{tier="default"}`).
    pub queued: f64,
    /// Requests in running batches (`modelfleet_requests_running`).
    pub running: f64,
    /// Answered requests per second (`modelfleet_requests_total`).
    pub request_rate: f64,
    /// Share (0 to 1) of the answered requests that are 503s.
    pub error_rate: f64,
    /// Every request is observed at this duration (seconds), so p50, p95 and p99 fall in its
    /// histogram bucket.
    pub latency_seconds: f64,
    /// `modelfleet_busy_ratio`, 0 to 1 (the simulated GPU of the pod follows it).
    pub busy_ratio: f64,
    /// Inputs per batch: batches form at `request_rate / batch_size` per second, each of this
    /// size. Zero: no batches.
    pub batch_size: f64,
    /// Shadow comparisons that agreed, per second.
    pub shadow_agree_rate: f64,
    /// Shadow comparisons that disagreed, per second.
    pub shadow_disagree_rate: f64,
    /// Shadow comparisons that failed, per second.
    pub shadow_error_rate: f64,
    /// Generation servers: every request's first token comes after this many seconds
    /// (`modelfleet_time_to_first_token_seconds`); zero: no first tokens (an embeddings server).
    pub ttft_seconds: f64,
    /// Generation servers: tokens generated per answered request
    /// (`modelfleet_generated_tokens_total`).
    pub tokens_per_request: f64,
    /// Generation servers: `modelfleet_kv_cache_usage_ratio`, 0 to 1.
    pub kv_cache_usage: f64,
}

impl PodLoad {
    /// An idle server (the default).
    pub fn idle() -> Self {
        Self::default()
    }

    /// One of `pods` equal shares of this load: counts and rates divided, shares, latency,
    /// busy ratio and batch size kept.
    pub fn split(&self, pods: usize) -> Self {
        let n = pods.max(1) as f64;
        Self {
            queued: self.queued / n,
            running: self.running / n,
            request_rate: self.request_rate / n,
            shadow_agree_rate: self.shadow_agree_rate / n,
            shadow_disagree_rate: self.shadow_disagree_rate / n,
            shadow_error_rate: self.shadow_error_rate / n,
            ..*self
        }
    }
}

/// A non-negative finite value (anything else reads 0), so the exposition never holds `inf` or
/// `NaN` and counters never go down.
fn non_negative(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 { x } else { 0.0 }
}

/// The cumulative counters of one simulated pod.
#[derive(Debug, Clone)]
pub(crate) struct Counters {
    ok: f64,
    unavailable: f64,
    /// Observations per duration bucket (not cumulative); the last one is `+Inf`.
    duration: [f64; DURATION_BUCKETS.len() + 1],
    duration_sum: f64,
    batch: [f64; BATCH_BUCKETS.len() + 1],
    batch_sum: f64,
    batch_count: f64,
    shadow_agree: f64,
    shadow_disagree: f64,
    shadow_error: f64,
    /// First tokens per TTFT bucket (not cumulative), like `duration`.
    ttft: [f64; DURATION_BUCKETS.len() + 1],
    ttft_sum: f64,
    generated_tokens: f64,
    at: Instant,
}

/// A seconds histogram of tier [`TIER`] over [`DURATION_BUCKETS`]: type, unit, sum, count and
/// cumulative buckets from per-bucket `counts`.
fn histogram(line: &mut impl FnMut(&str), m: metrics::ServerMetric, counts: &[f64], sum: f64) {
    let name = m.sample;
    line(&format!("# TYPE {name} histogram"));
    line(&format!("# UNIT {name} seconds"));
    let total: f64 = counts.iter().sum();
    line(&format!("{}{{{}=\"{TIER}\"}} {sum}", m.sum(), labels::TIER));
    line(&format!("{}{{{}=\"{TIER}\"}} {total}", m.count(), labels::TIER));
    let mut cumulative = 0.0;
    for (i, count) in counts.iter().enumerate() {
        cumulative += count;
        let le = DURATION_BUCKETS
            .get(i)
            .map_or_else(|| "+Inf".to_string(), f64::to_string);
        line(&format!(
            "{}{{le=\"{le}\",{}=\"{TIER}\"}} {cumulative}",
            m.bucket(),
            labels::TIER
        ));
    }
}

/// Index of the bucket holding `value` among `bounds` (`bounds.len()` for `+Inf`).
fn bucket(bounds: &[f64], value: f64) -> usize {
    bounds.iter().position(|b| value <= *b).unwrap_or(bounds.len())
}

impl Counters {
    /// All zero, as of `at`.
    pub(crate) fn new(at: Instant) -> Self {
        Self {
            ok: 0.0,
            unavailable: 0.0,
            duration: [0.0; DURATION_BUCKETS.len() + 1],
            duration_sum: 0.0,
            batch: [0.0; BATCH_BUCKETS.len() + 1],
            batch_sum: 0.0,
            batch_count: 0.0,
            shadow_agree: 0.0,
            shadow_disagree: 0.0,
            shadow_error: 0.0,
            ttft: [0.0; DURATION_BUCKETS.len() + 1],
            ttft_sum: 0.0,
            generated_tokens: 0.0,
            at,
        }
    }

    /// Adds what `load` produced between the last advance and `now`.
    pub(crate) fn advance(&mut self, load: &PodLoad, now: Instant) {
        if now <= self.at {
            return;
        }
        let seconds = now.duration_since(self.at).as_secs_f64();
        self.at = now;
        let requests = non_negative(load.request_rate) * seconds;
        let errors = requests * non_negative(load.error_rate).min(1.0);
        self.ok += requests - errors;
        self.unavailable += errors;
        let latency = non_negative(load.latency_seconds);
        self.duration[bucket(&DURATION_BUCKETS, latency)] += requests;
        self.duration_sum += requests * latency;
        let batch_size = non_negative(load.batch_size);
        if batch_size > 0.0 {
            let batches = requests / batch_size;
            self.batch[bucket(&BATCH_BUCKETS, batch_size)] += batches;
            self.batch_count += batches;
            self.batch_sum += requests;
        }
        self.shadow_agree += non_negative(load.shadow_agree_rate) * seconds;
        self.shadow_disagree += non_negative(load.shadow_disagree_rate) * seconds;
        self.shadow_error += non_negative(load.shadow_error_rate) * seconds;
        let ttft = non_negative(load.ttft_seconds);
        if ttft > 0.0 {
            self.ttft[bucket(&DURATION_BUCKETS, ttft)] += requests;
            self.ttft_sum += requests * ttft;
        }
        self.generated_tokens += requests * non_negative(load.tokens_per_request);
    }

    /// Requests answered so far (all codes).
    #[cfg(test)]
    pub(crate) fn requests(&self) -> f64 {
        self.ok + self.unavailable
    }

    /// The exposition: these counters and the gauges of `load`.
    pub(crate) fn render(&self, load: &PodLoad) -> String {
        let mut out = String::with_capacity(4096);
        let mut line = |s: &str| {
            out.push_str(s);
            out.push('\n');
        };
        line("# HELP modelfleet_requests Answered requests by API, tier and HTTP status code.");
        line("# TYPE modelfleet_requests counter");
        for (code, value) in [("200", self.ok), ("503", self.unavailable)] {
            line(&format!(
                "{}{{api=\"openai\",{}=\"{TIER}\",{}=\"{code}\"}} {value}",
                metrics::REQUESTS.sample,
                labels::TIER,
                labels::CODE
            ));
        }
        line("# HELP modelfleet_request_duration_seconds Time from arrival to answer, by tier.");
        histogram(
            &mut line,
            metrics::REQUEST_DURATION,
            &self.duration,
            self.duration_sum,
        );
        line(
            "# HELP modelfleet_time_to_first_token_seconds Time from arrival to the first generated token, by tier.",
        );
        histogram(&mut line, metrics::TIME_TO_FIRST_TOKEN, &self.ttft, self.ttft_sum);
        line("# HELP modelfleet_generated_tokens Tokens generated.");
        line("# TYPE modelfleet_generated_tokens counter");
        line(&format!(
            "{} {}",
            metrics::GENERATED_TOKENS.sample,
            self.generated_tokens
        ));
        line(
            "# HELP modelfleet_kv_cache_usage_ratio Share of the KV-cache token budget reserved by running sequences, 0 to 1.",
        );
        line("# TYPE modelfleet_kv_cache_usage_ratio gauge");
        line(&format!(
            "{} {}",
            metrics::KV_CACHE_USAGE.sample,
            non_negative(load.kv_cache_usage).min(1.0)
        ));
        line("# HELP modelfleet_batch_size Inputs per batch.");
        line("# TYPE modelfleet_batch_size histogram");
        line(&format!("{} {:?}", metrics::BATCH_SIZE.sum(), self.batch_sum));
        line(&format!("{} {}", metrics::BATCH_SIZE.count(), self.batch_count));
        let mut cumulative = 0.0;
        for (i, count) in self.batch.iter().enumerate() {
            cumulative += count;
            let le = BATCH_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| format!("{b:?}"));
            line(&format!(
                "{}{{le=\"{le}\"}} {cumulative}",
                metrics::BATCH_SIZE.bucket()
            ));
        }
        let queued = non_negative(load.queued);
        line("# HELP modelfleet_queue_depth Requests waiting in the queue, by tier.");
        line("# TYPE modelfleet_queue_depth gauge");
        line(&format!(
            "{}{{{}=\"{TIER}\"}} {queued}",
            metrics::QUEUE_DEPTH.sample,
            labels::TIER
        ));
        line(
            "# HELP modelfleet_requests_queued Requests waiting in the queue (Gateway API Inference Extension: total queued requests).",
        );
        line("# TYPE modelfleet_requests_queued gauge");
        line(&format!("{} {queued}", metrics::REQUESTS_QUEUED.sample));
        line(
            "# HELP modelfleet_requests_running Requests in batches the backend is running (Gateway API Inference Extension: total running requests).",
        );
        line("# TYPE modelfleet_requests_running gauge");
        line(&format!(
            "{} {}",
            metrics::REQUESTS_RUNNING.sample,
            non_negative(load.running)
        ));
        line(
            "# HELP modelfleet_busy_ratio Share of the last second the backend was running batches (0 to 1, per concurrent batch slot).",
        );
        line("# TYPE modelfleet_busy_ratio gauge");
        line(&format!(
            "{} {}",
            metrics::BUSY_RATIO.sample,
            non_negative(load.busy_ratio).min(1.0)
        ));
        line("# HELP modelfleet_shadow_comparisons Shadow outputs compared with the primary's.");
        line("# TYPE modelfleet_shadow_comparisons counter");
        for (result, value) in [
            (shadow_result::AGREE, self.shadow_agree),
            (shadow_result::DISAGREE, self.shadow_disagree),
            (shadow_result::ERROR, self.shadow_error),
        ] {
            line(&format!(
                "{}{{{}=\"{result}\"}} {value}",
                metrics::SHADOW_COMPARISONS.sample,
                labels::RESULT
            ));
        }
        line(
            "# HELP modelfleet_model_info 1 for the served model, with its version, backend, device and whether it is simulated.",
        );
        line("# TYPE modelfleet_model_info gauge");
        line(
            "modelfleet_model_info{model=\"simulated\",version=\"0\",backend=\"e2e-load-simulator\",device=\"simulated\",simulated=\"true\"} 1",
        );
        line("# HELP modelfleet_ready 1 when the model is loaded, warmed up and the server is not draining.");
        line("# TYPE modelfleet_ready gauge");
        line("modelfleet_ready 1");
        line("# EOF");
        out
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use super::*;

    /// `name{labels} value` lines of an exposition, keyed by everything before the value.
    fn samples(text: &str) -> BTreeMap<String, f64> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (key, value) = l.rsplit_once(' ').unwrap();
                (key.to_string(), value.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn counters_grow_with_rate_times_elapsed_time_and_gauges_read_the_current_load() {
        let t0 = Instant::now();
        let mut c = Counters::new(t0);
        let load = PodLoad {
            queued: 12.0,
            running: 3.0,
            request_rate: 50.0,
            error_rate: 0.1,
            latency_seconds: 0.2,
            busy_ratio: 0.5,
            batch_size: 4.0,
            shadow_agree_rate: 2.0,
            shadow_disagree_rate: 1.0,
            ..Default::default()
        };
        c.advance(&load, t0 + Duration::from_secs(2));
        let s = samples(&c.render(&load));
        let ok = s[r#"modelfleet_requests_total{api="openai",tier="default",code="200"}"#];
        let unavailable = s[r#"modelfleet_requests_total{api="openai",tier="default",code="503"}"#];
        assert!(
            (ok - 90.0).abs() < 1e-6 && (unavailable - 10.0).abs() < 1e-6,
            "{ok} {unavailable}"
        );
        assert_eq!(
            s[r#"modelfleet_request_duration_seconds_bucket{le="0.128",tier="default"}"#],
            0.0
        );
        assert!(
            (s[r#"modelfleet_request_duration_seconds_bucket{le="0.256",tier="default"}"#] - 100.0).abs()
                < 1e-6
        );
        assert!(
            (s[r#"modelfleet_request_duration_seconds_bucket{le="+Inf",tier="default"}"#] - 100.0).abs()
                < 1e-6
        );
        assert!((s[r#"modelfleet_request_duration_seconds_sum{tier="default"}"#] - 20.0).abs() < 1e-6);
        assert!((s["modelfleet_batch_size_sum"] / s["modelfleet_batch_size_count"] - 4.0).abs() < 1e-9);
        assert_eq!(s[r#"modelfleet_queue_depth{tier="default"}"#], 12.0);
        assert_eq!(s["modelfleet_requests_queued"], 12.0);
        assert_eq!(s["modelfleet_requests_running"], 3.0);
        assert_eq!(s["modelfleet_busy_ratio"], 0.5);
        assert!((s[r#"modelfleet_shadow_comparisons_total{result="agree"}"#] - 4.0).abs() < 1e-6);
        assert!((s[r#"modelfleet_shadow_comparisons_total{result="disagree"}"#] - 2.0).abs() < 1e-6);
        assert_eq!(s[r#"modelfleet_shadow_comparisons_total{result="error"}"#], 0.0);
    }

    #[test]
    fn a_load_change_keeps_counters_monotonic_and_bad_values_read_zero() {
        let t0 = Instant::now();
        let mut c = Counters::new(t0);
        let busy = PodLoad {
            request_rate: 10.0,
            ..Default::default()
        };
        c.advance(&busy, t0 + Duration::from_secs(1));
        let before = c.requests();
        c.advance(&PodLoad::idle(), t0 + Duration::from_secs(5));
        assert_eq!(c.requests(), before, "idle adds nothing");
        // Time going backwards (an older instant) adds nothing either.
        c.advance(&busy, t0);
        assert_eq!(c.requests(), before);
        let broken = PodLoad {
            request_rate: f64::NAN,
            queued: f64::INFINITY,
            running: -3.0,
            ..Default::default()
        };
        c.advance(&broken, t0 + Duration::from_secs(6));
        assert_eq!(c.requests(), before);
        let text = c.render(&broken);
        assert!(samples(&text).values().all(|v| v.is_finite()), "{text}");
        assert_eq!(samples(&text)["modelfleet_requests_running"], 0.0);
    }

    #[test]
    fn the_exposition_has_the_recorded_servers_label_shape() {
        let text = Counters::new(Instant::now()).render(&PodLoad::idle());
        for expected in [
            r#"modelfleet_request_duration_seconds_bucket{le="0.0005",tier="default"} 0"#,
            r#"modelfleet_request_duration_seconds_bucket{le="65.536",tier="default"} 0"#,
            r#"modelfleet_batch_size_bucket{le="1.0"} 0"#,
            r#"modelfleet_batch_size_bucket{le="+Inf"} 0"#,
            "modelfleet_batch_size_sum 0.0",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == expected), "no {expected:?} in\n{text}");
        }
    }
}
