//! Scale from zero on the live fleet: a ModelDeployment with `minReplicas: 0` starts at zero; a
//! request through the router is held, wakes it (the router's `modelfleet.dev/last-request`
//! annotation, the autoscaler's next tick) and is served by the replica that starts; after
//! `idlePeriod` without requests it goes back to zero, and the first request after that is
//! served too. A model that cannot start answers its held requests 503 with Retry-After at their
//! deadline.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::PostParams};
use modelfleet_crds::{ModelDeployment, constants::annotations::LAST_REQUEST};
use modelfleet_testkit::live::{client, router};

use super::{embedding, model_deployment, namespace, shared, start_router, synthetic, wait_md, wait_pods};

const SCALING: &str = "  scaling:\n    minReplicas: 0\n    maxReplicas: 2\n    idlePeriod: 10s\n    scaleDownStabilization: 10s\n    targets: {queueDepthPerReplica: 8}\n";

fn desired(md: &ModelDeployment) -> Option<i32> {
    md.status
        .as_ref()?
        .autoscaling
        .as_ref()
        .map(|a| a.desired_replicas)
}

/// One request through the router with `timeout` as its deadline: (status, seconds taken,
/// Retry-After, body).
async fn ask(model: &str, timeout: &str) -> (u16, f64, String, String) {
    let live = shared();
    // A new input each time: a repeated one would be answered from the router's cache.
    static ASKED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = ASKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let body = format!(r#"{{"model":"{model}","input":["wake up {n}"]}}"#);
    let started = Instant::now();
    let a = client::request(
        live.fleet.net(),
        "POST",
        &format!("http://{}/v1/embeddings", router::HTTP_IN_NAMESPACE),
        Some(&body),
        &[("x-modelfleet-timeout", timeout)],
        Duration::from_secs(150),
    )
    .await
    .expect("an answer");
    let retry = a.headers.get("retry-after").cloned().unwrap_or_default();
    (a.status, started.elapsed().as_secs_f64(), retry, a.body)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_model_at_zero_wakes_for_a_request_idles_back_to_zero_and_wakes_again() {
    let live = shared();
    let (client, ns) = namespace("live-zero").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.create(&PostParams::default(), &synthetic("sleepy", "1", 16, 1, SCALING))
        .await
        .expect("create");
    // Its server exits at start (an unknown flag): it never becomes Ready.
    let broken = model_deployment(&format!(
        "metadata:\n  name: broken\nspec:\n  model:\n    name: broken-model\n    version: \"1\"\n    uri: {}\n    task: embedding\n  runtime:\n    device: cpu\n    backend: synthetic\n    args: [\"--no-such-flag\"]\n  resources:\n    gpus: 0\n    cpu: 100m\n    memory: 256Mi\n{SCALING}",
        live.model_uri
    ));
    api.create(&PostParams::default(), &broken).await.expect("create");
    wait_md(&api, "sleepy", Duration::from_secs(60), "at zero", |m| {
        desired(m) == Some(0)
    })
    .await;

    let _router = start_router(ns.name(), &["--allow-anonymous", "--hold-timeout=120s"]).await;

    let (status, first_s, _, body) = ask("sleepy-model", "120s").await;
    assert_eq!(
        status, 200,
        "the held request is served once a replica is Ready: {body}"
    );
    assert_eq!(embedding(&body).len(), 16);
    let md = api.get("sleepy").await.expect("get");
    assert!(
        md.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key(LAST_REQUEST)),
        "the router marked the request"
    );
    eprintln!("scale from zero: first request served after {first_s:.1} s");

    // 10 s without requests and nothing in flight: back to zero.
    wait_md(&api, "sleepy", Duration::from_secs(120), "idle at zero", |m| {
        desired(m) == Some(0)
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    wait_pods(
        &pods,
        "modelfleet.dev/deployment=sleepy",
        Duration::from_secs(120),
        "no pod left",
        |p| p.is_empty(),
    )
    .await;
    let (status, again_s, _, body) = ask("sleepy-model", "120s").await;
    assert_eq!(status, 200, "the first request after the idle scale-down: {body}");
    assert!(
        again_s > 1.0,
        "no replica was left to answer at once: {again_s:.1} s"
    );
    eprintln!("scale from zero after idling: first request served after {again_s:.1} s");

    // A model that cannot start: the held request gets 503 and a Retry-After at its deadline.
    let (status, waited_s, retry, body) = ask("broken-model", "8s").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        (7.0..20.0).contains(&waited_s),
        "held until its 8 s deadline: {waited_s:.1} s"
    );
    let retry: u64 = retry.parse().unwrap_or_else(|_| panic!("Retry-After {retry:?}"));
    assert!(retry >= 1, "Retry-After {retry}");
}
