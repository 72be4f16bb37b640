//! Progressive rollouts end to end: the real operator on the local control plane (Gateway API
//! CRDs installed), a real Prometheus scraping a loopback endpoint whose values the test sets per
//! revision, and the analysis's `prometheus` check templated with `{{revision}}`.

#[path = "../common/mod.rs"]
mod common;
mod support;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use common::*;
use k8s_openapi::api::events::v1::Event;
use kube::{
    Api, Client,
    api::{Patch, PatchParams},
};
use modelfleet_crds::{ModelDeployment, v1alpha1::RolloutResult};
use support::*;

#[tokio::test]
async fn a_good_version_goes_shadow_10_50_and_is_promoted_while_the_route_follows() {
    let Rolling {
        client,
        ns,
        endpoint,
        prometheus,
        md,
        _namespace,
        _dir,
    } = Rolling::available(
        "rollout-good",
        "good",
        "[{shadow: {percent: 20, duration: 4s}}, {canary: {weight: 10, duration: 4s}}, {canary: {weight: 50, duration: 4s}}]",
    )
    .await;

    seed_candidate(&endpoint, &prometheus, &md, "2", 0.001).await;
    let candidate = set_version(&client, &md, "2").await;
    let (seen, columns_at_10) = watch_until_promoted(&client, &ns, &candidate).await;
    // The route's weights follow the steps in order, and the mirror is on only in the shadow step.
    let mut weights: Vec<i32> = seen.iter().map(|s| s.route_canary_weight).collect();
    weights.dedup();
    assert_eq!(weights, vec![0, 10, 50, 0], "{seen:#?}");
    assert!(
        seen.iter()
            .any(|s| s.step == Some(0) && s.running && s.stable_mirror_percent == 20),
        "the stable revision mirrors 20% during the shadow step: {seen:#?}"
    );
    assert!(
        seen.iter()
            .filter(|s| s.route_canary_weight > 0)
            .all(|s| s.stable_mirror_percent == 0),
        "no mirror during canary steps: {seen:#?}"
    );
    let columns: BTreeMap<_, _> = columns_at_10.expect("a 10% step was seen").into_iter().collect();
    assert_eq!(columns["STABLE"], "1");
    assert_eq!(columns["CANARY"], "2");
    assert_eq!(columns["WEIGHT"], "10");
    assert_eq!(columns["PHASE"], "Progressing");

    let md = wait_condition(
        &client,
        &ns,
        "good",
        "Available",
        "True",
        None,
        Duration::from_secs(30),
    )
    .await;
    let status = md.status.expect("status");
    assert_eq!(
        status.stable.map(|s| (s.revision, s.version)),
        Some((candidate, "2".into()))
    );
    assert_eq!(status.canary.as_deref(), Some("-"));
    assert_drained_and_announced(&client, &ns, "good").await;
    prometheus.stop();
}

#[tokio::test]
async fn a_bad_version_rolls_back_by_itself_within_interval_times_failure_limit_plus_one() {
    let Rolling {
        client,
        ns,
        endpoint,
        prometheus,
        md,
        _namespace,
        _dir,
    } = Rolling::available(
        "rollout-bad",
        "bad",
        "[{canary: {weight: 10, duration: 60s}}, {canary: {weight: 50, duration: 60s}}]",
    )
    .await;

    // Prometheus has the bad value before the candidate exists, so the clock below measures the
    // operator only.
    seed_candidate(&endpoint, &prometheus, &md, "2", 0.2).await;
    let candidate = set_version(&client, &md, "2").await;
    let took = rollback_after_ready(&client, &ns, "bad").await;
    // The route is written in the same reconcile as the status, concurrently.
    wait_route_weight(&client, &ns, "bad", 0).await;
    eprintln!("rolled back {took:?} after the candidate was ready");
    // interval 2 s × failureLimit 2 + one interval.
    assert!(
        took <= Duration::from_secs(6),
        "rolled back {took:?} after the candidate was ready"
    );

    let md = wait_condition(
        &client,
        &ns,
        "bad",
        "Degraded",
        "True",
        Some("AnalysisFailed"),
        Duration::from_secs(10),
    )
    .await;
    let (_, _, message) = condition(&md, "Degraded").expect("Degraded");
    assert!(
        message.contains("errorRatio") && message.contains("0.2") && message.contains("max 0.01"),
        "{message}"
    );
    assert_eq!(
        md.status.as_ref().and_then(|s| s.phase),
        Some(modelfleet_crds::v1alpha1::Phase::Degraded)
    );
    assert_scaled_to_zero_and_announced(&client, &ns, "bad", &candidate).await;
    // Not retried while the spec asks for the same revision.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, snap) = snapshot(&client, &ns, "bad").await;
    assert_eq!((snap.step, snap.stable_version.as_str()), (None, "1"));
    prometheus.stop();
}

