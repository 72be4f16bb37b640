//! Reports to the operator: every `--report-interval`, this replica's demand per ModelDeployment
//! (requests, cache hits and misses, fallbacks, held requests, the newest request) as a
//! `RouterReport` on a stream to the operator's telemetry hub, which sums the replicas into
//! `status.routing` (docs/router.md). Counters are cumulative, so a lost report loses nothing.
//! Reconnects with a jittered backoff; the stream authenticates like the node agents'.

use std::{path::PathBuf, sync::Arc, time::Duration};

use modelfleet_proto::telemetry::{ModelDemand, RouterReport, telemetry_client::TelemetryClient};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{metadata::MetadataValue, transport::Endpoint};

use crate::state::Router;

/// Where and how to report.
#[derive(Debug, Clone)]
pub struct ReportConfig {
    /// The hub, `http://host:port`.
    pub url: String,
    /// The service-account token file.
    pub token_file: PathBuf,
    /// Between reports.
    pub interval: Duration,
    /// This replica's name.
    pub router: String,
}

/// Reports until the process ends.
pub async fn run(router: Arc<Router>, config: ReportConfig) {
    let mut backoff = Duration::from_secs(1);
    let mut sequence = 0;
    loop {
        match stream_once(&router, &config, &mut sequence).await {
            Ok(()) => tracing::info!(url = %config.url, "report stream closed by the operator"),
            Err(e) => {
                tracing::warn!(url = %config.url, error = %e, retry_in = ?backoff, "report stream down")
            }
        }
        tokio::time::sleep(backoff.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}

async fn stream_once(router: &Arc<Router>, config: &ReportConfig, sequence: &mut u64) -> Result<(), String> {
    let channel = Endpoint::from_shared(config.url.clone())
        .map_err(|e| format!("--operator-url: {e}"))?
        .connect_timeout(Duration::from_secs(3))
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (tx, rx) = mpsc::channel::<RouterReport>(1);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    match std::fs::read_to_string(&config.token_file) {
        Ok(token) if !token.trim().is_empty() => {
            let value = MetadataValue::try_from(format!("Bearer {}", token.trim()))
                .map_err(|e| format!("token: {e}"))?;
            request.metadata_mut().insert("authorization", value);
        }
        _ => tracing::debug!(path = %config.token_file.display(), "no token; reporting without a credential"),
    }
    let mut acks = TelemetryClient::new(channel)
        .router_report(request)
        .await
        .map_err(|s| format!("{}: {}", s.code(), s.message()))?
        .into_inner();
    tracing::info!(url = %config.url, "report stream open");
    let mut ticker = tokio::time::interval(config.interval);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                *sequence += 1;
                if tx.send(report(router, config, *sequence)).await.is_err() {
                    return Ok(());
                }
            }
            ack = acks.message() => match ack {
                Ok(Some(_)) => {}
                Ok(None) => return Ok(()),
                Err(s) => return Err(format!("{}: {}", s.code(), s.message())),
            },
        }
    }
}

/// This replica's report now.
pub fn report(router: &Router, config: &ReportConfig, sequence: u64) -> RouterReport {
    let models = router
        .activity
        .demand()
        .into_iter()
        .map(|((namespace, deployment), d)| {
            let held = router.held(&format!("{namespace}/{deployment}"));
            ModelDemand {
                namespace,
                deployment,
                requests: d.requests,
                held: u32::try_from(held).unwrap_or(u32::MAX),
                cache_hits: d.cache_hits,
                cache_misses: d.cache_misses,
                fallbacks: d.fallbacks,
                last_request_unix_ms: d.last_request_unix_ms,
            }
        })
        .collect();
    RouterReport {
        router: config.router.clone(),
        sequence,
        timestamp_unix_ms: k8s_openapi::jiff::Timestamp::now().as_millisecond(),
        interval_ms: u32::try_from(config.interval.as_millis()).unwrap_or(u32::MAX),
        models,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        activity::{Activity, Seen},
        config::RouterConfig,
        keys::KeyStore,
        load::LoadBoard,
        table::{Table, tests_support::model_with_candidate},
    };

    #[test]
    fn a_report_carries_each_models_cumulative_demand() {
        let (_t, table) = tokio::sync::watch::channel(Arc::new(Table::default()));
        let (_k, keys) = tokio::sync::watch::channel(Arc::new(KeyStore::default()));
        let board = LoadBoard::default();
        let router = Router::new(
            RouterConfig::default(),
            table,
            keys,
            board.clone(),
            Activity::default(),
        );
        let model = model_with_candidate(&board, 0);
        for seen in [
            Seen::Request,
            Seen::Request,
            Seen::CacheHit,
            Seen::CacheMiss,
            Seen::Fallback,
        ] {
            router.activity.count(&model, seen);
        }
        let config = ReportConfig {
            url: String::new(),
            token_file: PathBuf::new(),
            interval: Duration::from_secs(5),
            router: "router-0".into(),
        };
        let r = report(&router, &config, 3);
        assert_eq!(
            (r.router.as_str(), r.sequence, r.interval_ms),
            ("router-0", 3, 5000)
        );
        let d = &r.models[0];
        assert_eq!((d.namespace.as_str(), d.deployment.as_str()), ("ns", "emb"));
        assert_eq!(
            (d.requests, d.cache_hits, d.cache_misses, d.fallbacks),
            (2, 1, 1, 1)
        );
        assert!(d.last_request_unix_ms > 0);
    }
}
