//! One failing spec per validation rule: `validate()` and the CRD's CEL rules (evaluated
//! client-side, defaults applied like the API server) must both reject it with the rule's message.

mod common;

use modelfleet_crds::{ModelDeployment, rules, validate};
use serde_json::{Value, json};

/// A valid object that sets every section, so each case changes one field only.
fn base() -> Value {
    json!({
        "apiVersion": "modelfleet.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "minilm", "namespace": "search"},
        "spec": {
            "model": {"name": "smollm2", "version": "2", "uri": "hf://HuggingFaceTB/SmolLM2-135M-Instruct", "aliases": ["smollm", "chat-small"],
                "task": "generation", "size": "98Mi"},
            "runtime": {"backend": "candle", "device": "cuda"},
            "resources": {"gpus": 1, "gpuProduct": "NVIDIA-H100-80GB-HBM3", "minGpuMemoryMiB": 40000},
            "replicas": 2,
            "batching": {
                "maxBatchSize": 64, "maxBatchTokens": 16384, "maxQueueDelay": "5ms", "maxQueueSize": 2048,
                "tiers": [{"name": "paid", "timeout": "2s"}, {"name": "free", "timeout": "10s", "maxQueueShare": 0.5}]
            },
            "generation": {"contextLength": 2048, "maxRunningSequences": 16, "kvBudgetTokens": 8192, "defaultMaxTokens": 256},
            "scaling": {
                "minReplicas": 1, "maxReplicas": 20,
                "targets": {"queueDepthPerReplica": 16, "inFlightPerReplica": 64, "p95Latency": "250ms", "gpuUtilization": 85,
                    "ttftP95": "500ms", "kvCacheUtilization": 0.8, "waitingSequencesPerReplica": 4},
                "stableWindow": "60s", "panicWindow": "6s", "panicThreshold": 2.0, "scaleDownStabilization": "300s", "idlePeriod": "15m"
            },
            "rollout": {
                "steps": [
                    {"shadow": {"percent": 20, "duration": "10m"}},
                    {"canary": {"weight": 10, "duration": "5m"}},
                    {"canary": {"weight": 50, "duration": "10m"}}
                ],
                "analysis": {
                    "interval": "30s", "failureLimit": 2,
                    "checks": [
                        {"builtin": "errorRate", "max": 0.01},
                        {"builtin": "p95Latency", "maxRatioToStable": 1.2},
                        {"builtin": "tokensPerSecond", "minRatioToStable": 0.9},
                        {"name": "ttft", "prometheus": {"query": "vector(0.1)"}, "max": 0.4}
                    ]
                },
                "progressDeadline": "15m", "scaleDownDelay": "30s"
            },
            "traffic": {
                "gateway": {"parentRefs": [{"name": "inference", "namespace": "gateway"}], "hostnames": ["a.example.com"]},
                "inferencePool": {"endpointPicker": {"name": "modelfleet-router", "port": 9002, "failureMode": "FailClose"}}
            },
            "routing": {"responseCache": true, "fallback": {"model": "tiny", "queueDepthAbove": 32, "promptTokensAbove": 4096, "tiers": ["free"]},
                "semanticCache": {"embeddingModel": "minilm", "similarityAbove": 0.9}}
        }
    })
}

