//! Shadow mirroring through the routing file, between two real server processes (synthetic
//! backend: deterministic outputs, so equal models agree and different ones do not).

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;

fn route(file: &std::path::Path, url: Option<String>, percent: u32) {
    let mirror = url.map(|url| json!({"url": url, "percent": percent}));
    // Written whole, then renamed, as the kubelet swaps ConfigMap files.
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, json!({"mirror": mirror}).to_string()).expect("write routing");
    std::fs::rename(&tmp, file).expect("rename routing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrored_requests_are_compared_and_never_slow_the_primary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routing = dir.path().join("routing.json");
    route(&routing, None, 0);
    let routing_arg = format!("--routing-file={}", routing.display());
    let primary = ServerProcess::start(&["--backend=synthetic", &routing_arg, "--shadow-queue=4"]);
    let same = ServerProcess::start(&["--backend=synthetic"]);
    let different = ServerProcess::start(&["--backend=synthetic", "--synthetic-dim=16"]);
    let slow = ServerProcess::start(&[
        "--backend=synthetic",
        "--synthetic-batch-cost=2s",
        "--max-batch-size=1",
    ]);
    let url = primary.url("/v1/embeddings");
    let send = |n: usize| {
        let url = url.clone();
        async move {
            let mut slowest = Duration::ZERO;
            for i in 0..n {
                let started = Instant::now();
                let a = post(&url, &json!({"input": format!("sentence {i}")}), &[]).await;
                assert_eq!(a.status, 200, "{:?}", a.body);
                slowest = slowest.max(started.elapsed());
            }
            slowest
        }
    };
    let metric = |result: &str| format!(r#"modelfleet_shadow_comparisons_total{{result="{result}"}}"#);

    // Mirroring is off: nothing is compared.
    send(5).await;
    assert_eq!(primary.metric(&metric("agree")).await, 0.0);

    // An identical shadow agrees on every copy.
    route(&routing, Some(format!("http://{}", same.http)), 100);
    let applied = eventually(Duration::from_secs(5), async || {
        send(1).await;
        primary.metric(&metric("agree")).await > 0.0
    })
    .await;
    assert!(applied, "the routing file was not applied\n{}", primary.log());
    let before = primary.metric(&metric("agree")).await;
    send(20).await;
    assert!(
        eventually(Duration::from_secs(5), async || primary
            .metric(&metric("agree"))
            .await
            == before + 20.0)
        .await
    );
    assert_eq!(primary.metric(&metric("disagree")).await, 0.0);
    // Copies are marked, so the shadow does not mirror them again.
    assert!(
        same.metric(r#"modelfleet_requests_total{api="openai",tier="default",code="200"}"#)
            .await
            >= 20.0
    );

    // A different model disagrees.
    route(&routing, Some(format!("http://{}", different.http)), 100);
    assert!(
        eventually(Duration::from_secs(5), async || {
            send(1).await;
            primary.metric(&metric("disagree")).await > 0.0
        })
        .await
    );

    // An unreachable shadow counts errors; the primary answers as before.
    route(&routing, Some("http://127.0.0.1:9".into()), 100);
    assert!(
        eventually(Duration::from_secs(5), async || {
            send(1).await;
            primary.metric(&metric("error")).await > 0.0
        })
        .await
    );

    // A slow shadow: the primary stays fast, and copies beyond the queue are dropped and counted.
    route(&routing, Some(format!("http://{}", slow.http)), 100);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let slowest = send(30).await;
    assert!(
        slowest < Duration::from_millis(500),
        "a primary request took {slowest:?}"
    );
    assert!(
        primary
            .metric(r#"modelfleet_shadow_requests_total{result="dropped"}"#)
            .await
            > 0.0
    );
}
