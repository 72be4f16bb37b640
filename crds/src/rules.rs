//! The validation rules of the API, written once.
//!
//! Each [`CelRule`] is both attached to the CRD schema as an `x-kubernetes-validations` entry (so the
//! API server rejects bad objects) and checked by [`crate::validate`] in Rust (so the operator and
//! `kubectl modelfleet validate` can explain them offline). Both report the same message; tests
//! evaluate the CEL with kube's client-side evaluator to prove the two agree.

/// One CEL validation rule and the message both validators report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CelRule {
    /// The CEL expression, evaluated with `self` bound to the field or object it is attached to.
    pub rule: &'static str,
    /// What the user reads: names the field path (`[*]` for any list index) and the limit.
    pub message: &'static str,
    /// For rules on an object, the field (relative to it) the API server should blame.
    pub field_path: Option<&'static str>,
}

impl From<CelRule> for kube::core::Rule {
    fn from(r: CelRule) -> Self {
        let rule = kube::core::Rule::new(r.rule).message(r.message);
        match r.field_path {
            Some(path) => rule.field_path(path),
            None => rule,
        }
    }
}

const fn on_field(rule: &'static str, message: &'static str) -> CelRule {
    CelRule {
        rule,
        message,
        field_path: None,
    }
}

const fn on_object(rule: &'static str, field_path: &'static str, message: &'static str) -> CelRule {
    CelRule {
        rule,
        message,
        field_path: Some(field_path),
    }
}

/// Guarded by the schema's pattern: a malformed string gets the pattern's error, not a CEL
/// type-conversion error on top of it.
const POSITIVE_DURATION: &str = "!self.matches('^([0-9]+(ms|s|m|h))+$') || duration(self) > duration('0s')";

// --- spec.model ---
/// `spec.model.name` is not empty.
pub const MODEL_NAME: CelRule = on_field("size(self) > 0", "spec.model.name must not be empty");
/// Aliases are 1 to 128 characters, unique, and differ from the served name.
pub const MODEL_ALIASES: CelRule = on_field(
    "self.all(a, size(a) >= 1 && size(a) <= 128 && self.exists_one(b, b == a))",
    "spec.model.aliases[*] must be 1 to 128 characters and unique",
);
/// No alias repeats the served name.
pub const MODEL_ALIAS_NOT_NAME: CelRule = on_object(
    "!has(self.aliases) || self.aliases.all(a, a != self.name)",
    ".aliases",
    "spec.model.aliases[*] must differ from spec.model.name",
);
/// `spec.model.version` is not empty.
pub const MODEL_VERSION: CelRule = on_field("size(self) > 0", "spec.model.version must not be empty");
/// `spec.model.uri` uses a supported scheme.
pub const MODEL_URI: CelRule = on_field(
    "self.matches('^(hf|file|pvc|s3)://.+$')",
    "spec.model.uri must start with hf://, file://, pvc:// or s3:// and name a location",
);

// --- spec (cross-field) ---
/// CUDA needs a GPU.
pub const CUDA_NEEDS_GPU: CelRule = on_object(
    "self.runtime.device != 'cuda' || self.resources.gpus >= 1",
    ".resources.gpus",
    "spec.resources.gpus must be at least 1 when spec.runtime.device is cuda",
);
/// `spec.generation` belongs to generation models.
pub const GENERATION_NEEDS_TASK: CelRule = on_object(
    "!has(self.generation) || self.model.task == 'generation'",
    ".generation",
    "spec.generation applies only when spec.model.task is generation",
);
/// The generation scaling targets belong to generation models.
pub const GENERATION_TARGETS_NEED_TASK: CelRule = on_object(
    "!has(self.scaling) || self.model.task == 'generation' || !(has(self.scaling.targets.ttftP95) || has(self.scaling.targets.kvCacheUtilization) || has(self.scaling.targets.waitingSequencesPerReplica))",
    ".scaling.targets",
    "spec.scaling.targets ttftP95, kvCacheUtilization and waitingSequencesPerReplica apply only when spec.model.task is generation",
);
/// The upstream backend needs its engine.
pub const UPSTREAM_NEEDS_ENGINE: CelRule = on_object(
    "self.runtime.backend != 'upstream' || has(self.runtime.upstream)",
    ".runtime.upstream",
    "spec.runtime.upstream must name the engine when spec.runtime.backend is upstream",
);
/// An engine only with the upstream backend.
pub const ENGINE_NEEDS_UPSTREAM: CelRule = on_object(
    "!has(self.runtime.upstream) || self.runtime.backend == 'upstream'",
    ".runtime.backend",
    "spec.runtime.backend must be upstream when spec.runtime.upstream is set",
);
/// The upstream backend serves generation.
pub const UPSTREAM_NEEDS_GENERATION: CelRule = on_object(
    "self.runtime.backend != 'upstream' || self.model.task == 'generation'",
    ".model.task",
    "spec.model.task must be generation when spec.runtime.backend is upstream",
);
/// `spec.replicas` is not negative.
pub const REPLICAS: CelRule = on_field("self >= 0", "spec.replicas must be 0 or more");

