//! modelfleet-testkit: what the tests of every crate share.
//!
//! [`LocalCluster`] starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kwok
//! (fake kubelets) on 127.0.0.1 from binaries built by `testkit/toolchain/build.sh`, with
//! generated certificates, and tears them down by pid. [`nodes`] adds kwok-managed GPU nodes;
//! [`crds`] installs our CRDs and the Gateway API's; [`prometheus`] runs Debian's Prometheus on
//! loopback; [`testing`] gives integration tests one shared cluster per test binary and a
//! namespace per test; [`agents`] runs node agents and simulated load; [`telemetry_hub`] records
//! what agents send; [`live`] runs pods for real; [`bin`] finds the workspace binaries cargo
//! built (this crate never builds them).
//!
//! Network rule: every component listens on and is dialled at 127.0.0.1. Pod and Service IPs of
//! the cluster are data only.

pub mod agents;
pub mod bin;
pub mod cluster;
pub mod crds;
mod error;
pub mod http;
pub mod live;
pub mod llama;
pub mod nodes;
pub mod operator_process;
mod pki;
pub mod process;
pub mod procfs;
pub mod prometheus;
pub mod server;
pub mod sse;
pub mod telemetry_hub;
pub mod testing;
pub mod toolchain;
pub mod wait;

pub use cluster::{ClusterConfig, LocalCluster};
pub use error::{Error, Result};
pub use nodes::GpuNodePool;
pub use toolchain::Toolchain;
