//! Shadow mirroring: a share of successful requests is copied to the shadow revision through a
//! bounded queue, never delaying or failing the primary answer, and the shadow's outputs are
//! compared with the primary ones (cosine similarity against a threshold).

use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
pub use modelfleet_contract::{MirrorTarget, RoutingFile};
use modelfleet_contract::{headers, metrics::shadow_result, paths};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc};

use crate::metrics::{Metrics, ResultLabel};

struct ShadowJob {
    texts: Vec<String>,
    primary: Vec<Vec<f32>>,
    primary_latency: Duration,
    url: String,
}

/// Handle used on the request path; cheap to clone.
#[derive(Clone)]
pub struct Mirror {
    target: Arc<RwLock<Option<MirrorTarget>>>,
    tx: mpsc::Sender<ShadowJob>,
    metrics: Metrics,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("target", &self.target()).finish()
    }
}

/// Mirroring settings.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub model_name: String,
    /// Copies waiting to be sent; beyond it they are dropped and counted.
    pub queue: usize,
    /// Cosine similarity at or above which outputs agree.
    pub agreement: f32,
    /// Copies in flight at once.
    pub concurrency: usize,
    /// Longest a shadow request may take.
    pub timeout: Duration,
}

impl Mirror {
    /// Starts the sender task; mirroring is off until a target is set.
    pub fn start(config: MirrorConfig, metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::channel(config.queue.max(1));
        tokio::spawn(send_loop(rx, config, metrics.clone()));
        Self {
            target: Arc::default(),
            tx,
            metrics,
        }
    }

    /// The current target.
    pub fn target(&self) -> Option<MirrorTarget> {
        self.target.read().map(|t| t.clone()).unwrap_or_default()
    }

    /// Replaces the target (None: mirroring off).
    pub fn set_target(&self, target: Option<MirrorTarget>) {
        if let Ok(mut t) = self.target.write() {
            *t = target;
        }
    }

    /// Copies a finished request to the shadow with the configured probability. Never blocks.
    pub fn offer(&self, texts: &[String], primary: &[Vec<f32>], primary_latency: Duration) {
        let Some(target) = self.target() else { return };
        if target.percent <= 0.0 || fastrand::f64() * 100.0 >= target.percent {
            return;
        }
        let job = ShadowJob {
            texts: texts.to_vec(),
            primary: primary.to_vec(),
            primary_latency,
            url: endpoint(&target.url),
        };
        let result = match self.tx.try_send(job) {
            Ok(()) => "queued",
            Err(_) => "dropped",
        };
        self.metrics
            .shadow_requests
            .get_or_create(&ResultLabel { result })
            .inc();
    }
}

fn endpoint(url: &str) -> String {
    let base = url.trim_end_matches('/');
    if base.ends_with(paths::EMBEDDINGS) {
        base.to_owned()
    } else {
        format!("{base}{}", paths::EMBEDDINGS)
    }
}

async fn send_loop(mut rx: mpsc::Receiver<ShadowJob>, config: MirrorConfig, metrics: Metrics) {
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let permits = Arc::new(Semaphore::new(config.concurrency.max(1)));
    let config = Arc::new(config);
    while let Some(job) = rx.recv().await {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let (client, config, metrics) = (client.clone(), config.clone(), metrics.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let outcome = tokio::time::timeout(config.timeout, shadow_call(&client, &config, &job)).await;
            let result = match outcome {
                Ok(Ok(shadow)) => {
                    let ratio = started.elapsed().as_secs_f64() / job.primary_latency.as_secs_f64().max(1e-6);
                    metrics.shadow_latency_ratio.observe(ratio);
                    if agrees(&job.primary, &shadow, config.agreement) {
                        shadow_result::AGREE
                    } else {
                        shadow_result::DISAGREE
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "shadow request failed");
                    shadow_result::ERROR
                }
                Err(_) => shadow_result::ERROR,
            };
            metrics
                .shadow_comparisons
                .get_or_create(&ResultLabel { result })
                .inc();
            drop(permit);
        });
    }
}

#[derive(Deserialize)]
struct ShadowResponse {
    data: Vec<ShadowItem>,
}

#[derive(Deserialize)]
struct ShadowItem {
    embedding: Vec<f32>,
}

async fn shadow_call(
    client: &Client<HttpConnector, Full<Bytes>>,
    config: &MirrorConfig,
    job: &ShadowJob,
) -> Result<Vec<Vec<f32>>, String> {
    let body = serde_json::to_vec(&serde_json::json!({"model": config.model_name, "input": job.texts}))
        .map_err(|e| e.to_string())?;
    let request = http::Request::post(&job.url)
        .header(http::header::CONTENT_TYPE, "application/json")
        // The copy must not be mirrored again, whatever the shadow's own routing file says.
        .header(headers::SHADOW, "1")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    let parsed: ShadowResponse = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    Ok(parsed.data.into_iter().map(|d| d.embedding).collect())
}

/// Cosine similarity of two vectors (0 when either is zero).
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let na = a.iter().map(|x| x * x).sum::<f32>().sqrt();
    let nb = b.iter().map(|x| x * x).sum::<f32>().sqrt();
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na * nb)
    }
}

fn agrees(primary: &[Vec<f32>], shadow: &[Vec<f32>], threshold: f32) -> bool {
    primary.len() == shadow.len() && primary.iter().zip(shadow).all(|(p, s)| cosine(p, s) >= threshold)
}

/// Re-reads the routing file every `interval` and applies changes. A missing file turns
/// mirroring off; an unreadable one keeps the last good setting and logs why.
pub async fn watch_routing_file(path: PathBuf, mirror: Mirror, interval: Duration) {
    let mut last: Option<String> = None;
    let mut tick = tokio::time::interval(interval);
    loop {
        tick.tick().await;
        let text = tokio::fs::read_to_string(&path).await.unwrap_or_default();
        if last.as_ref() == Some(&text) {
            continue;
        }
        if text.trim().is_empty() {
            mirror.set_target(None);
        } else {
            match RoutingFile::parse(&text) {
                Ok(file) => {
                    tracing::info!(mirror = ?file.mirror, path = %path.display(), "routing file applied");
                    mirror.set_target(file.mirror);
                }
                Err(e) => tracing::warn!(error = %e, path = %path.display(), "routing file ignored"),
            }
        }
        last = Some(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_agreement() {
        assert_eq!(endpoint("http://s:8080/"), "http://s:8080/v1/embeddings");
        assert_eq!(endpoint("http://s/v1/embeddings"), "http://s/v1/embeddings");
        let a = vec![vec![1.0, 0.0]];
        assert!(agrees(&a, &[vec![0.99, 0.05]], 0.99));
        assert!(!agrees(&a, &[vec![0.0, 1.0]], 0.99));
        assert!(!agrees(&a, &[], 0.99));
    }
}
