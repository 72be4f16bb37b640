//! The built-in autoscaler end to end: the real operator (telemetry hub with TokenReview, decision
//! loop), real `modelfleet-node-agent` processes in simulated mode on the fake GPU nodes, and a
//! load simulator serving each pod's `/metrics` on loopback.

mod common;

use std::time::{Duration, Instant};

use common::*;
use k8s_openapi::api::{apps::v1::Deployment, events::v1::Event};
use kube::{Api, Client, api::ListParams};
use modelfleet_crds::ModelDeployment;
use modelfleet_testkit::{
    agents::{AgentsConfig, LoadSimulator, NodeAgents, PodLoad},
    testing::shared_cluster,
    wait::poll_until,
};

const MINUTE: Duration = Duration::from_secs(60);

fn queued(total: f64) -> PodLoad {
    PodLoad {
        queued: total,
        running: 1.0,
        request_rate: 20.0,
        latency_seconds: 0.05,
        busy_ratio: 0.5,
        batch_size: 4.0,
        ..Default::default()
    }
}

/// Total replicas over the revision Deployments of `name`.
async fn replicas(client: &Client, namespace: &str, name: &str) -> i32 {
    revision_deployments(client, namespace, name)
        .await
        .iter()
        .map(|d: &Deployment| d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
        .sum()
}

async fn wait_replicas(
    client: &Client,
    namespace: &str,
    name: &str,
    what: &str,
    timeout: Duration,
    ok: impl Fn(i32) -> bool,
) -> i32 {
    poll_until(timeout, what, || async {
        let n = replicas(client, namespace, name).await;
        if ok(n) {
            Ok(Some(n))
        } else {
            Err(format!("{n} replicas"))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"))
}

async fn get(client: &Client, namespace: &str, name: &str) -> ModelDeployment {
    Api::<ModelDeployment>::namespaced(client.clone(), namespace)
        .get(name)
        .await
        .expect("get ModelDeployment")
}

/// What every act of the scenario below works on.
struct Scene {
    client: Client,
    ns: String,
    simulator: LoadSimulator,
}

#[tokio::test]
async fn load_scales_replicas_up_and_down_holds_without_telemetry_and_stops_at_the_gpus() {
    let (client, ns) = setup("autoscale").await;
    let ns = ns.name().to_string();
    let simulator = LoadSimulator::start(client.clone(), Some(ns.clone()))
        .await
        .expect("load simulator");
    let mut agents = NodeAgents::start(
        shared_cluster(),
        AgentsConfig {
            interval: Duration::from_millis(500),
            ..AgentsConfig::new(["gpu-node-0", "gpu-node-1"], telemetry_url())
        },
    )
    .await
    .expect("node agents");
    let scene = Scene {
        client,
        ns,
        simulator,
    };
    idle_at_min_replicas_with_fresh_telemetry(&scene).await;
    let up_took = a_10x_step_panics_up(&scene).await;
    let down_took = the_load_falls_and_it_scales_down_after_the_window(&scene).await;
    no_gpus_left_limits_the_scaling(&scene).await;
    stale_telemetry_holds_the_replicas(&scene, &mut agents).await;
    eprintln!("scale-up took {up_took:?}, first scale-down {down_took:?}");
}

/// Act 1: Idle at minReplicas, with fresh telemetry.
async fn idle_at_min_replicas_with_fresh_telemetry(scene: &Scene) {
    let md = model_deployment(
        "web",
        &scene.ns,
        "model: {name: m, version: '1', uri: 'hf://o/m'}
runtime: {backend: synthetic, device: cpu}
resources: {gpus: 1}
scaling:
  minReplicas: 1
  maxReplicas: 8
  targets: {queueDepthPerReplica: 4}
  stableWindow: 10s
  panicWindow: 4s
  panicThreshold: 2.0
  scaleDownStabilization: 15s",
    );
    create(&scene.client, &md).await;
    scene
        .simulator
        .set_deployment_total_load(&scene.ns, "web", queued(2.0));
    wait_condition(&scene.client, &scene.ns, "web", "Available", "True", None, MINUTE).await;
    let fresh = wait_condition(
        &scene.client,
        &scene.ns,
        "web",
        "MetricsAvailable",
        "True",
        Some("TelemetryFresh"),
        MINUTE,
    )
    .await;
    assert_eq!(
        fresh
            .status
            .as_ref()
            .and_then(|s| s.autoscaling.as_ref())
            .map(|a| a.desired_replicas),
        Some(1)
    );
}

/// Act 2: A 10x step: 20 queued against 4 per replica panics up to 5 replicas within seconds.
async fn a_10x_step_panics_up(scene: &Scene) -> Duration {
    let stepped = Instant::now();
    scene
        .simulator
        .set_deployment_total_load(&scene.ns, "web", queued(20.0));
    wait_replicas(
        &scene.client,
        &scene.ns,
        "web",
        "5 replicas after the step",
        Duration::from_secs(30),
        |n| n == 5,
    )
    .await;
    let up_took = stepped.elapsed();
    let md = wait_condition(&scene.client, &scene.ns, "web", "Available", "True", None, MINUTE).await;
    let autoscaling = md
        .status
        .clone()
        .and_then(|s| s.autoscaling)
        .expect("status.autoscaling");
    let last = autoscaling.history.last().expect("a decision in the history");
    assert_eq!(last.to, 5, "{:?}", autoscaling.history);
    assert!(last.reason.contains("queueDepthPerReplica"), "{}", last.reason);
    assert!(autoscaling.last_scale_time.is_some());
    assert!(
        autoscaling
            .current_metrics
            .iter()
            .any(|m| m.name == "queueDepthPerReplica" && m.target == 4.0),
        "{:?}",
        autoscaling.current_metrics
    );
    let spec_replicas = get(&scene.client, &scene.ns, "web").await.spec.replicas;
    assert_eq!(
        spec_replicas, md.spec.replicas,
        "the autoscaler never writes the spec"
    );
    let events: Vec<Event> = Api::<Event>::namespaced(scene.client.clone(), &scene.ns)
        .list(&ListParams::default())
        .await
        .expect("events")
        .items;
    assert!(
        events.iter().any(|e| e.reason.as_deref() == Some("Scaled")
            && e.note
                .as_deref()
                .is_some_and(|n| n.contains("queueDepthPerReplica"))),
        "no Scaled Event with the reason: {:?}",
        events.iter().map(|e| (&e.reason, &e.note)).collect::<Vec<_>>()
    );

    up_took
}

/// Act 3: The load falls: nothing moves at once, then it scales down after the stabilization.
async fn the_load_falls_and_it_scales_down_after_the_window(scene: &Scene) -> Duration {
    scene
        .simulator
        .set_deployment_total_load(&scene.ns, "web", queued(4.0));
    let fell = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        replicas(&scene.client, &scene.ns, "web").await,
        5,
        "scaled down before the window"
    );
    let down = wait_replicas(&scene.client, &scene.ns, "web", "a scale-down", MINUTE, |n| n < 5).await;
    assert!(down >= 3, "at most halving per step: {down}");
    let down_took = fell.elapsed();
    assert!(
        down_took >= Duration::from_secs(10),
        "scaled down after {down_took:?}"
    );
    let md = get(&scene.client, &scene.ns, "web").await;
    let history = md
        .status
        .and_then(|s| s.autoscaling)
        .map(|a| a.history)
        .unwrap_or_default();
    assert!(
        history
            .last()
            .is_some_and(|e| e.from == 5 && e.to == down && e.reason.contains("queueDepthPerReplica")),
        "{history:?}"
    );

    down_took
}

/// Act 4: No GPUs left: 4 GPUs per replica on two 8-GPU nodes that "web" also uses, with demand for
/// 4 replicas: at most 3 fit.
async fn no_gpus_left_limits_the_scaling(scene: &Scene) {
    let big = model_deployment(
        "big",
        &scene.ns,
        "model: {name: m, version: '1', uri: 'hf://o/m'}
runtime: {backend: synthetic, device: cpu}
resources: {gpus: 4}
scaling:
  minReplicas: 1
  maxReplicas: 4
  targets: {queueDepthPerReplica: 4}
  stableWindow: 10s
  panicWindow: 4s",
    );
    create(&scene.client, &big).await;
    scene
        .simulator
        .set_deployment_total_load(&scene.ns, "big", queued(2.0));
    wait_condition(&scene.client, &scene.ns, "big", "Available", "True", None, MINUTE).await;
    scene
        .simulator
        .set_deployment_total_load(&scene.ns, "big", queued(16.0));
    let limited = wait_condition(
        &scene.client,
        &scene.ns,
        "big",
        "ScalingLimited",
        "True",
        Some("InsufficientGPU"),
        MINUTE,
    )
    .await;
    let (_, _, message) = condition(&limited, "ScalingLimited").expect("condition");
    assert!(message.contains("nvidia.com/gpu"), "{message}");
    let held = replicas(&scene.client, &scene.ns, "big").await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        replicas(&scene.client, &scene.ns, "big").await,
        held,
        "raised the target without GPUs"
    );
}

/// Act 5: The agents stop: telemetry goes stale, replicas hold, MetricsAvailable says so. First the
/// load is put on target, so no scale-down is due when they stop.
async fn stale_telemetry_holds_the_replicas(scene: &Scene, agents: &mut NodeAgents) {
    let current = replicas(&scene.client, &scene.ns, "web").await;
    scene
        .simulator
        .set_deployment_total_load(&scene.ns, "web", queued(4.0 * f64::from(current)));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = replicas(&scene.client, &scene.ns, "web").await;
    agents.stop();
    let stale = wait_condition(
        &scene.client,
        &scene.ns,
        "web",
        "MetricsAvailable",
        "False",
        Some("TelemetryStale"),
        MINUTE,
    )
    .await;
    let (_, _, message) = condition(&stale, "MetricsAvailable").expect("condition");
    assert!(message.contains("holding"), "{message}");
    scene
        .simulator
        .set_deployment_total_load(&scene.ns, "web", PodLoad::idle());
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        replicas(&scene.client, &scene.ns, "web").await,
        before,
        "scaled on missing data"
    );
}

/// A generation server's load: every request waits `ttft` for its first token and generates 100
/// tokens.
fn generating(ttft: f64) -> PodLoad {
    PodLoad {
        running: 4.0,
        request_rate: 5.0,
        latency_seconds: ttft + 2.0,
        busy_ratio: 0.9,
        batch_size: 4.0,
        ttft_seconds: ttft,
        tokens_per_request: 100.0,
        kv_cache_usage: 0.4,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_generation_fleet_scales_on_time_to_first_token_and_reports_it() {
    let (client, ns) = setup("autoscale-ttft").await;
    let ns = ns.name().to_string();
    let simulator = LoadSimulator::start(client.clone(), Some(ns.clone()))
        .await
        .expect("load simulator");
    let _agents = NodeAgents::start(
        shared_cluster(),
        AgentsConfig {
            interval: Duration::from_millis(500),
            // The CPU node: the GPU nodes are the other scenario's, which counts their GPUs.
            ..AgentsConfig::new(["cpu-node-0"], telemetry_url())
        },
    )
    .await
    .expect("node agents");
    let md = model_deployment(
        "chat",
        &ns,
        "model: {name: smollm2, version: '1', uri: 'file:///models/smollm2.gguf', task: generation}
runtime: {backend: synthetic, device: cpu}
resources: {gpus: 0}
generation: {maxRunningSequences: 8}
scaling:
  minReplicas: 1
  maxReplicas: 4
  targets: {ttftP95: 1s}
  stableWindow: 10s
  panicWindow: 4s",
    );
    create(&client, &md).await;
    // First tokens within 0.3 s: one replica is enough, and the status says so.
    simulator.set_deployment_load(&ns, "chat", generating(0.3));
    let calm = wait_condition(
        &client,
        &ns,
        "chat",
        "MetricsAvailable",
        "True",
        Some("TelemetryFresh"),
        MINUTE,
    )
    .await;
    assert_eq!(replicas(&client, &ns, "chat").await, 1);
    let load = poll_until(MINUTE, "status.load with TTFT", || async {
        let md = get(&client, &ns, "chat").await;
        match md.status.and_then(|s| s.load) {
            Some(l) if l.ttft_p95_seconds.is_some_and(|t| t > 0.0) => Ok(Some(l)),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        load.ttft_p95_seconds.is_some_and(|t| t < 1.0),
        "{load:?} ({calm:?})"
    );
    assert!(load.tokens_per_second.is_some_and(|t| t > 0.0), "{load:?}");
    assert_eq!(load.kv_cache_utilization, Some(0.4), "{load:?}");

    // The first token now takes 3 s against a 1 s target: more replicas, and the reason says why.
    simulator.set_deployment_load(&ns, "chat", generating(3.0));
    let up = wait_replicas(&client, &ns, "chat", "a scale-up on TTFT", MINUTE, |n| n >= 3).await;
    let autoscaling = get(&client, &ns, "chat")
        .await
        .status
        .and_then(|s| s.autoscaling)
        .expect("status.autoscaling");
    let last = autoscaling.history.last().expect("a decision");
    assert!(last.reason.contains("ttftP95"), "{autoscaling:?}");
    assert!(
        autoscaling
            .current_metrics
            .iter()
            .any(|m| m.name == "ttftP95" && m.value > 1.0 && m.target == 1.0),
        "{:?}",
        autoscaling.current_metrics
    );
    eprintln!("TTFT 3 s against 1 s: {up} replicas");
}
