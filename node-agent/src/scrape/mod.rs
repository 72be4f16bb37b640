//! Scrapes the modelfleet-server pods of the node and turns their cumulative metrics into the
//! load of the last interval: queue depth per tier, running requests, request and error rates,
//! latency quantiles from histogram buckets, batch size, busy ratio, shadow agreement.

pub mod parse;

use std::collections::BTreeMap;

use modelfleet_contract::metrics::{
    BATCH_SIZE, BUSY_RATIO, GENERATED_TOKENS, KV_CACHE_USAGE, QUEUE_DEPTH, REQUEST_DURATION, REQUESTS,
    REQUESTS_QUEUED, REQUESTS_RUNNING, SHADOW_COMPARISONS, ServerMetric, TIME_TO_FIRST_TOKEN, labels,
    shadow_result,
};
use parse::{Exposition, histogram_quantile};

/// What one scrape of a server says (cumulative counters as read).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerCounters {
    pub queues: BTreeMap<String, f64>,
    pub queued: f64,
    pub running: f64,
    pub requests: f64,
    /// 5xx and 429 answers: what a client experiences as a failure.
    pub errors: f64,
    /// Cumulative request-duration buckets summed over tiers: upper bound → count.
    pub duration_buckets: Vec<(f64, f64)>,
    pub batch_sum: f64,
    pub batch_count: f64,
    pub busy_ratio: f64,
    pub shadow_agree: f64,
    pub shadow_disagree: f64,
    pub shadow_error: f64,
    /// Generation: cumulative time-to-first-token buckets summed over tiers.
    pub ttft_buckets: Vec<(f64, f64)>,
    /// Generation: cumulative generated tokens.
    pub generated_tokens: f64,
    /// Generation: KV-cache utilisation, 0 to 1.
    pub kv_cache_usage: f64,
}

/// Why a scrape's content was rejected.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScrapeError {
    #[error("not modelfleet-server metrics: {0}")]
    NotServerMetrics(String),
}

/// Reads the server metrics of an exposition.
pub fn read_counters(e: &Exposition) -> Result<ServerCounters, ScrapeError> {
    if !e.has(REQUESTS_QUEUED.sample) {
        return Err(ScrapeError::NotServerMetrics(format!(
            "no {} among {} samples ({} malformed lines)",
            REQUESTS_QUEUED.sample,
            e.samples.len(),
            e.malformed
        )));
    }
    let mut queues = BTreeMap::new();
    for s in e.matching(QUEUE_DEPTH.sample, &[]) {
        queues.insert(s.labels.get(labels::TIER).cloned().unwrap_or_default(), s.value);
    }
    let mut errors = 0.0;
    let mut requests = 0.0;
    for s in e.matching(REQUESTS.sample, &[]) {
        requests += s.value;
        let code: u16 = s
            .labels
            .get(labels::CODE)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if code >= 500 || code == 429 {
            errors += s.value;
        }
    }
    let shadow = |result: &str| e.sum(SHADOW_COMPARISONS.sample, &[(labels::RESULT, result)]);
    Ok(ServerCounters {
        queues,
        queued: e.sum(REQUESTS_QUEUED.sample, &[]),
        running: e.sum(REQUESTS_RUNNING.sample, &[]),
        requests,
        errors,
        duration_buckets: buckets(e, REQUEST_DURATION),
        batch_sum: e.sum(&BATCH_SIZE.sum(), &[]),
        batch_count: e.sum(&BATCH_SIZE.count(), &[]),
        busy_ratio: e.sum(BUSY_RATIO.sample, &[]),
        shadow_agree: shadow(shadow_result::AGREE),
        shadow_disagree: shadow(shadow_result::DISAGREE),
        shadow_error: shadow(shadow_result::ERROR),
        ttft_buckets: buckets(e, TIME_TO_FIRST_TOKEN),
        generated_tokens: e.sum(GENERATED_TOKENS.sample, &[]),
        kv_cache_usage: e.sum(KV_CACHE_USAGE.sample, &[]),
    })
}

/// A histogram's cumulative buckets summed over its other labels: upper bound → count.
fn buckets(e: &Exposition, histogram: ServerMetric) -> Vec<(f64, f64)> {
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for s in e.matching(&histogram.bucket(), &[]) {
        let Some(le) = s.labels.get("le").and_then(|v| parse_bound(v)) else {
            continue;
        };
        let entry = buckets.entry(le.to_bits()).or_insert((le, 0.0));
        entry.1 += s.value;
    }
    buckets.into_values().collect()
}

/// The counts each bucket gained since `before` (all of them without a previous scrape).
fn bucket_delta(now: &[(f64, f64)], before: Option<&[(f64, f64)]>) -> Vec<(f64, f64)> {
    now.iter()
        .map(|&(le, count)| {
            let earlier = before
                .and_then(|p| p.iter().find(|(b, _)| *b == le))
                .map_or(0.0, |(_, c)| *c);
            (le, (count - earlier).max(0.0))
        })
        .collect()
}

fn parse_bound(v: &str) -> Option<f64> {
    match v {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        v => v.parse().ok(),
    }
}