#[tokio::test]
async fn with_prometheus_down_the_rollout_pauses_as_inconclusive_and_resumes_when_it_is_back() {
    let Rolling {
        client,
        ns,
        endpoint,
        mut prometheus,
        md,
        _namespace,
        _dir,
    } = Rolling::available(
        "rollout-inconclusive",
        "held",
        "[{canary: {weight: 10, duration: 4s}}, {canary: {weight: 50, duration: 2s}}]",
    )
    .await;
    seed_candidate(&endpoint, &prometheus, &md, "2", 0.0).await;
    set_version(&client, &md, "2").await;
    modelfleet_testkit::wait::poll_until(Duration::from_secs(30), "step 1 runs", || async {
        let (_, snap) = snapshot(&client, &ns, "held").await;
        if snap.running && snap.step == Some(0) {
            Ok(Some(()))
        } else {
            Err(format!("{snap:?}"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    prometheus.pause();
    let md = wait_condition(
        &client,
        &ns,
        "held",
        "Paused",
        "True",
        Some("AnalysisInconclusive"),
        Duration::from_secs(20),
    )
    .await;
    let (_, _, message) = condition(&md, "Paused").expect("Paused");
    assert!(message.contains("errorRatio"), "{message}");
    // Held at step 1 well past its 4 s, never promoted.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (_, snap) = snapshot(&client, &ns, "held").await;
    assert_eq!((snap.step, snap.route_canary_weight), (Some(0), 10), "{snap:?}");
    assert!(snap.last_rollout.is_none(), "{snap:?}");

    let prometheus = prometheus.restart(SCRAPE).await.expect("Prometheus restarts");
    let md = wait_condition(
        &client,
        &ns,
        "held",
        "Available",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
    let status = md.status.expect("status");
    assert_eq!(status.stable.map(|s| s.version).as_deref(), Some("2"));
    assert!(condition_type_absent_or_false(&status.conditions, "Paused"));
    prometheus.stop();
}

#[tokio::test]
async fn pause_holds_the_step_and_the_abort_annotation_rolls_back_and_is_consumed() {
    let Rolling {
        client,
        ns,
        endpoint,
        prometheus,
        md,
        _namespace,
        _dir,
    } = Rolling::available(
        "rollout-controls",
        "steered",
        "[{canary: {weight: 25, duration: 3s}}, {canary: {weight: 50, duration: 3s}}]",
    )
    .await;
    let api = Api::<ModelDeployment>::namespaced(client.clone(), &ns);
    let pause = serde_json::json!({"spec": {"rollout": {"paused": true}}});
    api.patch("steered", &PatchParams::default(), &Patch::Merge(&pause))
        .await
        .expect("pause");
    let candidate = set_version(&client, &md, "2").await;
    endpoint.set(&candidate, 0.0);

    let md = wait_condition(
        &client,
        &ns,
        "steered",
        "Paused",
        "True",
        Some("RolloutPaused"),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        md.status.as_ref().and_then(|s| s.canary_weight),
        Some(25),
        "paused at the first step's weight"
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (_, snap) = snapshot(&client, &ns, "steered").await;
    assert_eq!(
        (snap.step, snap.route_canary_weight),
        (Some(0), 25),
        "held past the 3 s step: {snap:?}"
    );

    let abort = serde_json::json!({"metadata": {"annotations": {"modelfleet.dev/abort": "true"}}});
    api.patch("steered", &PatchParams::default(), &Patch::Merge(&abort))
        .await
        .expect("abort");
    let md = wait_condition(
        &client,
        &ns,
        "steered",
        "Degraded",
        "True",
        Some("Aborted"),
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        md.status
            .as_ref()
            .and_then(|s| s.last_rollout.as_ref())
            .map(|r| (r.result, r.revision.clone())),
        Some((RolloutResult::RolledBack, candidate))
    );
    wait_consumed(&api, "steered", "modelfleet.dev/abort").await;
    wait_route_weight(&client, &ns, "steered", 0).await;
    prometheus.stop();
}

#[tokio::test]
async fn without_telemetry_builtin_checks_hold_the_rollout_until_the_promote_annotation() {
    let (client, ns) = setup("rollout-promote").await;
    let ns = ns.name().to_string();
    let md = model_deployment(
        "promoted",
        &ns,
        r#"
model: {name: all-MiniLM-L6-v2, version: "1", uri: "hf://sentence-transformers/all-MiniLM-L6-v2"}
resources: {gpus: 1}
replicas: 2
rollout:
  steps: [{canary: {weight: 50, duration: 2s}}]
  analysis: {interval: 2s, checks: [{builtin: errorRate, max: 0.01}]}
  scaleDownDelay: 1s
"#,
    );
    create(&client, &md).await;
    wait_condition(
        &client,
        &ns,
        "promoted",
        "Available",
        "True",
        None,
        Duration::from_secs(60),
    )
    .await;
    let candidate = set_version(&client, &md, "2").await;
    let held = wait_condition(
        &client,
        &ns,
        "promoted",
        "Paused",
        "True",
        Some("AnalysisInconclusive"),
        Duration::from_secs(30),
    )
    .await;
    let (_, _, message) = condition(&held, "Paused").expect("Paused");
    assert!(
        message.contains("errorRate") && message.contains("no fresh telemetry"),
        "{message}"
    );
    // Well past the 2 s step: still not promoted on missing data.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, snap) = snapshot(&client, &ns, "promoted").await;
    assert_eq!(
        (snap.step, snap.stable_version.as_str()),
        (Some(0), "1"),
        "{snap:?}"
    );

    let api = Api::<ModelDeployment>::namespaced(client.clone(), &ns);
    let promote = serde_json::json!({"metadata": {"annotations": {"modelfleet.dev/promote": "true"}}});
    api.patch("promoted", &PatchParams::default(), &Patch::Merge(&promote))
        .await
        .expect("promote");
    let md = wait_condition(
        &client,
        &ns,
        "promoted",
        "Available",
        "True",
        None,
        Duration::from_secs(30),
    )
    .await;
    let status = md.status.expect("status");
    assert_eq!(
        status.stable.map(|s| (s.revision, s.version)),
        Some((candidate, "2".into()))
    );
    wait_consumed(&api, "promoted", "modelfleet.dev/promote").await;
}

/// Polls until the candidate is promoted and the route is back to stable; every distinct view
/// on the way, and the `kubectl get mdep` columns seen at the 10% step.
async fn watch_until_promoted(
    client: &Client,
    ns: &str,
    candidate: &str,
) -> (Vec<Snapshot>, Option<Vec<(String, String)>>) {
    let started = Instant::now();
    let mut seen: Vec<Snapshot> = Vec::new();
    let mut columns_at_10 = None;
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no promotion: {seen:#?}"
        );
        let (md, snap) = snapshot(client, ns, "good").await;
        let status_weight = md.status.as_ref().and_then(|s| s.canary_weight);
        if status_weight == Some(10) && columns_at_10.is_none() {
            columns_at_10 = Some(kubectl_get_mdep(ns, "good"));
        }
        // The route is written concurrently with the status: wait for both.
        let done = snap.route_canary_weight == 0
            && snap
                .last_rollout
                .as_ref()
                .is_some_and(|r| r.result == RolloutResult::Promoted && r.revision == candidate);
        if seen.last() != Some(&snap) {
            seen.push(snap);
        }
        if done {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (seen, columns_at_10)
}

/// The old revision drains for scaleDownDelay, then goes; the rollout's Events were published.
async fn assert_drained_and_announced(client: &Client, ns: &str, name: &str) {
    modelfleet_testkit::wait::poll_until(Duration::from_secs(30), "old revision retired", || async {
        let left = revision_deployments(client, ns, name).await.len();
        if left == 1 {
            Ok(Some(()))
        } else {
            Err(format!("{left} revisions"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let reasons: Vec<String> = events(client, ns, name)
        .await
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.iter().any(|r| r == "RolloutStep"), "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Promoted"), "{reasons:?}");
}

/// How long after the candidate was seen ready it was rolled back.
async fn rollback_after_ready(client: &Client, ns: &str, name: &str) -> Duration {
    let mut ready_at = None;
    let started = Instant::now();
    let rolled_back_at = loop {
        let (_, snap) = snapshot(client, ns, name).await;
        if snap.running && ready_at.is_none() {
            ready_at = Some(Instant::now());
        }
        if snap
            .last_rollout
            .as_ref()
            .is_some_and(|r| r.result == RolloutResult::RolledBack)
        {
            break Instant::now();
        }
        assert!(
            ready_at.is_none_or(|t| t.elapsed() < Duration::from_secs(30)),
            "no rollback: {snap:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the candidate never ran: {snap:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // The clock starts when the candidate was seen ready: a rollback before that (or one whose
    // start was never seen) measures nothing, so it fails instead of passing as "0 s".
    let ready_at = ready_at.expect("the candidate was never seen ready before it was rolled back");
    rolled_back_at - ready_at
}

/// The rolled-back candidate runs no replica and a Warning Event names the failing check.
async fn assert_scaled_to_zero_and_announced(client: &Client, ns: &str, name: &str, candidate: &str) {
    let replicas: BTreeMap<String, i32> = revision_deployments(client, ns, name)
        .await
        .into_iter()
        .map(|d| {
            let rev = d.metadata.labels.unwrap_or_default()["modelfleet.dev/revision"].clone();
            (rev, d.spec.and_then(|s| s.replicas).unwrap_or(-1))
        })
        .collect();
    assert_eq!(
        replicas.get(candidate),
        Some(&0),
        "candidate scaled to 0: {replicas:?}"
    );
    let warnings: Vec<Event> = events(client, ns, name)
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("RolledBack"))
        .collect();
    assert!(
        warnings
            .iter()
            .any(|e| e.note.as_deref().is_some_and(|n| n.contains("errorRatio"))),
        "{warnings:?}"
    );
}
