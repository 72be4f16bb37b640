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

/// A model at zero replicas behind a hand-driven table, as discovery would publish it.
fn at_zero(
    endpoints: Vec<modelfleet_router::table::Endpoint>,
) -> std::sync::Arc<modelfleet_router::table::Table> {
    use modelfleet_crds::v1alpha1::{ModelTask, RoutingSpec};
    use modelfleet_router::table::{ModelEntry, Revision, Table};
    let replicas = i32::try_from(endpoints.len()).unwrap_or(0);
    std::sync::Arc::new(Table::new(vec![ModelEntry {
        namespace: "default".into(),
        deployment: "emb".into(),
        served: "emb".into(),
        aliases: vec![],
        task: ModelTask::Embedding,
        stable: Revision {
            name: "r1".into(),
            version: "1".into(),
            endpoints,
        },
        candidate: None,
        tiers: vec![],
        routing: RoutingSpec::default(),
        scales_from_zero: true,
        idle_period: std::time::Duration::from_secs(60),
        replicas,
        created: 0,
    }]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_at_zero_is_woken_its_held_request_served_and_the_cold_start_sets_retry_after() {
    use std::{sync::Arc, time::Duration};

    use modelfleet_router::{
        activity::{self, Activity},
        config::RouterConfig,
        keys::KeyStore,
        load::LoadBoard,
        proxy, state,
        table::Endpoint,
    };

    let board = LoadBoard::default();
    let (table_tx, table_rx) = tokio::sync::watch::channel(at_zero(vec![]));
    let (_keys_tx, keys_rx) = tokio::sync::watch::channel(Arc::new(KeyStore::default()));
    let (reports_tx, mut reports) = activity::channel();
    let config = RouterConfig {
        allow_anonymous: true,
        hold_timeout: Duration::from_secs(10),
        ..RouterConfig::default()
    };
    let router = Arc::new(state::Router::new(
        config,
        table_rx,
        keys_rx,
        board.clone(),
        Activity::new(Some(reports_tx)),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let url = format!("http://{}/v1/embeddings", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, proxy::app(router)).await });

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
    let endpoint = Endpoint {
        pod: "emb-0".into(),
        load: board.entry(server.http),
    };
    endpoint.load.report(0, std::time::Instant::now());
    table_tx.send_replace(at_zero(vec![endpoint]));
    let served = first.await.expect("request");
    assert_eq!(served.status, 200, "{:?}", served.body);

    // Back at zero: the measured wake (about 1.5 s, rounded up) is the Retry-After now.
    table_tx.send_replace(at_zero(vec![]));
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
