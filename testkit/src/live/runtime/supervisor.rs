//! One container of a live pod, as an actor: starts its runs, restarts them with kubelet's
//! back-off (10 s doubling to 5 min, `CrashLoopBackOff`), runs its startup, readiness and
//! liveness probes, and on stop runs the preStop hook, sends SIGTERM and kills after the grace
//! period. It publishes its state on a watch channel; the pod task turns that into pod status.

use std::{path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, LifecycleHandler, Probe},
    jiff::Timestamp,
};
use tokio::sync::{mpsc, watch};

use super::{
    container::{ContainerProcess, LaunchPlan},
    probe::{self, ProbeCounter, ProbeTarget},
};
use crate::live::netns::FleetNet;

/// A container's state as kubelet reports it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// Not running: reason and message.
    Waiting(String, String),
    /// Running since.
    Running(Timestamp),
    /// Exited.
    Terminated(Terminated),
}

/// An exit.
#[derive(Debug, Clone, PartialEq)]
pub struct Terminated {
    /// Exit code (128 + signal).
    pub exit_code: i32,
    /// `Completed`, `Error`.
    pub reason: String,
    /// Start of the run.
    pub started_at: Timestamp,
    /// Its end.
    pub finished_at: Timestamp,
}

/// What the pod task sees of a container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    /// Container name.
    pub name: String,
    /// Its image.
    pub image: String,
    /// Current state.
    pub state: RunState,
    /// The previous run's exit.
    pub last: Option<Terminated>,
    /// Readiness verdict.
    pub ready: bool,
    /// Startup probe passed (or none).
    pub started: bool,
    /// Restarts so far.
    pub restart_count: i32,
    /// Host pid of the current run's PID 1.
    pub init_pid: Option<u32>,
    /// An event to publish (reason, message), e.g. a failed probe.
    pub event: Option<(String, String)>,
}

/// Static inputs of a supervisor.
#[derive(Debug, Clone)]
pub struct Supervised {
    /// The container spec.
    pub container: Container,
    /// How to launch a run; `Err` is a waiting reason and message (e.g. `ErrImageNotLocal`).
    pub plan: Result<LaunchPlan, (String, String)>,
    /// `Always`, `OnFailure`, `Never`.
    pub restart_policy: String,
    /// The namespace and the pod IP (probes).
    pub net: Arc<FleetNet>,
    /// Pod IP.
    pub pod_ip: String,
    /// Netns path for launches.
    pub netns: PathBuf,
    /// Log directory of this container: one file per run, `<restart>.log`.
    pub log_dir: PathBuf,
    /// The pod's `terminationGracePeriodSeconds` (kubelet's default 30 s when unset): the grace
    /// of a kill after a failed startup or liveness probe without a grace of its own.
    pub pod_grace: Duration,
}

/// A request to stop, with the grace period left.
#[derive(Debug)]
pub struct Stop(pub Duration);

const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// A run this long resets the back-off.
const BACKOFF_RESET: Duration = Duration::from_secs(600);

