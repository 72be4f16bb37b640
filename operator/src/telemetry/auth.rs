//! Who may stream telemetry: node agents presenting a projected service-account token with the
//! audience `modelfleet-operator`, checked by a TokenReview. Results are cached so a reconnect
//! storm does not become a TokenReview storm: accepted tokens for five minutes (the kubelet
//! rotates projected tokens long before they expire), rejected ones for ten seconds.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::{Api, Client, api::PostParams};

const ACCEPTED_TTL: Duration = Duration::from_secs(300);
const REJECTED_TTL: Duration = Duration::from_secs(10);
/// Bound on cached tokens (a fleet has one per agent).
const CACHE_LIMIT: usize = 10_000;

/// Why a stream was refused.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// No `authorization: Bearer` metadata.
    #[error(
        "no bearer token: send the projected service-account token (audience {0}) as `authorization: Bearer`"
    )]
    Missing(String),
    /// The API server did not accept the token.
    #[error("token rejected by TokenReview: {0}")]
    Rejected(String),
    /// The TokenReview itself failed (transient).
    #[error("TokenReview failed: {0}")]
    Review(String),
}

impl AuthError {
    /// Stable category for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            AuthError::Missing(_) => "missing",
            AuthError::Rejected(_) => "rejected",
            AuthError::Review(_) => "review_failed",
        }
    }
}

/// token → (checked at, user name or refusal).
type ReviewCache = HashMap<String, (Instant, Result<String, AuthError>)>;

/// How agents are authenticated.
#[derive(Clone)]
pub enum Authenticator {
    /// TokenReview against the API server, for `audience`.
    TokenReview {
        /// API client.
        client: Client,
        /// Required audience.
        audience: String,
        /// token → (checked at, outcome).
        cache: Arc<Mutex<ReviewCache>>,
    },
    /// A fixed set of tokens (benchmarks and unit tests, where no API server runs).
    Static(Arc<HashSet<String>>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authenticator::TokenReview { audience, .. } => {
                f.debug_struct("TokenReview").field("audience", audience).finish()
            }
            Authenticator::Static(tokens) => f.debug_tuple("Static").field(&tokens.len()).finish(),
        }
    }
}

impl Authenticator {
    /// TokenReview-backed authentication.
    pub fn token_review(client: Client, audience: impl Into<String>) -> Self {
        Authenticator::TokenReview {
            client,
            audience: audience.into(),
            cache: Default::default(),
        }
    }

    /// Checks the `authorization` metadata value; returns the authenticated user name.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<String, AuthError> {
        let audience = match self {
            Authenticator::TokenReview { audience, .. } => audience.as_str(),
            Authenticator::Static(_) => "modelfleet-operator",
        };
        let token = authorization
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| AuthError::Missing(audience.to_string()))?;
        match self {
            Authenticator::Static(tokens) => {
                if tokens.contains(token) {
                    Ok("static".into())
                } else {
                    Err(AuthError::Rejected("unknown token".into()))
                }
            }
            Authenticator::TokenReview {
                client,
                audience,
                cache,
            } => {
                let now = Instant::now();
                if let Some(hit) = cache.lock().ok().and_then(|c| {
                    c.get(token).and_then(|(at, outcome)| {
                        let ttl = if outcome.is_ok() {
                            ACCEPTED_TTL
                        } else {
                            REJECTED_TTL
                        };
                        (now.duration_since(*at) < ttl).then(|| outcome.clone())
                    })
                }) {
                    return hit;
                }
                let outcome = review(client, audience, token).await;
                // A failed review is not cached: the next attempt asks again.
                if !matches!(outcome, Err(AuthError::Review(_)))
                    && let Ok(mut c) = cache.lock()
                {
                    if c.len() >= CACHE_LIMIT {
                        c.retain(|_, (at, _)| now.duration_since(*at) < REJECTED_TTL);
                    }
                    c.insert(token.to_string(), (now, outcome.clone()));
                }
                outcome
            }
        }
    }
}

async fn review(client: &Client, audience: &str, token: &str) -> Result<String, AuthError> {
    let review = TokenReview {
        spec: TokenReviewSpec {
            token: token.to_string(),
            audiences: Some(vec![audience.to_string()]),
        },
        ..Default::default()
    };
    let answer = Api::<TokenReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .map_err(|e| AuthError::Review(e.to_string()))?;
    let status = answer.status.unwrap_or_default();
    if status.authenticated != Some(true) {
        return Err(AuthError::Rejected(
            status.error.unwrap_or_else(|| "not authenticated".into()),
        ));
    }
    if let Some(audiences) = &status.audiences
        && !audiences.iter().any(|a| a == audience)
    {
        return Err(AuthError::Rejected(format!(
            "token audiences {audiences:?} do not include {audience}"
        )));
    }
    Ok(status.user.and_then(|u| u.username).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_tokens_need_the_bearer_prefix_and_a_known_token() {
        let auth = Authenticator::Static(Arc::new(HashSet::from(["t1".to_string()])));
        assert_eq!(auth.authenticate(Some("Bearer t1")).await, Ok("static".into()));
        assert!(matches!(
            auth.authenticate(Some("Bearer t2")).await,
            Err(AuthError::Rejected(_))
        ));
        assert!(matches!(
            auth.authenticate(Some("t1")).await,
            Err(AuthError::Missing(_))
        ));
        assert!(matches!(
            auth.authenticate(None).await,
            Err(AuthError::Missing(_))
        ));
    }
}
