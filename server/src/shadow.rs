//! Shadow mirroring: a share of successful requests is copied to the shadow revision through a
//! bounded queue, never delaying or failing the primary answer, and the shadow's outputs are
//! compared with the primary ones: embeddings by cosine similarity against a threshold,
//! generated text exactly or by normalised edit distance (`text`).

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

mod text;

pub use text::{answer_text, similarity, text_agrees};

/// What a copy is compared on.
enum Compare {
    /// An embeddings request: its inputs and the primary's vectors.
    Embeddings {
        texts: Vec<String>,
        primary: Vec<Vec<f32>>,
    },
    /// A generation request: the body sent again (not streamed) and the primary's final text.
    Text {
        body: serde_json::Value,
        primary: String,
    },
}

struct ShadowJob {
    compare: Compare,
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
    /// Cosine similarity at or above which embeddings agree.
    pub agreement: f32,
    /// Text similarity (1 − normalised edit distance) at or above which generated texts agree;
    /// 1 means they must be equal.
    pub text_agreement: f64,
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

    /// Copies a finished embeddings request to the shadow with the configured probability.
    /// Never blocks.
    pub fn offer(&self, texts: &[String], primary: &[Vec<f32>], primary_latency: Duration) {
        let Some(target) = self.sampled_target() else {
            return;
        };
        self.enqueue(ShadowJob {
            compare: Compare::Embeddings {
                texts: texts.to_vec(),
                primary: primary.to_vec(),
            },
            primary_latency,
            url: endpoint(&target.url, paths::EMBEDDINGS),
        });
    }

    /// Picks a generation request for mirroring (with the configured probability) before it
    /// is answered; the copy is sent once [`PendingCopy::complete`] gives the primary's text.
    /// `path` is the API's route (`/v1/chat/completions`), `body` the request as received: the
    /// copy is the same body, not streamed.
    pub fn prepare_generation(&self, path: &'static str, body: &serde_json::Value) -> Option<PendingCopy> {
        let target = self.sampled_target()?;
        Some(PendingCopy {
            mirror: self.clone(),
            url: endpoint(&target.url, path),
            body: text::copy_body(body),
            started: Instant::now(),
        })
    }

    /// The target, if mirroring is on and this request is in its share.
    fn sampled_target(&self) -> Option<MirrorTarget> {
        let target = self.target()?;
        (target.percent > 0.0 && fastrand::f64() * 100.0 < target.percent).then_some(target)
    }

    fn enqueue(&self, job: ShadowJob) {
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

/// A generation request picked for mirroring, waiting for the primary's answer.
pub struct PendingCopy {
    mirror: Mirror,
    url: String,
    body: serde_json::Value,
    started: Instant,
}

impl std::fmt::Debug for PendingCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingCopy")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl PendingCopy {
    /// Queues the copy with the primary's final `text` (never blocks; a full queue drops it and
    /// counts `dropped`). Dropping a `PendingCopy` instead sends nothing: the primary failed.
    pub fn complete(self, text: String) {
        let job = ShadowJob {
            compare: Compare::Text {
                body: self.body,
                primary: text,
            },
            primary_latency: self.started.elapsed(),
            url: self.url,
        };
        self.mirror.enqueue(job);
    }
}

/// The shadow's URL for API `path`: the target is a base URL, or a full API URL (the operator
/// once wrote `/v1/embeddings` ones), whose API path is replaced.
fn endpoint(url: &str, path: &str) -> String {
    let mut base = url.trim_end_matches('/');
    for api in [paths::EMBEDDINGS, "/v1/chat/completions", "/v1/completions"] {
        if let Some(stripped) = base.strip_suffix(api) {
            base = stripped;
            break;
        }
    }
    format!("{base}{path}")
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
            let result = compare(&client, &config, &metrics, job).await;
            metrics
                .shadow_comparisons
                .get_or_create(&ResultLabel { result })
                .inc();
            drop(permit);
        });
    }
}

/// Sends one copy and compares its answer: `agree`, `disagree` or `error`.
async fn compare(
    client: &Client<HttpConnector, Full<Bytes>>,
    config: &MirrorConfig,
    metrics: &Metrics,
    job: ShadowJob,
) -> &'static str {
    let started = Instant::now();
    let body = match &job.compare {
        Compare::Embeddings { texts, .. } => serde_json::json!({"model": config.model_name, "input": texts}),
        Compare::Text { body, .. } => body.clone(),
    };
    let answer = match tokio::time::timeout(config.timeout, shadow_call(client, &job.url, &body)).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, url = %job.url, "shadow request failed");
            return shadow_result::ERROR;
        }
        Err(_) => return shadow_result::ERROR,
    };
    let ratio = started.elapsed().as_secs_f64() / job.primary_latency.as_secs_f64().max(1e-6);
    let agreed = match job.compare {
        Compare::Embeddings { primary, .. } => match embeddings(&answer) {
            Some(shadow) => agrees(&primary, &shadow, config.agreement),
            None => return shadow_result::ERROR,
        },
        Compare::Text { primary, .. } => {
            let Some(shadow) = text::answer_text(&answer) else {
                return shadow_result::ERROR;
            };
            let threshold = config.text_agreement;
            // The edit distance is quadratic in the texts' length: off the async runtime.
            tokio::task::spawn_blocking(move || text_agrees(&primary, &shadow, threshold))
                .await
                .unwrap_or(false)
        }
    };
    metrics.shadow_latency_ratio.observe(ratio);
    if agreed {
        shadow_result::AGREE
    } else {
        shadow_result::DISAGREE
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

/// The vectors of an embeddings answer.
fn embeddings(answer: &serde_json::Value) -> Option<Vec<Vec<f32>>> {
    let parsed = ShadowResponse::deserialize(answer).ok()?;
    Some(parsed.data.into_iter().map(|d| d.embedding).collect())
}

/// POSTs `body` to `url` and returns the JSON answer of a 2xx.
async fn shadow_call(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    body: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let body = serde_json::to_vec(body).map_err(|e| e.to_string())?;
    let request = http::Request::post(url)
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
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
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
        assert_eq!(
            endpoint("http://s:8080/", paths::EMBEDDINGS),
            "http://s:8080/v1/embeddings"
        );
        assert_eq!(
            endpoint("http://s/v1/embeddings", paths::EMBEDDINGS),
            "http://s/v1/embeddings"
        );
        assert_eq!(
            endpoint("http://s/v1/embeddings", "/v1/chat/completions"),
            "http://s/v1/chat/completions"
        );
        assert_eq!(
            endpoint("http://s:1", "/v1/completions"),
            "http://s:1/v1/completions"
        );
        let a = vec![vec![1.0, 0.0]];
        assert!(agrees(&a, &[vec![0.99, 0.05]], 0.99));
        assert!(!agrees(&a, &[vec![0.0, 1.0]], 0.99));
        assert!(!agrees(&a, &[], 0.99));
    }
}
