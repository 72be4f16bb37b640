//! [`NodeAgents`]: real `modelfleet-node-agent` processes, one per fake GPU node, in simulated
//! mode, streaming to an operator's telemetry service on loopback.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use k8s_openapi::api::{
    authentication::v1::{TokenRequest, TokenRequestSpec},
    core::v1::ServiceAccount,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use modelfleet_crds::constants::TELEMETRY_TOKEN_AUDIENCE;

use crate::{
    Error, LocalCluster, Result, bin, http,
    process::{ManagedProcess, STOP_GRACE},
};

/// The node agent's package and binary.
pub const NODE_AGENT_BIN: &str = "modelfleet-node-agent";

/// The ServiceAccount whose token the agents present (the Helm chart's is named the same).
pub const AGENT_SERVICE_ACCOUNT: &str = "modelfleet-node-agent";

/// Lifetime of a requested token.
pub const TOKEN_EXPIRATION: Duration = Duration::from_secs(3600);

/// The credential the agents send as `authorization: Bearer …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentToken {
    /// A TokenRequest token (audience `modelfleet-operator`, one hour) of ServiceAccount
    /// `modelfleet-node-agent` in `namespace`, created when missing. The default, in `default`.
    ServiceAccount {
        /// Where the ServiceAccount lives.
        namespace: String,
    },
    /// The token in this file (`--token-file` as given).
    File(PathBuf),
    /// No credential (an empty token file): for tests of an unauthenticated agent.
    None,
}

impl Default for AgentToken {
    fn default() -> Self {
        Self::ServiceAccount {
            namespace: "default".into(),
        }
    }
}

/// How to run the agents.
#[derive(Debug, Clone)]
pub struct AgentsConfig {
    /// One agent per node name (`--node-name`), e.g. the shared cluster's `gpu-node-0`, `gpu-node-1`.
    pub nodes: Vec<String>,
    /// The telemetry service (`--operator-url`), on loopback: `http://127.0.0.1:<port>`.
    pub operator_url: String,
    /// Sampling and reporting interval (`--interval`, millisecond resolution). Default 1 s.
    pub interval: Duration,
    /// The credential. Default: a token of ServiceAccount `default/modelfleet-node-agent`.
    pub token: AgentToken,
    /// The agent binary; `None` looks up the built one ([`node_agent_binary`]).
    pub binary: Option<PathBuf>,
    /// More flags for every agent (e.g. `--simulated-gpus=4`).
    pub extra_args: Vec<String>,
    /// How long each agent may take to listen. Default 30 s.
    pub ready_timeout: Duration,
    /// Kill the agents when this process dies without stopping them. Default true.
    pub guarded: bool,
    /// Run the agents inside the live fleet's namespace (they scrape pod IPs and dial the
    /// operator through its relay) instead of on the host with `--scrape-loopback-only`.
    pub netns: Option<std::sync::Arc<crate::live::netns::FleetNet>>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        Self {
            nodes: Vec::new(),
            operator_url: "http://127.0.0.1:9091".into(),
            interval: Duration::from_secs(1),
            token: AgentToken::default(),
            binary: None,
            extra_args: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            guarded: true,
            netns: None,
        }
    }
}

impl AgentsConfig {
    /// Agents for `nodes` streaming to `operator_url`, everything else default.
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>, operator_url: impl Into<String>) -> Self {
        Self {
            nodes: nodes.into_iter().map(Into::into).collect(),
            operator_url: operator_url.into(),
            ..Default::default()
        }
    }
}

/// One running agent.
#[derive(Debug)]
struct NodeAgent {
    node: String,
    process: ManagedProcess,
    metrics_addr: SocketAddr,
}

/// Running node agents, stopped on [`NodeAgents::stop`] or drop. Each runs
/// `modelfleet-node-agent --gpu-backend=simulated --scrape-loopback-only
/// --metrics-addr=127.0.0.1:0 --log-format=text` with `KUBECONFIG` of the cluster and logs to
/// `<cluster dir>/modelfleet-node-agent-<set>-<node>.log`.
#[derive(Debug)]
pub struct NodeAgents {
    agents: Vec<NodeAgent>,
    netns: Option<std::sync::Arc<crate::live::netns::FleetNet>>,
    token: Option<String>,
    token_file: PathBuf,
}

/// Numbers sets of agents of this process apart (log and token file names).
static NEXT_SET: AtomicU32 = AtomicU32::new(0);

