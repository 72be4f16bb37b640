//! Which model answers a request: the one its `model` names (if the caller may use it), or that
//! model's fallback when a `spec.routing.fallback` rule or its state says so. Pure.

use crate::{
    keys::Grant,
    table::{ModelEntry, Table},
};

/// Why a request went to the fallback model (the `reason` label of the fallback counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FallbackReason {
    /// The caller's tier is one the rule sends to the fallback.
    Tier,
    /// The prompt is estimated above the rule's token count.
    PromptTokens,
    /// The primary's reported queue per endpoint is above the threshold.
    Overloaded,
    /// The primary has no Ready endpoint.
    Unavailable,
}

impl FallbackReason {
    /// The metric label and header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tier => "tier",
            Self::PromptTokens => "prompt_tokens",
            Self::Overloaded => "overloaded",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The model chosen for a request.
#[derive(Debug)]
pub struct Routed<'t> {
    /// The model that answers.
    pub model: &'t ModelEntry,
    /// The model the request named, when a fallback answers instead, and why.
    pub fallback_from: Option<(&'t ModelEntry, FallbackReason)>,
}

/// What the router knows of the primary's state when routing.
pub trait Health {
    /// Its queue per endpoint is above `spec.routing.fallback.queueDepthAbove`.
    fn overloaded(&self, model: &ModelEntry) -> bool;
    /// It has an endpoint that may be picked now.
    fn available(&self, model: &ModelEntry) -> bool;
}

/// Whether `grant` may use `model`.
pub fn allowed(grant: &Grant, model: &ModelEntry) -> bool {
    grant.allows(&[model.served.as_str(), model.key().as_str()])
        || model.aliases.iter().any(|a| grant.allows(&[a.as_str()]))
}

/// The served names `grant` may use, for `/v1/models` and the 404 message.
pub fn visible<'t>(table: &'t Table, grant: &Grant) -> Vec<&'t ModelEntry> {
    table.models().iter().filter(|m| allowed(grant, m)).collect()
}

/// The model for a request naming `requested`; None when it is unknown or not the caller's (the
/// same answer, so a key cannot probe for models it may not use).
pub fn route<'t>(
    table: &'t Table,
    requested: &str,
    grant: &Grant,
    prompt_tokens: u64,
    health: &impl Health,
) -> Option<Routed<'t>> {
    let primary = table.resolve(requested).filter(|m| allowed(grant, m))?;
    let fallback = primary.routing.fallback.as_ref().and_then(|rule| {
        let target = fallback_target(table, primary, grant)?;
        let tier = primary.tier_for(grant.tier.as_deref());
        let reason = if tier.is_some_and(|t| rule.tiers.iter().any(|r| r == t)) {
            FallbackReason::Tier
        } else if rule
            .prompt_tokens_above
            .is_some_and(|n| prompt_tokens > u64::try_from(n).unwrap_or(u64::MAX))
        {
            FallbackReason::PromptTokens
        } else if !health.available(primary) && health.available(target) {
            FallbackReason::Unavailable
        } else if health.overloaded(primary) && !health.overloaded(target) {
            FallbackReason::Overloaded
        } else {
            return None;
        };
        Some((target, reason))
    });
    Some(match fallback {
        Some((target, reason)) => Routed {
            model: target,
            fallback_from: Some((primary, reason)),
        },
        None => Routed {
            model: primary,
            fallback_from: None,
        },
    })
}

/// The fallback `primary`'s rule names, when it exists, is in the same namespace and of the same
/// task, and `grant` may use it.
pub fn fallback_target<'t>(table: &'t Table, primary: &ModelEntry, grant: &Grant) -> Option<&'t ModelEntry> {
    let rule = primary.routing.fallback.as_ref()?;
    table
        .resolve(&rule.model)
        .filter(|f| f.namespace == primary.namespace && f.task == primary.task)
        .filter(|f| f.key() != primary.key() && allowed(grant, f))
}

/// An OpenAI request body as JSON and the `model` it names; the error is what the client reads
/// (the HTTP path and the Endpoint Picker answer it as a 400).
pub fn parse_request(body: &[u8]) -> Result<(serde_json::Value, String), String> {
    let json: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let requested = json
        .get("model")
        .and_then(serde_json::Value::as_str)
        .ok_or("`model` is required: the name of a model (GET /v1/models lists them)")?
        .to_owned();
    Ok((json, requested))
}

/// A prompt's token estimate for limits and rules: 4 bytes a token of the body, plus the
/// completion's `max_tokens` when it names one.
pub fn estimated_tokens(body_len: usize, max_tokens: Option<u64>) -> u64 {
    (body_len as u64).div_ceil(4) + max_tokens.unwrap_or(0)
}

#[cfg(test)]
mod tests;
