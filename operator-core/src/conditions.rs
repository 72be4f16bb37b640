//! kstatus-style conditions whose `lastTransitionTime` changes only when the status does.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// A condition to set: type, status, reason, message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Desired {
    /// Condition type.
    #[serde(rename = "type")]
    pub type_: &'static str,
    /// True or False.
    pub status: bool,
    /// PascalCase reason.
    pub reason: String,
    /// Human message.
    pub message: String,
}

impl Desired {
    /// A condition.
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// Who says something about a ModelDeployment's conditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The rollout engine (a step, a hold, a rollback).
    Rollout,
    /// Problems found on the pods (image pulls, crash loops, missing GPUs).
    Diagnosis,
    /// Ready replicas against the desired count.
    Replicas,
    /// The autoscaler (MetricsAvailable, ScalingLimited).
    Autoscaler,
    /// Fields of the spec that have no effect.
    Spec,
}

/// When several sources set the same condition type, the one listed first wins: a rollout's
/// account of Available, Progressing and Degraded replaces the replica counts' and the pods'.
pub const PRECEDENCE: [Source; 5] = [
    Source::Rollout,
    Source::Diagnosis,
    Source::Replicas,
    Source::Autoscaler,
    Source::Spec,
];

/// One condition per type from what every source says, each type where it first appears and
/// set by the source [`PRECEDENCE`] ranks first.
pub fn resolve(said: &[(Source, Desired)]) -> Vec<Desired> {
    let rank = |s: Source| {
        PRECEDENCE
            .iter()
            .position(|p| *p == s)
            .unwrap_or(PRECEDENCE.len())
    };
    let mut out: Vec<(Source, Desired)> = Vec::new();
    for (source, desired) in said {
        match out.iter_mut().find(|(_, d)| d.type_ == desired.type_) {
            Some(held) if rank(*source) < rank(held.0) => *held = (*source, desired.clone()),
            Some(_) => {}
            None => out.push((*source, desired.clone())),
        }
    }
    out.into_iter().map(|(_, d)| d).collect()
}

/// Merges `desired` into `existing`: a condition keeps its `lastTransitionTime` unless its status
/// changes. Types not in `desired` are dropped.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" }.to_string();
            let last_transition_time = existing
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: d.type_.to_string(),
                status,
                reason: d.reason.clone(),
                message: d.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_source_in_the_precedence_table_wins_each_type_in_place() {
        let said = [
            (
                Source::Replicas,
                Desired::new("Available", true, "AllReplicasReady", ""),
            ),
            (
                Source::Diagnosis,
                Desired::new("Degraded", false, "AsExpected", ""),
            ),
            (
                Source::Rollout,
                Desired::new("Degraded", true, "AnalysisFailed", ""),
            ),
            (Source::Rollout, Desired::new("Paused", false, "Running", "")),
            (Source::Spec, Desired::new("Available", false, "Ignored", "")),
        ];
        let resolved: Vec<_> = resolve(&said).into_iter().map(|d| (d.type_, d.reason)).collect();
        assert_eq!(
            resolved,
            [
                ("Available", "AllReplicasReady".to_string()),
                ("Degraded", "AnalysisFailed".to_string()),
                ("Paused", "Running".to_string()),
            ]
        );
    }

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().expect("time");
        let first = merge(
            &[],
            &[Desired::new("Available", false, "Progressing", "0/2 ready")],
            Some(1),
            t0,
        );
        let same = merge(
            &first,
            &[Desired::new("Available", false, "Progressing", "1/2 ready")],
            Some(1),
            t1,
        );
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].message, "1/2 ready");
        let flipped = merge(
            &same,
            &[Desired::new("Available", true, "Ready", "2/2 ready")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].observed_generation, Some(2));
    }
}
