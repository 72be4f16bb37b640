//! Open Inference Protocol v2 over HTTP: metadata, readiness and `infer` with a BYTES input
//! `text` and an FP32 output `embedding`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Headers, json_body, json_type, string_field};
use crate::{engine::Engine, error::InferError};

/// Name of the input tensor.
pub const INPUT_NAME: &str = "text";
/// Name of the output tensor.
pub const OUTPUT_NAME: &str = "embedding";

/// `GET /v2`.
pub async fn server_metadata() -> Json<Value> {
    Json(json!({
        "name": "modelfleet-server",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["modelfleet_tiers"],
    }))
}

/// The OIP model metadata document.
pub fn metadata(engine: &Engine) -> Value {
    json!({
        "name": engine.model_name,
        "versions": [engine.model_version],
        "platform": format!("modelfleet_{}", engine.info.name),
        "inputs": [{"name": INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": OUTPUT_NAME, "datatype": "FP32", "shape": [-1, engine.info.dim]}],
    })
}

/// Checks the model (and version) named in the path.
pub fn check_model(engine: &Engine, model: &str, version: Option<&str>) -> Result<(), InferError> {
    if model != engine.model_name {
        return Err(InferError::ModelNotFound {
            requested: model.to_owned(),
            served: engine.model_name.clone(),
        });
    }
    match version {
        Some(v) if v != engine.model_version => Err(InferError::ModelNotFound {
            requested: format!("{model} version {v}"),
            served: format!("{} version {}", engine.model_name, engine.model_version),
        }),
        _ => Ok(()),
    }
}

/// `GET /v2/models/{model}`.
pub async fn model_metadata(State(engine): State<Arc<Engine>>, Path(model): Path<String>) -> Response {
    metadata_response(&engine, &model, None)
}

/// `GET /v2/models/{model}/versions/{version}`.
pub async fn model_metadata_version(
    State(engine): State<Arc<Engine>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    metadata_response(&engine, &model, Some(&version))
}

fn metadata_response(engine: &Engine, model: &str, version: Option<&str>) -> Response {
    match check_model(engine, model, version) {
        Ok(()) => Json(metadata(engine)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /v2/models/{model}/ready`.
pub async fn model_ready(State(engine): State<Arc<Engine>>, Path(model): Path<String>) -> Response {
    ready_response(&engine, &model, None)
}

/// `GET /v2/models/{model}/versions/{version}/ready`.
pub async fn model_ready_version(
    State(engine): State<Arc<Engine>>,
    Path((model, version)): Path<(String, String)>,
) -> Response {
    ready_response(&engine, &model, Some(&version))
}

fn ready_response(engine: &Engine, model: &str, version: Option<&str>) -> Response {
    if let Err(e) = check_model(engine, model, version) {
        return e.into_response();
    }
    let ready = engine.lifecycle.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(json!({"name": model, "ready": ready}))).into_response()
}

/// The texts of an OIP infer request, and its id.
#[derive(Debug, PartialEq)]
pub struct ParsedInfer {
    pub id: Option<String>,
    pub texts: Vec<String>,
}

/// Reads an infer request: exactly one BYTES input `text` of shape `[n]` or `[n, 1]`; requested
/// outputs, if any, must be `embedding`. Every error names the field.
pub fn parse_infer(body: &Value) -> Result<ParsedInfer, InferError> {
    let object = body.as_object().ok_or_else(|| {
        InferError::invalid("body", format!("expected a JSON object, got {}", json_type(body)))
    })?;
    let id = object
        .get("id")
        .map(|v| string_field(v, "id").map(str::to_owned))
        .transpose()?;
    let inputs = object
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or_else(|| InferError::invalid("inputs", "is required: an array with one tensor"))?;
    if inputs.len() != 1 {
        return Err(InferError::invalid(
            "inputs",
            format!(
                "expected exactly 1 input tensor (`{INPUT_NAME}`), got {}",
                inputs.len()
            ),
        ));
    }
    let tensor = &inputs[0];
    let name = string_field(tensor.get("name").unwrap_or(&Value::Null), "inputs[0].name")?;
    if name != INPUT_NAME {
        return Err(InferError::invalid(
            "inputs[0].name",
            format!("unknown input `{name}`; this model takes `{INPUT_NAME}`"),
        ));
    }
    let datatype = string_field(
        tensor.get("datatype").unwrap_or(&Value::Null),
        "inputs[0].datatype",
    )?;
    if datatype != "BYTES" {
        return Err(InferError::invalid(
            "inputs[0].datatype",
            format!("expected BYTES, got {datatype}"),
        ));
    }
    let shape = tensor
        .get("shape")
        .and_then(Value::as_array)
        .and_then(|dims| dims.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
        .ok_or_else(|| {
            InferError::invalid("inputs[0].shape", "expected an array of non-negative integers")
        })?;
    let texts = flatten_strings(tensor.get("data").unwrap_or(&Value::Null))?;
    let valid_shape = match shape.as_slice() {
        [n] => *n as usize == texts.len(),
        [n, 1] => *n as usize == texts.len(),
        _ => false,
    };
    if !valid_shape {
        return Err(InferError::invalid(
            "inputs[0].shape",
            format!(
                "{shape:?} does not match {} strings in data; expected [{0}] or [{0}, 1]",
                texts.len()
            ),
        ));
    }
    if let Some(outputs) = object.get("outputs").and_then(Value::as_array) {
        for (i, o) in outputs.iter().enumerate() {
            let param = format!("outputs[{i}].name");
            let name = string_field(o.get("name").unwrap_or(&Value::Null), &param)?;
            if name != OUTPUT_NAME {
                return Err(InferError::invalid(
                    param,
                    format!("unknown output `{name}`; this model returns `{OUTPUT_NAME}`"),
                ));
            }
        }
    }
    Ok(ParsedInfer { id, texts })
}

/// Row-major data: a flat or nested array of strings.
fn flatten_strings(data: &Value) -> Result<Vec<String>, InferError> {
    fn walk(v: &Value, path: String, out: &mut Vec<String>) -> Result<(), InferError> {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, format!("{path}[{i}]"), out)?;
                }
            }
            other => {
                return Err(InferError::invalid(
                    path,
                    format!("expected a string (BYTES element), got {}", json_type(other)),
                ));
            }
        }
        Ok(())
    }
    if !data.is_array() {
        return Err(InferError::invalid(
            "inputs[0].data",
            "is required: an array of strings",
        ));
    }
    let mut out = Vec::new();
    walk(data, "inputs[0].data".into(), &mut out)?;
    Ok(out)
}

// Typed so the f32 outputs serialize as f32 (shortest form), not widened to f64.
#[derive(Serialize)]
struct InferResponse<'a> {
    model_name: &'a str,
    model_version: &'a str,
    id: Option<String>,
    outputs: [OutputTensor; 1],
}

#[derive(Serialize)]
struct OutputTensor {
    name: &'static str,
    datatype: &'static str,
    shape: [usize; 2],
    data: Vec<f32>,
}

/// `POST /v2/models/{model}/infer`.
pub async fn infer(
    State(engine): State<Arc<Engine>>,
    Path(model): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(&engine, &model, None, &headers, body).await
}

/// `POST /v2/models/{model}/versions/{version}/infer`.
pub async fn infer_version(
    State(engine): State<Arc<Engine>>,
    Path((model, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    serve(&engine, &model, Some(&version), &headers, body).await
}

async fn serve(
    engine: &Engine,
    model: &str,
    version: Option<&str>,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let headers = Headers::of(headers);
    let parsed = check_model(engine, model, version)
        .and_then(|()| json_body(body))
        .and_then(|b| parse_infer(&b));
    let parsed = match parsed {
        Ok(p) => p,
        Err(e) => return engine.reject_early("oip_http", headers.tier, e).into_response(),
    };
    let n = parsed.texts.len();
    match engine
        .embed(headers.request("oip_http", None, parsed.texts))
        .await
    {
        Ok(out) => {
            let data: Vec<f32> = out.vectors.into_iter().flatten().collect();
            Json(InferResponse {
                model_name: &engine.model_name,
                model_version: &engine.model_version,
                id: parsed.id,
                outputs: [OutputTensor {
                    name: OUTPUT_NAME,
                    datatype: "FP32",
                    shape: [n, engine.info.dim],
                    data,
                }],
            })
            .into_response()
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(tensor: Value) -> Value {
        json!({"id": "1", "inputs": [tensor]})
    }

    #[test]
    fn bytes_inputs_of_shape_n_or_n_by_1_are_accepted() {
        let p = parse_infer(&request(
            json!({"name": "text", "datatype": "BYTES", "shape": [2], "data": ["a", "b"]}),
        ))
        .unwrap();
        assert_eq!((p.id.as_deref(), p.texts.len()), (Some("1"), 2));
        let p = parse_infer(&request(
            json!({"name": "text", "datatype": "BYTES", "shape": [2, 1], "data": [["a"], ["b"]]}),
        ))
        .unwrap();
        assert_eq!(p.texts, ["a", "b"]);
    }

    #[test]
    fn shape_and_datatype_mismatches_name_the_field() {
        let param = |tensor: Value| match parse_infer(&request(tensor)).unwrap_err() {
            InferError::Invalid { param, .. } => param,
            other => panic!("{other:?}"),
        };
        let ok = json!({"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]});
        let with = |k: &str, v: Value| {
            let mut t = ok.clone();
            t[k] = v;
            t
        };
        assert_eq!(param(with("datatype", json!("FP32"))), "inputs[0].datatype");
        assert_eq!(param(with("shape", json!([3]))), "inputs[0].shape");
        assert_eq!(param(with("shape", json!([1, 2]))), "inputs[0].shape");
        assert_eq!(param(with("name", json!("ids"))), "inputs[0].name");
        assert_eq!(param(with("data", json!(["a", 1]))), "inputs[0].data[1]");
        let e = parse_infer(&json!({"inputs": [ok.clone()], "outputs": [{"name": "logits"}]})).unwrap_err();
        assert!(matches!(e, InferError::Invalid { ref param, .. } if param == "outputs[0].name"));
        let e = parse_infer(&json!({"inputs": [ok.clone(), ok]})).unwrap_err();
        assert!(matches!(e, InferError::Invalid { ref param, .. } if param == "inputs"));
    }
}