impl NodeAgents {
    /// Starts one agent per node of `config.nodes` against `cluster` and waits until each one
    /// listens (its log says so and its `/healthz` answers). Runs `config.binary`, else the
    /// built agent ([`node_agent_binary`]).
    pub async fn start(cluster: &LocalCluster, config: AgentsConfig) -> Result<Self> {
        let binary = match &config.binary {
            Some(b) => b.clone(),
            None => node_agent_binary()?,
        };
        let set = NEXT_SET.fetch_add(1, Ordering::Relaxed);
        let (token, token_file) = match &config.token {
            AgentToken::ServiceAccount { namespace } => {
                let client = cluster.client().await?;
                let token = request_agent_token(&client, namespace).await?;
                let file = cluster.dir().join(format!("{NODE_AGENT_BIN}-{set}.token"));
                write_private(&file, &token)?;
                (Some(token), file)
            }
            AgentToken::File(file) => {
                let token = std::fs::read_to_string(file)
                    .ok()
                    .map(|t| t.trim().to_string())
                    .filter(|t| !t.is_empty());
                (token, file.clone())
            }
            AgentToken::None => {
                let file = cluster.dir().join(format!("{NODE_AGENT_BIN}-{set}.no-token"));
                write_private(&file, "")?;
                (None, file)
            }
        };
        let mut started = Vec::with_capacity(config.nodes.len());
        for node in &config.nodes {
            let mut args = vec![
                format!("--node-name={node}"),
                format!("--operator-url={}", config.operator_url),
                "--gpu-backend=simulated".into(),
                format!("--interval={}ms", config.interval.as_millis().max(1)),
                "--metrics-addr=127.0.0.1:0".into(),
                format!("--token-file={}", token_file.display()),
                "--log-format=text".into(),
            ];
            if config.netns.is_none() {
                args.push("--scrape-loopback-only".into());
            }
            args.extend(config.extra_args.iter().cloned());
            let (program, args) = match &config.netns {
                Some(net) => net.nsenter(&binary, args),
                None => (binary.clone(), args),
            };
            let process = ManagedProcess::spawn_with_env(
                &format!("{NODE_AGENT_BIN}-{set}-{node}"),
                &program,
                &args,
                &[
                    ("KUBECONFIG", cluster.kubeconfig_path().as_os_str()),
                    // Plain log lines, so `listening … metrics=<addr>` can be read back.
                    ("NO_COLOR", "1".as_ref()),
                ],
                cluster.dir(),
                config.guarded,
            )?;
            started.push((node.clone(), process));
        }
        let mut agents = Self {
            agents: Vec::with_capacity(started.len()),
            netns: config.netns.clone(),
            token,
            token_file,
        };
        // All started at once; wait for each (dropping `started` on error stops the rest).
        for (node, mut process) in started {
            let metrics_addr =
                wait_listening(&mut process, config.ready_timeout, config.netns.as_deref()).await?;
            agents.agents.push(NodeAgent {
                node,
                process,
                metrics_addr,
            });
        }
        Ok(agents)
    }

    /// The nodes with an agent, in start order.
    pub fn nodes(&self) -> Vec<&str> {
        self.agents.iter().map(|a| a.node.as_str()).collect()
    }

    /// The agents' pids (without their guards), in start order.
    pub fn pids(&self) -> Vec<u32> {
        self.agents.iter().map(|a| a.process.pid()).collect()
    }

    /// Pid of the agent of `node`.
    pub fn pid(&self, node: &str) -> Option<u32> {
        self.agent(node).map(|a| a.process.pid())
    }

    /// Where the agent of `node` serves `/metrics` and `/healthz`.
    pub fn metrics_addr(&self, node: &str) -> Option<SocketAddr> {
        self.agent(node).map(|a| a.metrics_addr)
    }

