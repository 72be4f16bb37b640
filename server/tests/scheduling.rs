//! The batcher's promises, observed through the real binary with the synthetic backend (its
//! latency model makes timing deterministic enough to assert on): tiers, load shedding,
//! deadlines, dropped disconnects and draining on SIGTERM.

mod common;

use std::{
    io::Write,
    time::{Duration, Instant},
};

use common::*;
use serde_json::json;

fn body(text: &str) -> serde_json::Value {
    json!({"model": "minilm", "input": text})
}

fn p95(mut v: Vec<Duration>) -> Duration {
    assert!(!v.is_empty());
    v.sort();
    v[(v.len() * 95 / 100).min(v.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_saturation_the_high_tier_is_faster_and_low_beyond_its_share_gets_429() {
    let server = ServerProcess::start(&[
        "--backend=synthetic",
        "--tier=high:10s:1",
        "--tier=low:10s:0.25",
        "--max-queue-size=40",
        "--max-batch-size=4",
        "--synthetic-batch-cost=20ms",
    ]);
    let url = server.url("/v1/embeddings");
    let run_until = Instant::now() + Duration::from_secs(3);
    let client = |tier: &'static str| {
        let url = url.clone();
        tokio::spawn(async move {
            let (mut ok, mut shed) = (Vec::new(), Vec::new());
            while Instant::now() < run_until {
                let started = Instant::now();
                let a = post(&url, &body("a sentence of load"), &[("x-modelfleet-tier", tier)]).await;
                match a.status {
                    200 => ok.push(started.elapsed()),
                    429 => {
                        shed.push((
                            a.headers.get("retry-after").cloned(),
                            a.body["error"]["code"].clone(),
                        ));
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    other => panic!("unexpected {other}: {:?}", a.body),
                }
            }
            (ok, shed)
        })
    };
    let lows: Vec<_> = (0..30).map(|_| client("low")).collect();
    let highs: Vec<_> = (0..4).map(|_| client("high")).collect();
    let (mut low_ok, mut low_shed, mut high_ok, mut high_shed) = (vec![], vec![], vec![], vec![]);
    for h in lows {
        let (ok, shed) = h.await.expect("low client");
        low_ok.extend(ok);
        low_shed.extend(shed);
    }
    for h in highs {
        let (ok, shed) = h.await.expect("high client");
        high_ok.extend(ok);
        high_shed.extend(shed);
    }
    assert!(high_shed.is_empty(), "the high tier was shed: {high_shed:?}");
    assert!(
        !low_shed.is_empty(),
        "30 low clients on 10 queue slots were never shed"
    );
    for (retry_after, code) in &low_shed {
        let seconds: u64 = retry_after
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .expect("429 carries Retry-After in seconds");
        assert!((1..=60).contains(&seconds));
        assert_eq!(code, "overloaded");
    }
    let (high, low) = (p95(high_ok), p95(low_ok));
    assert!(high < low, "high p95 {high:?} is not below low p95 {low:?}");
    assert!(
        server
            .metric(r#"modelfleet_requests_rejected_total{tier="low",reason="tier_share"}"#)
            .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_past_their_deadline_get_503_with_retry_after() {
    let server = ServerProcess::start(&[
        "--backend=synthetic",
        "--tier=fast:100ms:1",
        "--tier=open::1",
        "--max-batch-size=1",
        "--synthetic-batch-cost=600ms",
    ]);
    let url = server.url("/v1/embeddings");
    // Occupies the backend for 600 ms.
    let busy = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &body("occupy"), &[("x-modelfleet-tier", "open")]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = Instant::now();
    let tier_timeout = post(&url, &body("waits"), &[("x-modelfleet-tier", "fast")]).await;
    assert_eq!(tier_timeout.status, 503, "{:?}", tier_timeout.body);
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "expired late: {:?}",
        started.elapsed()
    );
    assert!(tier_timeout.headers.contains_key("retry-after"));
    assert_eq!(tier_timeout.body["error"]["code"], "queue_timeout");
    assert!(
        tier_timeout.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("tier timeout")
    );

    let header_timeout = post(
        &url,
        &body("waits"),
        &[("x-modelfleet-tier", "open"), ("x-modelfleet-timeout", "50ms")],
    )
    .await;
    assert_eq!(header_timeout.status, 503);
    assert!(
        header_timeout.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("x-modelfleet-timeout")
    );

    let bad = post(&url, &body("x"), &[("x-modelfleet-timeout", "soon")]).await;
    assert_eq!(
        (bad.status, bad.body["error"]["param"].as_str()),
        (400, Some("x-modelfleet-timeout"))
    );

    assert_eq!(busy.await.expect("busy request").status, 200);
    assert_eq!(
        server
            .metric(r#"modelfleet_requests_rejected_total{tier="fast",reason="queue_timeout"}"#)
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_whose_client_disconnected_is_dropped_before_compute() {
    let server = ServerProcess::start(&[
        "--backend=synthetic",
        "--max-batch-size=1",
        "--synthetic-batch-cost=400ms",
    ]);
    let url = server.url("/v1/embeddings");
    let busy = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &body("occupy"), &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A second request, then its client goes away while it waits in the queue.
    let payload = serde_json::to_string(&body("abandoned")).expect("json");
    let mut stream = std::net::TcpStream::connect(server.http).expect("connect");
    write!(
        stream,
        "POST /v1/embeddings HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{payload}",
        payload.len()
    )
    .expect("write");
    tokio::time::sleep(Duration::from_millis(100)).await;
    drop(stream);

    assert_eq!(busy.await.expect("busy").status, 200);
    let dropped = eventually(Duration::from_secs(3), async || {
        server
            .metric(r#"modelfleet_requests_cancelled_total{tier="default"}"#)
            .await
            == 1.0
    })
    .await;
    assert!(
        dropped,
        "the abandoned request was not counted as cancelled\n{}",
        server.log()
    );
    // Only the first request was computed.
    assert_eq!(server.metric("modelfleet_inputs_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_queued_work_refuses_new_work_and_exits_zero() {
    let mut server = ServerProcess::start(&[
        "--backend=synthetic",
        "--max-batch-size=1",
        "--synthetic-batch-cost=250ms",
    ]);
    let url = server.url("/v1/embeddings");
    let inflight: Vec<_> = (0..3)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(async move { post(&url, &body(&format!("in flight {i}")), &[]).await })
        })
        .collect();
    let all_in = eventually(Duration::from_secs(2), async || {
        server.metric("modelfleet_requests_queued").await + server.metric("modelfleet_requests_running").await
            == 3.0
    })
    .await;
    assert!(all_in, "the three requests never reached the batcher");

    server.terminate();
    let not_ready = eventually(Duration::from_secs(2), async || {
        get(&server.url("/health/ready")).await.status == 503
    })
    .await;
    assert!(not_ready, "still ready after SIGTERM");
    let refused = post(&url, &body("too late"), &[]).await;
    assert_eq!(refused.status, 503, "{:?}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));

    for request in inflight {
        let answer = request.await.expect("in-flight request");
        assert_eq!(answer.status, 200, "in-flight work was lost: {:?}", answer.body);
    }
    assert_eq!(
        server.wait_exit(Duration::from_secs(10)),
        Some(0),
        "{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_reports_the_servers_load_and_echoes_the_request_id() {
    let server = ServerProcess::start(&[
        "--backend=synthetic",
        "--max-batch-size=1",
        "--synthetic-batch-cost=100ms",
    ]);
    let url = server.url("/v1/embeddings");
    let one = post(&url, &body("alone"), &[("x-request-id", "req-42")]).await;
    assert_eq!(one.status, 200);
    assert_eq!(one.headers["x-request-id"], "req-42");
    let load = |a: &Answer| -> u32 {
        a.headers["x-modelfleet-load"]
            .to_str()
            .expect("ascii")
            .parse()
            .expect("a count")
    };
    // Four at once, one batch at a time: the answers that finish first still see the others.
    let answers = futures::future::join_all((0..4).map(|i| {
        let url = url.clone();
        async move { post(&url, &body(&format!("load {i}")), &[]).await }
    }))
    .await;
    let most = answers.iter().map(load).max().expect("answers");
    assert!(most >= 2, "the busiest answer saw {most} queued or running");
    assert!(
        answers.iter().all(|a| a.headers.get("x-request-id").is_none()),
        "no id, none echoed"
    );
}
