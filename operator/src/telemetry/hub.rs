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

#[tonic::async_trait]
impl Telemetry for Hub {
    type ReportStream = AckStream;
    type RouterReportStream = AckStream;

    async fn router_report(
        &self,
        _request: Request<Streaming<RouterReport>>,
    ) -> Result<Response<AckStream>, Status> {
        Err(Status::unimplemented("router reports are not accepted yet"))
    }

    async fn report(&self, request: Request<Streaming<NodeReport>>) -> Result<Response<AckStream>, Status> {
        if !*self.leading.borrow() {
            return Err(Status::unavailable(
                "this operator replica is not the leader; reconnect to reach the leader",
            ));
        }
        let authorization = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        let user = match self.auth.authenticate(authorization).await {
            Ok(user) => user,
            Err(e) => {
                self.metrics.telemetry_rejected(e.category());
                tracing::warn!(category = e.category(), error = %e, "telemetry stream refused");
                return Err(match e {
                    crate::telemetry::auth::AuthError::Review(_) => Status::unavailable(e.to_string()),
                    _ => Status::unauthenticated(e.to_string()),
                });
            }
        };
        let mut reports = request.into_inner();
        let (tx, rx) = mpsc::channel(4);
        let (store, metrics, mut leading) = (self.store.clone(), self.metrics.clone(), self.leading.clone());
        tokio::spawn(async move {
            metrics.telemetry_streams.inc();
            let mut node = String::new();
            loop {
                tokio::select! {
                    next = reports.next() => match next {
                        Some(Ok(report)) => {
                            if node.is_empty() {
                                node.clone_from(&report.node);
                                tracing::info!(%node, %user, "telemetry stream open");
                            }
                            store.ingest(&report, Instant::now());
                            metrics.telemetry_reports.inc();
                            if tx.send(Ok(ReportAck { sequence: report.sequence })).await.is_err() {
                                break;
                            }
                        }
                        Some(Err(status)) => {
                            tracing::debug!(%node, error = %status, "telemetry stream broke");
                            break;
                        }
                        None => break,
                    },
                    // Losing the Lease closes the stream so the agent finds the new leader.
                    lost = async { leading.wait_for(|l| !*l).await.is_ok() } => {
                        if lost {
                            let _ = tx.send(Err(Status::unavailable("leadership lost; reconnect"))).await;
                        }
                        break;
                    }
                }
            }
            metrics.telemetry_streams.dec();
            tracing::info!(%node, "telemetry stream closed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
