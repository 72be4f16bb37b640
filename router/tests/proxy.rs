//! The router's serving path in front of real `modelfleet-server` processes (synthetic
//! backend), from a static table: model selection, keys, tiers and limits, the cache, retries
//! past a killed server, and least-loaded picking against a slow server. The same path behind
//! Kubernetes discovery runs in e2e's live tests.

mod common;

use std::time::{Duration, Instant};

use common::{Router, dim, header};
use modelfleet_testkit::server::{ServerProcess, get, get_text, metric_value, post};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_serves_two_models_and_an_unknown_one_gets_404_listing_them() {
    let a = ServerProcess::start(&["--backend=synthetic", "--model-name=emb-a"]);
    let b = ServerProcess::start(&["--backend=synthetic", "--model-name=emb-b", "--synthetic-dim=16"]);
    // The alias reaches the server under the served name it knows.
    let config = format!(
        "models:\n  - {{name: emb-a, aliases: [embed], endpoints: ['{}']}}\n  - {{name: emb-b, namespace: team, endpoints: ['{}']}}\n",
        a.http, b.http
    );
    let router = Router::start(&config, &["--allow-anonymous"]).await;

    let to_a = router
        .embed("emb-a", "hello", &[("x-request-id", "trace-1")])
        .await;
    assert_eq!((to_a.status, dim(&to_a)), (200, 384), "{:?}", to_a.body);
    assert_eq!(header(&to_a, "x-request-id"), "trace-1", "the id comes back");
    assert_eq!(header(&to_a, "x-modelfleet-endpoint"), a.http.to_string());
    assert_eq!(dim(&router.embed("embed", "hello", &[]).await), 384, "by alias");
    let to_b = router.embed("emb-b", "hello", &[]).await;
    assert_eq!((to_b.status, dim(&to_b)), (200, 16));
    assert!(
        !header(&to_b, "x-request-id").is_empty(),
        "the router makes an id"
    );

    let unknown = router.embed("gpt-9", "hello", &[]).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.body["error"]["code"], "model_not_found");
    let message = unknown.body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("emb-a") && message.contains("emb-b"),
        "{message}"
    );
    let missing = post(&router.url("/v1/embeddings"), &json!({"input": "x"}), &[]).await;
    assert_eq!(missing.status, 400);
    assert!(
        missing.body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("`model`")
    );

    let models = get(&router.url("/v1/models")).await;
    let ids: Vec<&str> = models.body["data"]
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["emb-a", "emb-b"]);
    assert_eq!(models.body["data"][1]["owned_by"], "team");
    assert_eq!(models.body["data"][0]["ready_replicas"], 1);
    let metrics = router.metrics().await;
    assert!(
        metric_value(
            &metrics,
            r#"modelfleet_router_requests_total{model="default/emb-a",tier="none",code="200"}"#
        ) >= 2.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_decide_the_tier_and_limits_and_a_forged_tier_header_does_nothing() {
    let server = ServerProcess::start(&[
        "--backend=synthetic",
        "--model-name=emb",
        "--tier=paid:10s:1",
        "--tier=free:10s:0.5",
    ]);
    let config = format!(
        "models:\n  - {{name: emb, tiers: [paid, free], endpoints: ['{}']}}\nkeys:\n  - {{key: sk-paid-0123456789, tenant: acme, tier: paid}}\n  - {{key: sk-free-0123456789, tenant: hobby, tier: free, requestsPerSecond: '2'}}\n",
        server.http
    );
    let router = Router::start(&config, &["--cache-bytes=0"]).await;
    let bearer = |k: &str| format!("Bearer {k}");

    assert_eq!(
        router.embed("emb", "x", &[]).await.status,
        401,
        "anonymous access is off"
    );
    let wrong = router
        .embed("emb", "x", &[("authorization", &bearer("sk-nope-0123456789"))])
        .await;
    assert_eq!(
        (wrong.status, wrong.body["error"]["code"].as_str()),
        (401, Some("invalid_api_key"))
    );

    let free = bearer("sk-free-0123456789");
    let forged = [("authorization", free.as_str()), ("x-modelfleet-tier", "paid")];
    for _ in 0..2 {
        let ok = router.embed("emb", "x", &forged).await;
        assert_eq!(ok.status, 200, "{:?}", ok.body);
        assert_eq!(header(&ok, "x-ratelimit-limit-requests"), "2");
    }
    let limited = router.embed("emb", "x", &forged).await;
    assert_eq!(limited.status, 429, "{:?}", limited.body);
    assert!(
        header(&limited, "retry-after")
            .parse::<u64>()
            .is_ok_and(|s| s >= 1)
    );
    assert_eq!(header(&limited, "x-ratelimit-remaining-requests"), "0");

    let paid = bearer("sk-paid-0123456789");
    for _ in 0..5 {
        assert_eq!(
            router.embed("emb", "x", &[("authorization", &paid)]).await.status,
            200,
            "paid is unaffected"
        );
    }
    let served =
        |tier: &str| format!(r#"modelfleet_requests_total{{api="openai",tier="{tier}",code="200"}}"#);
    let text = get_text(&format!("http://{}/metrics", server.metrics)).await;
    assert_eq!(
        metric_value(&text, &served("free")),
        2.0,
        "the forged header was dropped"
    );
    assert_eq!(metric_value(&text, &served("paid")), 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_embeddings_request_is_answered_without_reaching_the_server() {
    let server = ServerProcess::start(&["--backend=synthetic", "--model-name=emb"]);
    let config = format!("models:\n  - {{name: emb, endpoints: ['{}']}}\n", server.http);
    let router = Router::start(&config, &["--allow-anonymous"]).await;
    let url = router.url("/v1/embeddings");
    let first = post(&url, &json!({"model": "emb", "input": ["a", "b"]}), &[]).await;
    assert_eq!(
        (first.status, header(&first, "x-modelfleet-cache")),
        (200, "miss")
    );
    let before = server.metric("modelfleet_inputs_total").await;
    // The same request with its fields in another order.
    let again = post(&url, &json!({"input": ["a", "b"], "model": "emb"}), &[]).await;
    assert_eq!((again.status, header(&again, "x-modelfleet-cache")), (200, "hit"));
    assert_eq!(again.body, first.body);
    assert_eq!(
        server.metric("modelfleet_inputs_total").await,
        before,
        "the server saw nothing"
    );
    let other = post(&url, &json!({"model": "emb", "input": ["c"]}), &[]).await;
    assert_eq!(header(&other, "x-modelfleet-cache"), "miss");
    let metrics = router.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"modelfleet_router_cache_lookups_total{model="default/emb",result="hit"}"#
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_load_costs_no_request_and_the_retries_are_counted() {
    let first = ServerProcess::start(&[
        "--backend=synthetic",
        "--model-name=emb",
        "--synthetic-batch-cost=2ms",
    ]);
    let second = ServerProcess::start(&[
        "--backend=synthetic",
        "--model-name=emb",
        "--synthetic-batch-cost=2ms",
    ]);
    let config = format!(
        "models:\n  - {{name: emb, endpoints: ['{}', '{}']}}\n",
        first.http, second.http
    );
    let router = Router::start(&config, &["--allow-anonymous", "--cache-bytes=0"]).await;
    let url = router.url("/v1/embeddings");
    let clients: Vec<_> = (0..4)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut codes = Vec::new();
                for i in 0..60 {
                    let a = post(&url, &json!({"model": "emb", "input": format!("c{c} r{i}")}), &[]).await;
                    codes.push(a.status);
                }
                codes
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(first); // SIGKILL
    let mut codes = Vec::new();
    for c in clients {
        codes.extend(c.await.expect("client"));
    }
    assert_eq!(codes.len(), 240);
    let failed: Vec<_> = codes.iter().filter(|c| **c != 200).collect();
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let metrics = router.metrics().await;
    let retries = metric_value(
        &metrics,
        r#"modelfleet_router_retries_total{model="default/emb"}"#,
    );
    assert!(retries >= 1.0, "retries counted: {retries}\n{metrics}");
    // A refused connection makes the dead server the costliest pick: a few retries, not one in
    // two requests.
    assert!(
        retries <= 12.0,
        "the dead server keeps being picked: {retries} retries"
    );
}

fn p95(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 95 / 100).min(v.len().saturating_sub(1))]
}

/// p95 of every request, p95 of those the fast servers answered, and the slow server's share.
async fn measure(picker: &str, fast: &[ServerProcess], slow: &ServerProcess) -> (Duration, Duration, f64) {
    let endpoints: Vec<String> = fast
        .iter()
        .chain([slow])
        .map(|s| format!("'{}'", s.http))
        .collect();
    let config = format!(
        "models:\n  - {{name: emb, endpoints: [{}]}}\n",
        endpoints.join(", ")
    );
    let router = Router::start(
        &config,
        &[
            "--allow-anonymous",
            "--cache-bytes=0",
            &format!("--picker={picker}"),
        ],
    )
    .await;
    let url = router.url("/v1/embeddings");
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let url = url.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..50 {
                    let t = Instant::now();
                    let a = post(&url, &json!({"model": "emb", "input": format!("c{c} r{i}")}), &[]).await;
                    assert_eq!(a.status, 200);
                    out.push((t.elapsed(), header(&a, "x-modelfleet-endpoint").to_owned()));
                }
                out
            })
        })
        .collect();
    let mut all = Vec::new();
    for c in clients {
        all.extend(c.await.expect("client"));
    }
    let slow_addr = slow.http.to_string();
    let to_slow = all.iter().filter(|(_, e)| *e == slow_addr).count();
    let fast_only: Vec<Duration> = all
        .iter()
        .filter(|(_, e)| *e != slow_addr)
        .map(|(d, _)| *d)
        .collect();
    let share = to_slow as f64 / all.len() as f64;
    (
        p95(all.into_iter().map(|(d, _)| d).collect()),
        p95(fast_only),
        share,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_loaded_picking_keeps_p95_near_the_fast_servers_where_round_robin_does_not() {
    let fast: Vec<ServerProcess> = (0..3)
        .map(|_| {
            ServerProcess::start(&[
                "--backend=synthetic",
                "--model-name=emb",
                "--synthetic-batch-cost=5ms",
            ])
        })
        .collect();
    let slow = ServerProcess::start(&[
        "--backend=synthetic",
        "--model-name=emb",
        "--synthetic-batch-cost=50ms",
    ]);
    let (rr_all, rr_fast, rr_share) = measure("round-robin", &fast, &slow).await;
    let (ll_all, ll_fast, ll_share) = measure("least-loaded", &fast, &slow).await;
    eprintln!(
        "round-robin: p95 {rr_all:?} (fast servers {rr_fast:?}, slow share {rr_share:.3}); least-loaded: p95 {ll_all:?} (fast servers {ll_fast:?}, slow share {ll_share:.3})"
    );
    assert!(
        rr_all.as_secs_f64() > 1.5 * rr_fast.as_secs_f64(),
        "round robin pays for the slow server"
    );
    assert!(
        ll_all.as_secs_f64() <= 1.5 * ll_fast.as_secs_f64(),
        "least-loaded p95 {ll_all:?} vs fast servers' {ll_fast:?}"
    );
    assert!(ll_share < rr_share, "least-loaded sends less to the slow server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_request_gets_503_at_the_hold_timeout_even_while_the_table_keeps_changing() {
    use modelfleet_router::{activity::Activity, config::RouterConfig, load::LoadBoard};

    // A model with no Ready endpoint: every request is held.
    let starting = || common::one_model("r1", vec![], false);
    let config = RouterConfig {
        allow_anonymous: true,
        hold_timeout: Duration::from_secs(1),
        ..RouterConfig::default()
    };
    let (url, table_tx) =
        common::hand_driven(config, LoadBoard::default(), Activity::default(), starting()).await;
    // Watch events that change nothing for this model, as pod updates elsewhere would.
    let churn = tokio::spawn(async move {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            table_tx.send_replace(starting());
        }
    });
    let started = Instant::now();
    let held = post(&url, &json!({"model": "emb", "input": "x"}), &[]).await;
    let waited = started.elapsed();
    churn.abort();
    assert_eq!(held.status, 503, "{:?}", held.body);
    assert!(!header(&held, "retry-after").is_empty());
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(2500),
        "held for {waited:?}, the hold timeout is 1 s"
    );
    // With discovery gone (the sender dropped), nothing can change: 503 at once, no spinning.
    let _ = churn.await;
    let started = Instant::now();
    let gone = post(&url, &json!({"model": "emb", "input": "x"}), &[]).await;
    assert_eq!(gone.status, 503, "{:?}", gone.body);
    assert!(
        started.elapsed() < Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
}