    /// The agent's own `/metrics` (`modelfleet_node_*`, `DCGM_FI_*`), or None if it does not answer.
    pub async fn metrics(&self, node: &str) -> Option<String> {
        let addr = self.metrics_addr(node)?;
        if let Some(net) = &self.netns {
            let url = format!("http://{addr}/metrics");
            let answer =
                crate::live::client::request(net, "GET", &url, None, &[], Duration::from_secs(5)).await;
            return answer.ok().filter(|a| a.status == 200).map(|a| a.body);
        }
        match http::get(addr.port(), "/metrics").await {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// The last `lines` lines of the log of the agent of `node`.
    pub fn log_tail(&self, node: &str, lines: usize) -> Option<String> {
        self.agent(node).map(|a| a.process.log_tail(lines))
    }

    /// The log file of the agent of `node`.
    pub fn log_path(&self, node: &str) -> Option<&Path> {
        self.agent(node).map(|a| a.process.log_path())
    }

    /// The token the agents send (None when they send none).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The `--token-file` they were given.
    pub fn token_file(&self) -> &Path {
        &self.token_file
    }

    /// Exit status of the agent of `node` if it has exited.
    pub fn exited(&mut self, node: &str) -> Option<std::process::ExitStatus> {
        self.agents
            .iter_mut()
            .find(|a| a.node == node)
            .and_then(|a| a.process.exited())
    }

    /// Stops every agent: SIGTERM, SIGKILL after 5 s. Idempotent; `Drop` does it too.
    pub fn stop(&mut self) {
        for agent in &mut self.agents {
            agent.process.stop(STOP_GRACE);
        }
    }

    fn agent(&self, node: &str) -> Option<&NodeAgent> {
        self.agents.iter().find(|a| a.node == node)
    }
}

impl Drop for NodeAgents {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until the agent logs `listening … metrics=<addr>` and `<addr>/healthz` answers 200.
async fn wait_listening(
    process: &mut ManagedProcess,
    timeout: Duration,
    netns: Option<&crate::live::netns::FleetNet>,
) -> Result<SocketAddr> {
    let log = process.log_path().to_path_buf();
    let found = OnceLock::new();
    process
        .wait_ready(timeout, || async {
            let Some(addr) = found.get().copied().or_else(|| listening_addr(&log)) else {
                return false;
            };
            let _ = found.set(addr);
            match netns {
                Some(net) => {
                    crate::live::runtime::probe::http_status(net, addr, "/healthz", Duration::from_secs(1))
                        .await
                        .is_ok_and(|s| s == 200)
                }
                None => matches!(http::get(addr.port(), "/healthz").await, Some((200, _))),
            }
        })
        .await?;
    found
        .get()
        .copied()
        .ok_or_else(|| process.start_error("no metrics address in its log"))
}

/// The `metrics=` address of the agent's `listening` log line.
fn listening_addr(log: &Path) -> Option<SocketAddr> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().filter(|l| l.contains("listening")).find_map(|l| {
        l.split_whitespace()
            .find_map(|field| field.strip_prefix("metrics="))
            .and_then(|addr| addr.parse().ok())
    })
}

/// The built `modelfleet-node-agent` ([`bin::path`]).
pub fn node_agent_binary() -> Result<PathBuf> {
    bin::path(NODE_AGENT_BIN)
}

/// Creates ServiceAccount `modelfleet-node-agent` in `namespace` if missing and returns a fresh
/// token of it through the TokenRequest API: audience `modelfleet-operator`, one hour.
pub async fn request_agent_token(client: &Client, namespace: &str) -> Result<String> {
    request_telemetry_token(client, namespace, AGENT_SERVICE_ACCOUNT).await
}

/// Creates ServiceAccount `account` in `namespace` if missing and returns a fresh token of it
/// for the operator's telemetry hub (audience `modelfleet-operator`, one hour): what a node agent
/// or a router presents.
pub async fn request_telemetry_token(client: &Client, namespace: &str, account: &str) -> Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let object = ServiceAccount {
        metadata: ObjectMeta {
            name: Some(account.into()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/name".to_string(),
                account.to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    };
    match accounts.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        Err(e) => return Err(e.into()),
    }
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: Some(vec![TELEMETRY_TOKEN_AUDIENCE.into()]),
            expiration_seconds: Some(i64::try_from(TOKEN_EXPIRATION.as_secs()).unwrap_or(3600)),
            ..Default::default()
        }),
        ..Default::default()
    };
    let answer = accounts
        .create_token_request(account, &PostParams::default(), &request)
        .await?;
    answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| Error::Io {
            what: format!("request a token of {namespace}/{account}"),
            source: std::io::Error::other("the TokenRequest came back without a token"),
        })
}

/// Writes `text` to `path`, readable by this user only, replacing it atomically.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(Error::io(format!("create {}", tmp.display())))?;
    file.write_all(text.as_bytes())
        .map_err(Error::io(format!("write {}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(Error::io(format!("rename {} into place", tmp.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_address_is_read_from_the_listening_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("agent.log");
        std::fs::write(
            &log,
            "2026-01-01T00:00:00Z  WARN modelfleet_node_agent::stream: telemetry stream down url=http://127.0.0.1:1\n\
             2026-01-01T00:00:00Z  INFO modelfleet_node_agent: listening node=gpu-node-0 metrics=127.0.0.1:40123\n",
        )
        .unwrap();
        assert_eq!(listening_addr(&log), Some("127.0.0.1:40123".parse().unwrap()));
        std::fs::write(&log, "starting\n").unwrap();
        assert_eq!(listening_addr(&log), None);
    }

    #[test]
    fn the_default_token_is_a_service_account_token_in_default() {
        let config = AgentsConfig::new(["gpu-node-0"], "http://127.0.0.1:1");
        assert_eq!(
            config.token,
            AgentToken::ServiceAccount {
                namespace: "default".into()
            }
        );
        assert_eq!(config.interval, Duration::from_secs(1));
    }
}
