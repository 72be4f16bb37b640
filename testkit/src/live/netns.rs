//! The fleet's network namespace: created with iproute2, no interface but `lo`, pod IPs on `lo`,
//! the Service range routed to `lo` (kube-proxy's iptables rules turn a Service IP into a pod IP),
//! and no route out. Sockets are opened inside it from short-lived threads that `setns(2)` into it
//! first, so the harness's async code can dial pod and Service IPs without any host socket doing
//! so (a socket belongs to the namespace of the thread that created it).

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use nix::sched::{CloneFlags, setns};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::{Error, Result};

/// The Service range of the local cluster (`--service-cluster-ip-range`).
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// Where CoreDNS listens inside the namespace (the `nameserver` of every live pod).
pub const DNS_IP: &str = "10.96.0.10";
/// The pod range kube-proxy treats as the cluster's (`--cluster-cidr`): kwok's 10.244.0.0/16 and
/// the live nodes' 10.246.0.0/16.
pub const CLUSTER_CIDR: &str = "10.244.0.0/14";

/// A network namespace owned by the harness (`ip netns add`), deleted on drop.
#[derive(Debug)]
pub struct FleetNet {
    name: String,
    path: PathBuf,
    cleanup_guard: std::sync::Mutex<Option<std::process::Child>>,
}

impl FleetNet {
    /// Creates namespace `name` with `lo` up and the Service range routed to it, then checks that
    /// it has no route of its own making out of it. With `guarded`, a shell guard deletes the
    /// namespace if this process dies without dropping it.
    pub fn create(name: &str, guarded: bool) -> Result<Self> {
        if Path::new("/run/netns").join(name).exists() {
            // A previous harness of the same pid died without its guard: reuse nothing of it.
            let _ = ip(&["netns", "del", name]);
        }
        ip(&["netns", "add", name])?;
        let net = Self {
            name: name.to_string(),
            path: Path::new("/run/netns").join(name),
            cleanup_guard: std::sync::Mutex::new(
                guarded
                    .then(|| crate::process::spawn_netns_guard(name))
                    .transpose()?,
            ),
        };
        net.ip(&["link", "set", "lo", "up"])?;
        net.ip(&["route", "add", SERVICE_CIDR, "dev", "lo"])?;
        net.add_address(DNS_IP.parse().map_err(|_| bug("DNS_IP"))?)?;
        net.check_isolated()?;
        Ok(net)
    }

    /// The namespace's name (`ip netns exec <name> …`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/<name>`, for `nsenter --net=`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `ip -n <name> …`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Puts `addr/32` on `lo` (a pod IP). Idempotent.
    pub fn add_address(&self, addr: IpAddr) -> Result<()> {
        let cidr = format!("{addr}/32");
        match self.ip(&["addr", "add", &cidr, "dev", "lo"]) {
            Err(Error::Io { source, .. }) if source.to_string().contains("File exists") => Ok(()),
            other => other.map(drop),
        }
    }

    /// Removes `addr/32` from `lo`. Missing addresses are fine.
    pub fn remove_address(&self, addr: IpAddr) {
        let _ = self.ip(&["addr", "del", &format!("{addr}/32"), "dev", "lo"]);
    }

    /// Refuses the namespace if it has an interface other than `lo` or a route that leaves it.
    pub fn check_isolated(&self) -> Result<()> {
        let links = self.ip(&["-j", "link", "show"])?;
        let routes4 = self.ip(&["-j", "-4", "route", "show", "table", "all"])?;
        let routes6 = self.ip(&["-j", "-6", "route", "show", "table", "all"])?;
        isolation_problems(&links, &[&routes4, &routes6])
            .map_err(|problem| Error::Network(format!("fleet namespace {}: {problem}", self.name)))
    }

    fn enter(path: &Path) -> std::io::Result<()> {
        let ns = File::open(path)?;
        setns(ns, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
    }

    /// Runs `f` on a new thread that has entered the namespace; sockets it opens live there.
    async fn in_namespace<T: Send + 'static>(
        &self,
        what: String,
        f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let path = self.path.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("fleet-netns".into())
            .spawn(move || {
                let _ = tx.send(Self::enter(&path).and_then(|()| f()));
            })
            .map_err(Error::io("start a thread in the fleet namespace"))?;
        rx.await
            .map_err(|_| Error::Network(format!("{what}: the namespace thread died")))?
            .map_err(Error::io(what))
    }

    /// A TCP connection to `addr` from inside the namespace.
    pub async fn connect(&self, addr: SocketAddr, timeout: Duration) -> Result<TcpStream> {
        let stream = self
            .in_namespace(format!("connect to {addr} in the fleet namespace"), move || {
                let stream = std::net::TcpStream::connect_timeout(&addr, timeout)?;
                stream.set_nonblocking(true)?;
                Ok(stream)
            })
            .await?;
        TcpStream::from_std(stream).map_err(Error::io("register a fleet socket"))
    }

    /// A TCP listener on `addr` inside the namespace.
    pub async fn listen(&self, addr: SocketAddr) -> Result<TcpListener> {
        let listener = self
            .in_namespace(format!("listen on {addr} in the fleet namespace"), move || {
                let listener = std::net::TcpListener::bind(addr)?;
                listener.set_nonblocking(true)?;
                Ok(listener)
            })
            .await?;
        TcpListener::from_std(listener).map_err(Error::io("register a fleet listener"))
    }

