//! The Endpoint Picker (`--epp-addr`) in front of real `modelfleet-server` processes (synthetic
//! backend) from a static table, asked by a generated ext_proc client that speaks Envoy's side
//! of the protocol: full-duplex streamed and buffered body modes, the subset hint, refusals as
//! immediate responses, the body handed back, and the answer's destination actually serving.

mod common;

use std::time::Duration;

use common::Router;
use modelfleet_proto::ext_proc::{
    CommonResponse, HeaderMap, HeaderValue, HttpBody, HttpHeaders, ImmediateResponse, ListValue, Metadata,
    ProcessingRequest, ProcessingResponse, ProtocolConfiguration, Struct, Value, body_mutation::Mutation,
    external_processor_client::ExternalProcessorClient, processing_mode::BodySendMode,
    processing_request::Request, processing_response::Response, value::Kind,
};
use modelfleet_testkit::server::{ServerProcess, eventually, metric_value, post, post_raw};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Streaming, transport::Channel};

const DESTINATION: &str = "x-gateway-destination-endpoint";

/// One `Process` stream, driven as Envoy drives it.
struct Stream {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: Streaming<ProcessingResponse>,
}

impl Stream {
    async fn open(router: &Router) -> Self {
        let addr = router.running.epp_addr.expect("--epp-addr serves the picker");
        let mut client: ExternalProcessorClient<Channel> =
            ExternalProcessorClient::connect(format!("http://{addr}"))
                .await
                .expect("the picker accepts connections");
        let (tx, rx) = mpsc::channel(16);
        let rx = client
            .process(ReceiverStream::new(rx))
            .await
            .expect("a Process stream")
            .into_inner();
        Self { tx, rx }
    }

    async fn send(&self, message: ProcessingRequest) {
        self.tx.send(message).await.expect("the stream is open");
    }

    /// The next answer; None when the picker ended the stream.
    async fn next(&mut self) -> Option<ProcessingResponse> {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("the picker answers within 10 s")
            .expect("no gRPC error")
    }
}

fn string(s: &str) -> Value {
    Value {
        kind: Some(Kind::StringValue(s.into())),
    }
}

fn subset_hint(value: Value) -> Metadata {
    Metadata {
        filter_metadata: [(
            "envoy.lb.subset_hint".to_owned(),
            Struct {
                fields: [("x-gateway-destination-endpoint-subset".to_owned(), value)].into(),
            },
        )]
        .into(),
    }
}

fn header_map(list: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: list
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).into(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    }
}

/// `request_headers` of a `POST /v1/embeddings`, first on the stream (so with protocol_config).
fn request_headers(mode: BodySendMode, subset: Option<Metadata>) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestHeaders(HttpHeaders {
            headers: Some(header_map(&[
                (":method", "POST"),
                (":path", "/v1/embeddings"),
                ("content-type", "application/json"),
            ])),
            end_of_stream: false,
        })),
        metadata_context: subset,
        protocol_config: Some(ProtocolConfiguration {
            request_body_mode: mode as i32,
            response_body_mode: mode as i32,
            send_body_without_waiting_for_header_response: false,
        }),
        ..ProcessingRequest::default()
    }
}

fn request_body(bytes: &[u8], end_of_stream: bool) -> ProcessingRequest {
    ProcessingRequest {
        request: Some(Request::RequestBody(HttpBody {
            body: bytes.to_vec(),
            end_of_stream,
        })),
        ..ProcessingRequest::default()
    }
}

/// The common response of a routed answer to the request headers or body.
fn common(answer: &ProcessingResponse) -> CommonResponse {
    match &answer.response {
        Some(Response::RequestHeaders(h)) => h.response.clone(),
        Some(Response::RequestBody(b)) => b.response.clone(),
        other => panic!("not a routed answer: {other:?}"),
    }
    .expect("a common response")
}

/// The destination a routed answer sets, checking the header and `envoy.lb` metadata agree and
/// the route cache is cleared.
fn destination(answer: &ProcessingResponse) -> String {
    let common = common(answer);
    assert!(common.clear_route_cache, "the proxy must re-route");
    let mutation = common.header_mutation.expect("a header mutation");
    let header = mutation
        .set_headers
        .iter()
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == DESTINATION)
        .expect("x-gateway-destination-endpoint is set");
    let value = String::from_utf8(header.raw_value.clone()).expect("utf-8");
    let lb = &answer.dynamic_metadata.as_ref().expect("dynamic metadata").fields["envoy.lb"];
    let Some(Kind::StructValue(lb)) = &lb.kind else {
        panic!("envoy.lb is a struct: {lb:?}")
    };
    assert_eq!(
        lb.fields[DESTINATION],
        string(&value),
        "header and metadata must agree"
    );
    value
}

/// The body chunks handed back (FULL_DUPLEX_STREAMED), joined, up to `end_of_stream`.
async fn echoed_body(stream: &mut Stream) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let answer = stream.next().await.expect("a body chunk");
        let mutation = common(&answer).body_mutation.and_then(|m| m.mutation);
        let Some(Mutation::StreamedResponse(chunk)) = mutation else {
            panic!("a streamed body chunk expected: {answer:?}")
        };
        body.extend_from_slice(&chunk.body);
        if chunk.end_of_stream {
            return body;
        }
    }
}

