//! `spec.routing`: what the modelfleet router does with this model's requests.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::rules;

/// Router behaviour for this model (docs/router.md).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RoutingSpec {
    /// Answer repeated deterministic requests (embeddings; generation at temperature 0 with a
    /// seed) from the router's response cache. false: never cache this model's responses.
    #[serde(default = "default_response_cache")]
    pub response_cache: bool,
    /// Where requests go when this model is overloaded or unavailable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<FallbackSpec>,
    /// Answer a generation request from an earlier answer to a similar prompt (by embedding
    /// similarity). Off when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub semantic_cache: Option<SemanticCacheSpec>,
}

impl Default for RoutingSpec {
    fn default() -> Self {
        Self {
            response_cache: default_response_cache(),
            fallback: None,
            semantic_cache: None,
        }
    }
}

fn default_response_cache() -> bool {
    true
}

/// A fallback model: requests go there when this one is overloaded (queue above the threshold,
/// or the least-loaded ready pod answered 429), unavailable (no ready pod), or when a request
/// matches a rule.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct FallbackSpec {
    /// Served name (or alias) of the fallback ModelDeployment, in the same namespace and of the
    /// same task.
    #[x_kube(validation = rules::FALLBACK_MODEL)]
    #[schemars(length(max = 128))]
    pub model: String,
    /// Overloaded when the queued requests per ready replica (as the servers report them) are
    /// above this. Empty: only a 429 from the pod the router picked counts as overload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::FALLBACK_QUEUE_DEPTH)]
    pub queue_depth_above: Option<f64>,
    /// Send requests whose prompt is estimated above this many tokens (4 bytes a token) straight
    /// to the fallback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::FALLBACK_PROMPT_TOKENS)]
    pub prompt_tokens_above: Option<i64>,
    /// Send requests of these tiers straight to the fallback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub tiers: Vec<String>,
}

/// The semantic cache of a generation model: the router embeds each non-streamed prompt with
/// `embeddingModel` and answers it from a cached answer of the same revision and the same
/// parameters (everything in the body but the prompt) whose prompt is at least `similarityAbove`
/// similar (cosine). Answers are approximate by design: turn it on only where a near-duplicate
/// question may get the same answer.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SemanticCacheSpec {
    /// Served name (or alias) of an embeddings ModelDeployment in the same namespace.
    #[x_kube(validation = rules::SEMANTIC_CACHE_MODEL)]
    #[schemars(length(max = 128))]
    pub embedding_model: String,
    /// Cosine similarity a cached prompt needs, above 0 and at most 1 (default 0.95).
    #[serde(default = "default_similarity")]
    #[x_kube(validation = rules::SEMANTIC_CACHE_SIMILARITY)]
    pub similarity_above: f64,
}

fn default_similarity() -> f64 {
    0.95
}