/// The back-off before restart `n` (0: the first restart, immediate).
pub fn backoff(restarts: i32) -> Duration {
    if restarts <= 0 {
        return Duration::ZERO;
    }
    let doublings = u32::try_from(restarts - 1).unwrap_or(0).min(16);
    (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
}

/// Runs the container until stopped; the final view is published before it returns.
pub async fn supervise(
    input: Supervised,
    view: watch::Sender<ContainerView>,
    mut stop: mpsc::Receiver<Stop>,
) {
    let plan = match &input.plan {
        Ok(plan) => plan.clone(),
        Err((reason, message)) => {
            view.send_modify(|v| v.state = RunState::Waiting(reason.clone(), message.clone()));
            let _ = stop.recv().await;
            return;
        }
    };
    let mut crashes_in_a_row = 0;
    loop {
        let restart = view.borrow().restart_count;
        let log = input.log_dir.join(format!("{restart}.log"));
        let mut process = match ContainerProcess::start(&plan, &input.netns, &log) {
            Ok(p) => p,
            Err(e) => {
                view.send_modify(|v| v.state = RunState::Waiting("RunContainerError".into(), e.to_string()));
                let _ = stop.recv().await;
                return;
            }
        };
        let started_at = Timestamp::now();
        view.send_modify(|v| {
            v.state = RunState::Running(started_at);
            v.ready = false;
            v.started = input.container.startup_probe.is_none();
            v.init_pid = None;
        });
        let outcome = run_once(&input, &plan, &mut process, &view, &mut stop).await;
        let finished_at = Timestamp::now();
        let (exit_code, stopping) = match outcome {
            Outcome::Exited(code) => (code, None),
            Outcome::Unhealthy(grace) => (process.stop(grace).await, None),
            Outcome::Stop(grace) => {
                pre_stop(&input, &view).await;
                (process.stop(grace).await, Some(()))
            }
        };
        let ran = finished_at.duration_since(started_at).unsigned_abs();
        let terminated = Terminated {
            exit_code,
            reason: if exit_code == 0 {
                "Completed".into()
            } else {
                "Error".into()
            },
            started_at,
            finished_at,
        };
        view.send_modify(|v| {
            v.state = RunState::Terminated(terminated.clone());
            v.ready = false;
            v.init_pid = None;
        });
        if stopping.is_some() || !should_restart(&input.restart_policy, exit_code) {
            if stopping.is_none() {
                let _ = stop.recv().await;
            }
            return;
        }
        crashes_in_a_row = if ran >= BACKOFF_RESET {
            0
        } else {
            crashes_in_a_row + 1
        };
        let wait = backoff(crashes_in_a_row - 1);
        let name = input.container.name.clone();
        view.send_modify(|v| {
            v.last = Some(terminated.clone());
            v.restart_count += 1;
            if !wait.is_zero() {
                v.state = RunState::Waiting(
                    "CrashLoopBackOff".into(),
                    format!("back-off {}s restarting failed container={name}", wait.as_secs()),
                );
            }
        });
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.recv() => return,
        }
    }
}

fn should_restart(policy: &str, exit_code: i32) -> bool {
    match policy {
        "Never" => false,
        "OnFailure" => exit_code != 0,
        _ => true,
    }
}

enum Outcome {
    Exited(i32),
    Unhealthy(Duration),
    Stop(Duration),
}

struct ProbeLoop<'a> {
    probe: Option<&'a Probe>,
    next: tokio::time::Instant,
    counter: ProbeCounter,
}

impl<'a> ProbeLoop<'a> {
    fn new(probe: Option<&'a Probe>) -> Self {
        let delay = probe.map(|p| probe::timing(p).1).unwrap_or_default();
        Self {
            probe,
            next: tokio::time::Instant::now() + delay,
            counter: ProbeCounter::default(),
        }
    }

    fn due(&self) -> Option<&'a Probe> {
        self.probe.filter(|_| tokio::time::Instant::now() >= self.next)
    }

    async fn run(&mut self, probe: &Probe, target: &ProbeTarget) -> (Option<bool>, Option<String>) {
        self.next = tokio::time::Instant::now() + probe::timing(probe).0;
        let result = probe::run(probe, target).await;
        let failure = result.as_ref().err().cloned();
        (self.counter.record(probe, result.is_ok()), failure)
    }
}

