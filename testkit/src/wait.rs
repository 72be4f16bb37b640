//! Waiting on cluster state through watches, never fixed sleeps.

use std::{fmt::Debug, time::Duration};

use kube::{Api, Resource, runtime::wait::await_condition};
use serde::{Serialize, de::DeserializeOwned};

use crate::{Error, Result};

/// Waits until the object `name` satisfies `condition` (a watch, so it returns as soon as it
/// holds). On timeout the error carries the object's last state as YAML, so a failing test shows
/// what the object looked like.
pub async fn wait_for<K, F>(
    api: &Api<K>,
    name: &str,
    timeout: Duration,
    what: &str,
    condition: F,
) -> Result<K>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    F: Fn(&K) -> bool,
{
    let matches = |obj: Option<&K>| obj.is_some_and(&condition);
    match tokio::time::timeout(timeout, await_condition(api.clone(), name, matches)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => Err(Error::Timeout {
            what: format!("{what} of {name}"),
            timeout,
            last_state: "(deleted)".into(),
        }),
        Ok(Err(e)) => Err(Error::Timeout {
            what: format!("{what} of {name}"),
            timeout,
            last_state: format!("(watch failed: {e})"),
        }),
        Err(_) => {
            let last_state = match api.get_opt(name).await {
                Ok(Some(obj)) => {
                    serde_yaml::to_string(&obj).unwrap_or_else(|e| format!("(unprintable: {e})"))
                }
                Ok(None) => "(not found)".into(),
                Err(e) => format!("(cannot read it: {e})"),
            };
            Err(Error::Timeout {
                what: format!("{what} of {name}"),
                timeout,
                last_state,
            })
        }
    }
}

/// Polls an async check until it returns `Some`, for state that is not a single object (lists,
/// events). Checks every 200 ms; a check returns `Err(state)` to say what it saw, which the
/// timeout error reports.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, String>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "(condition not met)".to_string(),
            Err(state) => state,
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                timeout,
                last_state: last,
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the pod's `Ready` condition is `True`.
pub fn pod_is_ready(pod: &k8s_openapi::api::core::v1::Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