/// `(rule, JSON pointer into the object, new value or None to remove it, expected field path)`.
fn cases() -> Vec<(rules::CelRule, &'static str, Option<Value>, &'static str)> {
    use rules::*;
    vec![
        (MODEL_NAME, "/spec/model/name", Some(json!("")), "spec.model.name"),
        (
            MODEL_VERSION,
            "/spec/model/version",
            Some(json!("")),
            "spec.model.version",
        ),
        (
            MODEL_URI,
            "/spec/model/uri",
            Some(json!("http://example.com/model")),
            "spec.model.uri",
        ),
        (
            CUDA_NEEDS_GPU,
            "/spec/resources/gpus",
            Some(json!(0)),
            "spec.resources.gpus",
        ),
        (REPLICAS, "/spec/replicas", Some(json!(-1)), "spec.replicas"),
        (
            GPUS,
            "/spec/runtime/device",
            Some(json!("cpu")),
            "spec.resources.gpus",
        ),
        (
            MIN_GPU_MEMORY,
            "/spec/resources/minGpuMemoryMiB",
            Some(json!(0)),
            "spec.resources.minGpuMemoryMiB",
        ),
        (
            MAX_BATCH_SIZE,
            "/spec/batching/maxBatchSize",
            Some(json!(0)),
            "spec.batching.maxBatchSize",
        ),
        (
            MAX_BATCH_TOKENS,
            "/spec/batching/maxBatchTokens",
            Some(json!(0)),
            "spec.batching.maxBatchTokens",
        ),
        (
            MAX_QUEUE_SIZE,
            "/spec/batching/maxQueueSize",
            Some(json!(0)),
            "spec.batching.maxQueueSize",
        ),
        (
            TIER_NAMES_UNIQUE,
            "/spec/batching/tiers/1/name",
            Some(json!("paid")),
            "spec.batching.tiers",
        ),
        (
            TIER_NAME,
            "/spec/batching/tiers/0/name",
            Some(json!("Paid_Tier")),
            "spec.batching.tiers[0].name",
        ),
        (
            TIER_TIMEOUT,
            "/spec/batching/tiers/0/timeout",
            Some(json!("0s")),
            "spec.batching.tiers[0].timeout",
        ),
        (
            TIER_QUEUE_SHARE,
            "/spec/batching/tiers/1/maxQueueShare",
            Some(json!(1.5)),
            "spec.batching.tiers[1].maxQueueShare",
        ),
        (
            SCALING_MIN_LE_MAX,
            "/spec/scaling/minReplicas",
            Some(json!(21)),
            "spec.scaling.minReplicas",
        ),
        (
            SCALING_MIN,
            "/spec/scaling/minReplicas",
            Some(json!(-1)),
            "spec.scaling.minReplicas",
        ),
        (
            SCALING_MAX,
            "/spec/scaling/maxReplicas",
            Some(json!(0)),
            "spec.scaling.maxReplicas",
        ),
        (
            SCALING_TARGETS,
            "/spec/scaling/targets",
            Some(json!({})),
            "spec.scaling.targets",
        ),
        (
            TARGET_QUEUE_DEPTH,
            "/spec/scaling/targets/queueDepthPerReplica",
            Some(json!(0)),
            "spec.scaling.targets.queueDepthPerReplica",
        ),
        (
            TARGET_IN_FLIGHT,
            "/spec/scaling/targets/inFlightPerReplica",
            Some(json!(-3)),
            "spec.scaling.targets.inFlightPerReplica",
        ),
        (
            TARGET_P95_LATENCY,
            "/spec/scaling/targets/p95Latency",
            Some(json!("0ms")),
            "spec.scaling.targets.p95Latency",
        ),
        (
            TARGET_GPU_UTILIZATION,
            "/spec/scaling/targets/gpuUtilization",
            Some(json!(120)),
            "spec.scaling.targets.gpuUtilization",
        ),
        (
            STABLE_WINDOW,
            "/spec/scaling/stableWindow",
            Some(json!("0s")),
            "spec.scaling.stableWindow",
        ),
        (
            PANIC_WINDOW,
            "/spec/scaling/panicWindow",
            Some(json!("0s")),
            "spec.scaling.panicWindow",
        ),
        (
            PANIC_WINDOW_LE_STABLE,
            "/spec/scaling/panicWindow",
            Some(json!("2m")),
            "spec.scaling.panicWindow",
        ),
        (
            PANIC_THRESHOLD,
            "/spec/scaling/panicThreshold",
            Some(json!(1.0)),
            "spec.scaling.panicThreshold",
        ),
        (
            STEP_ONE_KIND,
            "/spec/rollout/steps/0/canary",
            Some(json!({"weight": 5, "duration": "1m"})),
            "spec.rollout.steps[0]",
        ),
        (
            CANARY_WEIGHT,
            "/spec/rollout/steps/2/canary/weight",
            Some(json!(150)),
            "spec.rollout.steps[2].canary.weight",
        ),
        (
            CANARY_WEIGHTS_ORDER,
            "/spec/rollout/steps/2/canary/weight",
            Some(json!(5)),
            "spec.rollout.steps",
        ),
        (
            CANARY_DURATION,
            "/spec/rollout/steps/1/canary/duration",
            Some(json!("0s")),
            "spec.rollout.steps[1].canary.duration",
        ),
        (
            SHADOW_PERCENT,
            "/spec/rollout/steps/0/shadow/percent",
            Some(json!(0)),
            "spec.rollout.steps[0].shadow.percent",
        ),
        (
            SHADOW_DURATION,
            "/spec/rollout/steps/0/shadow/duration",
            Some(json!("0m")),
            "spec.rollout.steps[0].shadow.duration",
        ),
        (
            PROGRESS_DEADLINE,
            "/spec/rollout/progressDeadline",
            Some(json!("0s")),
            "spec.rollout.progressDeadline",
        ),
        (
            ANALYSIS_INTERVAL,
            "/spec/rollout/analysis/interval",
            Some(json!("0s")),
            "spec.rollout.analysis.interval",
        ),
        (
            FAILURE_LIMIT,
            "/spec/rollout/analysis/failureLimit",
            Some(json!(0)),
            "spec.rollout.analysis.failureLimit",
        ),
        (
            CHECK_ONE_SOURCE,
            "/spec/rollout/analysis/checks/0/builtin",
            None,
            "spec.rollout.analysis.checks[0]",
        ),
        (
            CHECK_THRESHOLD,
            "/spec/rollout/analysis/checks/0/max",
            None,
            "spec.rollout.analysis.checks[0]",
        ),
        (
            CHECK_RATIO_BUILTIN,
            "/spec/rollout/analysis/checks/3/maxRatioToStable",
            Some(json!(1.5)),
            "spec.rollout.analysis.checks[3].maxRatioToStable",
        ),
        (
            CHECK_PROMETHEUS_NAME,
            "/spec/rollout/analysis/checks/3/name",
            None,
            "spec.rollout.analysis.checks[3].name",
        ),
        (
            PROMETHEUS_QUERY,
            "/spec/rollout/analysis/checks/3/prometheus/query",
            Some(json!("")),
            "spec.rollout.analysis.checks[3].prometheus.query",
        ),
        (
            GATEWAY_PARENTS,
            "/spec/traffic/gateway/parentRefs",
            Some(json!([])),
            "spec.traffic.gateway.parentRefs",
        ),
        (
            MODEL_ALIASES,
            "/spec/model/aliases",
            Some(json!(["minilm", "minilm"])),
            "spec.model.aliases",
        ),
        (
            MODEL_ALIAS_NOT_NAME,
            "/spec/model/aliases",
            Some(json!(["smollm2"])),
            "spec.model.aliases",
        ),
        (
            IDLE_PERIOD,
            "/spec/scaling/idlePeriod",
            Some(json!("0s")),
            "spec.scaling.idlePeriod",
        ),
        (
            FALLBACK_MODEL,
            "/spec/routing/fallback/model",
            Some(json!("")),
            "spec.routing.fallback.model",
        ),
        (
            FALLBACK_QUEUE_DEPTH,
            "/spec/routing/fallback/queueDepthAbove",
            Some(json!(0)),
            "spec.routing.fallback.queueDepthAbove",
        ),
        (
            FALLBACK_PROMPT_TOKENS,
            "/spec/routing/fallback/promptTokensAbove",
            Some(json!(0)),
            "spec.routing.fallback.promptTokensAbove",
        ),
        (
            SEMANTIC_CACHE_MODEL,
            "/spec/routing/semanticCache/embeddingModel",
            Some(json!("")),
            "spec.routing.semanticCache.embeddingModel",
        ),
        (
            SEMANTIC_CACHE_SIMILARITY,
            "/spec/routing/semanticCache/similarityAbove",
            Some(json!(1.5)),
            "spec.routing.semanticCache.similarityAbove",
        ),
        (
            ENDPOINT_PICKER_PORT,
            "/spec/traffic/inferencePool/endpointPicker/port",
            Some(json!(0)),
            "spec.traffic.inferencePool.endpointPicker.port",
        ),
        (
            GENERATION_NEEDS_TASK,
            "/spec/model/task",
            Some(json!("embedding")),
            "spec.generation",
        ),
        (
            GENERATION_TARGETS_NEED_TASK,
            "/spec/model/task",
            Some(json!("embedding")),
            "spec.scaling.targets",
        ),
        (
            UPSTREAM_NEEDS_ENGINE,
            "/spec/runtime/backend",
            Some(json!("upstream")),
            "spec.runtime.upstream",
        ),
        (
            ENGINE_NEEDS_UPSTREAM,
            "/spec/runtime/upstream",
            Some(json!({"image": "ghcr.io/ggml-org/llama.cpp:server"})),
            "spec.runtime.backend",
        ),
        (
            UPSTREAM_NEEDS_GENERATION,
            "/spec/model/task",
            Some(json!("embedding")),
            "spec.model.task",
        ),
        (
            UPSTREAM_IMAGE,
            "/spec/runtime/upstream/image",
            Some(json!("")),
            "spec.runtime.upstream.image",
        ),
        (
            UPSTREAM_PORT,
            "/spec/runtime/upstream/port",
            Some(json!(8080)),
            "spec.runtime.upstream.port",
        ),
        (
            TARGET_TTFT_P95,
            "/spec/scaling/targets/ttftP95",
            Some(json!("0s")),
            "spec.scaling.targets.ttftP95",
        ),
        (
            TARGET_KV_CACHE,
            "/spec/scaling/targets/kvCacheUtilization",
            Some(json!(1.5)),
            "spec.scaling.targets.kvCacheUtilization",
        ),
        (
            TARGET_WAITING_SEQUENCES,
            "/spec/scaling/targets/waitingSequencesPerReplica",
            Some(json!(0)),
            "spec.scaling.targets.waitingSequencesPerReplica",
        ),
        (
            CONTEXT_LENGTH,
            "/spec/generation/contextLength",
            Some(json!(0)),
            "spec.generation.contextLength",
        ),
        (
            MAX_RUNNING_SEQUENCES,
            "/spec/generation/maxRunningSequences",
            Some(json!(2000)),
            "spec.generation.maxRunningSequences",
        ),
        (
            KV_BUDGET_TOKENS,
            "/spec/generation/kvBudgetTokens",
            Some(json!(0)),
            "spec.generation.kvBudgetTokens",
        ),
        (
            DEFAULT_MAX_TOKENS,
            "/spec/generation/defaultMaxTokens",
            Some(json!(0)),
            "spec.generation.defaultMaxTokens",
        ),
        (
            DEFAULT_MAX_TOKENS_IN_CONTEXT,
            "/spec/generation/defaultMaxTokens",
            Some(json!(4096)),
            "spec.generation.defaultMaxTokens",
        ),
        (
            CHECK_MIN_RATIO_BUILTIN,
            "/spec/rollout/analysis/checks/3/minRatioToStable",
            Some(json!(0.9)),
            "spec.rollout.analysis.checks[3].minRatioToStable",
        ),
        (
            ENDPOINT_PICKER_NAME,
            "/spec/traffic/inferencePool/endpointPicker/name",
            Some(json!("")),
            "spec.traffic.inferencePool.endpointPicker.name",
        ),
    ]
}

