//! How the router splits and moves traffic between models and revisions, in front of real
//! `modelfleet-server` processes (synthetic backend) from a static table: the canary weight
//! exactly, and the fallback model when the primary's queue is full.

mod common;

use common::{Router, dim, endpoint, hand_driven, header, one_model};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_at_zero_is_woken_its_held_request_served_and_the_cold_start_sets_retry_after() {
    use std::time::Duration;

    use modelfleet_router::{
        activity::{self, Activity},
        config::RouterConfig,
        load::LoadBoard,
    };

    let board = LoadBoard::default();
    let (reports_tx, mut reports) = activity::channel();
    let config = RouterConfig {
        allow_anonymous: true,
        hold_timeout: Duration::from_secs(10),
        ..RouterConfig::default()
    };
    let (url, table_tx) = hand_driven(
        config,
        board.clone(),
        Activity::new(Some(reports_tx)),
        one_model("r1", vec![], true),
    )
    .await;

    // Unmeasured: a request that cannot wait gets the default cold start as Retry-After.
    let hurried = post(
        &url,
        &json!({"model": "emb", "input": "x"}),
        &[("x-modelfleet-timeout", "300ms")],
    )
    .await;
    assert_eq!(hurried.status, 503, "{:?}", hurried.body);
    assert_eq!(header(&hurried, "retry-after"), "30");
    let report = reports.try_recv().expect("the request at zero is reported");
    assert_eq!(
        (report.namespace.as_str(), report.name.as_str()),
        ("default", "emb")
    );

    // The operator starts a replica 1.5 s later: the held request is served by it.
    let first = tokio::spawn({
        let url = url.clone();
        async move { post(&url, &json!({"model": "emb", "input": "y"}), &[]).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let server = ServerProcess::start(&["--backend=synthetic", "--model-name=emb"]);
    table_tx.send_replace(one_model(
        "r1",
        vec![endpoint(&board, "emb-0", server.http)],
        true,
    ));
    let served = first.await.expect("request");
    assert_eq!(served.status, 200, "{:?}", served.body);

    // Back at zero: the measured wake (about 1.5 s, rounded up) is the Retry-After now.
    table_tx.send_replace(one_model("r1", vec![], true));
    let again = post(
        &url,
        &json!({"model": "emb", "input": "z"}),
        &[("x-modelfleet-timeout", "300ms")],
    )
    .await;
    assert_eq!(again.status, 503);
    let retry: u64 = header(&again, "retry-after").parse().expect("seconds");
    assert!(
        (2..=5).contains(&retry),
        "Retry-After {retry} s for a 1.5 s cold start"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_never_answers_from_the_old_revisions_cache() {
    use modelfleet_router::{activity::Activity, config::RouterConfig, load::LoadBoard};

    let server = ServerProcess::start(&["--backend=synthetic", "--model-name=emb"]);
    let board = LoadBoard::default();
    let config = RouterConfig {
        allow_anonymous: true,
        ..RouterConfig::default()
    };
    let v1 = one_model("v1", vec![endpoint(&board, "emb-v1", server.http)], false);
    let (url, table_tx) = hand_driven(config, board.clone(), Activity::default(), v1).await;
    let ask = json!({"model": "emb", "input": "the same words"});
    assert_eq!(header(&post(&url, &ask, &[]).await, "x-modelfleet-cache"), "miss");
    let hit = post(&url, &ask, &[]).await;
    assert_eq!(
        (
            header(&hit, "x-modelfleet-cache"),
            header(&hit, "x-modelfleet-revision")
        ),
        ("hit", "v1")
    );
    let before = server.metric("modelfleet_inputs_total").await;

    // Version 2 rolled out: the same request reaches a server again, and is cached for v2.
    table_tx.send_replace(one_model(
        "v2",
        vec![endpoint(&board, "emb-v2", server.http)],
        false,
    ));
    let after = post(&url, &ask, &[]).await;
    assert_eq!(
        (
            after.status,
            header(&after, "x-modelfleet-cache"),
            header(&after, "x-modelfleet-revision")
        ),
        (200, "miss", "v2")
    );
    assert_eq!(
        server.metric("modelfleet_inputs_total").await,
        before + 1.0,
        "the server answered"
    );
    assert_eq!(header(&post(&url, &ask, &[]).await, "x-modelfleet-cache"), "hit");
}
