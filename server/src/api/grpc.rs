//! Open Inference Protocol v2 over gRPC (`inference.GRPCInferenceService`), on the shared engine.

use std::sync::Arc;

use modelfleet_contract::headers;
use modelfleet_proto::inference::{
    self as pb,
    grpc_inference_service_server::{GrpcInferenceService, GrpcInferenceServiceServer},
};
use tonic::{Request, Response, Status};

use super::oip::{INPUT_NAME, OUTPUT_NAME, check_model};
use crate::{
    engine::{EmbedRequest, Engine},
    error::InferError,
};

/// The tonic service for `engine`.
pub fn grpc_service(engine: Arc<Engine>) -> GrpcInferenceServiceServer<OipGrpc> {
    GrpcInferenceServiceServer::new(OipGrpc { engine })
}

/// OIP v2 gRPC handlers.
#[derive(Debug, Clone)]
pub struct OipGrpc {
    engine: Arc<Engine>,
}

/// Texts of a ModelInfer request, and whether the client sent raw contents (then the answer uses
/// raw contents too, as Triton clients expect).
#[derive(Debug, PartialEq)]
pub struct GrpcInputs {
    pub texts: Vec<String>,
    pub raw: bool,
}

/// Reads the BYTES input `text` from typed or raw contents; errors name the field.
pub fn parse_model_infer(request: &pb::ModelInferRequest) -> Result<GrpcInputs, InferError> {
    if request.inputs.len() != 1 {
        return Err(InferError::invalid(
            "inputs",
            format!(
                "expected exactly 1 input tensor (`{INPUT_NAME}`), got {}",
                request.inputs.len()
            ),
        ));
    }
    let input = &request.inputs[0];
    if input.name != INPUT_NAME {
        return Err(InferError::invalid(
            "inputs[0].name",
            format!("unknown input `{}`; this model takes `{INPUT_NAME}`", input.name),
        ));
    }
    if input.datatype != "BYTES" {
        return Err(InferError::invalid(
            "inputs[0].datatype",
            format!("expected BYTES, got {}", input.datatype),
        ));
    }
    for (i, o) in request.outputs.iter().enumerate() {
        if o.name != OUTPUT_NAME {
            return Err(InferError::invalid(
                format!("outputs[{i}].name"),
                format!("unknown output `{}`; this model returns `{OUTPUT_NAME}`", o.name),
            ));
        }
    }
    let (elements, raw) = match request.raw_input_contents.first() {
        Some(raw) => (split_raw_bytes(raw)?, true),
        None => (
            input
                .contents
                .as_ref()
                .map(|c| c.bytes_contents.clone())
                .unwrap_or_default(),
            false,
        ),
    };
    let texts = elements
        .into_iter()
        .enumerate()
        .map(|(i, b)| {
            String::from_utf8(b).map_err(|_| {
                InferError::invalid(format!("inputs[0].contents[{i}]"), "is not valid UTF-8 text")
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let n = texts.len() as i64;
    if !(input.shape == [n] || input.shape == [n, 1]) {
        return Err(InferError::invalid(
            "inputs[0].shape",
            format!(
                "{:?} does not match {n} strings; expected [{n}] or [{n}, 1]",
                input.shape
            ),
        ));
    }
    Ok(GrpcInputs { texts, raw })
}

/// Raw BYTES tensors: each element is a 4-byte little-endian length, then the bytes.
fn split_raw_bytes(raw: &[u8]) -> Result<Vec<Vec<u8>>, InferError> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(InferError::invalid(
                "raw_input_contents[0]",
                "truncated length prefix",
            ));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if tail.len() < len {
            return Err(InferError::invalid(
                "raw_input_contents[0]",
                format!("element {} claims {len} bytes, {} remain", out.len(), tail.len()),
            ));
        }
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    Ok(out)
}

fn header<'a>(request: &'a Request<pb::ModelInferRequest>, name: &str) -> Option<&'a str> {
    request.metadata().get(name).and_then(|v| v.to_str().ok())
}

#[tonic::async_trait]
impl GrpcInferenceService for OipGrpc {
    async fn server_live(
        &self,
        _: Request<pb::ServerLiveRequest>,
    ) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<pb::ServerReadyRequest>,
    ) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse {
            ready: self.engine.lifecycle.is_ready(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<pb::ModelReadyRequest>,
    ) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        check_model(&self.engine, &r.name, version(&r.version))?;
        Ok(Response::new(pb::ModelReadyResponse {
            ready: self.engine.lifecycle.is_ready(),
        }))
    }

    async fn server_metadata(
        &self,
        _: Request<pb::ServerMetadataRequest>,
    ) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "modelfleet-server".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: vec!["modelfleet_tiers".into()],
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<pb::ModelMetadataRequest>,
    ) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        check_model(&self.engine, &r.name, version(&r.version))?;
        let e = &self.engine;
        let tensor =
            |name: &str, datatype: &str, shape: Vec<i64>| pb::model_metadata_response::TensorMetadata {
                name: name.into(),
                datatype: datatype.into(),
                shape,
            };
        Ok(Response::new(pb::ModelMetadataResponse {
            name: e.model_name.clone(),
            versions: vec![e.model_version.clone()],
            platform: format!("modelfleet_{}", e.info.name),
            inputs: vec![tensor(INPUT_NAME, "BYTES", vec![-1])],
            outputs: vec![tensor(OUTPUT_NAME, "FP32", vec![-1, e.info.dim as i64])],
        }))
    }

    async fn model_infer(
        &self,
        request: Request<pb::ModelInferRequest>,
    ) -> Result<Response<pb::ModelInferResponse>, Status> {
        let e = &self.engine;
        let tier = header(&request, headers::TIER);
        let body = request.get_ref();
        let parsed = check_model(e, &body.model_name, version(&body.model_version))
            .and_then(|()| parse_model_infer(body))
            .map_err(|err| e.reject_early("oip_grpc", tier, err))?;
        let n = parsed.texts.len();
        let out = e
            .embed(EmbedRequest {
                api: "oip_grpc",
                model: None,
                texts: parsed.texts,
                tier,
                timeout: header(&request, headers::TIMEOUT),
                shadow_copy: request.metadata().contains_key(headers::SHADOW),
            })
            .await?;
        let flat: Vec<f32> = out.vectors.into_iter().flatten().collect();
        let mut output = pb::model_infer_response::InferOutputTensor {
            name: OUTPUT_NAME.into(),
            datatype: "FP32".into(),
            shape: vec![n as i64, e.info.dim as i64],
            ..Default::default()
        };
        let mut raw_output_contents = Vec::new();
        if parsed.raw {
            raw_output_contents.push(flat.iter().flat_map(|x| x.to_le_bytes()).collect());
        } else {
            output.contents = Some(pb::InferTensorContents {
                fp32_contents: flat,
                ..Default::default()
            });
        }
        Ok(Response::new(pb::ModelInferResponse {
            model_name: e.model_name.clone(),
            model_version: e.model_version.clone(),
            id: body.id.clone(),
            outputs: vec![output],
            raw_output_contents,
            ..Default::default()
        }))
    }
}

