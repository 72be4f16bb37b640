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
