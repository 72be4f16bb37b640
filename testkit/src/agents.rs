//! Simulated node agents and load for the local cluster, where no container runs.
//!
//! - [`LoadSimulator`] serves modelfleet-server `/metrics` on loopback for every server pod
//!   (label `modelfleet.dev/deployment`) and points the pod's `modelfleet.dev/scrape-address`
//!   annotation at it; a test sets each pod's [`PodLoad`] (queue, running requests, request and
//!   error rates, latency, busy ratio, batch size, shadow comparisons) per ModelDeployment or per
//!   pod, and counters grow with elapsed time × rate.
//! - [`NodeAgents`] runs the real `modelfleet-node-agent`, one process per fake GPU node, with
//!   simulated GPUs and `--scrape-loopback-only`, streaming NodeReports to a telemetry service on
//!   127.0.0.1 with a ServiceAccount token (or none).
//!
//! ```no_run
//! # async fn demo(cluster: &modelfleet_testkit::LocalCluster, hub_url: String) -> modelfleet_testkit::Result<()> {
//! use modelfleet_testkit::agents::{AgentsConfig, LoadSimulator, NodeAgents, PodLoad};
//! let sim = LoadSimulator::start(cluster.client().await?, Some("my-ns".into())).await?;
//! sim.set_deployment_load("my-ns", "minilm", PodLoad { queued: 12.0, request_rate: 50.0, ..Default::default() });
//! let agents = NodeAgents::start(cluster, AgentsConfig::new(["gpu-node-0", "gpu-node-1"], hub_url)).await?;
//! # Ok(()) }
//! ```

mod annotated_load;
mod load;
mod node_agents;
mod simulator;

pub use annotated_load::{SIMULATED_LOAD_ANNOTATION, follow_annotations, parse_load};
pub use load::{BATCH_BUCKETS, DURATION_BUCKETS, PodLoad, TIER};
pub use node_agents::{
    AGENT_SERVICE_ACCOUNT, AgentToken, AgentsConfig, NODE_AGENT_BIN, NodeAgents, TOKEN_EXPIRATION,
    node_agent_binary, request_agent_token, request_telemetry_token,
};
pub use simulator::{LoadSimulator, SCRAPE_ADDRESS_ANNOTATION, SimulatedPod};
