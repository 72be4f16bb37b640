//! `spec.generation`: the limits of a text-generation server (`spec.model.task: generation`).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::rules;

/// How each generation server sizes its continuous batch. Every field is optional: the server's
/// defaults (docs/server.md) apply to the ones left out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = rules::DEFAULT_MAX_TOKENS_IN_CONTEXT)]
pub struct GenerationSpec {
    /// Longest sequence served, prompt plus completion, in tokens; never above the model's own
    /// context length. Longer requests get 400 naming `max_tokens` or `messages`. Empty: the
    /// model's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::CONTEXT_LENGTH)]
    pub context_length: Option<i32>,
    /// Sequences decoded together at most (the running batch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::MAX_RUNNING_SEQUENCES)]
    pub max_running_sequences: Option<i32>,
    /// KV-cache budget in tokens across the running sequences; a request reserves its prompt
    /// plus `max_tokens`, and waits (or a lower tier is preempted) when the budget is spent.
    /// Empty: four contexts' worth (fewer when `maxRunningSequences` is smaller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::KV_BUDGET_TOKENS)]
    pub kv_budget_tokens: Option<i32>,
    /// `max_tokens` of a request that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = rules::DEFAULT_MAX_TOKENS)]
    pub default_max_tokens: Option<i32>,
}
