//! Why pods are not ready, read from pod status: missing GPUs, image pulls, crash loops.

use k8s_openapi::api::core::v1::Pod;
use modelfleet_crds::constants::labels;

/// A problem that makes the ModelDeployment Degraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Condition reason.
    pub reason: &'static str,
    /// What the user should know.
    pub message: String,
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
        .filter_map(|p| {
            p.status.as_ref()?.conditions.as_ref()?.iter().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            })
        })
        .filter_map(|c| c.message.clone())
        .collect();
    let short_of_gpus = unschedulable
        .iter()
        .filter(|m| m.contains("nvidia.com/gpu"))
        .count();
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
