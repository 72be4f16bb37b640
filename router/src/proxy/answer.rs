//! Answers the router makes itself, in the OpenAI error envelope
//! (`{"error": {"message", "type", "param", "code"}}`), and the headers it adds.

use std::time::Duration;

use axum::{
    body::Body,
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::Response,
};
use serde_json::json;

use crate::limits::Verdict;

/// Why the router answered itself.
#[derive(Debug)]
pub enum Refusal {
    /// No key, an unknown key, or a malformed `Authorization` header: 401.
    Unauthorized(&'static str),
    /// The body is not a JSON object with a `model` string: 400.
    BadRequest(String),
    /// The body is over `--max-body-bytes`: 413.
    TooLarge(usize),
    /// The model is unknown to this caller: 404, listing the ones it may use.
    UnknownModel {
        /// The `model` asked for.
        requested: String,
        /// The served names the caller may use.
        available: Vec<String>,
    },
    /// Over a key's limit: 429 with Retry-After.
    RateLimited(Duration),
    /// No Ready endpoint within the hold (or the hold queue is full): 503 with Retry-After.
    Unavailable {
        /// What the client reads.
        message: String,
        /// Retry-After.
        retry_after: Duration,
    },
    /// Every try failed (connect errors, timeouts): 502, or 504 past the deadline.
    Upstream {
        /// 502 or 504.
        status: StatusCode,
        /// What went wrong, without addresses.
        message: String,
    },
}

impl Refusal {
    /// The status code.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnknownModel { .. } => StatusCode::NOT_FOUND,
            Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Upstream { status, .. } => *status,
        }
    }

    fn parts(&self) -> (String, &'static str, Option<&'static str>, &'static str) {
        match self {
            Self::Unauthorized(why) => (
                (*why).to_owned(),
                "invalid_request_error",
                None,
                "invalid_api_key",
            ),
            Self::BadRequest(why) => (why.clone(), "invalid_request_error", None, "invalid_request"),
            Self::TooLarge(max) => (
                format!("the request body is larger than the router's limit of {max} bytes"),
                "invalid_request_error",
                None,
                "request_too_large",
            ),
            Self::UnknownModel { requested, available } => (
                format!(
                    "The model `{requested}` does not exist or you do not have access to it. Models you may use: {}.",
                    if available.is_empty() {
                        "none".to_owned()
                    } else {
                        available.join(", ")
                    }
                ),
                "invalid_request_error",
                Some("model"),
                "model_not_found",
            ),
            Self::RateLimited(after) => (
                format!("rate limit reached; retry in {:.1}s", after.as_secs_f64()),
                "requests",
                None,
                "rate_limit_exceeded",
            ),
            Self::Unavailable { message, .. } => (message.clone(), "server_error", None, "model_unavailable"),
            Self::Upstream { message, .. } => (message.clone(), "server_error", None, "upstream_error"),
        }
    }

    /// The response.
    pub fn into_response(self) -> Response {
        let (message, kind, param, code) = self.parts();
        let body = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        match &self {
            Self::RateLimited(after)
            | Self::Unavailable {
                retry_after: after, ..
            } => {
                headers.insert("retry-after", seconds(*after));
            }
            Self::Unauthorized(_) => {
                headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

/// Whole seconds, rounded up, at least 1.
fn seconds(d: Duration) -> HeaderValue {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(s.max(1))
}

/// The `x-ratelimit-*` headers of a verdict (OpenAI's names).
pub fn rate_limit_headers(headers: &mut HeaderMap, verdict: &Verdict) {
    for (what, state) in [("requests", verdict.requests), ("tokens", verdict.tokens)] {
        let Some((limit, remaining, reset)) = state else {
            continue;
        };
        let name = |n: &str| HeaderName::try_from(format!("x-ratelimit-{n}-{what}"));
        if let Ok(n) = name("limit") {
            headers.insert(n, HeaderValue::from(limit));
        }
        if let Ok(n) = name("remaining") {
            headers.insert(n, HeaderValue::from(remaining));
        }
        if let Ok(n) = name("reset")
            && let Ok(v) = HeaderValue::try_from(format!("{:.3}s", reset.as_secs_f64()))
        {
            headers.insert(n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_model_lists_what_the_caller_may_use() {
        let r = Refusal::UnknownModel {
            requested: "gpt-9".into(),
            available: vec!["emb".into(), "chat".into()],
        };
        let (message, _, param, code) = r.parts();
        assert_eq!((param, code), (Some("model"), "model_not_found"));
        assert!(
            message.contains("`gpt-9`") && message.ends_with("emb, chat."),
            "{message}"
        );
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn limits_and_unavailability_say_when_to_retry() {
        let r = Refusal::RateLimited(Duration::from_millis(1200)).into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()["retry-after"], "2");
        let r = Refusal::Unavailable {
            message: "starting".into(),
            retry_after: Duration::ZERO,
        }
        .into_response();
        assert_eq!(r.headers()["retry-after"], "1");
    }

    #[test]
    fn rate_limit_headers_follow_openai_names() {
        let mut h = HeaderMap::new();
        let v = Verdict {
            allowed: Ok(()),
            requests: Some((10, 9, Duration::from_millis(100))),
            tokens: None,
        };
        rate_limit_headers(&mut h, &v);
        assert_eq!(h["x-ratelimit-limit-requests"], "10");
        assert_eq!(h["x-ratelimit-remaining-requests"], "9");
        assert_eq!(h["x-ratelimit-reset-requests"], "0.100s");
        assert!(h.get("x-ratelimit-limit-tokens").is_none());
    }
}
