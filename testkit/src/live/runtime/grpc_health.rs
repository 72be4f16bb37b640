//! The gRPC probe: `grpc.health.v1.Health/Check` over a connection opened in the fleet namespace.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::super::netns::FleetNet;

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, prost::Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

/// `SERVING` in grpc.health.v1.
const SERVING: i32 = 1;

/// Ok when the server answers SERVING for `service` (empty: the server as a whole).
pub async fn check(
    net: &Arc<FleetNet>,
    addr: SocketAddr,
    service: Option<String>,
    timeout: Duration,
) -> Result<(), String> {
    let net = net.clone();
    let connector = tower::service_fn(move |_: http::Uri| {
        let net = net.clone();
        async move {
            net.connect(addr, timeout)
                .await
                .map(hyper_util::rt::TokioIo::new)
                .map_err(std::io::Error::other)
        }
    });
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(timeout)
        .connect_with_connector(connector)
        .await
        .map_err(|e| format!("gRPC connect to {addr}: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/Check");
    let request = HealthCheckRequest {
        service: service.unwrap_or_default(),
    };
    let answer: tonic::Response<HealthCheckResponse> = grpc
        .unary(
            tonic::Request::new(request),
            path,
            tonic_prost::ProstCodec::default(),
        )
        .await
        .map_err(|status| format!("gRPC health check: {}", status.message()))?;
    match answer.get_ref().status {
        SERVING => Ok(()),
        other => Err(format!("gRPC health status {other} (1 is SERVING)")),
    }
}
