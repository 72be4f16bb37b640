//! Probes as kubelet runs them: httpGet and tcpSocket dialled inside the fleet namespace, exec
//! inside the container; counted against `successThreshold`/`failureThreshold`.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use k8s_openapi::{
    api::core::v1::{Container, Probe},
    apimachinery::pkg::util::intstr::IntOrString,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::super::netns::FleetNet;

/// Consecutive results of one probe and the verdict they give.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeCounter {
    successes: i32,
    failures: i32,
    /// The current verdict; `None` until a threshold is first reached.
    pub verdict: Option<bool>,
}

impl ProbeCounter {
    /// Records one result; returns the verdict when it changes.
    pub fn record(&mut self, probe: &Probe, ok: bool) -> Option<bool> {
        let success_threshold = probe.success_threshold.unwrap_or(1).max(1);
        let failure_threshold = probe.failure_threshold.unwrap_or(3).max(1);
        if ok {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let next = if self.successes >= success_threshold {
            Some(true)
        } else if self.failures >= failure_threshold {
            Some(false)
        } else {
            self.verdict
        };
        let changed = next != self.verdict;
        self.verdict = next;
        changed.then_some(next).flatten()
    }
}

/// `periodSeconds` and `initialDelaySeconds` of a probe.
pub fn timing(probe: &Probe) -> (Duration, Duration) {
    let secs =
        |v: Option<i32>, d: i32| Duration::from_secs(u64::try_from(v.unwrap_or(d).max(0)).unwrap_or(0));
    (
        secs(probe.period_seconds, 10).max(Duration::from_secs(1)),
        secs(probe.initial_delay_seconds, 0),
    )
}

/// What a probe needs to reach the container.
#[derive(Debug, Clone)]
pub struct ProbeTarget {
    /// The fleet namespace.
    pub net: Arc<FleetNet>,
    /// The pod's IP.
    pub pod_ip: String,
    /// The container (for named ports).
    pub container: Container,
    /// Host pid of the container's PID 1 (exec probes).
    pub init_pid: Option<u32>,
    /// The container's user and group (exec probes).
    pub user: Option<i64>,
    /// Group.
    pub group: Option<i64>,
}

/// Resolves a probe port (number or container port name).
pub fn port_of(container: &Container, port: &IntOrString) -> Result<u16, String> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("port {p} is out of range")),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("container has no port named {name:?}")),
    }
}

/// Runs a probe once; `Err` carries the failure message (shown in the Unhealthy event).
pub async fn run(probe: &Probe, target: &ProbeTarget) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::try_from(probe.timeout_seconds.unwrap_or(1).max(1)).unwrap_or(1));
    let attempt = async {
        if let Some(http) = &probe.http_get {
            let port = port_of(&target.container, &http.port)?;
            let host = http.host.clone().unwrap_or_else(|| target.pod_ip.clone());
            let addr = socket(&host, port)?;
            let path = http.path.clone().unwrap_or_else(|| "/".into());
            let status = http_status(&target.net, addr, &path, timeout).await?;
            return if (200..400).contains(&status) {
                Ok(())
            } else {
                Err(format!("HTTP probe failed with statuscode: {status}"))
            };
        }
        if let Some(tcp) = &probe.tcp_socket {
            let port = port_of(&target.container, &tcp.port)?;
            let addr = socket(tcp.host.as_deref().unwrap_or(&target.pod_ip), port)?;
            return target
                .net
                .connect(addr, timeout)
                .await
                .map(drop)
                .map_err(|e| e.to_string());
        }
        if let Some(exec) = &probe.exec {
            let init = target.init_pid.ok_or("the container is not running")?;
            let command = exec.command.clone().unwrap_or_default();
            let status = super::container::exec_command(init, target.user, target.group, &command)
                .status()
                .await
                .map_err(|e| format!("exec {command:?}: {e}"))?;
            return if status.success() {
                Ok(())
            } else {
                Err(format!("command {command:?} exited with {status}"))
            };
        }
        if let Some(grpc) = &probe.grpc {
            let port = u16::try_from(grpc.port).map_err(|_| "grpc port out of range".to_string())?;
            return super::grpc_health::check(
                &target.net,
                socket(&target.pod_ip, port)?,
                grpc.service.clone(),
                timeout,
            )
            .await;
        }
        Err("probe has no handler".to_string())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| Err(format!("probe timed out after {timeout:?}")))
}

fn socket(host: &str, port: u16) -> Result<SocketAddr, String> {
    let ip: std::net::IpAddr = host
        .parse()
        .map_err(|_| format!("probe host {host:?} is not an IP"))?;
    Ok(SocketAddr::new(ip, port))
}

/// `GET path` over a fresh connection in the namespace; the status code.
pub async fn http_status(
    net: &FleetNet,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<u16, String> {
    let mut stream = net.connect(addr, timeout).await.map_err(|e| e.to_string())?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-probe/1.36\r\nConnection: close\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = vec![0u8; 64];
    let n = stream.read(&mut head).await.map_err(|e| e.to_string())?;
    String::from_utf8_lossy(&head[..n])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| "no HTTP status line".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_the_verdict() {
        let probe = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            ..Default::default()
        };
        let mut c = ProbeCounter::default();
        assert_eq!(c.record(&probe, true), Some(true));
        assert_eq!(
            c.record(&probe, false),
            None,
            "one failure is under the threshold"
        );
        assert_eq!(c.record(&probe, false), Some(false));
        assert_eq!(c.record(&probe, false), None, "no change");
        assert_eq!(c.record(&probe, true), Some(true));
    }
}