fn immediate(answer: Option<ProcessingResponse>) -> (ImmediateResponse, serde_json::Value) {
    let Some(Response::ImmediateResponse(r)) = answer.and_then(|a| a.response) else {
        panic!("an immediate response expected")
    };
    let body = serde_json::from_slice(&r.body).expect("a JSON error body");
    (r, body)
}

/// A full-duplex pick of `body` (sent in two chunks): the destination and the body handed back.
async fn pick(router: &Router, body: &[u8], subset: Option<Metadata>) -> (String, Vec<u8>, Stream) {
    let mut stream = Stream::open(router).await;
    stream
        .send(request_headers(BodySendMode::FullDuplexStreamed, subset))
        .await;
    let (first, second) = body.split_at(body.len() / 2);
    stream.send(request_body(first, false)).await;
    stream.send(request_body(second, true)).await;
    let answer = stream.next().await.expect("the header answer");
    assert!(
        matches!(answer.response, Some(Response::RequestHeaders(_))),
        "the decision answers the headers: {answer:?}"
    );
    let to = destination(&answer);
    let back = echoed_body(&mut stream).await;
    (to, back, stream)
}

fn synthetic(extra: &[&str]) -> ServerProcess {
    let mut args = vec!["--backend=synthetic", "--model-name=emb"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_least_loaded_ready_pod_is_picked_and_the_busy_one_is_its_fallback() {
    let busy = synthetic(&["--max-batch-size=1", "--synthetic-batch-cost=300ms"]);
    let idle = synthetic(&[]);
    // `load/emb` reaches only the busy server (and sheds above 1 queued a replica); `emb` both.
    let config = format!(
        "models:\n  - name: emb\n    endpoints: ['{b}', '{i}']\n  - name: emb\n    namespace: load\n    endpoints: ['{b}']\n    routing: {{fallback: {{model: absent, queueDepthAbove: 1}}}}\n",
        b = busy.http,
        i = idle.http
    );
    let router = Router::start(
        &config,
        &["--allow-anonymous", "--cache-bytes=0", "--epp-addr=127.0.0.1:0"],
    )
    .await;
    let load: Vec<_> = (0..6)
        .map(|i| {
            let url = router.url("/v1/embeddings");
            tokio::spawn(async move {
                post(&url, &json!({"model": "load/emb", "input": format!("r{i}")}), &[]).await
            })
        })
        .collect();
    // Busy: requests in flight through the router, and one answer in (its response time known).
    let board = &router.running.router.board;
    let loaded = eventually(Duration::from_secs(10), async || {
        let e = board.entry(busy.http);
        e.outstanding() >= 2 && e.cost() > 100_000
    })
    .await;
    assert!(loaded, "the busy server never showed load");

    let body = serde_json::to_vec(&json!({"model": "emb", "input": "pick me"})).expect("json");
    let (to, back, mut stream) = pick(&router, &body, None).await;
    assert_eq!(
        to,
        format!("{},{}", idle.http, busy.http),
        "the idle pod first, the busy one next"
    );
    assert_eq!(back, body, "the body comes back byte for byte");
    assert_eq!(
        board.entry(idle.http).outstanding(),
        1,
        "the pick counts in flight"
    );

    // The model the busy server alone serves is over its queue threshold: shed.
    let mut shed = Stream::open(&router).await;
    shed.send(request_headers(BodySendMode::FullDuplexStreamed, None))
        .await;
    shed.send(request_body(br#"{"model": "load/emb", "input": "x"}"#, true))
        .await;
    let (r, error) = immediate(shed.next().await);
    assert_eq!(r.status.map(|s| s.code), Some(429), "{error}");
    assert_eq!(error["error"]["code"], "model_overloaded");

    // What the proxy then does: send the body to the first destination.
    let answer = post_raw(&format!("http://{}/v1/embeddings", idle.http), back.into(), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    // The response path: headers (the server's load with them), then the body, handed back.
    stream
        .send(ProcessingRequest {
            request: Some(Request::ResponseHeaders(HttpHeaders {
                headers: Some(header_map(&[(":status", "200"), ("x-modelfleet-load", "0")])),
                end_of_stream: false,
            })),
            ..ProcessingRequest::default()
        })
        .await;
    let answer = stream.next().await.expect("an answer to the response headers");
    assert!(
        matches!(answer.response, Some(Response::ResponseHeaders(_))),
        "{answer:?}"
    );
    stream
        .send(ProcessingRequest {
            request: Some(Request::ResponseBody(HttpBody {
                body: b"{\"data\": []}".to_vec(),
                end_of_stream: true,
            })),
            ..ProcessingRequest::default()
        })
        .await;
    let answer = stream.next().await.expect("an answer to the response body");
    let Some(Response::ResponseBody(b)) = answer.response else {
        panic!("a response body answer expected")
    };
    let m = b.response.and_then(|c| c.body_mutation).and_then(|m| m.mutation);
    assert!(
        matches!(&m, Some(Mutation::StreamedResponse(s)) if s.body == b"{\"data\": []}" && s.end_of_stream),
        "{m:?}"
    );
    assert_eq!(
        board.entry(idle.http).outstanding(),
        0,
        "the response ended the count"
    );

    for request in load {
        let a = request.await.expect("load request");
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    let metrics = router.metrics().await;
    let picked = format!(
        r#"modelfleet_router_picks_total{{model="default/emb",revision="static",endpoint="{}"}}"#,
        idle.http
    );
    assert_eq!(metric_value(&metrics, &picked), 1.0, "{metrics}");
    assert!(
        metric_value(
            &metrics,
            r#"modelfleet_router_epp_decisions_total{result="picked"}"#
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subset_hint_restricts_the_pick_and_one_without_an_eligible_endpoint_is_503() {
    let (a, b) = (synthetic(&[]), synthetic(&[]));
    let config = format!(
        "models:\n  - name: emb\n    endpoints: ['{}', '{}']\n",
        a.http, b.http
    );
    let router = Router::start(&config, &["--epp-addr=127.0.0.1:0"]).await;
    let body = br#"{"model": "emb", "input": "x"}"#;

    for _ in 0..3 {
        let list = Value {
            kind: Some(Kind::ListValue(ListValue {
                values: vec![string(&b.http.to_string())],
            })),
        };
        let (to, _, _) = pick(&router, body, Some(subset_hint(list))).await;
        assert_eq!(to, b.http.to_string(), "only the hinted endpoint");
    }
    // One comma-separated string, as a header-to-metadata filter writes it.
    let hint = format!("{},127.0.0.1:1", a.http);
    let (to, _, _) = pick(&router, body, Some(subset_hint(string(&hint)))).await;
    assert_eq!(to, a.http.to_string());

    // BUFFERED: headers go on at once, the decision rides on the body's answer.
    let mut stream = Stream::open(&router).await;
    stream
        .send(request_headers(
            BodySendMode::Buffered,
            Some(subset_hint(string(&a.http.to_string()))),
        ))
        .await;
    let answer = stream.next().await.expect("the header answer");
    let Some(Response::RequestHeaders(h)) = &answer.response else {
        panic!("a header answer expected: {answer:?}")
    };
    assert_eq!(
        h.response.clone().unwrap_or_default(),
        CommonResponse::default(),
        "an empty go-on"
    );
    assert_eq!(answer.dynamic_metadata, None);
    stream.send(request_body(body, true)).await;
    let answer = stream.next().await.expect("the body answer");
    assert!(
        matches!(answer.response, Some(Response::RequestBody(_))),
        "{answer:?}"
    );
    assert_eq!(destination(&answer), a.http.to_string());
    assert_eq!(common(&answer).body_mutation, None, "the body goes on untouched");

    // A hint naming no endpoint of the model: 503, in the OpenAI envelope.
    let mut stream = Stream::open(&router).await;
    stream
        .send(request_headers(
            BodySendMode::FullDuplexStreamed,
            Some(subset_hint(string("127.0.0.1:1"))),
        ))
        .await;
    stream.send(request_body(body, true)).await;
    let (r, error) = immediate(stream.next().await);
    assert_eq!(r.status.map(|s| s.code), Some(503), "{error}");
    assert_eq!(error["error"]["code"], "model_unavailable");
    assert!(
        stream.next().await.is_none(),
        "the picker ends the stream after an immediate response"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_model_is_404_and_an_alias_is_renamed_for_the_server() {
    let server = synthetic(&[]);
    let config = format!(
        "models:\n  - name: emb\n    aliases: [embed]\n    endpoints: ['{}']\n",
        server.http
    );
    let router = Router::start(&config, &["--epp-addr=127.0.0.1:0"]).await;

    let mut stream = Stream::open(&router).await;
    stream
        .send(request_headers(BodySendMode::FullDuplexStreamed, None))
        .await;
    stream
        .send(request_body(br#"{"model": "nope", "input": "x"}"#, true))
        .await;
    let (r, error) = immediate(stream.next().await);
    assert_eq!(r.status.map(|s| s.code), Some(404), "{error}");
    assert_eq!(error["error"]["code"], "model_not_found");
    assert_eq!(error["error"]["param"], "model");
    assert!(
        error["error"]["message"].as_str().unwrap_or("").contains("emb"),
        "{error}"
    );
    let content_type = r
        .headers
        .iter()
        .flat_map(|m| &m.set_headers)
        .filter_map(|o| o.header.as_ref())
        .find(|h| h.key == "content-type")
        .map(|h| h.raw_value.clone());
    assert_eq!(content_type.as_deref(), Some(b"application/json".as_slice()));

    // The server knows its served name only: the alias is renamed in the body handed back.
    let (to, back, _) = pick(&router, br#"{"model": "embed", "input": "x"}"#, None).await;
    assert_eq!(to, server.http.to_string());
    let renamed: serde_json::Value = serde_json::from_slice(&back).expect("json");
    assert_eq!(renamed, json!({"model": "emb", "input": "x"}));
    let answer = post_raw(&format!("http://{to}/v1/embeddings"), back.into(), &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}
