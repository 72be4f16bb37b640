//! What `kubectl modelfleet status` prints, pure: a ModelDeployment (as read from the API
//! server) and the time now in, the tree out.

use std::fmt::Write;

use k8s_openapi::jiff::Timestamp;
use modelfleet_crds::{ModelDeployment, v1alpha1::StepKind};

/// "3m12s ago"-style age of `then`.
fn ago(then: Timestamp, now: Timestamp) -> String {
    let s = now.as_second().saturating_sub(then.as_second()).max(0);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m{}s ago", s / 60, s % 60),
        _ => format!("{}h{}m ago", s / 3600, (s % 3600) / 60),
    }
}

/// The `list` table: one row per ModelDeployment, columns padded to their widest cell.
pub fn list_table(items: &[ModelDeployment], with_namespace: bool) -> String {
    let mut rows = vec![
        [
            "NAMESPACE",
            "NAME",
            "READY",
            "STABLE",
            "CANARY",
            "WEIGHT",
            "PHASE",
            "AUTOSCALER",
        ]
        .map(String::from),
    ];
    for md in items {
        let s = md.status.clone().unwrap_or_default();
        rows.push([
            md.metadata.namespace.clone().unwrap_or_default(),
            md.metadata.name.clone().unwrap_or_default(),
            format!("{}/{}", s.ready_replicas, s.replicas),
            s.stable
                .as_ref()
                .map_or_else(|| "-".into(), |r| r.version.clone()),
            s.candidate
                .as_ref()
                .map_or_else(|| "-".into(), |c| c.version.clone()),
            format!("{}%", s.candidate.as_ref().map_or(0, |c| c.traffic_weight)),
            s.phase.map_or_else(|| "-".into(), |p| format!("{p:?}")),
            match (&md.spec.scaling, &s.autoscaling) {
                (Some(_), Some(a)) => format!("desired {}", a.desired_replicas),
                (Some(_), None) => "starting".into(),
                (None, _) => "off".into(),
            },
        ]);
    }
    let skip = usize::from(!with_namespace);
    let widths: Vec<usize> = (0..8)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = (skip..8)
            .map(|c| format!("{:<w$}", row[c], w = widths[c]))
            .collect();
        let _ = writeln!(out, "{}", cells.join("   ").trim_end());
    }
    out
}

