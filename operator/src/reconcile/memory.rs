//! What this process last wrote for each ModelDeployment.
//!
//! - Its own status: the watch cache can hand the next reconcile the object as it was before
//!   our status write landed, and a rollout must not run an analysis twice or restart a step
//!   from that older status. A remembered status is used only while the object in the cache is
//!   the very version it was computed from.
//! - The hash of its HTTPRoute: HTTPRoutes have no watch cache (the Gateway API is optional), so
//!   this is what skips identical writes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use kube::ResourceExt;
use modelfleet_crds::{ModelDeployment, ModelDeploymentStatus};

type Key = (String, String);

#[derive(Debug, Default)]
struct Entry {
    based_on: Option<String>,
    status: Option<ModelDeploymentStatus>,
    route_hash: Option<String>,
}

/// Shared memory of the last writes; cheap to clone.
#[derive(Debug, Default, Clone)]
pub struct Written {
    inner: Arc<Mutex<HashMap<Key, Entry>>>,
}

fn key(md: &ModelDeployment) -> Key {
    (md.namespace().unwrap_or_default(), md.name_any())
}

impl Written {
    /// The status to build on: ours when the cache still shows the object we computed it from,
    /// else the object's own.
    pub fn status_of(&self, md: &ModelDeployment) -> Option<ModelDeploymentStatus> {
        let remembered = self.inner.lock().ok().and_then(|m| {
            m.get(&key(md))
                .filter(|e| e.based_on.is_some() && e.based_on == md.metadata.resource_version)
                .and_then(|e| e.status.clone())
        });
        remembered.or_else(|| md.status.clone())
    }

    /// Records the status written from `md`.
    pub fn remember_status(&self, md: &ModelDeployment, status: &ModelDeploymentStatus) {
        if let Ok(mut m) = self.inner.lock() {
            let e = m.entry(key(md)).or_default();
            e.based_on = md.metadata.resource_version.clone();
            e.status = Some(status.clone());
        }
    }

    /// Whether the HTTPRoute with this hash was the last one written.
    pub fn route_is(&self, md: &ModelDeployment, hash: &str) -> bool {
        self.inner
            .lock()
            .is_ok_and(|m| m.get(&key(md)).and_then(|e| e.route_hash.as_deref()) == Some(hash))
    }

    /// Records the HTTPRoute written (None: forget it, so the next reconcile writes again).
    pub fn remember_route(&self, md: &ModelDeployment, hash: Option<String>) {
        if let Ok(mut m) = self.inner.lock() {
            m.entry(key(md)).or_default().route_hash = hash;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(rv: &str, replicas: i32) -> ModelDeployment {
        let spec = serde_yaml::from_str("model: {name: m, version: '1', uri: 'hf://o/m'}").expect("fixture");
        let mut md = ModelDeployment::new("m", spec);
        md.metadata.namespace = Some("ns".into());
        md.metadata.resource_version = Some(rv.into());
        md.status = Some(ModelDeploymentStatus {
            replicas,
            ..Default::default()
        });
        md
    }

    #[test]
    fn our_status_wins_only_over_the_version_it_was_computed_from() {
        let w = Written::default();
        let ours = ModelDeploymentStatus {
            replicas: 9,
            ..Default::default()
        };
        w.remember_status(&md("10", 1), &ours);
        assert_eq!(
            w.status_of(&md("10", 1)).map(|s| s.replicas),
            Some(9),
            "stale cache"
        );
        assert_eq!(
            w.status_of(&md("11", 3)).map(|s| s.replicas),
            Some(3),
            "newer object"
        );
    }
}
