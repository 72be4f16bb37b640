//! The gRPC server of `modelfleet.telemetry.v1.Telemetry` that node agents stream to.
//!
//! Every operator replica serves it, but only the leader accepts streams: followers answer
//! `UNAVAILABLE` and a leader that loses its Lease closes its streams, so agents reconnect (with
//! their jittered backoff) until the Service hands them to the leader. This needs no pod label
//! juggling and no extra RBAC; with two replicas an agent finds the leader in two tries on
//! average (docs/autoscaler.md).

use std::{net::SocketAddr, pin::Pin, time::Instant};

use futures::Stream;
use modelfleet_proto::telemetry::{
    NodeReport, ReportAck, RouterReport,
    telemetry_server::{Telemetry, TelemetryServer},
};
use tokio::sync::{mpsc, watch};
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    metrics::Metrics,
    telemetry::{auth::Authenticator, store::TelemetryStore},
};

/// The telemetry service.
#[derive(Debug, Clone)]
pub struct Hub {
    store: TelemetryStore,
    auth: Authenticator,
    leading: watch::Receiver<bool>,
    metrics: Metrics,
}

impl Hub {
    /// A hub writing into `store`, accepting streams while `leading` is true.
    pub fn new(
        store: TelemetryStore,
        auth: Authenticator,
        leading: watch::Receiver<bool>,
        metrics: Metrics,
    ) -> Self {
        Self {
            store,
            auth,
            leading,
            metrics,
        }
    }

    /// Serves on `addr` until the process ends; returns the bound address and the server future.
    pub async fn serve(
        self,
        addr: SocketAddr,
    ) -> std::io::Result<(SocketAddr, impl std::future::Future<Output = ()> + Send + 'static)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let bound = listener.local_addr()?;
        let server = async move {
            let result = tonic::transport::Server::builder()
                .add_service(TelemetryServer::new(self))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
            if let Err(e) = result {
                tracing::error!(error = %e, "telemetry server stopped");
            }
        };
        Ok((bound, server))
    }
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ReportAck, Status>> + Send>>;

impl Hub {
    /// The caller's user once it may stream: this replica leads and the token is good.
    async fn admit(&self, metadata: &tonic::metadata::MetadataMap) -> Result<String, Status> {
        if !*self.leading.borrow() {
            return Err(Status::unavailable(
                "this operator replica is not the leader; reconnect to reach the leader",
            ));
        }
        let authorization = metadata.get("authorization").and_then(|v| v.to_str().ok());
        self.auth.authenticate(authorization).await.map_err(|e| {
            self.metrics.telemetry_rejected(e.category());
            tracing::warn!(category = e.category(), error = %e, "telemetry stream refused");
            match e {
                crate::telemetry::auth::AuthError::Review(_) => Status::unavailable(e.to_string()),
                _ => Status::unauthenticated(e.to_string()),
            }
        })
    }

    /// Acknowledges every report of `reports` after `take` handled it (it returns the
    /// sequence to ack), until the stream ends or this replica stops leading.
    fn pump<R: Send + 'static>(
        &self,
        mut reports: Streaming<R>,
        what: &'static str,
        mut take: impl FnMut(R) -> u64 + Send + 'static,
    ) -> AckStream {
        let (tx, rx) = mpsc::channel(4);
        let (metrics, mut leading) = (self.metrics.clone(), self.leading.clone());
        tokio::spawn(async move {
            metrics.telemetry_streams.inc();
            loop {
                tokio::select! {
                    next = reports.next() => match next {
                        Some(Ok(report)) => {
                            let sequence = take(report);
                            metrics.telemetry_reports.inc();
                            if tx.send(Ok(ReportAck { sequence })).await.is_err() {
                                break;
                            }
                        }
                        Some(Err(status)) => {
                            tracing::debug!(what, error = %status, "telemetry stream broke");
                            break;
                        }
                        None => break,
                    },
                    // Losing the Lease closes the stream so the sender finds the new leader.
                    lost = async { leading.wait_for(|l| !*l).await.is_ok() } => {
                        if lost {
                            let _ = tx.send(Err(Status::unavailable("leadership lost; reconnect"))).await;
                        }
                        break;
                    }
                }
            }
            metrics.telemetry_streams.dec();
            tracing::info!(what, "telemetry stream closed");
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl Telemetry for Hub {
    type ReportStream = AckStream;
    type RouterReportStream = AckStream;

    async fn router_report(
        &self,
        request: Request<Streaming<RouterReport>>,
    ) -> Result<Response<AckStream>, Status> {
        let user = self.admit(request.metadata()).await?;
        tracing::info!(%user, "router report stream open");
        let store = self.store.clone();
        let acks = self.pump(request.into_inner(), "router", move |report: RouterReport| {
            let sequence = report.sequence;
            store.ingest_router(report, Instant::now());
            sequence
        });
        Ok(Response::new(acks))
    }

    async fn report(&self, request: Request<Streaming<NodeReport>>) -> Result<Response<AckStream>, Status> {
        let user = self.admit(request.metadata()).await?;
        let store = self.store.clone();
        let mut node = String::new();
        let acks = self.pump(request.into_inner(), "node", move |report: NodeReport| {
            if node.is_empty() {
                node.clone_from(&report.node);
                tracing::info!(%node, %user, "telemetry stream open");
            }
            store.ingest(&report, Instant::now());
            report.sequence
        });
        Ok(Response::new(acks))
    }
}