/// The load of one interval, from two consecutive scrapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerLoad {
    pub queues: BTreeMap<String, f64>,
    pub queue_depth: f64,
    pub running: f64,
    pub request_rate: f64,
    pub error_rate: f64,
    pub latency_p50: f64,
    pub latency_p95: f64,
    pub latency_p99: f64,
    pub mean_batch_size: f64,
    pub busy_ratio: f64,
    pub shadow_agree: f64,
    pub shadow_disagree: f64,
    pub shadow_error: f64,
    pub ttft_p95: f64,
    pub generated_tokens_rate: f64,
    pub kv_cache_usage: f64,
}

/// Rates over `seconds` between `previous` and `now` (gauges from `now`). A counter that went
/// down means the server restarted: the interval then counts from zero.
pub fn load_between(previous: Option<&ServerCounters>, now: &ServerCounters, seconds: f64) -> ServerLoad {
    let restarted = previous.is_some_and(|p| now.requests < p.requests);
    let base = if restarted { None } else { previous };
    let delta = |f: fn(&ServerCounters) -> f64| (f(now) - base.map_or(0.0, f)).max(0.0);
    let seconds = seconds.max(1e-3);
    let buckets = bucket_delta(&now.duration_buckets, base.map(|p| p.duration_buckets.as_slice()));
    let q = |x: f64| histogram_quantile(x, &buckets).unwrap_or(0.0);
    let ttft = bucket_delta(&now.ttft_buckets, base.map(|p| p.ttft_buckets.as_slice()));
    let batches = delta(|c| c.batch_count);
    ServerLoad {
        queues: now.queues.clone(),
        queue_depth: now.queued,
        running: now.running,
        request_rate: delta(|c| c.requests) / seconds,
        error_rate: delta(|c| c.errors) / seconds,
        latency_p50: q(0.5),
        latency_p95: q(0.95),
        latency_p99: q(0.99),
        mean_batch_size: if batches > 0.0 {
            delta(|c| c.batch_sum) / batches
        } else {
            0.0
        },
        busy_ratio: now.busy_ratio,
        shadow_agree: now.shadow_agree,
        shadow_disagree: now.shadow_disagree,
        shadow_error: now.shadow_error,
        ttft_p95: histogram_quantile(0.95, &ttft).unwrap_or(0.0),
        generated_tokens_rate: delta(|c| c.generated_tokens) / seconds,
        kv_cache_usage: now.kv_cache_usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Recorded from a real modelfleet-server (synthetic backend) after a short load, trimmed to
    /// the families the agent reads.
    const RECORDED: &str = include_str!("../../tests/fixtures/server-metrics.txt");

    #[test]
    fn reads_real_server_output() {
        let e = parse::parse(RECORDED);
        assert_eq!(e.malformed, 0);
        let c = read_counters(&e).unwrap();
        assert!(c.requests > 0.0, "{c:?}");
        assert!(c.batch_count > 0.0);
        assert!(!c.duration_buckets.is_empty());
        assert!(c.queues.contains_key("default"));
        let load = load_between(None, &c, 10.0);
        assert!(load.latency_p50 > 0.0 && load.latency_p50 <= load.latency_p99);
        assert!(load.mean_batch_size >= 1.0);
    }

    /// Recorded from a real modelfleet-server serving SmolLM2 (`--task generation`) after three
    /// chat completions of 8 tokens, trimmed to the families the agent reads.
    const GENERATION: &str = include_str!("../../tests/fixtures/generation-server-metrics.txt");

    #[test]
    fn reads_a_real_generation_servers_first_token_times_and_tokens() {
        let e = parse::parse(GENERATION);
        assert_eq!(e.malformed, 0);
        let c = read_counters(&e).unwrap();
        assert_eq!((c.requests, c.generated_tokens), (3.0, 24.0));
        assert!(!c.ttft_buckets.is_empty());
        let load = load_between(None, &c, 2.0);
        assert_eq!(load.generated_tokens_rate, 12.0);
        assert!(load.ttft_p95 > 0.0 && load.ttft_p95 < 10.0, "{load:?}");
        // The next interval without new first tokens has no TTFT, not the old one.
        let later = load_between(Some(&c), &c, 2.0);
        assert_eq!((later.ttft_p95, later.generated_tokens_rate), (0.0, 0.0));
    }

    #[test]
    fn rates_are_deltas_and_a_restart_counts_from_zero() {
        let before = ServerCounters {
            requests: 100.0,
            errors: 10.0,
            duration_buckets: vec![(0.1, 90.0), (f64::INFINITY, 100.0)],
            ..Default::default()
        };
        let after = ServerCounters {
            requests: 150.0,
            errors: 10.0,
            duration_buckets: vec![(0.1, 140.0), (f64::INFINITY, 150.0)],
            ..Default::default()
        };
        let load = load_between(Some(&before), &after, 2.0);
        assert_eq!((load.request_rate, load.error_rate), (25.0, 0.0));
        assert!(load.latency_p99 <= 0.1, "all 50 new requests were under 100 ms");
        let restarted = ServerCounters {
            requests: 4.0,
            ..Default::default()
        };
        assert_eq!(load_between(Some(&after), &restarted, 1.0).request_rate, 4.0);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let e = parse::parse("<html>502 Bad Gateway</html>\n\u{0}\u{1}");
        assert!(matches!(read_counters(&e), Err(ScrapeError::NotServerMetrics(_))));
    }
}
