//! `validate()`: the CRD's CEL rules, checked in Rust with the same messages.
//!
//! The API server enforces the rules on admission; this copy lets the operator refuse (and
//! explain) an object that slipped past an older CRD, and lets `kubectl modelfleet validate`
//! check manifests offline. `tests/validation_rules.rs` proves both report the same thing (it runs
//! the CEL rules of the generated CRD next to `validate()` on the same objects).

use std::fmt;

use crate::{
    Duration, ModelDeploymentSpec,
    rules::{self, CelRule},
    v1alpha1::{AnalysisCheck, Backend, BatchingSpec, ModelTask, RolloutSpec, ScalingSpec},
};

/// A field that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// Concrete path, e.g. `spec.rollout.steps[2].canary.weight`.
    pub path: String,
    /// The rule's message (identical to the CRD's CEL message).
    pub message: &'static str,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every rule a spec breaks, in field order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "invalid ModelDeployment spec ({n} problem{}): ",
            if n == 1 { "" } else { "s" }
        )?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// The messages alone, in order.
    pub fn messages(&self) -> Vec<&'static str> {
        self.0.iter().map(|e| e.message).collect()
    }
}

/// Collects rule violations with their paths.
struct Checker(Vec<FieldError>);

impl Checker {
    fn check(&mut self, ok: bool, path: impl Into<String>, rule: CelRule) {
        if !ok {
            self.0.push(FieldError {
                path: path.into(),
                message: rule.message,
            });
        }
    }

    fn positive(&mut self, d: Duration, path: impl Into<String>, rule: CelRule) {
        self.check(!d.is_zero(), path, rule);
    }
}

/// Checks `spec` against every rule of [`crate::rules`].
pub fn validate(spec: &ModelDeploymentSpec) -> Result<(), ValidationErrors> {
    let mut c = Checker(Vec::new());

    c.check(!spec.model.name.is_empty(), "spec.model.name", rules::MODEL_NAME);
    check_aliases(&mut c, &spec.model);
    c.check(
        !spec.model.version.is_empty(),
        "spec.model.version",
        rules::MODEL_VERSION,
    );
    c.check(uri_scheme_ok(&spec.model.uri), "spec.model.uri", rules::MODEL_URI);

    c.check(spec.replicas >= 0, "spec.replicas", rules::REPLICAS);
    let res = &spec.resources;
    c.check(res.gpus >= 0, "spec.resources.gpus", rules::GPUS);
    if let Some(mib) = res.min_gpu_memory_mib {
        c.check(mib >= 1, "spec.resources.minGpuMemoryMiB", rules::MIN_GPU_MEMORY);
    }
    let cuda_ok = spec.runtime.device != crate::v1alpha1::Device::Cuda || res.gpus >= 1;
    c.check(cuda_ok, "spec.resources.gpus", rules::CUDA_NEEDS_GPU);

    check_batching(&mut c, &spec.batching);
    check_generation(&mut c, spec);
    check_upstream(&mut c, spec);
    if let Some(scaling) = &spec.scaling {
        check_scaling(&mut c, scaling);
    }
    if let Some(rollout) = &spec.rollout {
        check_rollout(&mut c, rollout);
    }
    if let Some(gw) = spec.traffic.as_ref().and_then(|t| t.gateway.as_ref()) {
        c.check(
            !gw.parent_refs.is_empty(),
            "spec.traffic.gateway.parentRefs",
            rules::GATEWAY_PARENTS,
        );
    }

    if let Some(pool) = spec.traffic.as_ref().and_then(|t| t.inference_pool.as_ref()) {
        let picker = &pool.endpoint_picker;
        let name_ok = (1..=63).contains(&picker.name.len());
        c.check(
            name_ok,
            "spec.traffic.inferencePool.endpointPicker.name",
            rules::ENDPOINT_PICKER_NAME,
        );
        c.check(
            (1..=65535).contains(&picker.port),
            "spec.traffic.inferencePool.endpointPicker.port",
            rules::ENDPOINT_PICKER_PORT,
        );
    }
    if let Some(routing) = &spec.routing {
        check_routing(&mut c, routing);
    }

    if c.0.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(c.0))
    }
}

