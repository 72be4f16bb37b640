//! The router on the live fleet: two ModelDeployments behind one address, found by watching the
//! cluster, each picked by the request's `model`; an unknown model gets 404 listing both; a
//! repeated request is answered from the cache.

use std::time::Duration;

use kube::{Api, api::PostParams};
use modelfleet_crds::ModelDeployment;
use modelfleet_testkit::{live::router, wait};

use super::{embedding, is_available, namespace, shared, synthetic, wait_md};

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
    let binary = live
        .fleet
        .images()
        .binary_for("modelfleet-router")
        .expect("router binary");
    let namespace_flag = format!("--namespace={}", ns.name());
    let _router = router::start(
        &live.cluster,
        live.fleet.net(),
        binary,
        &["--allow-anonymous", &namespace_flag],
    )
    .await
    .expect("the router starts and lists the cluster");
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