// --- spec.resources ---
/// `spec.resources.gpus` is not negative.
pub const GPUS: CelRule = on_field("self >= 0", "spec.resources.gpus must be 0 or more");
/// `spec.resources.minGpuMemoryMiB` is positive.
pub const MIN_GPU_MEMORY: CelRule =
    on_field("self >= 1", "spec.resources.minGpuMemoryMiB must be at least 1");

// --- spec.batching ---
/// `spec.batching.maxBatchSize` is positive.
pub const MAX_BATCH_SIZE: CelRule = on_field("self >= 1", "spec.batching.maxBatchSize must be at least 1");
/// `spec.batching.maxBatchTokens` is positive.
pub const MAX_BATCH_TOKENS: CelRule =
    on_field("self >= 1", "spec.batching.maxBatchTokens must be at least 1");
/// `spec.batching.maxQueueSize` is positive.
pub const MAX_QUEUE_SIZE: CelRule = on_field("self >= 1", "spec.batching.maxQueueSize must be at least 1");
/// Tier names are unique.
pub const TIER_NAMES_UNIQUE: CelRule = on_object(
    "!has(self.tiers) || self.tiers.all(t, self.tiers.exists_one(u, u.name == t.name))",
    ".tiers",
    "spec.batching.tiers[*].name must be unique",
);
/// Tier names look like DNS labels.
pub const TIER_NAME: CelRule = on_field(
    "size(self) <= 63 && self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",
    "spec.batching.tiers[*].name must be a DNS label: 1 to 63 lowercase letters, digits or '-', starting and ending with a letter or digit",
);
/// Tier timeouts are positive.
pub const TIER_TIMEOUT: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.batching.tiers[*].timeout must be greater than 0s",
);
/// `maxQueueShare` is in (0, 1].
pub const TIER_QUEUE_SHARE: CelRule = on_field(
    "self > 0.0 && self <= 1.0",
    "spec.batching.tiers[*].maxQueueShare must be greater than 0 and at most 1",
);