/// The status tree of `md`.
pub fn status_tree(md: &ModelDeployment, now: Timestamp) -> String {
    let mut out = String::new();
    let name = md.metadata.name.clone().unwrap_or_default();
    let namespace = md.metadata.namespace.clone().unwrap_or_default();
    let status = md.status.clone().unwrap_or_default();
    let phase = status
        .phase
        .map_or_else(|| "Unknown".to_owned(), |p| format!("{p:?}"));
    let generation = md.metadata.generation.unwrap_or(0);
    let observed = status.observed_generation.unwrap_or(0);
    let _ = writeln!(
        out,
        "ModelDeployment {namespace}/{name}: {phase}, {}/{} ready (model {} version {})",
        status.ready_replicas, status.replicas, md.spec.model.name, md.spec.model.version
    );
    if observed < generation {
        let _ = writeln!(
            out,
            "  (generation {generation} not yet observed: status is of generation {observed})"
        );
    }
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    if let Some(s) = &status.stable {
        sections.push((
            format!(
                "stable    {}  version {}  {}/{} ready",
                s.revision, s.version, s.ready_replicas, s.replicas
            ),
            Vec::new(),
        ));
    }
    if let Some(c) = &status.candidate {
        let steps = md.spec.rollout.as_ref().map_or(0, |r| r.steps.len());
        let step = md
            .spec
            .rollout
            .as_ref()
            .and_then(|r| r.steps.get(c.step.max(0) as usize))
            .and_then(|s| s.kind())
            .map(|k| match k {
                StepKind::Shadow(s) => format!(", step {}/{steps}: shadow {}%", c.step + 1, s.percent),
                StepKind::Canary(k) => format!(", step {}/{steps}: canary {}%", c.step + 1, k.weight),
            })
            .unwrap_or_default();
        let started = c
            .step_started_at
            .as_ref()
            .map(|t| format!(", step started {}", ago(t.0, now)))
            .unwrap_or_default();
        let left = match c.step_remaining_seconds {
            Some(s) => format!(", {s}s left"),
            None if c.step_started_at.is_some() => ", holding".to_owned(),
            None => ", waiting for ready replicas".to_owned(),
        };
        let started = format!("{started}{left}");
        sections.push((
            format!(
                "candidate {}  version {}  {}/{} ready  weight {}%  mirror {}%{step}{started}",
                c.revision, c.version, c.ready_replicas, c.replicas, c.traffic_weight, c.mirror_percent
            ),
            Vec::new(),
        ));
    }
    if let Some(a) = &status.analysis {
        let last = a.last_run_at.as_ref().map_or_else(
            || "never run".to_owned(),
            |t| format!("last run {}", ago(t.0, now)),
        );
        let results = a
            .results
            .iter()
            .map(|r| {
                let value = r.value.map_or_else(|| "no data".to_owned(), |v| format!("{v}"));
                let mark = if r.passed {
                    "passed".to_owned()
                } else if r.inconclusive {
                    "inconclusive".to_owned()
                } else {
                    format!("FAILED ({} in a row)", r.failures)
                };
                let why = r.message.as_ref().map(|m| format!(": {m}")).unwrap_or_default();
                format!("{} {value} {mark}{why}", r.check)
            })
            .collect();
        sections.push((format!("analysis  {last}, {} failures", a.failures), results));
    }
    if let Some(r) = &status.last_rollout {
        sections.push((
            format!(
                "last rollout  version {} (revision {}) {:?} {}: {}",
                r.version,
                r.revision,
                r.result,
                ago(r.finished_at.0, now),
                r.message
            ),
            Vec::new(),
        ));
    }
    if let Some(a) = &status.autoscaling {
        let last = a
            .last_scale_time
            .as_ref()
            .map(|t| format!(", last scaled {}", ago(t.0, now)))
            .unwrap_or_default();
        let mut lines: Vec<String> = a
            .current_metrics
            .iter()
            .map(|m| format!("{} {} (target {})", m.name, m.value, m.target))
            .collect();
        lines.extend(
            a.history
                .iter()
                .rev()
                .map(|e| format!("{} {} → {}: {}", ago(e.time.0, now), e.from, e.to, e.reason)),
        );
        sections.push((format!("autoscaler desired {}{last}", a.desired_replicas), lines));
    }
    if let Some(l) = &status.load {
        sections.push((load_line(l), Vec::new()));
    }
    if let Some(r) = &status.routing {
        sections.push(routing_section(r, now));
    }
    sections.push((
        "conditions".into(),
        status
            .conditions
            .iter()
            .map(|c| format!("{} {} {}: {}", c.type_, c.status, c.reason, c.message))
            .collect(),
    ));
    let count = sections.len();
    for (i, (head, lines)) in sections.into_iter().enumerate() {
        let last = i + 1 == count;
        let _ = writeln!(out, "{} {head}", if last { "└─" } else { "├─" });
        let indent = if last { "   " } else { "│  " };
        let n = lines.len();
        for (j, line) in lines.into_iter().enumerate() {
            let _ = writeln!(out, "{indent}{} {line}", if j + 1 == n { "└─" } else { "├─" });
        }
    }
    out
}

/// `status.load` as one line; generation models add TTFT, tokens/s and the KV cache.
fn load_line(l: &modelfleet_crds::v1alpha1::LoadStatus) -> String {
    let mut line = format!(
        "load      {} req/s  p95 {}s",
        l.requests_per_second, l.p95_latency_seconds
    );
    if let Some(ttft) = l.ttft_p95_seconds {
        let _ = write!(line, "  TTFT p95 {ttft}s");
    }
    if let Some(tokens) = l.tokens_per_second {
        let _ = write!(line, "  {tokens} tokens/s");
    }
    if let Some(kv) = l.kv_cache_utilization {
        let _ = write!(line, "  KV cache {:.0}%", kv * 100.0);
    }
    line
}

