//! The router on the live fleet: two ModelDeployments behind one address, found by watching the
//! cluster, each picked by the request's `model`; an unknown model gets 404 listing both; a
//! repeated request is answered from the cache. API keys come from labelled Secrets and a
//! deleted Secret revokes its key.

use std::time::Duration;

use kube::{Api, api::PostParams};
use modelfleet_crds::ModelDeployment;
use modelfleet_testkit::{live::router, wait};

use super::{embedding, is_available, namespace, shared, start_router, synthetic, wait_md};

#[tokio::test(flavor = "multi_thread")]
async fn one_router_address_serves_two_model_deployments_by_model_name() {
    let live = shared();
    let (client, ns) = namespace("live-router").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    for md in [
        synthetic("small", "1", 16, 1, ""),
        synthetic("large", "1", 32, 1, ""),
    ] {
        api.create(&PostParams::default(), &md).await.expect("create");
    }
    for name in ["small", "large"] {
        wait_md(&api, name, Duration::from_secs(240), "Available", is_available).await;
    }
    let _router = start_router(ns.name(), &["--allow-anonymous"]).await;
    let url = format!("http://{}/v1/embeddings", router::HTTP_IN_NAMESPACE);
    let ask = |model: &str| format!(r#"{{"model":"{model}","input":["through the router"]}}"#);
    // The table follows the watch: the first answer may wait for the pods' Ready state to show.
    let first = wait::poll_until(Duration::from_secs(60), "a 200 through the router", || async {
        match live
            .fleet
            .request("POST", &url, Some(&ask("small-model")), &[])
            .await
        {
            Ok(a) if a.status == 200 => Ok(Some(a)),
            Ok(a) => Err(format!("HTTP {}: {}", a.status, a.body)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
    .expect("an answer");
    assert_eq!(embedding(&first.body).len(), 16);
    assert!(
        first
            .headers
            .get("x-modelfleet-endpoint")
            .is_some_and(|p| p.starts_with("small-")),
        "{:?}",
        first.headers
    );
    let large = live
        .fleet
        .request("POST", &url, Some(&ask("large-model")), &[])
        .await
        .expect("answer");
    assert_eq!(
        (large.status, embedding(&large.body).len()),
        (200, 32),
        "{}",
        large.body
    );
    let again = live
        .fleet
        .request("POST", &url, Some(&ask("large-model")), &[])
        .await
        .expect("answer");
    assert_eq!(
        again.headers.get("x-modelfleet-cache").map(String::as_str),
        Some("hit")
    );
    let unknown = live
        .fleet
        .request("POST", &url, Some(&ask("nope")), &[])
        .await
        .expect("answer");
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(
        unknown.body.contains("small-model") && unknown.body.contains("large-model"),
        "{}",
        unknown.body
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_come_from_labelled_secrets_and_a_deleted_key_stops_working() {
    use k8s_openapi::api::core::v1::Secret;
    use kube::api::DeleteParams;

    let live = shared();
    let (client, ns) = namespace("live-keys").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.create(&PostParams::default(), &synthetic("keyed", "1", 8, 1, ""))
        .await
        .expect("create");
    wait_md(&api, "keyed", Duration::from_secs(240), "Available", is_available).await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns.name());
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "acme-key", "labels": {"modelfleet.dev/router-key": "true"}},
        "stringData": {"key": "sk-live-0123456789abcdef", "tenant": "acme"}
    }))
    .expect("a Secret");
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("create the key");
    let keys_flag = format!("--keys-namespace={}", ns.name());
    let _router = start_router(ns.name(), &[&keys_flag]).await;
    let url = format!("http://{}/v1/embeddings", router::HTTP_IN_NAMESPACE);
    let body = r#"{"model":"keyed-model","input":["who may ask"]}"#;
    let ask = |key: Option<&'static str>| {
        let url = url.clone();
        async move {
            let auth = key.map(|k| format!("Bearer {k}"));
            let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("authorization", a.as_str())).collect();
            live.fleet
                .request("POST", &url, Some(body), &headers)
                .await
                .map(|a| (a.status, a.body))
                .map_err(|e| e.to_string())
        }
    };
    assert_eq!(ask(None).await.expect("answer").0, 401, "anonymous access is off");
    assert_eq!(ask(Some("sk-live-not-a-known-key")).await.expect("answer").0, 401);
    let served = wait::poll_until(Duration::from_secs(60), "a 200 with the key", || async {
        match ask(Some("sk-live-0123456789abcdef")).await {
            Ok((200, body)) => Ok(Some(body)),
            Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
            Err(e) => Err(e),
        }
    })
    .await
    .expect("the key works");
    assert_eq!(embedding(&served).len(), 8);

    // Revoking the key is deleting its Secret: the watch takes it away.
    secrets
        .delete("acme-key", &DeleteParams::default())
        .await
        .expect("delete");
    wait::poll_until(Duration::from_secs(10), "the deleted key refused", || async {
        match ask(Some("sk-live-0123456789abcdef")).await {
            Ok((401, _)) => Ok(Some(())),
            Ok((status, _)) => Err(format!("still HTTP {status}")),
            Err(e) => Err(e),
        }
    })
    .await
    .expect("revoked within 10 s");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_routers_counts_reach_status_routing_through_the_operators_hub() {
    let live = shared();
    let (client, ns) = namespace("live-routing").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.create(&PostParams::default(), &synthetic("counted", "1", 8, 1, ""))
        .await
        .expect("create");
    wait_md(
        &api,
        "counted",
        Duration::from_secs(240),
        "Available",
        is_available,
    )
    .await;
    let (operator_flag, token_flag) = (
        format!("--operator-url=http://{}", live.hub),
        format!("--token-file={}", live.agents[0].token_file().display()),
    );
    let flags = [
        "--allow-anonymous",
        &operator_flag,
        &token_flag,
        "--report-interval=1s",
    ];
    let _router = start_router(ns.name(), &flags).await;
    let url = format!("http://{}/v1/embeddings", router::HTTP_IN_NAMESPACE);
    let mut answered = 0;
    for i in 0..40 {
        // Ten distinct inputs, each sent four times: 30 of the 40 are cache hits.
        let body = format!(r#"{{"model":"counted-model","input":["count me {}"]}}"#, i % 10);
        if let Ok(a) = live.fleet.request("POST", &url, Some(&body), &[]).await
            && a.status == 200
        {
            answered += 1;
        }
        if answered == 0 {
            // The first answer may wait for the pod's Ready state to reach the table.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    assert!(answered >= 30, "{answered} of 40 answered");
    let md = wait_md(&api, "counted", Duration::from_secs(90), "status.routing", |m| {
        m.status
            .as_ref()
            .and_then(|s| s.routing.as_ref())
            .is_some_and(|r| r.requests >= 40)
    })
    .await;
    let routing = md.status.and_then(|s| s.routing).expect("routing");
    assert_eq!(routing.routers, 1, "{routing:?}");
    let ratio = routing.cache_hit_ratio.expect("a cache hit ratio");
    assert!((0.5..=0.8).contains(&ratio), "about 30 hits of 40: {routing:?}");
    assert!(routing.last_request_time.is_some(), "{routing:?}");
}