    /// A UDP socket inside the namespace, bound to an ephemeral loopback port.
    pub async fn udp(&self) -> Result<UdpSocket> {
        let socket = self
            .in_namespace("open a UDP socket in the fleet namespace".into(), || {
                let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
                socket.set_nonblocking(true)?;
                Ok(socket)
            })
            .await?;
        UdpSocket::from_std(socket).map_err(Error::io("register a fleet UDP socket"))
    }

    /// `program args…` run inside the namespace: `/usr/bin/nsenter --net=<path> -- program args…`,
    /// as a program and its arguments for [`crate::process::ManagedProcess`].
    pub fn nsenter(&self, program: &Path, args: Vec<String>) -> (PathBuf, Vec<String>) {
        let mut all = vec![
            format!("--net={}", self.path.display()),
            "--".into(),
            program.display().to_string(),
        ];
        all.extend(args);
        (PathBuf::from("/usr/bin/nsenter"), all)
    }

    /// Pids of the processes whose network namespace this is.
    pub fn pids(&self) -> Vec<u32> {
        ip(&["netns", "pids", &self.name])
            .map(|out| out.split_whitespace().filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Kills what still runs in the namespace (by then a leak), then deletes it (every socket and
    /// iptables rule in it goes with it).
    pub fn delete(&self) {
        for _ in 0..3 {
            let left = self.pids();
            if left.is_empty() {
                break;
            }
            tracing::warn!(namespace = %self.name, pids = ?left, "killing processes left in the fleet namespace");
            for pid in left {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX)),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        if self.path.exists() {
            let _ = ip(&["netns", "del", &self.name]);
        }
        let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(&self.name));
        if let Some(mut guard) = self.cleanup_guard.lock().ok().and_then(|mut g| g.take()) {
            let _ = guard.kill();
            let _ = guard.wait();
        }
    }
}

impl Drop for FleetNet {
    fn drop(&mut self) {
        self.delete();
    }
}

fn bug(what: &str) -> Error {
    Error::Network(format!("{what} is not an address (this is a bug)"))
}

/// `ip …`, its stdout, or an error with its stderr.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(Error::io("run ip (Debian's iproute2)"))?;
    if !out.status.success() {
        return Err(Error::Io {
            what: format!("ip {}", args.join(" ")),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[derive(Deserialize)]
struct Link {
    ifname: String,
}

#[derive(Deserialize)]
struct Route {
    dst: String,
    dev: Option<String>,
    gateway: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// Why the namespace described by `ip -j link` and `ip -j route show table all` is not isolated:
/// an interface other than `lo`, a route through a gateway or another device, or a route to
/// anything but loopback, local addresses and the Service range.
pub fn isolation_problems(links_json: &str, routes_json: &[&str]) -> std::result::Result<(), String> {
    let links: Vec<Link> = serde_json::from_str(links_json).map_err(|e| format!("ip -j link: {e}"))?;
    if let Some(link) = links.iter().find(|l| l.ifname != "lo") {
        return Err(format!("it has interface {} (only lo is allowed)", link.ifname));
    }
    for json in routes_json {
        let routes: Vec<Route> = if json.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(json).map_err(|e| format!("ip -j route: {e}"))?
        };
        for route in routes {
            if let Some(gateway) = &route.gateway {
                return Err(format!(
                    "route to {} via {gateway} leaves the namespace",
                    route.dst
                ));
            }
            if route.dev.as_deref().is_some_and(|d| d != "lo") {
                return Err(format!("route to {} uses device {:?}", route.dst, route.dev));
            }
            let kind = route.kind.as_deref().unwrap_or("unicast");
            let ours = route.dst == SERVICE_CIDR && kind == "unicast";
            let local = matches!(kind, "local" | "broadcast" | "multicast");
            let loopback = route.dst == "::1" || route.dst == "127.0.0.0/8";
            if !(ours || local || loopback) {
                return Err(format!(
                    "route to {} ({kind}) was not made by the harness",
                    route.dst
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LO: &str = r#"[{"ifindex":1,"ifname":"lo"}]"#;

    #[test]
    fn the_harness_routes_are_accepted() {
        let routes = r#"[{"dst":"10.96.0.0/16","dev":"lo","flags":[]},
            {"type":"local","dst":"10.246.0.5","dev":"lo","table":"local"},
            {"type":"local","dst":"127.0.0.0/8","dev":"lo","table":"local"},
            {"type":"broadcast","dst":"127.255.255.255","dev":"lo","table":"local"}]"#;
        let v6 = r#"[{"dst":"::1","dev":"lo"},{"type":"multicast","dst":"ff00::/8","dev":"lo"}]"#;
        assert_eq!(isolation_problems(LO, &[routes, v6, ""]), Ok(()));
    }

    #[test]
    fn a_default_route_or_a_second_interface_is_refused() {
        let default = r#"[{"dst":"default","gateway":"10.0.0.1","dev":"lo"}]"#;
        assert!(
            isolation_problems(LO, &[default])
                .unwrap_err()
                .contains("via 10.0.0.1")
        );
        let other = r#"[{"dst":"192.168.0.0/24","dev":"lo"}]"#;
        assert!(
            isolation_problems(LO, &[other])
                .unwrap_err()
                .contains("192.168.0.0/24")
        );
        let veth = r#"[{"ifname":"lo"},{"ifname":"veth0"}]"#;
        assert!(isolation_problems(veth, &[]).unwrap_err().contains("veth0"));
    }
}
