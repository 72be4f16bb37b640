//! The real server with the real all-MiniLM-L6-v2 on CPU: outputs match reference vectors
//! computed by an independent implementation, every API returns the same vector, concurrent
//! requests are batched, and bad input gets a 4xx naming the field and the limit.

mod common;

use std::sync::OnceLock;

use common::*;
use modelfleet_proto::inference::{
    InferTensorContents, ModelInferRequest, ServerLiveRequest,
    grpc_inference_service_client::GrpcInferenceServiceClient, model_infer_request::InferInputTensor,
};
use serde_json::{Value, json};

struct Reference {
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

fn reference() -> &'static Reference {
    static REFERENCE: OnceLock<Reference> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let file: Value =
            serde_json::from_str(include_str!("reference/minilm_reference.json")).expect("reference JSON");
        let items = file["items"].as_array().expect("items");
        Reference {
            texts: items
                .iter()
                .map(|i| i["text"].as_str().expect("text").to_owned())
                .collect(),
            vectors: items
                .iter()
                .map(|i| {
                    i["embedding"]
                        .as_array()
                        .expect("embedding")
                        .iter()
                        .map(|x| x.as_f64().expect("float") as f32)
                        .collect()
                })
                .collect(),
        }
    })
}

fn minilm(extra: &[&str]) -> ServerProcess {
    let args = minilm_args();
    let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
    all.extend_from_slice(extra);
    ServerProcess::start(&all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_match_the_reference_through_every_api() {
    let server = minilm(&[]);
    let r = reference();
    let url = server.url("/v1/embeddings");

    // One request with every sentence (one padded batch) and one request per sentence.
    let batched = embeddings(&post(&url, &json!({"model": "minilm", "input": r.texts}), &[]).await);
    for (i, text) in r.texts.iter().enumerate() {
        let single = embeddings(&post(&url, &json!({"input": text}), &[]).await);
        assert_eq!(single[0].len(), 384);
        for (label, v) in [("single", &single[0]), ("batched", &batched[i])] {
            let c = cosine(v, &r.vectors[i]);
            assert!(c > 0.999, "{label} `{text}`: cosine {c} to the reference");
        }
    }

    // base64 carries the same little-endian f32 values.
    let b64 = post(
        &url,
        &json!({"input": r.texts[0], "encoding_format": "base64"}),
        &[],
    )
    .await;
    let bytes = base64_decode(
        b64.body["data"][0]["embedding"]
            .as_str()
            .expect("a base64 string"),
    );
    let floats: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert!(cosine(&floats, &r.vectors[0]) > 0.999);
    assert_eq!(b64.body["usage"]["prompt_tokens"], 12);

    // OIP over HTTP.
    let oip = post(
        &server.url("/v2/models/minilm/infer"),
        &json!({"id": "r1", "inputs": [{"name": "text", "datatype": "BYTES", "shape": [2], "data": [r.texts[0], r.texts[1]]}]}),
        &[],
    )
    .await;
    assert_eq!(oip.status, 200, "{:?}", oip.body);
    assert_eq!(oip.body["id"], "r1");
    assert_eq!(oip.body["outputs"][0]["shape"], json!([2, 384]));
    let flat: Vec<f32> = oip.body["outputs"][0]["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|x| x.as_f64().expect("float") as f32)
        .collect();
    assert!(cosine(&flat[384..], &batched[1]) > 0.99999);

    // OIP over gRPC, typed and raw contents.
    let mut grpc = GrpcInferenceServiceClient::connect(format!("http://{}", server.grpc))
        .await
        .expect("gRPC connects");
    assert!(
        grpc.server_live(ServerLiveRequest {})
            .await
            .expect("live")
            .into_inner()
            .live
    );
    let typed = grpc
        .model_infer(infer_request(&r.texts[2], false))
        .await
        .expect("ModelInfer")
        .into_inner();
    assert_eq!(typed.outputs[0].shape, [1, 384]);
    let v = &typed.outputs[0]
        .contents
        .as_ref()
        .expect("typed contents")
        .fp32_contents;
    assert!(cosine(v, &batched[2]) > 0.99999);
    let raw = grpc
        .model_infer(infer_request(&r.texts[2], true))
        .await
        .expect("ModelInfer raw")
        .into_inner();
    let raw_floats: Vec<f32> = raw.raw_output_contents[0]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(&raw_floats, v);

    let bad = grpc.model_infer(ModelInferRequest {
        model_name: "minilm".into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "FP32".into(),
            shape: vec![1],
            ..Default::default()
        }],
        ..Default::default()
    });
    let status = bad.await.expect_err("FP32 input is refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("BYTES"), "{}", status.message());
}

fn infer_request(text: &str, raw: bool) -> ModelInferRequest {
    let mut request = ModelInferRequest {
        model_name: "minilm".into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![1],
            ..Default::default()
        }],
        ..Default::default()
    };
    if raw {
        let mut bytes = (text.len() as u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(text.as_bytes());
        request.raw_input_contents = vec![bytes];
    } else {
        request.inputs[0].contents = Some(InferTensorContents {
            bytes_contents: vec![text.as_bytes().to_vec()],
            ..Default::default()
        });
    }
    request
}

fn base64_decode(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .expect("valid base64")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_coalesced_into_batches() {
    let server = minilm(&[]);
    let url = server.url("/v1/embeddings");
    let requests: Vec<_> = (0..48)
        .map(|i| {
            let url = url.clone();
            tokio::spawn(
                async move { post(&url, &json!({"input": format!("sentence number {i}")}), &[]).await },
            )
        })
        .collect();
    for r in requests {
        assert_eq!(r.await.expect("request").status, 200);
    }
    let sum = server.metric("modelfleet_batch_size_sum").await;
    let count = server.metric("modelfleet_batch_size_count").await;
    assert_eq!(sum, 48.0);
    assert!(sum / count > 1.0, "48 concurrent requests ran in {count} batches");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_4xx_naming_the_field_and_limit() {
    let server = minilm(&[
        "--max-batch-size=4",
        "--max-input-tokens=16",
        "--max-request-bytes=4096",
    ]);
    let url = server.url("/v1/embeddings");
    let long = "word ".repeat(40);
    let cases: Vec<(Value, u16, &str, &str)> = vec![
        (json!({"input": 7}), 400, "input", "string or an array"),
        (json!({"input": []}), 400, "input", "at least one"),
        (json!({"input": ["ok", ""]}), 400, "input[1]", "empty"),
        (
            json!({"input": ["a", "b", "c", "d", "e"]}),
            400,
            "input",
            "limit is 4",
        ),
        (json!({"input": ["ok", long]}), 413, "input[1]", "limit is 16"),
        (json!({"model": "gpt-4", "input": "a"}), 404, "model", "minilm"),
        (
            json!({"input": "a", "encoding_format": "int8"}),
            400,
            "encoding_format",
            "float or base64",
        ),
    ];
    for (body, status, param, needle) in cases {
        let a = post(&url, &body, &[]).await;
        assert_eq!(a.status, status, "{body}: {:?}", a.body);
        assert_eq!(a.body["error"]["param"], param, "{body}: {:?}", a.body);
        let message = a.body["error"]["message"].as_str().expect("message");
        assert!(message.contains(needle), "{body}: `{message}` lacks `{needle}`");
    }
    let malformed = post_raw(&url, "{\"input\": [".into(), &[]).await;
    assert_eq!(
        (malformed.status, malformed.body["error"]["param"].as_str()),
        (400, Some("body"))
    );
    let huge = post(&url, &json!({"input": "x".repeat(5000)}), &[]).await;
    assert_eq!(huge.status, 413, "{:?}", huge.body);
    assert!(
        huge.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("--max-request-bytes")
    );
    let unknown_tier = post(&url, &json!({"input": "a"}), &[("x-modelfleet-tier", "gold")]).await;
    assert_eq!(unknown_tier.status, 400);
    assert!(
        unknown_tier.body["error"]["message"]
            .as_str()
            .expect("message")
            .contains("default")
    );

    let oip = server.url("/v2/models/minilm/infer");
    let tensor = |datatype: &str, shape: Value| json!({"inputs": [{"name": "text", "datatype": datatype, "shape": shape, "data": ["a"]}]});
    let a = post(&oip, &tensor("FP32", json!([1])), &[]).await;
    assert_eq!(
        (a.status, a.body["error"]["param"].as_str()),
        (400, Some("inputs[0].datatype"))
    );
    let a = post(&oip, &tensor("BYTES", json!([2])), &[]).await;
    assert_eq!(
        (a.status, a.body["error"]["param"].as_str()),
        (400, Some("inputs[0].shape"))
    );
    let a = post(
        &server.url("/v2/models/other/infer"),
        &tensor("BYTES", json!([1])),
        &[],
    )
    .await;
    assert_eq!(a.status, 404);
    assert_eq!(
        server
            .metric(r#"modelfleet_requests_total{api="oip_http",tier="default",code="400"}"#)
            .await,
        2.0
    );

    // The server is still healthy after all of that.
    assert_eq!(get(&server.url("/health/ready")).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_inputs_can_be_truncated_instead() {
    let server = minilm(&["--max-input-tokens=16", "--overlong-input=truncate"]);
    let long = "word ".repeat(40);
    let a = post(&server.url("/v1/embeddings"), &json!({"input": long}), &[]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert_eq!(a.body["usage"]["prompt_tokens"], 16);
}