// --- spec.scaling ---
/// `minReplicas <= maxReplicas`.
pub const SCALING_MIN_LE_MAX: CelRule = on_object(
    "self.minReplicas <= self.maxReplicas",
    ".minReplicas",
    "spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas",
);
/// `minReplicas >= 0`.
pub const SCALING_MIN: CelRule = on_field(
    "self >= 0",
    "spec.scaling.minReplicas must be at least 0 (0: scale to zero after idlePeriod without requests)",
);
/// `idlePeriod > 0`.
pub const IDLE_PERIOD: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.scaling.idlePeriod must be greater than 0s",
);
/// `maxReplicas >= 1`.
pub const SCALING_MAX: CelRule = on_field("self >= 1", "spec.scaling.maxReplicas must be at least 1");
/// At least one scaling target.
pub const SCALING_TARGETS: CelRule = on_field(
    "has(self.queueDepthPerReplica) || has(self.inFlightPerReplica) || has(self.p95Latency) || has(self.gpuUtilization) || has(self.ttftP95) || has(self.kvCacheUtilization) || has(self.waitingSequencesPerReplica)",
    "spec.scaling.targets must set at least one of queueDepthPerReplica, inFlightPerReplica, p95Latency, gpuUtilization, ttftP95, kvCacheUtilization or waitingSequencesPerReplica",
);
/// TTFT target is positive.
pub const TARGET_TTFT_P95: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.scaling.targets.ttftP95 must be greater than 0s",
);
/// KV-cache target is a share.
pub const TARGET_KV_CACHE: CelRule = on_field(
    "self > 0.0 && self <= 1.0",
    "spec.scaling.targets.kvCacheUtilization must be greater than 0 and at most 1",
);
/// Waiting-sequences target is positive.
pub const TARGET_WAITING_SEQUENCES: CelRule = on_field(
    "self > 0.0",
    "spec.scaling.targets.waitingSequencesPerReplica must be greater than 0",
);
/// Queue depth target is positive.
pub const TARGET_QUEUE_DEPTH: CelRule = on_field(
    "self > 0.0",
    "spec.scaling.targets.queueDepthPerReplica must be greater than 0",
);
/// In-flight target is positive.
pub const TARGET_IN_FLIGHT: CelRule = on_field(
    "self > 0.0",
    "spec.scaling.targets.inFlightPerReplica must be greater than 0",
);
/// Latency target is positive.
pub const TARGET_P95_LATENCY: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.scaling.targets.p95Latency must be greater than 0s",
);
/// GPU utilization target is a percentage.
pub const TARGET_GPU_UTILIZATION: CelRule = on_field(
    "self > 0.0 && self <= 100.0",
    "spec.scaling.targets.gpuUtilization must be greater than 0 and at most 100",
);
/// The stable window is positive.
pub const STABLE_WINDOW: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.scaling.stableWindow must be greater than 0s",
);
/// The panic window is positive.
pub const PANIC_WINDOW: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.scaling.panicWindow must be greater than 0s",
);
/// The panic window fits in the stable window.
pub const PANIC_WINDOW_LE_STABLE: CelRule = on_object(
    "!self.panicWindow.matches('^([0-9]+(ms|s|m|h))+$') || !self.stableWindow.matches('^([0-9]+(ms|s|m|h))+$') || duration(self.panicWindow) <= duration(self.stableWindow)",
    ".panicWindow",
    "spec.scaling.panicWindow must not be longer than spec.scaling.stableWindow",
);
/// The panic threshold is above 1.
pub const PANIC_THRESHOLD: CelRule =
    on_field("self > 1.0", "spec.scaling.panicThreshold must be greater than 1");

// --- spec.rollout ---
/// Each step is exactly one kind.
pub const STEP_ONE_KIND: CelRule = on_field(
    "has(self.shadow) != has(self.canary)",
    "spec.rollout.steps[*] must set exactly one of shadow or canary",
);
/// Canary weight is a percentage.
pub const CANARY_WEIGHT: CelRule = on_field(
    "self >= 1 && self <= 100",
    "spec.rollout.steps[*].canary.weight must be between 1 and 100",
);
/// Canary weights never decrease.
pub const CANARY_WEIGHTS_ORDER: CelRule = on_object(
    "!has(self.steps) || self.steps.filter(s, has(s.canary)).map(s, s.canary.weight).isSorted()",
    ".steps",
    "spec.rollout.steps[*].canary.weight must not decrease from one canary step to the next",
);
/// Canary step durations are positive.
pub const CANARY_DURATION: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.rollout.steps[*].canary.duration must be greater than 0s",
);
/// Shadow percent is a percentage.
pub const SHADOW_PERCENT: CelRule = on_field(
    "self >= 1 && self <= 100",
    "spec.rollout.steps[*].shadow.percent must be between 1 and 100",
);
/// Shadow step durations are positive.
pub const SHADOW_DURATION: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.rollout.steps[*].shadow.duration must be greater than 0s",
);
/// Progress deadline is positive.
pub const PROGRESS_DEADLINE: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.rollout.progressDeadline must be greater than 0s",
);
/// Analysis interval is positive.
pub const ANALYSIS_INTERVAL: CelRule = on_field(
    POSITIVE_DURATION,
    "spec.rollout.analysis.interval must be greater than 0s",
);
/// Failure limit is positive.
pub const FAILURE_LIMIT: CelRule = on_field(
    "self >= 1",
    "spec.rollout.analysis.failureLimit must be at least 1",
);
/// A check has exactly one source.
pub const CHECK_ONE_SOURCE: CelRule = on_field(
    "has(self.builtin) != has(self.prometheus)",
    "spec.rollout.analysis.checks[*] must set exactly one of builtin or prometheus",
);
/// A check has a threshold.
pub const CHECK_THRESHOLD: CelRule = on_field(
    "has(self.min) || has(self.max) || has(self.maxRatioToStable) || has(self.minRatioToStable)",
    "spec.rollout.analysis.checks[*] must set at least one of min, max, maxRatioToStable or minRatioToStable",
);
/// Ratios to stable exist only for built-in checks.
pub const CHECK_RATIO_BUILTIN: CelRule = on_object(
    "!has(self.maxRatioToStable) || has(self.builtin)",
    ".maxRatioToStable",
    "spec.rollout.analysis.checks[*].maxRatioToStable applies only to builtin checks",
);
/// Lower ratios to stable exist only for built-in checks.
pub const CHECK_MIN_RATIO_BUILTIN: CelRule = on_object(
    "!has(self.minRatioToStable) || has(self.builtin)",
    ".minRatioToStable",
    "spec.rollout.analysis.checks[*].minRatioToStable applies only to builtin checks",
);
/// Prometheus checks are named.
pub const CHECK_PROMETHEUS_NAME: CelRule = on_object(
    "!has(self.prometheus) || has(self.name)",
    ".name",
    "spec.rollout.analysis.checks[*].name is required for prometheus checks",
);
/// A PromQL query is not empty.
pub const PROMETHEUS_QUERY: CelRule = on_field(
    "size(self) > 0",
    "spec.rollout.analysis.checks[*].prometheus.query must not be empty",
);

