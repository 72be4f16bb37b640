//! The telemetry stream to the operator: one `Report` stream, re-opened with jittered exponential
//! backoff; reports wait in a bounded buffer (oldest dropped and counted) while the operator is
//! unreachable; the projected service-account token is sent as a bearer credential.

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use modelfleet_proto::telemetry::{NodeReport, telemetry_client::TelemetryClient};
use tokio::sync::{Notify, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{metadata::MetadataValue, transport::Endpoint};

use crate::metrics::AgentMetrics;

/// Reports waiting to be sent, at most `capacity`.
#[derive(Debug)]
pub struct Outbox {
    queue: Mutex<VecDeque<NodeReport>>,
    capacity: usize,
    ready: Notify,
    metrics: AgentMetrics,
}

impl Outbox {
    /// An empty buffer of `capacity` reports.
    pub fn new(capacity: usize, metrics: AgentMetrics) -> Self {
        Self {
            queue: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            capacity: capacity.max(1),
            ready: Notify::new(),
            metrics,
        }
    }

    /// Adds a report, dropping the oldest when full.
    pub fn push(&self, report: NodeReport) {
        if let Ok(mut q) = self.queue.lock() {
            while q.len() >= self.capacity {
                q.pop_front();
                self.metrics.reports_dropped.inc();
            }
            q.push_back(report);
        }
        self.ready.notify_one();
    }

    /// Puts back a report that could not be sent (it goes first).
    fn requeue(&self, report: NodeReport) {
        if let Ok(mut q) = self.queue.lock()
            && q.len() < self.capacity
        {
            q.push_front(report);
        }
    }

    /// Reports waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().map(|q| q.len()).unwrap_or(0)
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reports dropped so far.
    pub fn dropped(&self) -> u64 {
        self.metrics.reports_dropped.get()
    }

    async fn next(&self) -> NodeReport {
        loop {
            let notified = self.ready.notified();
            if let Some(r) = self.queue.lock().ok().and_then(|mut q| q.pop_front()) {
                return r;
            }
            notified.await;
        }
    }
}

/// Where and how to stream.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub url: String,
    /// Projected service-account token, re-read at each connect (the kubelet rotates it).
    pub token_file: Option<PathBuf>,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

/// Sends reports from `outbox` for ever, reconnecting as needed.
pub async fn run_stream(config: StreamConfig, outbox: Arc<Outbox>, metrics: AgentMetrics) {
    let mut backoff = config.backoff_min;
    loop {
        let result = stream_once(&config, &outbox, &metrics).await;
        // A stream that was open starts the backoff over; failed attempts double it.
        if metrics.stream_connected.get() == 1 {
            backoff = config.backoff_min;
        }
        metrics.stream_connected.set(0);
        match result {
            Ok(()) => tracing::info!(url = %config.url, "telemetry stream closed by the operator"),
            Err(e) => {
                tracing::warn!(url = %config.url, error = %e, retry_in = ?backoff, "telemetry stream down")
            }
        }
        tokio::time::sleep(jitter(backoff)).await;
        backoff = (backoff * 2).min(config.backoff_max);
    }
}

/// Between half and all of `d`, so agents of a fleet do not reconnect in lockstep.
pub fn jitter(d: Duration) -> Duration {
    d.mul_f64(0.5 + fastrand::f64() * 0.5)
}

async fn stream_once(
    config: &StreamConfig,
    outbox: &Arc<Outbox>,
    metrics: &AgentMetrics,
) -> Result<(), String> {
    let channel = Endpoint::from_shared(config.url.clone())
        .map_err(|e| format!("--operator-url: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (tx, rx) = mpsc::channel::<NodeReport>(1);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = read_token(config.token_file.as_ref()) {
        let value = MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| format!("token: {e}"))?;
        request.metadata_mut().insert("authorization", value);
    }
    let forward = {
        let (outbox, metrics) = (outbox.clone(), metrics.clone());
        tokio::spawn(async move {
            loop {
                let report = outbox.next().await;
                if let Err(mpsc::error::SendError(report)) = tx.send(report).await {
                    outbox.requeue(report);
                    return;
                }
                metrics.reports_sent.inc();
            }
        })
    };
    let result = async {
        let mut acks = TelemetryClient::new(channel)
            .report(request)
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .into_inner();
        metrics.stream_connected.set(1);
        tracing::info!(url = %config.url, "telemetry stream open");
        while acks
            .message()
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .is_some()
        {}
        Ok(())
    }
    .await;
    forward.abort();
    result
}

fn read_token(path: Option<&PathBuf>) -> Option<String> {
    let path = path?;
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_owned()),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "no service-account token; streaming without a credential");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(sequence: u64) -> NodeReport {
        NodeReport {
            sequence,
            ..Default::default()
        }
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_counts() {
        let outbox = Outbox::new(3, AgentMetrics::default());
        for s in 0..5 {
            outbox.push(report(s));
        }
        assert_eq!((outbox.len(), outbox.dropped()), (3, 2));
        let first = outbox.queue.lock().unwrap().front().map(|r| r.sequence);
        assert_eq!(first, Some(2));
    }

    #[test]
    fn jitter_stays_within_half_and_all() {
        for _ in 0..100 {
            let j = jitter(Duration::from_secs(2));
            assert!(j >= Duration::from_secs(1) && j <= Duration::from_secs(2));
        }
    }
}