fn set(obj: &mut Value, pointer: &str, value: Option<Value>) {
    let (parent, key) = pointer.rsplit_once('/').expect("a JSON pointer");
    let parent = obj
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("{parent} missing in base"));
    match (parent, value) {
        (Value::Object(map), Some(v)) => {
            map.insert(key.to_string(), v);
        }
        (Value::Object(map), None) => {
            assert!(map.remove(key).is_some(), "{pointer} not set in base");
        }
        (Value::Array(items), Some(v)) => items[key.parse::<usize>().expect("a list index")] = v,
        (other, _) => panic!("cannot set {pointer} in {other}"),
    }
}

/// Applies a case; a few rules need a second edit to fail alone.
fn failing_object(rule: rules::CelRule, pointer: &str, value: Option<Value>) -> Value {
    let mut obj = base();
    // The upstream backend and its engine first, so that only the case's field is wrong.
    if [
        rules::UPSTREAM_NEEDS_GENERATION,
        rules::UPSTREAM_IMAGE,
        rules::UPSTREAM_PORT,
    ]
    .contains(&rule)
    {
        set(&mut obj, "/spec/runtime/backend", Some(json!("upstream")));
        set(
            &mut obj,
            "/spec/runtime/upstream",
            Some(json!({"image": "llama.cpp:server"})),
        );
    }
    set(&mut obj, pointer, value);
    match rule {
        // A CPU device, so that negative GPUs trip only the GPU count rule.
        rules::GPUS => set(&mut obj, "/spec/resources/gpus", Some(json!(-1))),
        // A shorter panic window, so that only the stable window is wrong.
        rules::STABLE_WINDOW => set(&mut obj, "/spec/scaling/panicWindow", Some(json!("1ms"))),
        _ => {}
    }
    obj
}

