//! The generated server and client talk to each other over a real HTTP/2 connection on
//! 127.0.0.1: ServerLive answers, and a ModelInfer with a BYTES input crosses the wire intact.

use modelfleet_proto::inference::{
    ModelInferRequest, ModelInferResponse, ModelMetadataRequest, ModelMetadataResponse, ModelReadyRequest,
    ModelReadyResponse, ServerLiveRequest, ServerLiveResponse, ServerMetadataRequest, ServerMetadataResponse,
    ServerReadyRequest, ServerReadyResponse,
    grpc_inference_service_client::GrpcInferenceServiceClient,
    grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer},
    model_infer_request::InferInputTensor,
    model_infer_response::InferOutputTensor,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, transport::Server};

/// Live, and echoes each input back as an output of the same name, datatype and contents.
#[derive(Debug)]
struct Echo;

#[tonic::async_trait]
impl GrpcInferenceService for Echo {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn model_ready(
        &self,
        _: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn model_metadata(
        &self,
        _: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        Err(Status::unimplemented("not in this test"))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let request = request.into_inner();
        Ok(Response::new(ModelInferResponse {
            model_name: request.model_name,
            model_version: request.model_version,
            id: request.id,
            parameters: request.parameters,
            outputs: request
                .inputs
                .into_iter()
                .map(|input| InferOutputTensor {
                    name: input.name,
                    datatype: input.datatype,
                    shape: input.shape,
                    parameters: input.parameters,
                    contents: input.contents,
                })
                .collect(),
            raw_output_contents: request.raw_input_contents,
        }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_client_calls_generated_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local address");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        Server::builder()
            .add_service(GrpcInferenceServiceServer::new(Echo))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                stopped.await.ok();
            }),
    );

    let mut client = GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let live = client
        .server_live(ServerLiveRequest {})
        .await
        .expect("ServerLive")
        .into_inner();
    assert!(live.live);

    let status = client
        .server_ready(ServerReadyRequest {})
        .await
        .expect_err("ServerReady is not implemented here");
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    // One BYTES element "hi": 4-byte little-endian length, then the bytes.
    let raw = [2u32.to_le_bytes().as_slice(), b"hi"].concat();
    let response = client
        .model_infer(ModelInferRequest {
            model_name: "echo".into(),
            id: "42".into(),
            inputs: vec![InferInputTensor {
                name: "text".into(),
                datatype: "BYTES".into(),
                shape: vec![1],
                ..Default::default()
            }],
            raw_input_contents: vec![raw.clone()],
            ..Default::default()
        })
        .await
        .expect("ModelInfer")
        .into_inner();
    assert_eq!(response.model_name, "echo");
    assert_eq!(response.id, "42");
    assert_eq!(response.outputs.len(), 1);
    assert_eq!(response.outputs[0].name, "text");
    assert_eq!(response.outputs[0].datatype, "BYTES");
    assert_eq!(response.outputs[0].shape, [1]);
    assert_eq!(response.raw_output_contents, [raw]);

    stop.send(()).expect("server still running");
    server.await.expect("server task").expect("server");
}
