//! Model names across ModelDeployments, pure: a served name (`spec.model.name`) or alias claimed
//! by two ModelDeployments of one namespace belongs to the older (then the smaller name), the
//! rule the router resolves names by; the other is Degraded with `ModelNameConflict`.

use k8s_openapi::jiff::Timestamp;
use kube_core::ResourceExt;
use modelfleet_crds::ModelDeployment;

use crate::diagnose::Problem;

/// Condition reason of a name another ModelDeployment holds.
pub const MODEL_NAME_CONFLICT: &str = "ModelNameConflict";

/// The names one ModelDeployment claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameClaim {
    /// The ModelDeployment.
    pub deployment: String,
    /// When it was created (None: not yet, it sorts last).
    pub created: Option<Timestamp>,
    /// Its served name and aliases.
    pub names: Vec<String>,
}

impl NameClaim {
    /// What `md` claims.
    pub fn of(md: &ModelDeployment) -> Self {
        Self {
            deployment: md.name_any(),
            created: md.metadata.creation_timestamp.as_ref().map(|t| t.0),
            names: std::iter::once(md.spec.model.name.clone())
                .chain(md.spec.model.aliases.iter().cloned())
                .collect(),
        }
    }

    fn precedes(&self, other: &Self) -> bool {
        let key = |c: &Self| (c.created.is_none(), c.created, c.deployment.clone());
        key(self) < key(other)
    }
}

/// The first of `md`'s names an earlier claimant of its namespace (`claims`: every
/// ModelDeployment of the namespace, `md` among them or not) holds, as the problem to report.
pub fn conflict(md: &ModelDeployment, claims: &[NameClaim]) -> Option<Problem> {
    let own = NameClaim::of(md);
    own.names.iter().find_map(|name| {
        let holder = claims
            .iter()
            .filter(|c| c.deployment != own.deployment && c.names.contains(name))
            .find(|c| c.precedes(&own))?;
        Some(Problem {
            reason: MODEL_NAME_CONFLICT,
            message: format!(
                "model name {name:?} is also claimed by the older ModelDeployment {}: the router sends requests for it there; rename spec.model.name or the alias (this one stays reachable as <namespace>/{})",
                holder.deployment, own.deployment
            ),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(name: &str, served: &str, aliases: &[&str], created: i64) -> ModelDeployment {
        let aliases = aliases
            .iter()
            .map(|a| format!("'{a}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let yaml = format!(
            "apiVersion: modelfleet.dev/v1alpha1\nkind: ModelDeployment\nmetadata: {{name: {name}, creationTimestamp: '{}'}}\nspec:\n  model: {{name: {served}, aliases: [{aliases}], version: '1', uri: 'hf://o/m'}}\n",
            Timestamp::from_second(1_800_000_000 + created).expect("time")
        );
        serde_yaml::from_str(&yaml).expect("yaml")
    }

    #[test]
    fn the_younger_claimant_of_a_name_or_alias_is_told_who_holds_it() {
        let old = md("old", "minilm", &["embed"], 0);
        let young = md("young", "other", &["embed"], 10);
        let claims = [NameClaim::of(&old), NameClaim::of(&young)];
        let problem = conflict(&young, &claims).expect("a conflict");
        assert_eq!(problem.reason, MODEL_NAME_CONFLICT);
        assert!(
            problem.message.contains("\"embed\"") && problem.message.contains("old"),
            "{}",
            problem.message
        );
        assert!(conflict(&old, &claims).is_none(), "the older keeps it");
        let apart = md("apart", "solo", &[], 20);
        assert!(conflict(&apart, &claims).is_none());
    }

    #[test]
    fn claimants_of_the_same_age_are_ordered_by_name() {
        let a = md("a", "m", &[], 5);
        let b = md("b", "m", &[], 5);
        let claims = [NameClaim::of(&b), NameClaim::of(&a)];
        assert!(conflict(&a, &claims).is_none());
        assert!(conflict(&b, &claims).is_some());
    }
}