#[test]
fn the_base_object_is_valid_for_both_validators() {
    let md: ModelDeployment = serde_json::from_value(base()).unwrap();
    validate(&md.spec).unwrap();
    assert_eq!(common::cel_violations(&base()), vec![]);
}

#[test]
fn every_rule_rejects_its_failing_spec_in_both_validators_with_the_same_path_and_message() {
    let mut covered = Vec::new();
    for (rule, pointer, value, path) in cases() {
        let obj = failing_object(rule, pointer, value);
        let md: ModelDeployment = serde_json::from_value(obj.clone()).unwrap();

        let mut rust: Vec<(String, String)> = match validate(&md.spec) {
            Ok(()) => vec![],
            Err(e) => {
                e.0.iter()
                    .map(|f| (f.path.clone(), f.message.to_string()))
                    .collect()
            }
        };
        let mut cel = common::cel_violations(&obj);
        rust.sort();
        cel.sort();

        let expected = (path.to_string(), rule.message.to_string());
        assert!(
            rust.contains(&expected),
            "validate() misses {expected:?}: {rust:?}"
        );
        assert_eq!(
            rust, cel,
            "validate() and the CRD's CEL disagree for «{}»",
            rule.message
        );
        assert!(
            rule.message.starts_with("spec."),
            "«{}» must start with the field path",
            rule.message
        );
        covered.push(rule);
    }
    for rule in rules::ALL {
        assert!(
            covered.contains(rule),
            "no failing case for rule «{}»",
            rule.message
        );
    }
}

#[test]
fn errors_display_path_and_message() {
    let mut obj = base();
    set(&mut obj, "/spec/scaling/minReplicas", Some(json!(30)));
    set(&mut obj, "/spec/rollout/steps/2/canary/weight", Some(json!(0)));
    let md: ModelDeployment = serde_json::from_value(obj).unwrap();
    let text = validate(&md.spec).unwrap_err().to_string();
    assert!(
        text.starts_with("invalid ModelDeployment spec (3 problems): "),
        "{text}"
    );
    assert!(text.contains("spec.scaling.minReplicas: spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas"), "{text}");
    assert!(text.contains("spec.rollout.steps[2].canary.weight: spec.rollout.steps[*].canary.weight must be between 1 and 100"), "{text}");
}