fn check_generation(c: &mut Checker, spec: &ModelDeploymentSpec) {
    let generation_task = spec.model.task == ModelTask::Generation;
    let targets = spec.scaling.as_ref().map(|s| &s.targets);
    c.check(
        generation_task || !targets.is_some_and(|t| t.has_generation_targets()),
        "spec.scaling.targets",
        rules::GENERATION_TARGETS_NEED_TASK,
    );
    let Some(g) = &spec.generation else {
        return;
    };
    c.check(generation_task, "spec.generation", rules::GENERATION_NEEDS_TASK);
    let fields = [
        (
            g.context_length,
            1..=1_048_576,
            "contextLength",
            rules::CONTEXT_LENGTH,
        ),
        (
            g.max_running_sequences,
            1..=1024,
            "maxRunningSequences",
            rules::MAX_RUNNING_SEQUENCES,
        ),
        (
            g.kv_budget_tokens,
            1..=i32::MAX,
            "kvBudgetTokens",
            rules::KV_BUDGET_TOKENS,
        ),
        (
            g.default_max_tokens,
            1..=i32::MAX,
            "defaultMaxTokens",
            rules::DEFAULT_MAX_TOKENS,
        ),
    ];
    for (value, range, field, rule) in fields {
        if let Some(v) = value {
            c.check(range.contains(&v), format!("spec.generation.{field}"), rule);
        }
    }
    if let (Some(default), Some(context)) = (g.default_max_tokens, g.context_length) {
        c.check(
            default < context,
            "spec.generation.defaultMaxTokens",
            rules::DEFAULT_MAX_TOKENS_IN_CONTEXT,
        );
    }
}

fn check_upstream(c: &mut Checker, spec: &ModelDeploymentSpec) {
    let runtime = &spec.runtime;
    let upstream = runtime.backend == Backend::Upstream;
    c.check(
        !upstream || runtime.upstream.is_some(),
        "spec.runtime.upstream",
        rules::UPSTREAM_NEEDS_ENGINE,
    );
    c.check(
        runtime.upstream.is_none() || upstream,
        "spec.runtime.backend",
        rules::ENGINE_NEEDS_UPSTREAM,
    );
    c.check(
        !upstream || spec.model.task == ModelTask::Generation,
        "spec.model.task",
        rules::UPSTREAM_NEEDS_GENERATION,
    );
    if let Some(engine) = &runtime.upstream {
        c.check(
            !engine.image.is_empty(),
            "spec.runtime.upstream.image",
            rules::UPSTREAM_IMAGE,
        );
        let port_ok = (1..=65535).contains(&engine.port) && ![8080, 8081, 9090].contains(&engine.port);
        c.check(port_ok, "spec.runtime.upstream.port", rules::UPSTREAM_PORT);
    }
}

fn check_aliases(c: &mut Checker, model: &crate::v1alpha1::ModelSpec) {
    let aliases = &model.aliases;
    let well_formed = aliases
        .iter()
        .all(|a| (1..=128).contains(&a.len()) && aliases.iter().filter(|b| *b == a).count() == 1);
    c.check(well_formed, "spec.model.aliases", rules::MODEL_ALIASES);
    c.check(
        aliases.iter().all(|a| *a != model.name),
        "spec.model.aliases",
        rules::MODEL_ALIAS_NOT_NAME,
    );
}

fn check_routing(c: &mut Checker, routing: &crate::v1alpha1::RoutingSpec) {
    if let Some(fallback) = &routing.fallback {
        check_fallback(c, fallback);
    }
    if let Some(semantic) = &routing.semantic_cache {
        c.check(
            (1..=128).contains(&semantic.embedding_model.len()),
            "spec.routing.semanticCache.embeddingModel",
            rules::SEMANTIC_CACHE_MODEL,
        );
        c.check(
            semantic.similarity_above > 0.0 && semantic.similarity_above <= 1.0,
            "spec.routing.semanticCache.similarityAbove",
            rules::SEMANTIC_CACHE_SIMILARITY,
        );
    }
}

fn check_fallback(c: &mut Checker, f: &crate::v1alpha1::FallbackSpec) {
    c.check(
        (1..=128).contains(&f.model.len()),
        "spec.routing.fallback.model",
        rules::FALLBACK_MODEL,
    );
    if let Some(v) = f.queue_depth_above {
        c.check(
            v > 0.0,
            "spec.routing.fallback.queueDepthAbove",
            rules::FALLBACK_QUEUE_DEPTH,
        );
    }
    if let Some(v) = f.prompt_tokens_above {
        c.check(
            v >= 1,
            "spec.routing.fallback.promptTokensAbove",
            rules::FALLBACK_PROMPT_TOKENS,
        );
    }
}

