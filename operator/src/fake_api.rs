//! A fake Kubernetes API for unit tests of the shell's effects: every request is recorded, and a
//! rule picks which ones fail with which HTTP status. Applies echo their body; writes to a
//! ModelDeployment (its status, its annotations) return the object. The real API server is exercised by the integration
//! tests; this one lets a test fail one chosen request.

use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
};

use http_body_util::BodyExt;
use kube::{
    Client,
    client::Body,
    runtime::events::{Recorder, Reporter},
};
use modelfleet_crds::ModelDeployment;

use crate::{
    OperatorConfig, autoscaler::Decisions, backoff::Failures, cache::Index, context::Context,
    memory::Written, metrics::Metrics, telemetry::TelemetryStore,
};

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Seen {
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// `Content-Type`.
    pub content_type: String,
}

impl Seen {
    /// A merge patch of the ModelDeployment's metadata (consuming the control annotations).
    pub fn is_annotation_patch(&self) -> bool {
        self.method == "PATCH"
            && self.content_type.starts_with("application/merge-patch")
            && self.path.contains("/modeldeployments/")
            && !self.path.ends_with("/status")
    }

    /// A write of the status subresource.
    pub fn is_status_write(&self) -> bool {
        self.method == "PATCH" && self.path.ends_with("/status")
    }
}

/// Which requests fail, and with which status code.
pub type FailRule = Arc<dyn Fn(&Seen) -> Option<u16> + Send + Sync>;

/// A client whose requests the fake answers; returns it and the log of requests.
pub fn client(md: &ModelDeployment, fail: FailRule) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (seen_log, object) = (log.clone(), serde_json::to_vec(md).expect("json"));
    let service = tower::service_fn(move |req: http::Request<Body>| {
        let seen = Seen {
            method: req.method().to_string(),
            path: req.uri().path().to_string(),
            content_type: req
                .headers()
                .get(http::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string(),
        };
        seen_log.lock().expect("log").push(seen.clone());
        let (fail, object) = (fail(&seen), object.clone());
        async move {
            let (code, body) = match fail {
                Some(code) => (code, failure(code)),
                None if seen.is_annotation_patch() || seen.is_status_write() => (200, object),
                None => (
                    200,
                    req.into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes().to_vec())
                        .unwrap_or_default(),
                ),
            };
            let response = http::Response::builder()
                .status(code)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .expect("response");
            Ok::<_, Infallible>(response)
        }
    });
    (Client::new(service, "default"), log)
}

fn failure(code: u16) -> Vec<u8> {
    let status = kube::core::Status::failure("injected by the test", "Injected").with_code(code);
    serde_json::to_vec(&status).expect("json")
}

/// A reconcile context on `client` with empty, ready caches.
pub fn context(client: Client) -> Arc<Context> {
    let children = Index::default();
    children.mark_ready();

    let reporter = Reporter {
        controller: "modelfleet-operator".into(),
        instance: None,
    };
    Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics: Metrics::default(),
        config: OperatorConfig::default(),
        children,
        decisions: Decisions::default(),
        telemetry: TelemetryStore::default(),
        written: Written::default(),
        failures: Failures::default(),
        model_deployments: kube::runtime::reflector::store().0,
    })
}
