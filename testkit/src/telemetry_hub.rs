//! A recording telemetry hub for tests: what the operator's hub receives, kept in memory. It
//! answers each report with its ack and, by policy, refuses streams without a bearer token.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use modelfleet_proto::telemetry::{
    NodeReport, ReportAck,
    telemetry_server::{Telemetry, TelemetryServer},
};
use tokio::sync::mpsc;
use tokio_stream::{StreamExt, wrappers::ReceiverStream};
use tonic::{Request, Response, Status, Streaming};

use crate::wait::poll_until;

/// Which streams the hub accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenPolicy {
    /// A stream without `authorization: Bearer …` is refused with Unauthenticated, as the
    /// operator does.
    RequireBearer,
    /// Every stream is accepted; a token, when sent, is recorded.
    AcceptAny,
}

#[derive(Debug, Default)]
struct Received {
    reports: Vec<NodeReport>,
    authorization: Vec<String>,
    refused: usize,
}

#[derive(Debug, Clone)]
struct Service {
    policy: TokenPolicy,
    received: Arc<Mutex<Received>>,
}

#[tonic::async_trait]
impl Telemetry for Service {
    type ReportStream = ReceiverStream<Result<ReportAck, Status>>;
    type RouterReportStream = ReceiverStream<Result<ReportAck, Status>>;

    async fn router_report(
        &self,
        _request: Request<Streaming<modelfleet_proto::telemetry::RouterReport>>,
    ) -> Result<Response<Self::RouterReportStream>, Status> {
        Err(Status::unimplemented("the test hub takes node reports only"))
    }

    async fn report(
        &self,
        request: Request<Streaming<NodeReport>>,
    ) -> Result<Response<Self::ReportStream>, Status> {
        let auth = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bearer = auth.as_ref().is_some_and(|a| a.starts_with("Bearer "));
        {
            let mut received = self.received.lock().expect("the hub's lock");
            if self.policy == TokenPolicy::RequireBearer && !bearer {
                received.refused += 1;
                return Err(Status::unauthenticated("no bearer token"));
            }
            received.authorization.extend(auth);
        }
        let mut stream = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let received = self.received.clone();
        tokio::spawn(async move {
            while let Some(Ok(report)) = stream.next().await {
                let sequence = report.sequence;
                received.lock().expect("the hub's lock").reports.push(report);
                if tx.send(Ok(ReportAck { sequence })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The hub, serving on a loopback address until dropped.
#[derive(Debug)]
pub struct RecordingHub {
    /// Where it listens.
    pub addr: SocketAddr,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl RecordingHub {
    /// Serves on `addr` (`127.0.0.1:0` for any free port).
    pub async fn start(addr: SocketAddr, policy: TokenPolicy) -> Self {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind the test hub");
        let addr = listener.local_addr().expect("the hub's address");
        let service = Service {
            policy,
            received: Arc::default(),
        };
        let received = service.received.clone();
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(TelemetryServer::new(service))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Self { addr, received, task }
    }

    /// `http://ADDR`, for an agent's `--operator-url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The newest report satisfying `check`, waiting up to `limit` for one.
    pub async fn wait_for(&self, limit: Duration, check: impl Fn(&NodeReport) -> bool) -> Option<NodeReport> {
        poll_until(limit, "a matching report", || async {
            let received = self.received.lock().expect("the hub's lock");
            Ok(received.reports.iter().rev().find(|r| check(r)).cloned())
        })
        .await
        .ok()
    }

    /// Reports received so far.
    pub fn reports(&self) -> usize {
        self.received.lock().expect("the hub's lock").reports.len()
    }

    /// Runs `f` over the reports received so far, oldest first.
    pub fn with_reports<T>(&self, f: impl FnOnce(&[NodeReport]) -> T) -> T {
        f(&self.received.lock().expect("the hub's lock").reports)
    }

    /// Streams refused for lack of a bearer token.
    pub fn refused(&self) -> usize {
        self.received.lock().expect("the hub's lock").refused
    }

    /// The `authorization` header of every accepted stream that sent one.
    pub fn authorizations(&self) -> Vec<String> {
        self.received
            .lock()
            .expect("the hub's lock")
            .authorization
            .clone()
    }
}

impl Drop for RecordingHub {
    fn drop(&mut self) {
        self.task.abort();
    }
}
