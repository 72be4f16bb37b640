//! `modelfleet-router` in the fleet namespace, as `up --live` and the live tests run it: it
//! watches the cluster through the relayed API server and dials pod IPs directly; the host
//! reaches its API through a relay.

use std::{net::SocketAddr, path::Path, time::Duration};

use super::netns::FleetNet;
use crate::{LocalCluster, Result, process::ManagedProcess};

/// The router's API inside the namespace.
pub const HTTP_IN_NAMESPACE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8000);
/// Its metrics and health port inside the namespace (9090 is left to Prometheus).
pub const METRICS_IN_NAMESPACE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9092);

/// A running router.
#[derive(Debug)]
pub struct FleetRouter {
    /// The process (stopped on drop).
    pub process: ManagedProcess,
    /// Its API on the host (`127.0.0.1:PORT`).
    pub url_addr: SocketAddr,
}

impl FleetRouter {
    /// The OpenAI base URL on the host: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.url_addr)
    }
}

/// Starts the router in `net` and waits for `/readyz` (discovery has listed everything).
pub async fn start(
    cluster: &LocalCluster,
    net: &FleetNet,
    binary: &Path,
    extra: &[&str],
) -> Result<FleetRouter> {
    let mut args = vec![
        format!("--http-addr={HTTP_IN_NAMESPACE}"),
        format!("--metrics-addr={METRICS_IN_NAMESPACE}"),
        "--log-format=text".to_owned(),
    ];
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let (program, args) = net.nsenter(binary, args);
    let mut process = ManagedProcess::spawn_with_env(
        "modelfleet-router",
        &program,
        &args,
        &[
            ("KUBECONFIG", cluster.kubeconfig_path().as_os_str()),
            ("NO_COLOR", "1".as_ref()),
        ],
        cluster.dir(),
        true,
    )?;
    process
        .wait_ready(Duration::from_secs(60), || async move {
            super::runtime::probe::http_status(net, METRICS_IN_NAMESPACE, "/readyz", Duration::from_secs(1))
                .await
                .is_ok_and(|s| s == 200)
        })
        .await?;
    Ok(FleetRouter {
        process,
        url_addr: HTTP_IN_NAMESPACE,
    })
}
