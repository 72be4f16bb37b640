//! Rollouts carrying real traffic: a replacement without a failed request, a replica-share
//! canary, and a shadow step mirrored through Service DNS.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use modelfleet_crds::{ModelDeployment, constants::labels};

use super::{is_available, is_ready, label, namespace, send, shared, synthetic, wait_md, wait_pods};

/// Changes the version (and the synthetic dimension, so answers tell the revisions apart).
async fn roll_to(api: &Api<ModelDeployment>, name: &str, version: &str, dim: usize) {
    let patch = serde_json::json!({"spec": {
        "model": {"version": version},
        "runtime": {"args": [format!("--synthetic-dim={dim}")]},
    }});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch the version");
}

/// When each pod was first seen Ready and first seen terminating, per revision.
#[derive(Default, Debug)]
struct PodTimeline {
    ready: BTreeMap<String, (String, Instant)>,
    terminating: BTreeMap<String, (String, Instant)>,
}

fn watch_pods(
    pods: Api<Pod>,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<PodTimeline>>, tokio::task::JoinHandle<()>) {
    let timeline = Arc::new(Mutex::new(PodTimeline::default()));
    let seen = timeline.clone();
    let task = tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            if let Ok(list) = pods.list(&ListParams::default()).await {
                let now = Instant::now();
                let mut t = seen.lock().expect("timeline");
                for p in &list.items {
                    let name = p.metadata.name.clone().unwrap_or_default();
                    let revision = label(p, labels::REVISION).to_string();
                    if is_ready(p) && p.metadata.deletion_timestamp.is_none() {
                        t.ready.entry(name.clone()).or_insert((revision.clone(), now));
                    }
                    if p.metadata.deletion_timestamp.is_some() {
                        t.terminating.entry(name).or_insert((revision, now));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (timeline, task)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_version_change_without_steps_fails_no_request_and_stops_old_pods_after_new_ones_are_ready() {
    let (client, ns) = namespace("live-replace").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.create(&PostParams::default(), &synthetic("replace", "1", 16, 2, ""))
        .await
        .expect("create");
    let v1 = wait_md(
        &api,
        "replace",
        Duration::from_secs(120),
        "v1 Available",
        is_available,
    )
    .await;
    let old_revision = v1.status.and_then(|s| s.stable).expect("stable").revision;
    let url = format!("http://replace.{}.svc:8080/v1/embeddings", ns.name());

    let stop = Arc::new(AtomicBool::new(false));
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let (timeline, watcher) = watch_pods(pods.clone(), stop.clone());
    let stream = {
        let (url, stop) = (url.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut dims, mut failures) = (BTreeMap::new(), Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let (d, f) = send(&url, 4, 2).await;
                for (k, v) in d {
                    *dims.entry(k).or_insert(0) += v;
                }
                failures.extend(f);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (dims, failures)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    roll_to(&api, "replace", "2", 32).await;
    let v2 = wait_md(&api, "replace", Duration::from_secs(180), "v2 Available", |md| {
        is_available(md)
            && md
                .status
                .as_ref()
                .and_then(|s| s.stable.as_ref())
                .is_some_and(|s| s.version == "2")
    })
    .await;
    let new_revision = v2.status.and_then(|s| s.stable).expect("stable").revision;
    wait_pods(
        &pods,
        &format!("{}={old_revision}", labels::REVISION),
        Duration::from_secs(120),
        "old pods gone",
        |p| p.is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::Relaxed);
    let (dims, failures) = stream.await.expect("the request stream");
    watcher.await.expect("the pod watcher");

    assert!(
        failures.is_empty(),
        "{} failed requests: {failures:?}",
        failures.len()
    );
    assert!(
        dims.get(&16).is_some_and(|n| *n > 20),
        "v1 served before: {dims:?}"
    );
    assert!(
        dims.get(&32).is_some_and(|n| *n > 20),
        "v2 served after: {dims:?}"
    );
    let t = timeline.lock().expect("timeline");
    let new_ready: Vec<Instant> = t
        .ready
        .values()
        .filter(|(r, _)| *r == new_revision)
        .map(|(_, at)| *at)
        .collect();
    let old_stopped: Vec<Instant> = t
        .terminating
        .values()
        .filter(|(r, _)| *r == old_revision)
        .map(|(_, at)| *at)
        .collect();
    assert_eq!((new_ready.len(), old_stopped.len()), (2, 2), "{t:?}");
    let last_ready = new_ready.iter().max().expect("ready");
    let first_stop = old_stopped.iter().min().expect("stopped");
    // Deletion seen in the same 100 ms poll as the last Ready is allowed: SIGTERM itself comes
    // only after the 10 s preStop drain that deletion starts.
    assert!(
        first_stop >= last_ready,
        "an old pod was deleted {:?} before the last new one was Ready",
        last_ready.duration_since(*first_stop)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replica_share_canary_gets_its_weight_of_2000_requests_through_the_service() {
    let (client, ns) = namespace("live-canary").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    let steps = "  rollout:\n    steps:\n      - canary: {weight: 25, duration: 30m}\n";
    api.create(&PostParams::default(), &synthetic("canary", "1", 16, 3, steps))
        .await
        .expect("create");
    wait_md(
        &api,
        "canary",
        Duration::from_secs(120),
        "v1 Available",
        is_available,
    )
    .await;
    roll_to(&api, "canary", "2", 32).await;
    let md = wait_md(
        &api,
        "canary",
        Duration::from_secs(120),
        "the canary step runs",
        |md| {
            md.status
                .as_ref()
                .and_then(|s| s.candidate.as_ref())
                .is_some_and(|c| c.ready_replicas == 1 && c.traffic_weight > 0)
        },
    )
    .await;
    let weight = md
        .status
        .and_then(|s| s.candidate)
        .expect("candidate")
        .traffic_weight;
    assert_eq!(weight, 25, "one of four Ready replicas");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    wait_pods(
        &pods,
        "modelfleet.dev/deployment=canary",
        Duration::from_secs(60),
        "4 Ready",
        |p| p.iter().filter(|p| is_ready(p)).count() == 4,
    )
    .await;
    let url = format!("http://canary.{}.svc:8080/v1/embeddings", ns.name());
    // kube-proxy programs the new endpoint within a moment of the EndpointSlice update.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (dims, failures) = send(&url, 2_000, 8).await;
    assert!(failures.is_empty(), "{failures:?}");
    let candidate = dims.get(&32).copied().unwrap_or(0);
    let share = 100.0 * candidate as f64 / 2_000.0;
    assert!(
        (share - f64::from(weight)).abs() <= 10.0,
        "the candidate got {share:.1}% of 2,000 requests at weight {weight}: {dims:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_shadow_step_mirrors_through_service_dns_and_the_operator_sees_the_agreement() {
    let (client, ns) = namespace("live-shadow").await;
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    let steps = "  rollout:\n    steps:\n      - shadow: {percent: 100, duration: 30m}\n    analysis:\n      interval: 5s\n      checks:\n        - builtin: outputAgreement\n          min: 0.9\n";
    api.create(&PostParams::default(), &synthetic("shadow", "1", 16, 1, steps))
        .await
        .expect("create");
    wait_md(
        &api,
        "shadow",
        Duration::from_secs(120),
        "v1 Available",
        is_available,
    )
    .await;
    // Same dimension: the synthetic vectors of both versions agree.
    roll_to(&api, "shadow", "2", 16).await;
    let md = wait_md(
        &api,
        "shadow",
        Duration::from_secs(120),
        "the shadow step runs",
        |md| {
            md.status
                .as_ref()
                .and_then(|s| s.candidate.as_ref())
                .is_some_and(|c| c.ready_replicas == 1 && c.mirror_percent == 100)
        },
    )
    .await;
    let candidate = md.status.and_then(|s| s.candidate).expect("candidate").revision;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns.name());
    let shadow_selector = format!("{}={candidate}", labels::REVISION);
    let shadow_pods = wait_pods(
        &pods,
        &shadow_selector,
        Duration::from_secs(30),
        "a Ready shadow pod",
        |p| p.iter().any(is_ready),
    )
    .await;
    let shadow_ip = shadow_pods
        .iter()
        .find(|p| is_ready(p))
        .and_then(|p| p.status.as_ref()?.pod_ip.clone())
        .expect("the shadow pod's IP");
    let mirrored_before = counter(
        &format!("http://{shadow_ip}:9090/metrics"),
        "modelfleet_requests_total",
    )
    .await;
    let url = format!("http://shadow.{}.svc:8080/v1/embeddings", ns.name());
    let deadline = Instant::now() + Duration::from_secs(90);
    let agreement = loop {
        let (dims, failures) = send(&url, 20, 2).await;
        assert!(failures.is_empty(), "{failures:?}");
        assert!(
            dims.keys().all(|d| *d == 16),
            "the shadow never answers clients: {dims:?}"
        );
        let md = api.get("shadow").await.expect("get");
        let value = md
            .status
            .and_then(|s| s.analysis)
            .and_then(|a| a.results.into_iter().find(|r| r.check == "outputAgreement"))
            .and_then(|r| r.value);
        if let Some(v) = value {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no agreement in status.analysis within 90 s"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(agreement >= 0.9, "agreement {agreement}");
    let mirrored = counter(
        &format!("http://{shadow_ip}:9090/metrics"),
        "modelfleet_requests_total",
    )
    .await;
    assert!(
        mirrored > mirrored_before,
        "the shadow pod received mirrored requests ({mirrored_before} → {mirrored})"
    );
}

/// The sum of the samples of `metric` in the Prometheus text at `url` (inside the namespace).
async fn counter(url: &str, metric: &str) -> f64 {
    let answer = shared()
        .fleet
        .request("GET", url, None, &[])
        .await
        .expect("metrics");
    answer
        .body
        .lines()
        .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
