//! One error type for every API: HTTP status, the OpenAI error envelope, a gRPC status, a stable
//! category for logs and metric labels, and `Retry-After` for load shedding.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header::RETRY_AFTER},
    response::{IntoResponse, Response},
};
use serde_json::json;

/// Why a request was not answered with a result.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum InferError {
    /// The request is malformed: wrong JSON, wrong type, empty or unknown values.
    #[error("{message}")]
    Invalid { param: String, message: String },
    /// An input is longer than the limit, or the request exceeds a size limit.
    #[error("{message}")]
    TooLarge { param: String, message: String },
    /// The request names a model this server does not serve.
    #[error("model `{requested}` is not served here; this server serves `{served}`")]
    ModelNotFound { requested: String, served: String },
    /// The queue (or the tier's share of it) is full.
    #[error("{message}")]
    Overloaded { message: String, retry_after: Duration },
    /// The request waited in the queue past its deadline.
    #[error("queued for {waited_ms} ms, past the {limit_ms} ms deadline ({source_of_limit})")]
    QueueTimeout {
        waited_ms: u64,
        limit_ms: u64,
        source_of_limit: &'static str,
        retry_after: Duration,
    },
    /// The server is starting or draining.
    #[error("{message}")]
    Unavailable { message: String, retry_after: Duration },
    /// The model failed on this batch.
    #[error("backend error: {0}")]
    Backend(String),
}

impl InferError {
    /// A validation error on `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Invalid {
            param: param.into(),
            message: message.into(),
        }
    }

    /// A size-limit error on `param`.
    pub fn too_large(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::TooLarge {
            param: param.into(),
            message: message.into(),
        }
    }

    /// Stable category, used as a metric label and in logs.
    pub fn category(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid",
            Self::TooLarge { .. } => "too_large",
            Self::ModelNotFound { .. } => "model_not_found",
            Self::Overloaded { .. } => "overloaded",
            Self::QueueTimeout { .. } => "queue_timeout",
            Self::Unavailable { .. } => "unavailable",
            Self::Backend(_) => "backend",
        }
    }

    /// HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Invalid { .. } => StatusCode::BAD_REQUEST,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ModelNotFound { .. } => StatusCode::NOT_FOUND,
            Self::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::QueueTimeout { .. } | Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// How long a client should wait before retrying, for load-shedding errors.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Overloaded { retry_after, .. }
            | Self::QueueTimeout { retry_after, .. }
            | Self::Unavailable { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            Self::Invalid { param, .. } | Self::TooLarge { param, .. } => Some(param),
            Self::ModelNotFound { .. } => Some("model"),
            _ => None,
        }
    }

    fn openai_type(&self) -> &'static str {
        match self {
            Self::Invalid { .. } | Self::TooLarge { .. } | Self::ModelNotFound { .. } => {
                "invalid_request_error"
            }
            Self::Overloaded { .. } | Self::QueueTimeout { .. } | Self::Unavailable { .. } => {
                "server_overloaded"
            }
            Self::Backend(_) => "server_error",
        }
    }

    /// The OpenAI error envelope `{"error": {"message", "type", "param", "code"}}`.
    pub fn envelope(&self) -> serde_json::Value {
        json!({"error": {
            "message": self.to_string(),
            "type": self.openai_type(),
            "param": self.param(),
            "code": self.category(),
        }})
    }
}

/// `Retry-After` in whole seconds, at least 1 (the header has no finer unit).
pub fn retry_after_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

impl IntoResponse for InferError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.envelope())).into_response();
        if let Some(after) = self.retry_after() {
            let headers = response.headers_mut();
            headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_seconds(after)));
            // Finer-grained hint for clients that can use it (TGI and others read this too).
            headers.insert("retry-after-ms", HeaderValue::from(after.as_millis() as u64));
        }
        response
    }
}

impl From<InferError> for tonic::Status {
    fn from(e: InferError) -> Self {
        let message = e.to_string();
        match e {
            InferError::Invalid { .. } => tonic::Status::invalid_argument(message),
            InferError::TooLarge { .. } => tonic::Status::out_of_range(message),
            InferError::ModelNotFound { .. } => tonic::Status::not_found(message),
            InferError::Overloaded { .. } => tonic::Status::resource_exhausted(message),
            InferError::QueueTimeout { .. } => tonic::Status::deadline_exceeded(message),
            InferError::Unavailable { .. } => tonic::Status::unavailable(message),
            InferError::Backend(_) => tonic::Status::internal(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overload_answers_429_with_retry_after_and_the_envelope() {
        let e = InferError::Overloaded {
            message: "queue full".into(),
            retry_after: Duration::from_millis(1200),
        };
        let r = e.clone().into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[RETRY_AFTER], "2");
        assert_eq!(e.envelope()["error"]["code"], "overloaded");
        assert_eq!(retry_after_seconds(Duration::from_millis(10)), 1);
    }

    #[test]
    fn validation_errors_name_the_param() {
        let e = InferError::invalid("input[2]", "must not be empty");
        assert_eq!(e.envelope()["error"]["param"], "input[2]");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        assert_eq!(tonic::Status::from(e).code(), tonic::Code::InvalidArgument);
    }
}
