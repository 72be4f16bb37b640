//! How the router splits and moves traffic between models and revisions, in front of real
//! `modelfleet-server` processes (synthetic backend) from a static table: the canary weight
//! exactly, and the fallback model when the primary's queue is full.

mod common;

use common::{Router, dim, header};
use modelfleet_testkit::server::{ServerProcess, metric_value, post};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_at_20_percent_gets_20_percent_of_2000_requests() {
    let stable = ServerProcess::start(&["--backend=synthetic", "--model-name=emb"]);
    let candidate = ServerProcess::start(&["--backend=synthetic", "--model-name=emb"]);
    let config = format!(
        "models:\n  - name: emb\n    endpoints: ['{}']\n    candidate: {{version: v2, weight: 20, endpoints: ['{}']}}\n",
        stable.http, candidate.http
    );
    let router = Router::start(&config, &["--allow-anonymous", "--cache-bytes=0"]).await;
    let url = router.url("/v1/embeddings");
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut revisions = Vec::new();
                for i in 0..500 {
                    let a = post(&url, &json!({"model": "emb", "input": format!("c{c} r{i}")}), &[]).await;
                    assert_eq!(a.status, 200, "{:?}", a.body);
                    revisions.push(header(&a, "x-modelfleet-revision").to_owned());
                }
                revisions
            })
        })
        .collect();
    let mut to_candidate = 0;
    for c in clients {
        to_candidate += c.await.expect("client").iter().filter(|r| *r == "v2").count();
    }
    // The weight is kept by counting requests, not by chance: 400 of 2000, whatever the
    // replica counts.
    assert!(
        (397..=403).contains(&to_candidate),
        "{to_candidate} of 2000 went to the candidate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primary_at_its_queue_limit_sends_requests_to_the_fallback_and_counts_them() {
    // One request runs and one waits: the rest of a burst get 429 from the primary.
    let primary = ServerProcess::start(&[
        "--backend=synthetic",
        "--model-name=large",
        "--max-batch-size=1",
        "--max-queue-size=1",
        "--synthetic-batch-cost=300ms",
    ]);
    let fallback = ServerProcess::start(&["--backend=synthetic", "--model-name=small", "--synthetic-dim=16"]);
    let config = format!(
        "models:\n  - name: large\n    endpoints: ['{}']\n    routing: {{fallback: {{model: small}}}}\n  - name: small\n    endpoints: ['{}']\n",
        primary.http, fallback.http
    );
    let router = Router::start(&config, &["--allow-anonymous", "--cache-bytes=0"]).await;
    let burst: Vec<_> = (0..8)
        .map(|i| {
            let url = router.url("/v1/embeddings");
            tokio::spawn(async move {
                post(&url, &json!({"model": "large", "input": format!("r{i}")}), &[]).await
            })
        })
        .collect();
    let mut by_fallback = 0;
    for request in burst {
        let a = request.await.expect("request");
        assert_eq!(a.status, 200, "every request is served: {:?}", a.body);
        if header(&a, "x-modelfleet-fallback") == "overloaded" {
            assert_eq!(dim(&a), 16, "the fallback's answer");
            assert_eq!(a.body["model"], "small");
            by_fallback += 1;
        } else {
            assert_eq!(dim(&a), 384, "the primary's answer");
        }
    }
    assert!(
        (1..=6).contains(&by_fallback),
        "{by_fallback} of 8 went to the fallback"
    );
    let metrics = router.metrics().await;
    let counted = metric_value(
        &metrics,
        r#"modelfleet_router_fallbacks_total{model="default/large",to="default/small",reason="overloaded"}"#,
    );
    assert_eq!(counted, f64::from(by_fallback), "{metrics}");
}
