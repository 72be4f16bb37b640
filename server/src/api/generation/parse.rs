//! Reading OpenAI `chat/completions` and `completions` bodies: every field checked, every error
//! naming the field and its limit, all before any tokenisation. Pure.

use serde_json::{Map, Value};

use super::super::{json_type, string_field};
use crate::{
    error::InferError,
    generate::{sampling::SamplingParams, tokenizer::ChatMessage},
};

/// Limits on a generation request, from the model and the flags.
#[derive(Debug, Clone, Copy)]
pub struct GenerationLimits {
    /// The model's context length (prompt plus generated tokens).
    pub context_length: usize,
    /// `max_tokens` when the request names none.
    pub default_max_tokens: usize,
    /// Bytes of prompt text at most (all messages together), checked before tokenisation.
    pub max_prompt_bytes: usize,
}

/// Messages in one chat request at most.
pub const MAX_MESSAGES: usize = 256;
/// Stop strings at most (OpenAI's limit).
pub const MAX_STOP: usize = 4;
/// Bytes of one stop string at most.
pub const MAX_STOP_BYTES: usize = 64;

/// What a request asks for besides its prompt.
#[derive(Debug, Clone)]
pub struct Options {
    /// The `model` field, if any.
    pub model: Option<String>,
    /// Sampling and stopping.
    pub params: SamplingParams,
    /// `stream`.
    pub stream: bool,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

impl Options {
    /// Whether the same request gives the same text again (greedy, or a fixed seed): only such
    /// requests are mirrored to a shadow, whose text is compared with the primary's.
    pub fn deterministic(&self) -> bool {
        self.params.temperature <= 0.0 || self.params.seed.is_some()
    }
}

/// The prompt of a request.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// A chat: the model's chat template turns it into text.
    Chat(Vec<ChatMessage>),
    /// A completion's prompt text, as is.
    Text(String),
}

fn object(body: &Value) -> Result<&Map<String, Value>, InferError> {
    body.as_object().ok_or_else(|| {
        InferError::invalid("body", format!("expected a JSON object, got {}", json_type(body)))
    })
}

/// A `chat/completions` body.
pub fn parse_chat(body: &Value, limits: &GenerationLimits) -> Result<(Prompt, Options), InferError> {
    let o = object(body)?;
    let messages = o
        .get("messages")
        .ok_or_else(|| InferError::invalid("messages", "is required: an array of {role, content}"))?
        .as_array()
        .ok_or_else(|| InferError::invalid("messages", "expected an array of {role, content}"))?;
    if messages.is_empty() || messages.len() > MAX_MESSAGES {
        return Err(InferError::invalid(
            "messages",
            format!("must hold 1 to {MAX_MESSAGES} messages, has {}", messages.len()),
        ));
    }
    let mut parsed = Vec::with_capacity(messages.len());
    let mut bytes = 0;
    for (i, m) in messages.iter().enumerate() {
        let message = parse_message(m, i)?;
        bytes += message.content.len() + message.role.len();
        if bytes > limits.max_prompt_bytes {
            return Err(prompt_too_large("messages", limits));
        }
        parsed.push(message);
    }
    Ok((Prompt::Chat(parsed), options(o, limits, true)?))
}

fn parse_message(m: &Value, i: usize) -> Result<ChatMessage, InferError> {
    let field = |name: &str| format!("messages[{i}].{name}");
    let role = string_field(
        m.get("role")
            .ok_or_else(|| InferError::invalid(field("role"), "is required"))?,
        &field("role"),
    )?;
    if !["system", "user", "assistant", "developer", "tool"].contains(&role) {
        return Err(InferError::invalid(
            field("role"),
            format!("unknown role `{role}`: system, developer, user, assistant or tool"),
        ));
    }
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => {
            let mut text = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                if p.get("type").and_then(Value::as_str) != Some("text") {
                    return Err(InferError::invalid(
                        format!("messages[{i}].content[{j}].type"),
                        "only text parts are supported (type: text)",
                    ));
                }
                let part = p.get("text").unwrap_or(&Value::Null);
                text.push(string_field(part, &format!("messages[{i}].content[{j}].text"))?);
            }
            text.join("")
        }
        Some(Value::Null) | None => String::new(),
        Some(other) => {
            return Err(InferError::invalid(
                field("content"),
                format!(
                    "expected a string or an array of text parts, got {}",
                    json_type(other)
                ),
            ));
        }
    };
    Ok(ChatMessage {
        role: role.to_owned(),
        content,
    })
}

/// A `completions` body.
pub fn parse_completion(body: &Value, limits: &GenerationLimits) -> Result<(Prompt, Options), InferError> {
    let o = object(body)?;
    let prompt = match o.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(items)) if items.len() == 1 => string_field(&items[0], "prompt[0]")?.to_owned(),
        Some(Value::Array(items)) => {
            return Err(InferError::invalid(
                "prompt",
                format!("one prompt per request is supported, got {}", items.len()),
            ));
        }
        Some(other) => {
            return Err(InferError::invalid(
                "prompt",
                format!("expected a string, got {}", json_type(other)),
            ));
        }
        None => return Err(InferError::invalid("prompt", "is required: a string")),
    };
    if prompt.len() > limits.max_prompt_bytes {
        return Err(prompt_too_large("prompt", limits));
    }
    Ok((Prompt::Text(prompt), options(o, limits, false)?))
}

