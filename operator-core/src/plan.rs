//! Which revisions run, with how many replicas: a pure function of the spec, the current
//! revision and what is observed.
//!
//! Replica source: [`desired_replicas`] (`spec.replicas`, or with `spec.scaling` the built-in
//! autoscaler's decision). Rollout hook: [`plan`] implements the step-less rollout (the new revision
//! scales up; only when all its replicas are ready is the old one retired). The rollout engine
//! replaces the middle of [`plan`] with its steps.

use std::collections::BTreeMap;

use k8s_openapi::jiff::Timestamp;
use modelfleet_crds::{ModelDeployment, ModelDeploymentStatus, v1alpha1::RolloutResult};

use crate::{
    autoscale::resume_replicas,
    observed::{Observed, ObservedRevision},
};

/// The revisions to run after this reconcile.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RevisionPlan {
    /// The revision the spec asks for.
    pub current: String,
    /// The revision serving production traffic.
    pub stable: String,
    /// A revision being rolled out, when it differs from `stable`.
    pub candidate: Option<String>,
    /// Replicas per revision to run.
    pub replicas: BTreeMap<String, i32>,
    /// Revisions to delete.
    pub retire: Vec<String>,
    /// Total replicas the spec asks for.
    pub desired: i32,
    /// How live and mirrored traffic reach the candidate.
    pub traffic: Traffic,
}

/// How traffic reaches the candidate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Traffic {
    /// Percent of live traffic on the candidate through the HTTPRoute.
    pub weight: i32,
    /// Percent of the stable revision's requests mirrored to the candidate.
    pub mirror: i32,
    /// The entry Service `<name>` selects only the stable revision: no live traffic reaches a
    /// candidate at weight 0, or a revision draining after promotion.
    pub entry_stable_only: bool,
}

/// After a promotion the previous stable revision keeps its replicas for `scaleDownDelay` (and
/// until the new stable revision is fully ready), receiving no new traffic.
pub fn drain(plan: &mut RevisionPlan, previous: &ObservedRevision, delay_over: bool, stable_ready: bool) {
    if plan.candidate.is_some() || previous.revision == plan.stable || (delay_over && stable_ready) {
        return;
    }
    plan.retire.retain(|r| r != &previous.revision);
    plan.replicas.insert(previous.revision.clone(), previous.replicas);
    plan.traffic.entry_stable_only = true;
}

/// The replica source: `spec.replicas` without `spec.scaling`. With it, the autoscaler owns the
/// count: its latest decision (`decided`), or before it has one (a new leader, a new object) the
/// count recorded in `status.autoscaling`, else `minReplicas`.
pub fn desired_replicas(md: &ModelDeployment, decided: Option<i32>) -> i32 {
    match &md.spec.scaling {
        Some(scaling) => decided.unwrap_or_else(|| resume_replicas(md, scaling)),
        None => md.spec.replicas,
    }
}

/// Plans revisions for `desired` replicas in all (from [`desired_replicas`]).
/// `recorded_stable` is the stable revision from the previous status.
pub fn plan(
    desired: i32,
    current: &str,
    recorded_stable: Option<&str>,
    observed: &[ObservedRevision],
) -> RevisionPlan {
    let old_stable = recorded_stable
        .filter(|s| *s != current)
        .and_then(|s| observed.iter().find(|r| r.revision == s));
    let current_ready = observed
        .iter()
        .find(|r| r.revision == current)
        .map_or(0, |r| r.ready_replicas);

    let mut replicas = BTreeMap::from([(current.to_string(), desired)]);
    let (stable, candidate) = match old_stable {
        // Keep the old revision at full size until the new one is fully ready: no capacity dip.
        Some(old) if current_ready < desired => {
            replicas.insert(old.revision.clone(), desired);
            (old.revision.clone(), Some(current.to_string()))
        }
        _ => (current.to_string(), None),
    };
    let retire = observed
        .iter()
        .filter(|r| !replicas.contains_key(&r.revision))
        .map(|r| r.revision.clone())
        .collect();
    RevisionPlan {
        current: current.to_string(),
        stable,
        candidate,
        replicas,
        retire,
        desired,
        traffic: Traffic::default(),
    }
}

/// After a promotion the previous stable revision drains for `scaleDownDelay`: keeps it in
/// `plan` while the delay runs and the new stable is not fully ready; returns the seconds left
/// when it still runs.
pub fn drain_after_promotion(
    md: &ModelDeployment,
    recorded: &ModelDeploymentStatus,
    observed: &Observed,
    plan: &mut RevisionPlan,
    now: Timestamp,
) -> Option<i64> {
    let last = recorded
        .last_rollout
        .as_ref()
        .filter(|r| r.result == RolloutResult::Promoted && r.revision == plan.stable)?;
    let previous = observed.revision(last.previous_stable.as_deref()?)?;
    let delay = md.spec.rollout.as_ref().map_or(0, |r| {
        std::time::Duration::from(r.scale_down_delay).as_secs() as i64
    });
    let left = last.finished_at.0.as_second() + delay - now.as_second();
    let stable_ready = observed
        .revision(&plan.stable)
        .is_some_and(|r| r.ready_replicas >= plan.desired);
    drain(plan, previous, left <= 0, stable_ready);
    plan.replicas
        .contains_key(&previous.revision)
        .then_some(left.max(1))
}