/// `status.routing` as one line: what the routers saw of this model.
fn routing_section(r: &modelfleet_crds::v1alpha1::RoutingStatus, now: Timestamp) -> (String, Vec<String>) {
    let ratio = r
        .cache_hit_ratio
        .map_or_else(|| "-".to_string(), |x| format!("{:.1}%", x * 100.0));
    let last = r
        .last_request_time
        .as_ref()
        .map_or_else(|| "never".to_string(), |t| ago(t.0, now));
    (
        format!(
            "router    {} requests from {} routers, cache hit ratio {ratio}, {} fallbacks, {} held, last request {last}",
            r.requests, r.routers, r.fallbacks, r.held_requests
        ),
        Vec::new(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = r#"
apiVersion: modelfleet.dev/v1alpha1
kind: ModelDeployment
metadata: {name: minilm, namespace: search, generation: 7}
spec:
  model: {name: all-MiniLM-L6-v2, version: "2", uri: "hf://o/m"}
  scaling: {minReplicas: 1, maxReplicas: 20, targets: {queueDepthPerReplica: 16}}
  rollout:
    steps:
      - shadow: {percent: 20, duration: 10m}
      - canary: {weight: 10, duration: 5m}
status:
  observedGeneration: 7
  phase: Progressing
  replicas: 5
  readyReplicas: 5
  stable: {revision: 7f9c2a1, version: "1", replicas: 4, readyReplicas: 4}
  candidate: {revision: a1b2c3d, version: "2", step: 1, stepStartedAt: "2026-12-01T10:40:00Z", stepRemainingSeconds: 180, trafficWeight: 10, mirrorPercent: 0, replicas: 1, readyReplicas: 1}
  analysis: {lastRunAt: "2026-12-01T10:41:50Z", failures: 0, results: [{check: errorRate, value: 0.002, passed: true}]}
  autoscaling:
    desiredReplicas: 5
    lastScaleTime: "2026-12-01T10:41:00Z"
    currentMetrics: [{name: queueDepthPerReplica, value: 15.2, target: 16}]
    history:
      - {time: "2026-12-01T10:39:00Z", from: 2, to: 4, reason: "queueDepthPerReplica 31.2 > 16"}
      - {time: "2026-12-01T10:41:00Z", from: 4, to: 5, reason: "queueDepthPerReplica 19 > 16"}
  routing: {routers: 2, requests: 1200, cacheHitRatio: 0.255, fallbacks: 3, heldRequests: 0, lastRequestTime: "2026-12-01T10:41:59Z"}
  conditions:
    - {type: Available, status: "False", reason: RevisionRollingOut, message: "revision a1b2c3d is rolling out", lastTransitionTime: "2026-12-01T10:38:00Z"}
"#;

    #[test]
    fn the_tree_shows_revisions_step_analysis_decisions_and_conditions() {
        let md: ModelDeployment = serde_yaml::from_str(FIXTURE).expect("fixture");
        let now: Timestamp = "2026-12-01T10:42:00Z".parse().expect("time");
        let tree = status_tree(&md, now);
        let expected = "\
ModelDeployment search/minilm: Progressing, 5/5 ready (model all-MiniLM-L6-v2 version 2)
├─ stable    7f9c2a1  version 1  4/4 ready
├─ candidate a1b2c3d  version 2  1/1 ready  weight 10%  mirror 0%, step 2/2: canary 10%, step started 2m0s ago, 180s left
├─ analysis  last run 10s ago, 0 failures
│  └─ errorRate 0.002 passed
├─ autoscaler desired 5, last scaled 1m0s ago
│  ├─ queueDepthPerReplica 15.2 (target 16)
│  ├─ 1m0s ago 4 → 5: queueDepthPerReplica 19 > 16
│  └─ 3m0s ago 2 → 4: queueDepthPerReplica 31.2 > 16
├─ router    1200 requests from 2 routers, cache hit ratio 25.5%, 3 fallbacks, 0 held, last request 1s ago
└─ conditions
   └─ Available False RevisionRollingOut: revision a1b2c3d is rolling out
";
        assert_eq!(tree, expected, "\n{tree}");
    }

    #[test]
    fn a_generation_model_shows_ttft_tokens_per_second_and_the_kv_cache() {
        let md: ModelDeployment = serde_yaml::from_str(
            r#"
apiVersion: modelfleet.dev/v1alpha1
kind: ModelDeployment
metadata: {name: smollm, namespace: chat}
spec:
  model: {name: smollm2, version: "1", uri: "file:///m.gguf", task: generation}
status:
  phase: Available
  replicas: 2
  readyReplicas: 2
  load: {requestsPerSecond: 3.2, p95LatencySeconds: 4.1, ttftP95Seconds: 0.42, tokensPerSecond: 231.0, kvCacheUtilization: 0.37}
"#,
        )
        .expect("fixture");
        let tree = status_tree(&md, "2026-12-01T10:42:00Z".parse().expect("time"));
        assert!(
            tree.contains("load      3.2 req/s  p95 4.1s  TTFT p95 0.42s  231 tokens/s  KV cache 37%"),
            "{tree}"
        );
    }

    #[test]
    fn the_list_pads_columns_and_says_who_owns_replicas() {
        let md: ModelDeployment = serde_yaml::from_str(FIXTURE).expect("fixture");
        let table = list_table(&[md], false);
        assert_eq!(
            table,
            "NAME     READY   STABLE   CANARY   WEIGHT   PHASE         AUTOSCALER\n\
             minilm   5/5     1        2        10%      Progressing   desired 5\n"
        );
    }

    #[test]
    fn an_unobserved_generation_is_said() {
        let mut md: ModelDeployment = serde_yaml::from_str(FIXTURE).expect("fixture");
        md.metadata.generation = Some(8);
        let tree = status_tree(&md, Timestamp::UNIX_EPOCH);
        assert!(tree.contains("generation 8 not yet observed"), "{tree}");
    }
}
