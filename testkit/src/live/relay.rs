//! TCP relays across the fleet namespace's boundary, on the same port on both sides so one
//! kubeconfig and one URL work everywhere:
//! - [`into_host`]: a listener on 127.0.0.1:PORT inside the namespace, each connection joined to
//!   127.0.0.1:PORT on the host (processes in the namespace reach the API server and the operator's
//!   telemetry hub);
//! - [`out_of_namespace`]: a listener on 127.0.0.1:PORT on the host, each connection joined to
//!   `target` inside the namespace (host tools reach Prometheus running in the namespace).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpStream, task::JoinHandle};

use super::netns::FleetNet;
use crate::{Error, Result};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A running relay; dropping it stops accepting (open connections finish on their own).
#[derive(Debug)]
pub struct Relay {
    task: JoinHandle<()>,
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Host 127.0.0.1:`port` made reachable at 127.0.0.1:`port` inside the namespace.
pub async fn into_host(net: &FleetNet, port: u16) -> Result<Relay> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let listener = net.listen(addr).await?;
    let task = tokio::spawn(async move {
        while let Ok((inside, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(Ok(host)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
                    join(inside, host).await;
                }
            });
        }
    });
    Ok(Relay { task })
}

/// `target` inside the namespace made reachable at host 127.0.0.1:`port` (0: any free port);
/// returns the relay and the host address.
pub async fn out_of_namespace(
    net: Arc<FleetNet>,
    port: u16,
    target: SocketAddr,
) -> Result<(Relay, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .map_err(Error::io(format!("listen on 127.0.0.1:{port}")))?;
    let local = listener
        .local_addr()
        .map_err(Error::io("read a relay's address"))?;
    let task = tokio::spawn(async move {
        while let Ok((host, _)) = listener.accept().await {
            let net = net.clone();
            tokio::spawn(async move {
                if let Ok(inside) = net.connect(target, CONNECT_TIMEOUT).await {
                    join(host, inside).await;
                }
            });
        }
    });
    Ok((Relay { task }, local))
}

async fn join(mut a: TcpStream, mut b: TcpStream) {
    let _ = tokio::io::copy_bidirectional(&mut a, &mut b).await;
}