// --- spec.traffic ---
/// A gateway route needs a parent.
pub const GATEWAY_PARENTS: CelRule = on_field(
    "size(self) >= 1",
    "spec.traffic.gateway.parentRefs must list at least one Gateway",
);

// --- spec.routing ---
/// A fallback names a model.
pub const FALLBACK_MODEL: CelRule = on_field(
    "size(self) >= 1 && size(self) <= 128",
    "spec.routing.fallback.model must be 1 to 128 characters",
);
/// The queue threshold is positive.
pub const FALLBACK_QUEUE_DEPTH: CelRule = on_field(
    "self > 0.0",
    "spec.routing.fallback.queueDepthAbove must be greater than 0",
);
/// The prompt-token rule is positive.
pub const FALLBACK_PROMPT_TOKENS: CelRule = on_field(
    "self >= 1",
    "spec.routing.fallback.promptTokensAbove must be at least 1",
);

/// The semantic cache names an embeddings model.
pub const SEMANTIC_CACHE_MODEL: CelRule = on_field(
    "size(self) >= 1 && size(self) <= 128",
    "spec.routing.semanticCache.embeddingModel must be 1 to 128 characters",
);
/// The similarity threshold is a cosine above 0.
pub const SEMANTIC_CACHE_SIMILARITY: CelRule = on_field(
    "self > 0.0 && self <= 1.0",
    "spec.routing.semanticCache.similarityAbove must be above 0 and at most 1",
);

// --- spec.traffic.inferencePool ---
/// The endpoint picker's Service port is a port.
pub const ENDPOINT_PICKER_PORT: CelRule = on_field(
    "self >= 1 && self <= 65535",
    "spec.traffic.inferencePool.endpointPicker.port must be 1 to 65535",
);
/// The endpoint picker names a Service.
pub const ENDPOINT_PICKER_NAME: CelRule = on_field(
    "size(self) >= 1 && size(self) <= 63",
    "spec.traffic.inferencePool.endpointPicker.name must be 1 to 63 characters",
);

// --- spec.generation and spec.runtime.upstream ---
/// Context length in range.
pub const CONTEXT_LENGTH: CelRule = on_field(
    "self >= 1 && self <= 1048576",
    "spec.generation.contextLength must be between 1 and 1048576",
);
/// Running sequences in range.
pub const MAX_RUNNING_SEQUENCES: CelRule = on_field(
    "self >= 1 && self <= 1024",
    "spec.generation.maxRunningSequences must be between 1 and 1024",
);
/// KV budget positive.
pub const KV_BUDGET_TOKENS: CelRule =
    on_field("self >= 1", "spec.generation.kvBudgetTokens must be at least 1");
/// Default max tokens positive.
pub const DEFAULT_MAX_TOKENS: CelRule =
    on_field("self >= 1", "spec.generation.defaultMaxTokens must be at least 1");
