//! Pod status from the containers' views, as kubelet writes it: phase, conditions (Ready only
//! from readiness), pod IP, container states with reasons, restart counts.

use k8s_openapi::{
    api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
        ContainerStatus, HostIP, PodCondition, PodIP, PodStatus,
    },
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::Timestamp,
};

use super::supervisor::{ContainerView, RunState, Terminated};

/// What the pod task knows besides its containers.
#[derive(Debug, Clone)]
pub struct PodFacts {
    /// Pod IP (empty until the sandbox exists).
    pub pod_ip: String,
    /// When the runtime took the pod.
    pub start_time: Timestamp,
    /// `restartPolicy`.
    pub restart_policy: String,
    /// A pod-level problem (volumes): reason and message for every waiting container.
    pub problem: Option<(String, String)>,
}

fn terminated(t: &Terminated) -> ContainerStateTerminated {
    ContainerStateTerminated {
        exit_code: t.exit_code,
        reason: Some(t.reason.clone()),
        started_at: Some(Time(t.started_at)),
        finished_at: Some(Time(t.finished_at)),
        ..Default::default()
    }
}

fn state(view: &ContainerView) -> ContainerState {
    match &view.state {
        RunState::Waiting(reason, message) => ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.clone()),
                message: (!message.is_empty()).then(|| message.clone()),
            }),
            ..Default::default()
        },
        RunState::Running(at) => ContainerState {
            running: Some(ContainerStateRunning {
                started_at: Some(Time(*at)),
            }),
            ..Default::default()
        },
        RunState::Terminated(t) => ContainerState {
            terminated: Some(terminated(t)),
            ..Default::default()
        },
    }
}

/// The phase: Pending until a container runs; Succeeded/Failed once all have exited for good.
pub fn phase(views: &[ContainerView], restart_policy: &str) -> &'static str {
    let running = views.iter().any(|v| matches!(v.state, RunState::Running(_)));
    let exits: Vec<i32> = views
        .iter()
        .filter_map(|v| match &v.state {
            RunState::Terminated(t) => Some(t.exit_code),
            _ => None,
        })
        .collect();
    let all_exited = !views.is_empty() && exits.len() == views.len();
    match restart_policy {
        "Never" | "OnFailure" if all_exited && exits.iter().all(|c| *c == 0) => "Succeeded",
        "Never" if all_exited => "Failed",
        _ if running || views.iter().any(|v| v.restart_count > 0) => "Running",
        _ => "Pending",
    }
}

/// The pod's status.
pub fn pod_status(facts: &PodFacts, views: &[ContainerView], now: Timestamp) -> PodStatus {
    let ready = !views.is_empty() && views.iter().all(|v| v.ready);
    let condition = |type_: &str, ok: bool, reason: Option<&str>| PodCondition {
        type_: type_.into(),
        status: if ok { "True" } else { "False" }.into(),
        reason: reason.map(str::to_string),
        last_transition_time: Some(Time(now)),
        ..Default::default()
    };
    let not_ready = (!ready).then_some("ContainersNotReady");
    let statuses = views
        .iter()
        .map(|v| {
            let mut s = state(v);
            if let (Some((reason, message)), None) = (&facts.problem, &s.running) {
                s = ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some(reason.clone()),
                        message: Some(message.clone()),
                    }),
                    ..Default::default()
                };
            }
            ContainerStatus {
                name: v.name.clone(),
                image: v.image.clone(),
                image_id: format!("modelfleet-live://{}", v.image),
                container_id: v.init_pid.map(|p| format!("modelfleet-live://{p}")),
                ready: v.ready,
                started: Some(v.started && matches!(v.state, RunState::Running(_))),
                restart_count: v.restart_count,
                state: Some(s),
                last_state: v.last.as_ref().map(|t| ContainerState {
                    terminated: Some(terminated(t)),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    let has_ip = !facts.pod_ip.is_empty();
    PodStatus {
        phase: Some(phase(views, &facts.restart_policy).into()),
        conditions: Some(vec![
            condition("PodReadyToStartContainers", has_ip, None),
            condition("Initialized", true, None),
            condition("ContainersReady", ready, not_ready),
            condition("Ready", ready, not_ready),
            condition("PodScheduled", true, None),
        ]),
        host_ip: Some("127.0.0.1".into()),
        host_ips: Some(vec![HostIP {
            ip: "127.0.0.1".into(),
        }]),
        pod_ip: has_ip.then(|| facts.pod_ip.clone()),
        pod_ips: has_ip.then(|| {
            vec![PodIP {
                ip: facts.pod_ip.clone(),
            }]
        }),
        start_time: Some(Time(facts.start_time)),
        container_statuses: Some(statuses),
        // qosClass is set by the API server at creation and immutable: a merge patch without it
        // keeps it, one with another class is refused (and the whole status with it).
        qos_class: None,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(state: RunState, ready: bool, restarts: i32) -> ContainerView {
        ContainerView {
            name: "server".into(),
            image: "modelfleet-server".into(),
            state,
            last: None,
            ready,
            started: true,
            restart_count: restarts,
            init_pid: Some(7),
            event: None,
        }
    }

    #[test]
    fn ready_comes_only_from_the_containers_readiness() {
        let facts = PodFacts {
            pod_ip: "10.246.0.2".into(),
            start_time: Timestamp::UNIX_EPOCH,
            restart_policy: "Always".into(),
            problem: None,
        };
        let running = view(RunState::Running(Timestamp::UNIX_EPOCH), false, 0);
        let s = pod_status(&facts, std::slice::from_ref(&running), Timestamp::UNIX_EPOCH);
        assert_eq!(s.phase.as_deref(), Some("Running"));
        // A BestEffort pod refused every status carrying "Burstable" (qosClass is immutable).
        assert_eq!(s.qos_class, None, "qosClass is the API server's");
        let ready = |s: &PodStatus| {
            s.conditions
                .as_ref()
                .unwrap()
                .iter()
                .find(|c| c.type_ == "Ready")
                .unwrap()
                .status
                .clone()
        };
        assert_eq!(ready(&s), "False");
        let s = pod_status(
            &facts,
            &[ContainerView {
                ready: true,
                ..running
            }],
            Timestamp::UNIX_EPOCH,
        );
        assert_eq!(ready(&s), "True");
        assert_eq!(s.pod_ip.as_deref(), Some("10.246.0.2"));
    }

    #[test]
    fn a_crash_loop_is_running_with_a_waiting_reason() {
        let waiting = view(
            RunState::Waiting("CrashLoopBackOff".into(), "back-off 10s".into()),
            false,
            2,
        );
        assert_eq!(phase(std::slice::from_ref(&waiting), "Always"), "Running");
        let done = view(
            RunState::Terminated(Terminated {
                exit_code: 1,
                reason: "Error".into(),
                started_at: Timestamp::UNIX_EPOCH,
                finished_at: Timestamp::UNIX_EPOCH,
            }),
            false,
            0,
        );
        assert_eq!(phase(&[done], "Never"), "Failed");
    }
}
