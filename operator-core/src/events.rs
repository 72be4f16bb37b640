//! Events as data: what changed, as the `reason`, `action` and note a person reads in `kubectl
//! describe`. The operator publishes them; nothing here does I/O.

use modelfleet_crds::ModelDeployment;
use serde::Serialize;

use crate::{plan::PlanEvent, rollout::engine::RolloutEvent};

/// Longest note the API accepts (1 KiB), with room for the ellipsis.
pub const NOTE_MAX: usize = 1000;

/// One Event to publish, as data: the reconcile decides it, the shell sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventNote {
    /// Warning rather than Normal.
    pub warning: bool,
    /// `reason` (CamelCase, stable).
    pub reason: &'static str,
    /// `action`.
    pub action: &'static str,
    /// Human-readable note (cut to the API's 1 KiB when sent).
    pub note: String,
}

/// The Event for a plan change; `scale_reason` explains an autoscaler's change.
pub fn plan_event(md: &ModelDeployment, change: PlanEvent, scale_reason: Option<&str>) -> EventNote {
    let (reason, action, note) = match change {
        PlanEvent::RevisionCreated { revision, replicas } => (
            "RevisionCreated",
            "Create",
            format!(
                "created revision {revision} (version {}) with {replicas} replicas",
                md.spec.model.version
            ),
        ),
        PlanEvent::Scaled { revision, from, to } => (
            "Scaled",
            "Scale",
            match scale_reason {
                Some(why) => format!("scaled revision {revision} from {from} to {to} replicas: {why}"),
                None => format!("scaled revision {revision} from {from} to {to} replicas"),
            },
        ),
        PlanEvent::RevisionReplaced { revision, retired } => (
            "RevisionReplaced",
            "Replace",
            format!("revision {revision} is ready; retired {}", retired.join(", ")),
        ),
    };
    EventNote {
        warning: false,
        reason,
        action,
        note,
    }
}

/// The Event for a rollout change.
pub fn rollout_event(md: &ModelDeployment, change: RolloutEvent) -> EventNote {
    let (warning, reason, action, note) = match change {
        RolloutEvent::StepStarted {
            number,
            steps,
            description,
        } => (
            false,
            "RolloutStep",
            "Rollout",
            format!(
                "version {}: step {number}/{steps} started: {description}",
                md.spec.model.version
            ),
        ),
        RolloutEvent::Promoted { revision, version } => (
            false,
            "Promoted",
            "Promote",
            format!("version {version} (revision {revision}) passed every step and is now stable"),
        ),
        RolloutEvent::RolledBack { reason, message } => (
            true,
            "RolledBack",
            "Rollback",
            format!(
                "version {} rolled back ({reason}): {message}",
                md.spec.model.version
            ),
        ),
    };
    EventNote {
        warning,
        reason,
        action,
        note,
    }
}

/// `note` cut to [`NOTE_MAX`] bytes on a character boundary.
pub fn truncate(note: &str) -> String {
    if note.len() <= NOTE_MAX {
        return note.to_string();
    }
    let mut end = NOTE_MAX;
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}