/// What changed between the observed revisions and the plan, for Events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlanEvent {
    /// A revision's Deployment is created.
    RevisionCreated { revision: String, replicas: i32 },
    /// A revision's replica count changes.
    Scaled { revision: String, from: i32, to: i32 },
    /// The new revision is ready and the old ones are retired.
    RevisionReplaced { revision: String, retired: Vec<String> },
}

/// Events for the transition from `observed` to `plan`.
pub fn events(observed: &[ObservedRevision], plan: &RevisionPlan) -> Vec<PlanEvent> {
    let mut out = Vec::new();
    for (revision, &to) in &plan.replicas {
        match observed.iter().find(|r| &r.revision == revision) {
            None => out.push(PlanEvent::RevisionCreated {
                revision: revision.clone(),
                replicas: to,
            }),
            Some(r) if r.replicas != to => out.push(PlanEvent::Scaled {
                revision: revision.clone(),
                from: r.replicas,
                to,
            }),
            Some(_) => {}
        }
    }
    if !plan.retire.is_empty()
        && plan.candidate.is_none()
        && observed.iter().any(|r| r.revision == plan.current)
    {
        out.push(PlanEvent::RevisionReplaced {
            revision: plan.current.clone(),
            retired: plan.retire.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(replicas: i32) -> ModelDeployment {
        let mut s: modelfleet_crds::ModelDeploymentSpec =
            serde_yaml::from_str("model: {name: m, version: '1', uri: 'hf://o/m'}").expect("fixture");
        s.replicas = replicas;
        ModelDeployment::new("m", s)
    }

    fn rev(name: &str, replicas: i32, ready: i32) -> ObservedRevision {
        ObservedRevision {
            revision: name.into(),
            version: "1".into(),
            replicas,
            ready_replicas: ready,
            template: None,
        }
    }

    #[test]
    fn first_revision_is_stable_at_once() {
        let p = plan(2, "a", None, &[]);
        assert_eq!((p.stable.as_str(), p.candidate.as_deref()), ("a", None));
        assert_eq!(p.replicas, BTreeMap::from([("a".into(), 2)]));
        assert_eq!(
            events(&[], &p),
            vec![PlanEvent::RevisionCreated {
                revision: "a".into(),
                replicas: 2
            }]
        );
    }

    #[test]
    fn old_revision_stays_until_the_new_one_is_fully_ready() {
        let observed = [rev("a", 2, 2), rev("b", 2, 1)];
        let p = plan(2, "b", Some("a"), &observed);
        assert_eq!((p.stable.as_str(), p.candidate.as_deref()), ("a", Some("b")));
        assert_eq!(p.replicas, BTreeMap::from([("a".into(), 2), ("b".into(), 2)]));
        assert!(p.retire.is_empty());
    }

    #[test]
    fn old_revision_is_retired_once_the_new_one_is_ready() {
        let observed = [rev("a", 2, 2), rev("b", 2, 2)];
        let p = plan(2, "b", Some("a"), &observed);
        assert_eq!((p.stable.as_str(), p.candidate.as_deref()), ("b", None));
        assert_eq!(p.retire, vec!["a".to_string()]);
        assert!(events(&observed, &p).contains(&PlanEvent::RevisionReplaced {
            revision: "b".into(),
            retired: vec!["a".into()]
        }));
    }

    #[test]
    fn an_abandoned_candidate_is_retired_at_once() {
        let observed = [rev("a", 2, 2), rev("b", 2, 0)];
        let p = plan(2, "c", Some("a"), &observed);
        assert_eq!((p.stable.as_str(), p.candidate.as_deref()), ("a", Some("c")));
        assert_eq!(p.retire, vec!["b".to_string()]);
    }

    #[test]
    fn with_scaling_the_autoscaler_decides_and_a_new_leader_resumes_from_status() {
        let mut m = md(7);
        m.spec.scaling = Some(modelfleet_crds::v1alpha1::ScalingSpec::new(
            3,
            9,
            Default::default(),
        ));
        assert_eq!(desired_replicas(&m, None), 3, "minReplicas before any decision");
        assert_eq!(desired_replicas(&m, Some(6)), 6);
        m.status = Some(modelfleet_crds::ModelDeploymentStatus {
            autoscaling: Some(modelfleet_crds::v1alpha1::AutoscalingStatus {
                desired_replicas: 5,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            desired_replicas(&m, None),
            5,
            "the recorded decision, not minReplicas"
        );
        let p = plan(desired_replicas(&m, Some(6)), "a", None, &[rev("a", 1, 1)]);
        assert_eq!(
            events(&[rev("a", 1, 1)], &p),
            vec![PlanEvent::Scaled {
                revision: "a".into(),
                from: 1,
                to: 6
            }]
        );
    }

    #[test]
    fn without_scaling_spec_replicas_rule() {
        assert_eq!(desired_replicas(&md(7), Some(2)), 7);
    }
}
