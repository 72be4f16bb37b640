//! Consecutive reconcile failures per ModelDeployment, for the retry backoff.
//!
//! Keyed by uid and evicted with the object, like the reconcile memory.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

/// Consecutive failures per uid; cheap to clone.
#[derive(Debug, Default, Clone)]
pub struct Failures {
    inner: Arc<Mutex<HashMap<String, u32>>>,
}

impl Failures {
    /// Records one more failure of `uid`; returns how many in a row.
    pub fn fail(&self, uid: &str) -> u32 {
        self.inner.lock().map_or(1, |mut m| {
            let n = m.entry(uid.to_string()).or_default();
            *n = n.saturating_add(1);
            *n
        })
    }

    /// A reconcile of `uid` succeeded: the next failure starts the backoff afresh.
    pub fn succeeded(&self, uid: &str) {
        if let Ok(mut m) = self.inner.lock() {
            m.remove(uid);
        }
    }

    /// Keeps only the objects for which `live` holds.
    pub fn retain(&self, live: impl Fn(&str) -> bool) {
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|uid, _| live(uid));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_count_in_a_row_until_a_success() {
        let f = Failures::default();
        assert_eq!([f.fail("a"), f.fail("a"), f.fail("b")], [1, 2, 1]);
        f.succeeded("a");
        assert_eq!(f.fail("a"), 1);
        f.retain(|uid| uid == "a");
        assert_eq!(f.fail("b"), 1, "evicted");
    }
}