fn prompt_too_large(field: &str, limits: &GenerationLimits) -> InferError {
    InferError::too_large(
        field,
        format!(
            "the prompt is longer than {} bytes (--max-prompt-bytes)",
            limits.max_prompt_bytes
        ),
    )
}

fn options(o: &Map<String, Value>, limits: &GenerationLimits, chat: bool) -> Result<Options, InferError> {
    let model = o
        .get("model")
        .map(|m| string_field(m, "model").map(str::to_owned))
        .transpose()?;
    if let Some(n) = o.get("n").filter(|v| !v.is_null())
        && n.as_u64() != Some(1)
    {
        return Err(InferError::invalid("n", "only n = 1 is supported"));
    }
    let max_tokens = max_tokens(o, limits, chat)?;
    let temperature = number(o, "temperature", 0.0..=2.0)?.unwrap_or(1.0) as f32;
    let top_p = number(o, "top_p", f64::MIN_POSITIVE..=1.0)?.map(|p| p as f32);
    let top_k = integer(o, "top_k", 1..=100_000)?.map(|k| k as usize);
    let seed = match o.get("seed").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .or_else(|| v.as_i64().map(|i| i as u64))
                .ok_or_else(|| InferError::invalid("seed", "expected an integer"))?,
        ),
    };
    let logprobs = match o.get("logprobs").filter(|v| !v.is_null()) {
        None => false,
        Some(Value::Bool(b)) => *b,
        // The completions API names a count of alternatives; the chosen token's is what we give.
        Some(v) if !chat && v.as_u64().is_some() => true,
        Some(v) => {
            return Err(InferError::invalid(
                "logprobs",
                format!("expected a boolean, got {}", json_type(v)),
            ));
        }
    };
    let stream = flag(o, "stream")?;
    let include_usage = match o.get("stream_options").filter(|v| !v.is_null()) {
        None => false,
        Some(so) => so
            .get("include_usage")
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| InferError::invalid("stream_options.include_usage", "expected a boolean"))
            })
            .transpose()?
            .unwrap_or(false),
    };
    Ok(Options {
        model,
        params: SamplingParams {
            temperature,
            top_p,
            top_k,
            seed,
            max_tokens,
            stop: stop(o)?,
            logprobs,
        },
        stream,
        include_usage,
    })
}

fn max_tokens(o: &Map<String, Value>, limits: &GenerationLimits, chat: bool) -> Result<usize, InferError> {
    let names: &[&str] = if chat {
        &["max_completion_tokens", "max_tokens"]
    } else {
        &["max_tokens"]
    };
    for name in names {
        if let Some(n) = integer(o, name, 1..=limits.context_length as i64)? {
            return Ok(n as usize);
        }
    }
    Ok(limits.default_max_tokens.min(limits.context_length))
}

fn flag(o: &Map<String, Value>, name: &str) -> Result<bool, InferError> {
    match o.get(name).filter(|v| !v.is_null()) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(v) => Err(InferError::invalid(
            name,
            format!("expected a boolean, got {}", json_type(v)),
        )),
    }
}

fn number(
    o: &Map<String, Value>,
    name: &str,
    range: std::ops::RangeInclusive<f64>,
) -> Result<Option<f64>, InferError> {
    let Some(v) = o.get(name).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let x = v
        .as_f64()
        .ok_or_else(|| InferError::invalid(name, format!("expected a number, got {}", json_type(v))))?;
    if !range.contains(&x) {
        let low = if *range.start() == f64::MIN_POSITIVE {
            "above 0".to_owned()
        } else {
            format!("at least {}", range.start())
        };
        return Err(InferError::invalid(
            name,
            format!("must be {low} and at most {}, is {x}", range.end()),
        ));
    }
    Ok(Some(x))
}

fn integer(
    o: &Map<String, Value>,
    name: &str,
    range: std::ops::RangeInclusive<i64>,
) -> Result<Option<i64>, InferError> {
    let Some(v) = o.get(name).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    let n = v
        .as_i64()
        .ok_or_else(|| InferError::invalid(name, format!("expected an integer, got {}", json_type(v))))?;
    if !range.contains(&n) {
        return Err(InferError::invalid(
            name,
            format!("must be {} to {}, is {n}", range.start(), range.end()),
        ));
    }
    Ok(Some(n))
}

fn stop(o: &Map<String, Value>) -> Result<Vec<String>, InferError> {
    let list = match o.get("stop").filter(|v| !v.is_null()) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, s)| string_field(s, &format!("stop[{i}]")).map(str::to_owned))
            .collect::<Result<_, _>>()?,
        Some(v) => {
            return Err(InferError::invalid(
                "stop",
                format!("expected a string or an array of strings, got {}", json_type(v)),
            ));
        }
    };
    if list.len() > MAX_STOP {
        return Err(InferError::invalid(
            "stop",
            format!("at most {MAX_STOP} stop strings, got {}", list.len()),
        ));
    }
    if let Some(s) = list.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(InferError::invalid(
            "stop",
            format!(
                "each stop string must be 1 to {MAX_STOP_BYTES} bytes, one is {}",
                s.len()
            ),
        ));
    }
    Ok(list)
}

#[cfg(test)]
mod tests;
