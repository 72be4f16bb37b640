//! The cluster services that run inside the fleet namespace: kube-proxy (iptables mode, programs
//! every Service) and CoreDNS (`cluster.local` from the API). Both reach the API server through
//! the relay at the same 127.0.0.1 port, so they use the cluster's kubeconfig as it is.

use std::{net::SocketAddr, path::Path, time::Duration};

use super::netns::{CLUSTER_CIDR, DNS_IP, FleetNet};
use crate::{LocalCluster, Result, process::ManagedProcess};

/// kube-proxy's health port inside the namespace.
const KUBE_PROXY_HEALTHZ: u16 = 10256;
/// CoreDNS's `ready` plugin port inside the namespace.
const COREDNS_READY: u16 = 8181;

/// Starts `binary args…` in the namespace and waits until `GET 127.0.0.1:<port><path>` answers
/// 200 there.
async fn start_ready(
    cluster: &LocalCluster,
    net: &FleetNet,
    name: &str,
    args: Vec<String>,
    (port, path): (u16, &str),
) -> Result<ManagedProcess> {
    let (program, args) = net.nsenter(&cluster.toolchain().bin(name), args);
    let mut process = ManagedProcess::spawn(name, &program, &args, cluster.dir(), true)?;
    wait_http(&mut process, net, port, path, Duration::from_secs(60)).await?;
    Ok(process)
}

async fn wait_http(
    process: &mut ManagedProcess,
    net: &FleetNet,
    port: u16,
    path: &str,
    timeout: Duration,
) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    process
        .wait_ready(timeout, || async move {
            super::runtime::probe::http_status(net, addr, path, Duration::from_secs(1))
                .await
                .is_ok_and(|s| s == 200)
        })
        .await
}

/// Starts kube-proxy in the namespace and waits for its healthz (rules synced once).
pub async fn start_kube_proxy(cluster: &LocalCluster, net: &FleetNet, node: &str) -> Result<ManagedProcess> {
    let args = vec![
        format!("--kubeconfig={}", cluster.kubeconfig_path().display()),
        format!("--hostname-override={node}"),
        "--proxy-mode=iptables".into(),
        format!("--cluster-cidr={CLUSTER_CIDR}"),
        format!("--healthz-bind-address=127.0.0.1:{KUBE_PROXY_HEALTHZ}"),
        "--metrics-bind-address=127.0.0.1:10249".into(),
        // Leave the host's conntrack sysctls alone (they are not per namespace).
        "--conntrack-max-per-core=0".into(),
        "--conntrack-tcp-timeout-established=0".into(),
        "--conntrack-tcp-timeout-close-wait=0".into(),
        "--iptables-min-sync-period=200ms".into(),
        "--v=1".into(),
    ];
    start_ready(cluster, net, "kube-proxy", args, (KUBE_PROXY_HEALTHZ, "/healthz")).await
}

/// The Corefile: `cluster.local` and reverse zones from the API, nothing forwarded (the
/// namespace has no route out), a short TTL so Service changes show within seconds.
pub fn corefile(kubeconfig: &Path) -> String {
    format!(
        ".:53 {{\n    bind {DNS_IP}\n    errors\n    ready 127.0.0.1:{COREDNS_READY}\n    kubernetes cluster.local in-addr.arpa ip6.arpa {{\n        kubeconfig {}\n        pods insecure\n        fallthrough in-addr.arpa ip6.arpa\n        ttl 5\n    }}\n}}\n",
        kubeconfig.display()
    )
}

/// Starts CoreDNS in the namespace and waits until its `kubernetes` plugin has synced.
pub async fn start_coredns(cluster: &LocalCluster, net: &FleetNet) -> Result<ManagedProcess> {
    let file = cluster.dir().join("Corefile");
    std::fs::write(&file, corefile(cluster.kubeconfig_path()))
        .map_err(crate::Error::io("write the Corefile"))?;
    let args = vec![format!("-conf={}", file.display())];
    start_ready(cluster, net, "coredns", args, (COREDNS_READY, "/ready")).await
}