fn uri_scheme_ok(uri: &str) -> bool {
    ["hf://", "file://", "pvc://", "s3://"]
        .iter()
        .any(|scheme| uri.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()))
}

/// A DNS label (RFC 1123): what `^[a-z0-9]([-a-z0-9]*[a-z0-9])?$` with at most 63 characters accepts.
fn is_dns_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= 63 && alnum(first) && alnum(last) && bytes.iter().all(|&b| alnum(b) || b == b'-')
        }
        _ => false,
    }
}

fn check_batching(c: &mut Checker, b: &BatchingSpec) {
    c.check(
        b.max_batch_size >= 1,
        "spec.batching.maxBatchSize",
        rules::MAX_BATCH_SIZE,
    );
    c.check(
        b.max_batch_tokens >= 1,
        "spec.batching.maxBatchTokens",
        rules::MAX_BATCH_TOKENS,
    );
    c.check(
        b.max_queue_size >= 1,
        "spec.batching.maxQueueSize",
        rules::MAX_QUEUE_SIZE,
    );
    let unique = b
        .tiers
        .iter()
        .all(|t| b.tiers.iter().filter(|u| u.name == t.name).count() == 1);
    c.check(unique, "spec.batching.tiers", rules::TIER_NAMES_UNIQUE);
    for (i, tier) in b.tiers.iter().enumerate() {
        let path = format!("spec.batching.tiers[{i}]");
        c.check(is_dns_label(&tier.name), format!("{path}.name"), rules::TIER_NAME);
        if let Some(timeout) = tier.timeout {
            c.positive(timeout, format!("{path}.timeout"), rules::TIER_TIMEOUT);
        }
        if let Some(share) = tier.max_queue_share {
            c.check(
                share > 0.0 && share <= 1.0,
                format!("{path}.maxQueueShare"),
                rules::TIER_QUEUE_SHARE,
            );
        }
    }
}

fn check_scaling(c: &mut Checker, s: &ScalingSpec) {
    c.check(
        s.min_replicas >= 0,
        "spec.scaling.minReplicas",
        rules::SCALING_MIN,
    );
    c.positive(s.idle_period, "spec.scaling.idlePeriod", rules::IDLE_PERIOD);
    c.check(
        s.max_replicas >= 1,
        "spec.scaling.maxReplicas",
        rules::SCALING_MAX,
    );
    c.check(
        s.min_replicas <= s.max_replicas,
        "spec.scaling.minReplicas",
        rules::SCALING_MIN_LE_MAX,
    );
    let t = &s.targets;
    let any_target = t.queue_depth_per_replica.is_some()
        || t.in_flight_per_replica.is_some()
        || t.p95_latency.is_some()
        || t.gpu_utilization.is_some()
        || t.has_generation_targets();
    c.check(any_target, "spec.scaling.targets", rules::SCALING_TARGETS);
    if let Some(v) = t.ttft_p95 {
        c.positive(v, "spec.scaling.targets.ttftP95", rules::TARGET_TTFT_P95);
    }
    if let Some(v) = t.kv_cache_utilization {
        c.check(
            v > 0.0 && v <= 1.0,
            "spec.scaling.targets.kvCacheUtilization",
            rules::TARGET_KV_CACHE,
        );
    }
    if let Some(v) = t.waiting_sequences_per_replica {
        c.check(
            v > 0.0,
            "spec.scaling.targets.waitingSequencesPerReplica",
            rules::TARGET_WAITING_SEQUENCES,
        );
    }
    if let Some(v) = t.queue_depth_per_replica {
        c.check(
            v > 0.0,
            "spec.scaling.targets.queueDepthPerReplica",
            rules::TARGET_QUEUE_DEPTH,
        );
    }
    if let Some(v) = t.in_flight_per_replica {
        c.check(
            v > 0.0,
            "spec.scaling.targets.inFlightPerReplica",
            rules::TARGET_IN_FLIGHT,
        );
    }
    if let Some(v) = t.p95_latency {
        c.positive(v, "spec.scaling.targets.p95Latency", rules::TARGET_P95_LATENCY);
    }
    if let Some(v) = t.gpu_utilization {
        c.check(
            v > 0.0 && v <= 100.0,
            "spec.scaling.targets.gpuUtilization",
            rules::TARGET_GPU_UTILIZATION,
        );
    }
    c.positive(s.stable_window, "spec.scaling.stableWindow", rules::STABLE_WINDOW);
    c.positive(s.panic_window, "spec.scaling.panicWindow", rules::PANIC_WINDOW);
    c.check(
        s.panic_window <= s.stable_window,
        "spec.scaling.panicWindow",
        rules::PANIC_WINDOW_LE_STABLE,
    );
    c.check(
        s.panic_threshold > 1.0,
        "spec.scaling.panicThreshold",
        rules::PANIC_THRESHOLD,
    );
}

