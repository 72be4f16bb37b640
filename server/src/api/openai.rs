//! OpenAI-compatible `/v1/embeddings` and `/v1/models`.

use std::sync::Arc;

use axum::{
    Json,
    extract::{Path, State, rejection::BytesRejection},
    http::HeaderMap,
    response::{IntoResponse, Response},
};
use base64::Engine as _;
use bytes::Bytes;
use serde::Serialize;
use serde_json::{Value, json};

use super::{Headers, json_body, json_type, string_field};
use crate::{engine::Engine, error::InferError};

#[derive(Serialize)]
struct EmbeddingList<'a> {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: &'a str,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: EmbeddingData,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingData {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

/// The parts of an OpenAI embeddings request this server uses.
#[derive(Debug, PartialEq)]
pub struct ParsedRequest {
    pub model: Option<String>,
    pub texts: Vec<String>,
    pub base64: bool,
}

/// Reads an embeddings request; every error names the field.
pub fn parse_request(body: &Value, dim: usize) -> Result<ParsedRequest, InferError> {
    let object = body.as_object().ok_or_else(|| {
        InferError::invalid("body", format!("expected a JSON object, got {}", json_type(body)))
    })?;
    let model = object
        .get("model")
        .map(|m| string_field(m, "model").map(str::to_owned))
        .transpose()?;
    let input = object
        .get("input")
        .ok_or_else(|| InferError::invalid("input", "is required: a string or an array of strings"))?;
    let texts = match input {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| string_field(v, &format!("input[{i}]")).map(str::to_owned))
            .collect::<Result<_, _>>()?,
        other => {
            return Err(InferError::invalid(
                "input",
                format!(
                    "expected a string or an array of strings, got {}",
                    json_type(other)
                ),
            ));
        }
    };
    let base64 = match object.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(v) => match string_field(v, "encoding_format")? {
            "float" => false,
            "base64" => true,
            other => {
                return Err(InferError::invalid(
                    "encoding_format",
                    format!("`{other}` is not supported; use float or base64"),
                ));
            }
        },
    };
    if let Some(d) = object.get("dimensions").filter(|d| !d.is_null())
        && d.as_u64() != Some(dim as u64)
    {
        return Err(InferError::invalid(
            "dimensions",
            format!(
                "this model returns {dim} dimensions and cannot shorten them; omit the field or send {dim}"
            ),
        ));
    }
    Ok(ParsedRequest { model, texts, base64 })
}

/// `POST /v1/embeddings`.
pub async fn embeddings(
    State(engine): State<Arc<Engine>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match serve(&engine, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn serve(
    engine: &Engine,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, InferError> {
    let headers = Headers::of(headers);
    let parsed = match json_body(body).and_then(|b| parse_request(&b, engine.info.dim)) {
        Ok(p) => p,
        Err(e) => {
            // Counted like any other answered request.
            return Err(engine.reject_early("openai", headers.tier, e));
        }
    };
    let request = headers.request("openai", parsed.model.as_deref(), parsed.texts);
    let out = engine.embed(request).await?;
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: if parsed.base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                EmbeddingData::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                EmbeddingData::Float(v)
            },
        })
        .collect();
    Ok(Json(EmbeddingList {
        object: "list",
        data,
        model: &engine.model_name,
        usage: Usage {
            prompt_tokens: out.prompt_tokens,
            total_tokens: out.prompt_tokens,
        },
    })
    .into_response())
}

fn model_object(engine: &Engine) -> Value {
    json!({"id": engine.model_name, "object": "model", "created": 0, "owned_by": "modelfleet"})
}

/// `GET /v1/models`.
pub async fn models(State(engine): State<Arc<Engine>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_object(&engine)]}))
}

/// `GET /v1/models/{model}`.
pub async fn model(State(engine): State<Arc<Engine>>, Path(model): Path<String>) -> Response {
    if model == engine.model_name {
        Json(model_object(&engine)).into_response()
    } else {
        InferError::ModelNotFound {
            requested: model,
            served: engine.model_name.clone(),
        }
        .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_arrays_are_inputs() {
        let p = parse_request(&json!({"model": "m", "input": "hi"}), 3).unwrap();
        assert_eq!(
            (p.model.as_deref(), p.texts.len(), p.base64),
            (Some("m"), 1, false)
        );
        let p = parse_request(&json!({"input": ["a", "b"], "encoding_format": "base64"}), 3).unwrap();
        assert_eq!((p.texts.len(), p.base64), (2, true));
    }

    #[test]
    fn wrong_types_name_the_field() {
        let param = |body: Value| match parse_request(&body, 3).unwrap_err() {
            InferError::Invalid { param, .. } => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(param(json!({"input": ["a", 3]})), "input[1]");
        assert_eq!(param(json!({"input": 3})), "input");
        assert_eq!(param(json!({"model": 1, "input": "a"})), "model");
        assert_eq!(param(json!({})), "input");
        assert_eq!(
            param(json!({"input": "a", "encoding_format": "int8"})),
            "encoding_format"
        );
        assert_eq!(param(json!({"input": "a", "dimensions": 2})), "dimensions");
        assert_eq!(param(json!([1])), "body");
    }
}
