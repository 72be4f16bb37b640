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
//! - Its writes to children that the watch cache has yet to show. A reconcile that follows a
//!   write closely (the write's own watch events trigger it) can find the cache still showing the
//!   child as it was before, or not at all, and would write the same object again. Such a write
//!   is skipped while the cache shows exactly what it showed before ours, for at most
//!   [`CACHE_LAG_LIMIT`]; past that the cache is trusted again, so a child someone deleted at
//!   once is still recreated.
//!
//! Entries are keyed by the object's uid, never its name: a ModelDeployment deleted and
//! re-created under the same name is a new object and starts from its own (empty) status. They
//! are evicted when the object is deleted ([`Written::forget`] on the watch's delete event, and
//! [`Written::retain`] against the cache for deletes a relist hid), so the map is bounded by the
//! live objects.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use kube::ResourceExt;
use modelfleet_crds::{ModelDeployment, ModelDeploymentStatus};

/// The owner's uid.
type Key = String;

/// Statuses kept as "ours but older" per object: the cache lags by a few writes at most.
const OLDER_KEPT: usize = 4;

/// How long a write of ours to a child may take to show in the watch cache; after that the
/// cache is trusted again (and a write it does not show is repeated).
pub const CACHE_LAG_LIMIT: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct ChildWrite {
    /// The spec hash written.
    hash: String,
    /// The spec hash the cache showed before the write (None: no such child).
    before: Option<String>,
    at: Instant,
}

#[derive(Debug, Default)]
struct Entry {
    /// The last status written.
    latest: Option<ModelDeploymentStatus>,
    /// Statuses it was built on and earlier writes, newest last.
    older: VecDeque<Option<ModelDeploymentStatus>>,
    /// Hash of the last write per dynamic kind (HTTPRoute, InferencePool).
    dynamic_hashes: HashMap<&'static str, String>,
    /// `Kind/name` → the last write to that child.
    children: HashMap<String, ChildWrite>,
}

/// Shared memory of the last writes; cheap to clone.
#[derive(Debug, Default, Clone)]
pub struct Written {
    inner: Arc<Mutex<HashMap<Key, Entry>>>,
}

