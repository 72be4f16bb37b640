//! What this process last wrote for each ModelDeployment.
//!
//! - Its own status: the watch cache can hand the next reconcile the object as it was before
//!   our status write landed (also after a newer write of ours to the object's metadata, such as
//!   consuming an annotation), and a rollout must not lose a promotion, run an analysis twice or
//!   restart a step from that older status. The remembered status is used while the cache shows
//!   a status this process built on or wrote before it; any other status (another writer, a new
//!   leader) is the object's own and wins.
//! - The hash of its HTTPRoute: HTTPRoutes have no watch cache (the Gateway API is optional), so
//!   this is what skips identical writes.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use kube::ResourceExt;
use modelfleet_crds::{ModelDeployment, ModelDeploymentStatus};

type Key = (String, String);

/// Statuses kept as "ours but older" per object: the cache lags by a few writes at most.
const OLDER_KEPT: usize = 4;

#[derive(Debug, Default)]
struct Entry {
    /// The last status written.
    latest: Option<ModelDeploymentStatus>,
    /// Statuses it was built on and earlier writes, newest last.
    older: VecDeque<Option<ModelDeploymentStatus>>,
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
    /// The status to build on: the last one written here while the cache still shows an older
    /// status of ours, else the object's own.
    pub fn status_of(&self, md: &ModelDeployment) -> Option<ModelDeploymentStatus> {
        let remembered = self.inner.lock().ok().and_then(|m| {
            let e = m.get(&key(md))?;
            let latest = e.latest.as_ref()?;
            let lagging = md.status.as_ref() != Some(latest) && e.older.contains(&md.status);
            lagging.then(|| latest.clone())
        });
        remembered.or_else(|| md.status.clone())
    }

    /// Records that `status` was written, computed from `md`'s status.
    pub fn remember_status(&self, md: &ModelDeployment, status: &ModelDeploymentStatus) {
        if let Ok(mut m) = self.inner.lock() {
            let e = m.entry(key(md)).or_default();
            let previous = e.latest.replace(status.clone());
            e.older.push_back(md.status.clone());
            if previous.is_some() && previous != md.status {
                e.older.push_back(previous);
            }
            while e.older.len() > OLDER_KEPT {
                e.older.pop_front();
            }
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

    fn md(replicas: Option<i32>) -> ModelDeployment {
        let spec = serde_yaml::from_str("model: {name: m, version: '1', uri: 'hf://o/m'}").expect("fixture");
        let mut md = ModelDeployment::new("m", spec);
        md.metadata.namespace = Some("ns".into());
        md.status = replicas.map(status);
        md
    }

    fn status(replicas: i32) -> ModelDeploymentStatus {
        ModelDeploymentStatus {
            replicas,
            ..Default::default()
        }
    }

    #[test]
    fn our_status_wins_while_the_cache_shows_an_older_status_of_ours() {
        let w = Written::default();
        let replicas = |md: &ModelDeployment| w.status_of(md).map(|s| s.replicas);
        assert_eq!(replicas(&md(None)), None, "nothing written yet");
        // Built on the cache's "no status", wrote 1; then built on 1, wrote 2.
        w.remember_status(&md(None), &status(1));
        w.remember_status(&md(Some(1)), &status(2));
        assert_eq!(replicas(&md(None)), Some(2), "the cache lags two writes");
        assert_eq!(replicas(&md(Some(1))), Some(2), "the cache lags one write");
        assert_eq!(replicas(&md(Some(2))), Some(2), "the cache caught up");
        assert_eq!(
            replicas(&md(Some(7))),
            Some(7),
            "another writer's status is the object's own"
        );
    }
}