async fn run_once(
    input: &Supervised,
    plan: &LaunchPlan,
    process: &mut ContainerProcess,
    view: &watch::Sender<ContainerView>,
    stop: &mut mpsc::Receiver<Stop>,
) -> Outcome {
    let (c, pod_grace) = (&input.container, input.pod_grace);
    let mut startup = ProbeLoop::new(c.startup_probe.as_ref());
    let mut readiness = ProbeLoop::new(c.readiness_probe.as_ref());
    let mut liveness = ProbeLoop::new(c.liveness_probe.as_ref());
    let no_readiness_probe = c.readiness_probe.is_none();
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            request = stop.recv() => return Outcome::Stop(request.map(|s| s.0).unwrap_or_default()),
            _ = ticker.tick() => {}
        }
        if let Some(code) = process.exit_code() {
            return Outcome::Exited(code);
        }
        let init_pid = process.init_pid();
        if view.borrow().init_pid != init_pid {
            view.send_modify(|v| v.init_pid = init_pid);
        }
        let target = ProbeTarget {
            net: input.net.clone(),
            pod_ip: input.pod_ip.clone(),
            container: c.clone(),
            init_pid,
            user: plan.user,
            group: plan.group,
        };
        let started = view.borrow().started;
        if !started {
            if let Some(probe) = startup.due() {
                let (verdict, failure) = startup.run(probe, &target).await;
                if verdict == Some(true) {
                    view.send_modify(|v| v.started = true);
                } else if verdict == Some(false) {
                    unhealthy(view, "Startup", failure);
                    return Outcome::Unhealthy(grace(c.startup_probe.as_ref(), pod_grace));
                }
            }
            continue;
        }
        if no_readiness_probe && !view.borrow().ready {
            view.send_modify(|v| v.ready = true);
        }
        if let Some(probe) = readiness.due() {
            let (verdict, failure) = readiness.run(probe, &target).await;
            if let Some(ready) = verdict {
                if !ready {
                    unhealthy(view, "Readiness", failure);
                }
                view.send_modify(|v| v.ready = ready);
            }
        }
        if let Some(probe) = liveness.due() {
            let (verdict, failure) = liveness.run(probe, &target).await;
            if verdict == Some(false) {
                unhealthy(view, "Liveness", failure);
                return Outcome::Unhealthy(grace(c.liveness_probe.as_ref(), pod_grace));
            }
        }
    }
}

/// The grace of a probe kill: the probe's own `terminationGracePeriodSeconds`, else the pod's.
fn grace(probe: Option<&Probe>, pod_grace: Duration) -> Duration {
    probe
        .and_then(|p| p.termination_grace_period_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(pod_grace, Duration::from_secs)
}

fn unhealthy(view: &watch::Sender<ContainerView>, kind: &str, failure: Option<String>) {
    let message = format!("{kind} probe failed: {}", failure.unwrap_or_default());
    view.send_modify(|v| v.event = Some(("Unhealthy".into(), message)));
}

async fn pre_stop(input: &Supervised, view: &watch::Sender<ContainerView>) {
    let Some(handler) = input
        .container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    else {
        return;
    };
    let init_pid = view.borrow().init_pid;
    if let Err(message) = run_handler(handler, input, init_pid).await {
        view.send_modify(|v| v.event = Some(("FailedPreStopHook".into(), message)));
    }
}

async fn run_handler(
    handler: &LifecycleHandler,
    input: &Supervised,
    init_pid: Option<u32>,
) -> Result<(), String> {
    if let Some(sleep) = &handler.sleep {
        tokio::time::sleep(Duration::from_secs(u64::try_from(sleep.seconds).unwrap_or(0))).await;
        return Ok(());
    }
    let probe = Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        timeout_seconds: Some(30),
        ..Default::default()
    };
    let (user, group) = input
        .plan
        .as_ref()
        .map(|p| (p.user, p.group))
        .unwrap_or((None, None));
    let target = ProbeTarget {
        net: input.net.clone(),
        pod_ip: input.pod_ip.clone(),
        container: input.container.clone(),
        init_pid,
        user,
        group,
    };
    probe::run(&probe, &target).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_ten_seconds_to_five_minutes() {
        let secs: Vec<u64> = (0..8).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 300, 300]);
    }

    #[test]
    fn a_probe_kill_takes_the_probes_grace_else_the_pods() {
        let pod = Duration::from_secs(60);
        assert_eq!(grace(None, pod), pod);
        let own = Probe {
            termination_grace_period_seconds: Some(5),
            ..Default::default()
        };
        assert_eq!(grace(Some(&own), pod), Duration::from_secs(5));
        assert_eq!(grace(Some(&Probe::default()), pod), pod);
    }
}