fn key(md: &ModelDeployment) -> Key {
    md.uid().unwrap_or_default()
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

    /// Whether the cache has yet to show our write of `hash` to `child` (`Kind/name`): it was
    /// written less than [`CACHE_LAG_LIMIT`] before `now`, and the cache still shows what it
    /// showed before that write (`cached`: the child's spec hash, None when it is absent).
    pub fn awaits_cache(
        &self,
        md: &ModelDeployment,
        child: &str,
        cached: Option<&str>,
        hash: &str,
        now: Instant,
    ) -> bool {
        self.inner.lock().is_ok_and(|m| {
            m.get(&key(md))
                .and_then(|e| e.children.get(child))
                .is_some_and(|w| {
                    w.hash == hash
                        && w.before.as_deref() == cached
                        && now.saturating_duration_since(w.at) < CACHE_LAG_LIMIT
                })
        })
    }

    /// Records a write of `hash` to `child` while the cache showed `before`.
    pub fn remember_child(
        &self,
        md: &ModelDeployment,
        child: &str,
        before: Option<&str>,
        hash: &str,
        now: Instant,
    ) {
        if let Ok(mut m) = self.inner.lock() {
            m.entry(key(md)).or_default().children.insert(
                child.to_string(),
                ChildWrite {
                    hash: hash.to_string(),
                    before: before.map(str::to_string),
                    at: now,
                },
            );
        }
    }

    /// Whether the dynamic object of `kind` (HTTPRoute, InferencePool) with this hash was the
    /// last one written.
    pub fn dynamic_is(&self, md: &ModelDeployment, kind: &str, hash: &str) -> bool {
        self.inner.lock().is_ok_and(|m| {
            m.get(&key(md))
                .and_then(|e| e.dynamic_hashes.get(kind))
                .is_some_and(|h| h == hash)
        })
    }

    /// Drops everything remembered for the object with this uid (it was deleted).
    pub fn forget(&self, uid: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(uid);
        }
    }

    /// Keeps only the objects whose uid `live` holds (the cache's objects).
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|uid, _| live(uid));
        }
    }

    /// How many objects are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |m| m.len())
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records the dynamic object of `kind` written (None: forget it, so the next reconcile
    /// writes again).
    pub fn remember_dynamic(&self, md: &ModelDeployment, kind: &'static str, hash: Option<String>) {
        if let Ok(mut m) = self.inner.lock() {
            let hashes = &mut m.entry(key(md)).or_default().dynamic_hashes;
            match hash {
                Some(h) => hashes.insert(kind, h),
                None => hashes.remove(kind),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(replicas: Option<i32>) -> ModelDeployment {
        md_with_uid("uid-1", replicas)
    }

    fn md_with_uid(uid: &str, replicas: Option<i32>) -> ModelDeployment {
        let spec = serde_yaml::from_str("model: {name: m, version: '1', uri: 'hf://o/m'}").expect("fixture");
        let mut md = ModelDeployment::new("m", spec);
        md.metadata.namespace = Some("ns".into());
        md.metadata.uid = Some(uid.into());
        md.status = replicas.map(status);
        md
    }

    #[test]
    fn a_model_deployment_re_created_under_the_same_name_starts_from_its_own_empty_status() {
        let w = Written::default();
        // The first object's reconciles wrote statuses 1 then 2 (the first built on no status).
        w.remember_status(&md_with_uid("old", None), &status(1));
        w.remember_status(&md_with_uid("old", Some(1)), &status(2));
        // Deleted and re-created: same namespace and name, a new uid, no status yet.
        let recreated = md_with_uid("new", None);
        assert_eq!(
            w.status_of(&recreated),
            None,
            "the new object must not be reconciled on the deleted one's status"
        );
        w.remember_child(&md_with_uid("old", None), "Service/m", None, "h1", Instant::now());
        assert!(
            !w.awaits_cache(&recreated, "Service/m", None, "h1", Instant::now()),
            "the deleted object's writes do not stop the new one's"
        );
    }

    #[test]
    fn deleted_objects_are_forgotten() {
        let w = Written::default();
        for uid in ["a", "b", "c"] {
            w.remember_status(&md_with_uid(uid, None), &status(1));
        }
        w.forget("a");
        assert_eq!(w.len(), 2);
        w.retain(|uid| uid == "b");
        assert_eq!(w.len(), 1, "only the live object is kept");
        assert_eq!(w.status_of(&md_with_uid("c", None)), None);
        assert!(w.status_of(&md_with_uid("b", None)).is_some());
    }

    fn status(replicas: i32) -> ModelDeploymentStatus {
        ModelDeploymentStatus {
            replicas,
            ..Default::default()
        }
    }

    #[test]
    fn a_write_the_cache_has_yet_to_show_is_not_repeated_for_a_while() {
        let w = Written::default();
        let md = md(None);
        let t0 = Instant::now();
        let later = |s: u64| t0 + Duration::from_secs(s);
        w.remember_child(&md, "Service/m", None, "h1", t0);
        assert!(
            w.awaits_cache(&md, "Service/m", None, "h1", later(1)),
            "created, not seen yet"
        );
        assert!(
            !w.awaits_cache(&md, "Service/m", None, "h2", later(1)),
            "another object is written"
        );
        assert!(
            !w.awaits_cache(&md, "Service/m", None, "h1", later(10)),
            "past the limit the cache is trusted: a child deleted at once is recreated"
        );
        assert!(!w.awaits_cache(&md, "Service/other", None, "h1", later(1)));

        w.remember_child(&md, "Deployment/m-1", Some("h1"), "h2", t0);
        assert!(
            w.awaits_cache(&md, "Deployment/m-1", Some("h1"), "h2", later(1)),
            "updated, not seen yet"
        );
        assert!(
            !w.awaits_cache(&md, "Deployment/m-1", Some("h9"), "h2", later(1)),
            "the cache shows someone else's change: write again"
        );
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