/// The default completion fits the context.
pub const DEFAULT_MAX_TOKENS_IN_CONTEXT: CelRule = on_object(
    "!has(self.defaultMaxTokens) || !has(self.contextLength) || self.defaultMaxTokens < self.contextLength",
    ".defaultMaxTokens",
    "spec.generation.defaultMaxTokens must be less than spec.generation.contextLength",
);
/// The engine image is named.
pub const UPSTREAM_IMAGE: CelRule =
    on_field("size(self) >= 1", "spec.runtime.upstream.image must not be empty");
/// The engine port is a port, and not one of modelfleet-server's.
pub const UPSTREAM_PORT: CelRule = on_field(
    "self >= 1 && self <= 65535 && self != 8080 && self != 8081 && self != 9090",
    "spec.runtime.upstream.port must be 1 to 65535 and not 8080, 8081 or 9090 (modelfleet-server's ports)",
);

/// Every rule, for documentation and for tests that prove each one fires.
pub const ALL: &[CelRule] = &[
    MODEL_NAME,
    MODEL_ALIASES,
    MODEL_ALIAS_NOT_NAME,
    MODEL_VERSION,
    MODEL_URI,
    CUDA_NEEDS_GPU,
    GENERATION_NEEDS_TASK,
    GENERATION_TARGETS_NEED_TASK,
    UPSTREAM_NEEDS_ENGINE,
    ENGINE_NEEDS_UPSTREAM,
    UPSTREAM_NEEDS_GENERATION,
    REPLICAS,
    GPUS,
    MIN_GPU_MEMORY,
    MAX_BATCH_SIZE,
    MAX_BATCH_TOKENS,
    MAX_QUEUE_SIZE,
    TIER_NAMES_UNIQUE,
    TIER_NAME,
    TIER_TIMEOUT,
    TIER_QUEUE_SHARE,
    SCALING_MIN_LE_MAX,
    SCALING_MIN,
    IDLE_PERIOD,
    SCALING_MAX,
    SCALING_TARGETS,
    TARGET_QUEUE_DEPTH,
    TARGET_IN_FLIGHT,
    TARGET_P95_LATENCY,
    TARGET_GPU_UTILIZATION,
    TARGET_TTFT_P95,
    TARGET_KV_CACHE,
    TARGET_WAITING_SEQUENCES,
    STABLE_WINDOW,
    PANIC_WINDOW,
    PANIC_WINDOW_LE_STABLE,
    PANIC_THRESHOLD,
    STEP_ONE_KIND,
    CANARY_WEIGHT,
    CANARY_WEIGHTS_ORDER,
    CANARY_DURATION,
    SHADOW_PERCENT,
    SHADOW_DURATION,
    PROGRESS_DEADLINE,
    ANALYSIS_INTERVAL,
    FAILURE_LIMIT,
    CHECK_ONE_SOURCE,
    CHECK_THRESHOLD,
    CHECK_RATIO_BUILTIN,
    CHECK_MIN_RATIO_BUILTIN,
    CHECK_PROMETHEUS_NAME,
    PROMETHEUS_QUERY,
    GATEWAY_PARENTS,
    FALLBACK_MODEL,
    FALLBACK_QUEUE_DEPTH,
    FALLBACK_PROMPT_TOKENS,
    SEMANTIC_CACHE_MODEL,
    SEMANTIC_CACHE_SIMILARITY,
    ENDPOINT_PICKER_PORT,
    ENDPOINT_PICKER_NAME,
    CONTEXT_LENGTH,
    MAX_RUNNING_SEQUENCES,
    KV_BUDGET_TOKENS,
    DEFAULT_MAX_TOKENS,
    DEFAULT_MAX_TOKENS_IN_CONTEXT,
    UPSTREAM_IMAGE,
    UPSTREAM_PORT,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_guards_use_the_schema_pattern() {
        let pattern = format!("matches('{}')", crate::DURATION_PATTERN);
        assert!(POSITIVE_DURATION.contains(&pattern));
        assert_eq!(PANIC_WINDOW_LE_STABLE.rule.matches(&pattern).count(), 2);
    }

    #[test]
    fn messages_are_unique_and_name_a_spec_field() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(a.message.starts_with("spec."), "{}", a.message);
            assert!(
                ALL[i + 1..].iter().all(|b| b.message != a.message),
                "duplicate message {}",
                a.message
            );
        }
    }
}
