//! Which revisions run, with how many replicas: a pure function of the spec, the current
//! revision and what is observed.
//!
//! Replica source: [`desired_replicas`] (`spec.replicas`, or `spec.scaling.minReplicas` until the
//! autoscaler owns it). Rollout hook: [`plan`] implements the step-less rollout (the new revision
//! scales up; only when all its replicas are ready is the old one retired). The rollout engine
//! replaces the middle of [`plan`] with its steps.

use std::collections::BTreeMap;

use modelfleet_crds::ModelDeploymentSpec;

use crate::reconcile::fetch::ObservedRevision;

/// The revisions to run after this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// The replica source: `spec.replicas` without `spec.scaling`; with it, `minReplicas` until the
/// built-in autoscaler writes replicas.
pub fn desired_replicas(spec: &ModelDeploymentSpec) -> i32 {
    match &spec.scaling {
        Some(scaling) => scaling.min_replicas,
        None => spec.replicas,
    }
}

/// Plans revisions. `recorded_stable` is the stable revision from the previous status.
pub fn plan(
    spec: &ModelDeploymentSpec,
    current: &str,
    recorded_stable: Option<&str>,
    observed: &[ObservedRevision],
) -> RevisionPlan {
    let desired = desired_replicas(spec);
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
    }
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

    fn spec(replicas: i32) -> ModelDeploymentSpec {
        let mut s: ModelDeploymentSpec =
            serde_yaml::from_str("model: {name: m, version: '1', uri: 'hf://o/m'}").expect("fixture");
        s.replicas = replicas;
        s
    }

    fn rev(name: &str, replicas: i32, ready: i32) -> ObservedRevision {
        ObservedRevision {
            revision: name.into(),
            version: "1".into(),
            replicas,
            ready_replicas: ready,
        }
    }

    #[test]
    fn first_revision_is_stable_at_once() {
        let p = plan(&spec(2), "a", None, &[]);
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
        let p = plan(&spec(2), "b", Some("a"), &observed);
        assert_eq!((p.stable.as_str(), p.candidate.as_deref()), ("a", Some("b")));
        assert_eq!(p.replicas, BTreeMap::from([("a".into(), 2), ("b".into(), 2)]));
        assert!(p.retire.is_empty());
    }

    #[test]
    fn old_revision_is_retired_once_the_new_one_is_ready() {
        let observed = [rev("a", 2, 2), rev("b", 2, 2)];
        let p = plan(&spec(2), "b", Some("a"), &observed);
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
        let p = plan(&spec(2), "c", Some("a"), &observed);
        assert_eq!((p.stable.as_str(), p.candidate.as_deref()), ("a", Some("c")));
        assert_eq!(p.retire, vec!["b".to_string()]);
    }

    #[test]
    fn scaling_holds_min_replicas_until_the_autoscaler_lands() {
        let mut s = spec(7);
        s.scaling = Some(modelfleet_crds::v1alpha1::ScalingSpec::new(
            3,
            9,
            Default::default(),
        ));
        assert_eq!(desired_replicas(&s), 3);
        let p = plan(&s, "a", None, &[rev("a", 1, 1)]);
        assert_eq!(
            events(&[rev("a", 1, 1)], &p),
            vec![PlanEvent::Scaled {
                revision: "a".into(),
                from: 1,
                to: 3
            }]
        );
    }
}
