//! Why pods are not ready, read from pod status: missing GPUs, image pulls, crash loops.

use k8s_openapi::api::core::v1::Pod;
use modelfleet_crds::constants::{GPU_RESOURCE, labels};

/// A problem that makes the ModelDeployment Degraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Condition reason.
    pub reason: &'static str,
    /// What the user should know.
    pub message: String,
}

/// The scheduler's message of a pod it could not place.
fn unschedulable_message(pod: &Pod) -> Option<&str> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
        })?
        .message
        .as_deref()
}

/// Pods (of any revision, not being deleted) that the scheduler cannot place for lack of
/// `nvidia.com/gpu`: the autoscaler's sign that the cluster is out of GPUs.
pub fn pods_short_of_gpu(pods: &[Pod]) -> usize {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(unschedulable_message)
        .filter(|m| m.contains(GPU_RESOURCE))
        .count()
}

/// The most important problem among the pods of `revision`, if any.
pub fn diagnose(pods: &[Pod], revision: &str, gpus_per_pod: i64) -> Option<Problem> {
    let pods: Vec<&Pod> = pods
        .iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::REVISION))
                .map(String::as_str)
                == Some(revision)
        })
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let unschedulable: Vec<String> = pods
        .iter()
        .filter_map(|p| unschedulable_message(p))
        .map(str::to_owned)
        .collect();
    let short_of_gpus = unschedulable.iter().filter(|m| m.contains(GPU_RESOURCE)).count();
    if short_of_gpus > 0 {
        let missing = short_of_gpus as i64 * gpus_per_pod;
        return Some(Problem {
            reason: "InsufficientGPU",
            message: format!(
                "{short_of_gpus} of {} replicas cannot be scheduled: the cluster lacks {missing} nvidia.com/gpu \
                 ({gpus_per_pod} per replica) on nodes matching the GPU requirements; scheduler: {}",
                pods.len(),
                unschedulable[0]
            ),
        });
    }
    if let Some(message) = unschedulable.first() {
        return Some(Problem {
            reason: "Unschedulable",
            message: message.clone(),
        });
    }
    const WAITING: [(&str, &str); 5] = [
        ("ErrImagePull", "ImagePullFailed"),
        ("ImagePullBackOff", "ImagePullFailed"),
        ("InvalidImageName", "ImagePullFailed"),
        ("CrashLoopBackOff", "CrashLoop"),
        ("CreateContainerConfigError", "ContainerConfigError"),
    ];
    for pod in &pods {
        let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
        for cs in statuses.into_iter().flatten() {
            let Some(waiting) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
                continue;
            };
            let Some(reason) = waiting.reason.as_deref() else {
                continue;
            };
            if let Some((_, ours)) = WAITING.iter().find(|(theirs, _)| *theirs == reason) {
                let pod_name = pod.metadata.name.clone().unwrap_or_default();
                let detail = waiting.message.clone().unwrap_or_default();
                return Some(Problem {
                    reason: ours,
                    message: format!("pod {pod_name}: {reason}: {detail}"),
                });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).expect("pod fixture")
    }

    const UNSCHEDULABLE: &str = r#"
metadata: {name: p1, labels: {modelfleet.dev/revision: r1}}
status:
  phase: Pending
  conditions:
    - {type: PodScheduled, status: "False", reason: Unschedulable,
       message: "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}
"#;

    #[test]
    fn unschedulable_for_gpus_counts_the_missing_gpus() {
        let pods = [
            pod(UNSCHEDULABLE),
            pod(&UNSCHEDULABLE.replace("p1", "p2")),
            pod("metadata: {name: ok, labels: {modelfleet.dev/revision: r1}}"),
        ];
        let p = diagnose(&pods, "r1", 4).expect("a problem");
        assert_eq!(p.reason, "InsufficientGPU");
        assert!(
            p.message.starts_with(
                "2 of 3 replicas cannot be scheduled: the cluster lacks 8 nvidia.com/gpu (4 per replica)"
            ),
            "{}",
            p.message
        );
        assert!(
            p.message.contains("3 Insufficient nvidia.com/gpu"),
            "{}",
            p.message
        );
        assert_eq!(diagnose(&pods, "other-revision", 4), None);
    }

    #[test]
    fn image_pull_and_crash_loops_are_named() {
        let waiting = |reason: &str| {
            pod(&format!(
                "metadata: {{name: p, labels: {{modelfleet.dev/revision: r1}}}}\nstatus:\n  containerStatuses:\n    - {{name: server, image: x, imageID: '', ready: false, restartCount: 3, state: {{waiting: {{reason: {reason}, message: boom}}}}}}\n"
            ))
        };
        assert_eq!(
            diagnose(&[waiting("ImagePullBackOff")], "r1", 1).map(|p| p.reason),
            Some("ImagePullFailed")
        );
        let crash = diagnose(&[waiting("CrashLoopBackOff")], "r1", 1).expect("a problem");
        assert_eq!(
            (crash.reason, crash.message.as_str()),
            ("CrashLoop", "pod p: CrashLoopBackOff: boom")
        );
        assert_eq!(diagnose(&[waiting("ContainerCreating")], "r1", 1), None);
    }
}