fn version(v: &str) -> Option<&str> {
    (!v.is_empty()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(contents: Vec<&str>, shape: Vec<i64>) -> pb::ModelInferRequest {
        pb::ModelInferRequest {
            model_name: "m".into(),
            inputs: vec![pb::model_infer_request::InferInputTensor {
                name: "text".into(),
                datatype: "BYTES".into(),
                shape,
                contents: Some(pb::InferTensorContents {
                    bytes_contents: contents.into_iter().map(|s| s.as_bytes().to_vec()).collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn typed_and_raw_bytes_give_the_same_texts() {
        let typed = parse_model_infer(&request(vec!["ab", "c"], vec![2])).unwrap();
        assert_eq!(
            typed,
            GrpcInputs {
                texts: vec!["ab".into(), "c".into()],
                raw: false
            }
        );
        let mut raw = request(vec![], vec![2, 1]);
        raw.raw_input_contents =
            vec![[&2u32.to_le_bytes()[..], b"ab", &1u32.to_le_bytes()[..], b"c"].concat()];
        assert_eq!(parse_model_infer(&raw).unwrap().texts, typed.texts);
    }

    #[test]
    fn mismatches_name_the_field() {
        let param = |r: pb::ModelInferRequest| match parse_model_infer(&r).unwrap_err() {
            InferError::Invalid { param, .. } => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(request(vec!["a"], vec![2])), "inputs[0].shape");
        let mut r = request(vec!["a"], vec![1]);
        r.inputs[0].datatype = "FP32".into();
        assert_eq!(param(r), "inputs[0].datatype");
        let mut r = request(vec![], vec![1]);
        r.raw_input_contents = vec![vec![9, 0, 0, 0, b'x']];
        assert_eq!(param(r), "raw_input_contents[0]");
    }
}
