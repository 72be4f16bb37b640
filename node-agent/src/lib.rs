//! modelfleet-node-agent: on every GPU node, reads the GPUs (NVML, or a simulation), attributes
//! each GPU to the pod holding it, scrapes the local modelfleet-server pods, exports
//! DCGM-compatible metrics and streams a NodeReport to the operator every interval.
//! See docs/node-agent.md.

pub mod agent;
pub mod attribution;
pub mod config;
pub mod gpu;
pub mod metrics;
pub mod run;
pub mod scrape;
pub mod stream;

pub use config::AgentConfig;