fn check_rollout(c: &mut Checker, r: &RolloutSpec) {
    let mut last_weight = i32::MIN;
    let mut weights_ok = true;
    for (i, step) in r.steps.iter().enumerate() {
        let path = format!("spec.rollout.steps[{i}]");
        if let Some(shadow) = &step.shadow {
            let ok = (1..=100).contains(&shadow.percent);
            c.check(ok, format!("{path}.shadow.percent"), rules::SHADOW_PERCENT);
            c.positive(
                shadow.duration,
                format!("{path}.shadow.duration"),
                rules::SHADOW_DURATION,
            );
        }
        if let Some(canary) = &step.canary {
            let ok = (1..=100).contains(&canary.weight);
            c.check(ok, format!("{path}.canary.weight"), rules::CANARY_WEIGHT);
            c.positive(
                canary.duration,
                format!("{path}.canary.duration"),
                rules::CANARY_DURATION,
            );
            weights_ok &= canary.weight >= last_weight;
            last_weight = canary.weight;
        }
        c.check(step.kind().is_some(), path, rules::STEP_ONE_KIND);
    }
    c.check(weights_ok, "spec.rollout.steps", rules::CANARY_WEIGHTS_ORDER);
    c.positive(
        r.progress_deadline,
        "spec.rollout.progressDeadline",
        rules::PROGRESS_DEADLINE,
    );
    if let Some(a) = &r.analysis {
        c.positive(
            a.interval,
            "spec.rollout.analysis.interval",
            rules::ANALYSIS_INTERVAL,
        );
        c.check(
            a.failure_limit >= 1,
            "spec.rollout.analysis.failureLimit",
            rules::FAILURE_LIMIT,
        );
        for (i, check) in a.checks.iter().enumerate() {
            check_analysis_check(c, &format!("spec.rollout.analysis.checks[{i}]"), check);
        }
    }
}

fn check_analysis_check(c: &mut Checker, path: &str, check: &AnalysisCheck) {
    if let Some(p) = &check.prometheus {
        c.check(
            !p.query.is_empty(),
            format!("{path}.prometheus.query"),
            rules::PROMETHEUS_QUERY,
        );
    }
    c.check(
        check.builtin.is_some() != check.prometheus.is_some(),
        path,
        rules::CHECK_ONE_SOURCE,
    );
    let has_threshold = check.min.is_some()
        || check.max.is_some()
        || check.max_ratio_to_stable.is_some()
        || check.min_ratio_to_stable.is_some();
    c.check(has_threshold, path, rules::CHECK_THRESHOLD);
    let ratio_ok = check.max_ratio_to_stable.is_none() || check.builtin.is_some();
    c.check(
        ratio_ok,
        format!("{path}.maxRatioToStable"),
        rules::CHECK_RATIO_BUILTIN,
    );
    let min_ratio_ok = check.min_ratio_to_stable.is_none() || check.builtin.is_some();
    c.check(
        min_ratio_ok,
        format!("{path}.minRatioToStable"),
        rules::CHECK_MIN_RATIO_BUILTIN,
    );
    let named = check.prometheus.is_none() || check.name.is_some();
    c.check(named, format!("{path}.name"), rules::CHECK_PROMETHEUS_NAME);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "paid", "tier-1", "0", &"a".repeat(63)] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Paid", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }

    #[test]
    fn uri_schemes() {
        for ok in [
            "hf://org/model",
            "file:///models/x",
            "pvc://claim/path",
            "s3://bucket/key",
        ] {
            assert!(uri_scheme_ok(ok), "{ok}");
        }
        for bad in ["http://x", "hf://", "org/model", "", "HF://x"] {
            assert!(!uri_scheme_ok(bad), "{bad}");
        }
    }
}
