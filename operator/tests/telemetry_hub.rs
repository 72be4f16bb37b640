//! The telemetry hub as node agents meet it, without a cluster (static tokens stand in for the
//! TokenReview, which `autoscaling.rs` exercises for real): who is refused and how, and that a
//! leader losing its Lease closes the streams so agents go find the new one.

use std::{collections::HashSet, sync::Arc, time::Duration};

use modelfleet_operator::{
    metrics::Metrics,
    telemetry::{Authenticator, Hub, TelemetryStore},
};
use modelfleet_proto::telemetry::{NodeReport, ReportAck, telemetry_client::TelemetryClient};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Streaming};

struct Running {
    url: String,
    leading: watch::Sender<bool>,
    store: TelemetryStore,
    metrics: Metrics,
}

async fn hub(leading: bool) -> Running {
    let store = TelemetryStore::default();
    let metrics = Metrics::default();
    let (leading_tx, leading_rx) = watch::channel(leading);
    let auth = Authenticator::Static(Arc::new(HashSet::from(["good".to_string()])));
    let (addr, server) = Hub::new(store.clone(), auth, leading_rx, metrics.clone())
        .serve("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind");
    tokio::spawn(server);
    Running {
        url: format!("http://{addr}"),
        leading: leading_tx,
        store,
        metrics,
    }
}

/// Opens a stream with `token` and sends one report; returns the ack stream or the refusal.
async fn open(
    url: &str,
    token: Option<&str>,
) -> (
    mpsc::Sender<NodeReport>,
    Result<Streaming<ReportAck>, tonic::Status>,
) {
    let mut client = TelemetryClient::connect(url.to_string()).await.expect("connect");
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("metadata"),
        );
    }
    tx.send(NodeReport {
        node: "n1".into(),
        sequence: 1,
        interval_ms: 1000,
        ..Default::default()
    })
    .await
    .expect("queue a report");
    let answer = client.report(request).await.map(tonic::Response::into_inner);
    (tx, answer)
}

#[tokio::test]
async fn streams_without_a_good_token_are_unauthenticated_and_counted() {
    let hub = hub(true).await;
    for token in [None, Some("bad")] {
        let (_tx, answer) = open(&hub.url, token).await;
        let status = answer.expect_err("refused");
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}: {status:?}");
    }
    let (_tx, answer) = open(&hub.url, None).await;
    assert!(
        answer.expect_err("refused").message().contains("Bearer"),
        "the refusal says what to send"
    );
    let metrics = hub.metrics.render();
    assert!(
        metrics.contains("modelfleet_operator_telemetry_rejected_streams_total{category=\"missing\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("modelfleet_operator_telemetry_rejected_streams_total{category=\"rejected\"} 1")
    );
}

#[tokio::test]
async fn a_follower_refuses_with_unavailable_so_agents_reconnect() {
    let hub = hub(false).await;
    let (_tx, answer) = open(&hub.url, Some("good")).await;
    let status = answer.expect_err("refused");
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().contains("not the leader"),
        "{}",
        status.message()
    );
    assert_eq!(hub.store.nodes(), 0, "a follower keeps nothing");
}

#[tokio::test]
async fn the_leader_acks_reports_and_closes_streams_when_it_loses_the_lease() {
    let hub = hub(true).await;
    let (tx, answer) = open(&hub.url, Some("good")).await;
    let mut acks = answer.expect("accepted");
    let ack = acks.message().await.expect("an ack").expect("not closed");
    assert_eq!(ack.sequence, 1);
    assert_eq!(hub.store.nodes(), 1);
    hub.leading.send(false).expect("hub alive");
    let end = tokio::time::timeout(Duration::from_secs(5), acks.message())
        .await
        .expect("the stream ends promptly");
    assert_eq!(end.expect_err("closed with a status").code(), Code::Unavailable);
    drop(tx);
}

#[tokio::test]
async fn router_reports_are_authenticated_acked_and_summed_into_status_routing() {
    use modelfleet_proto::telemetry::{ModelDemand, RouterReport};

    let hub = hub(true).await;
    let mut client = TelemetryClient::connect(hub.url.clone()).await.expect("connect");
    let demand = |requests, hits| ModelDemand {
        namespace: "team".into(),
        deployment: "emb".into(),
        requests,
        held: 0,
        cache_hits: hits,
        cache_misses: 2,
        fallbacks: 1,
        last_request_unix_ms: 1_800_000_000_000,
    };
    for (router, requests, hits) in [("router-a", 10, 2), ("router-b", 30, 6)] {
        let (tx, rx) = mpsc::channel(4);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("authorization", "Bearer good".parse().expect("metadata"));
        tx.send(RouterReport {
            router: router.into(),
            sequence: 7,
            interval_ms: 5000,
            models: vec![demand(requests, hits)],
            ..Default::default()
        })
        .await
        .expect("queue");
        let mut acks = client
            .router_report(request)
            .await
            .expect("accepted")
            .into_inner();
        assert_eq!(acks.message().await.expect("ack").map(|a| a.sequence), Some(7));
    }
    let routing = hub
        .store
        .routing("team", "emb", std::time::Instant::now())
        .expect("both routers reported");
    assert_eq!((routing.routers, routing.requests, routing.fallbacks), (2, 40, 2));
    assert_eq!(routing.cache_hit_ratio, Some(0.667), "8 hits of 12 cacheable");

    // Without a good token: refused like a node agent.
    let (_tx, rx) = mpsc::channel::<RouterReport>(1);
    let refused = client
        .router_report(tonic::Request::new(ReceiverStream::new(rx)))
        .await;
    assert_eq!(refused.expect_err("refused").code(), Code::Unauthenticated);
}
