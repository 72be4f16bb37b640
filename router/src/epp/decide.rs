//! The Endpoint Picker's decision for one request, from its body and the router's state: the
//! same model routing, canary sequence and least-loaded pick as the HTTP path, restricted to the
//! proxy's subset hint, giving every eligible endpoint of the chosen revision best first.
//!
//! Callers are trusted: a gateway that runs the picker has authenticated its clients (or chose
//! not to), so there is no key. Every model is visible, there are no tenant limits, and the
//! request's `x-modelfleet-tier` header (set or forwarded by the gateway) is the caller's tier for
//! `spec.routing.fallback.tiers`.

use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::{
    keys::Grant,
    metrics::PickLabels,
    pick, route,
    state::{Router, anonymous},
    table::{Endpoint, ModelEntry, Revision, Table},
};

/// The endpoints a subset hint allows: `ip:port` entries, or a bare IP for any of its ports.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subset {
    entries: Vec<SubsetEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SubsetEntry {
    Exact(SocketAddr),
    Host(IpAddr),
}

impl Subset {
    /// The endpoints `items` name; each item may itself be a comma-separated list (what a
    /// header-to-metadata filter makes of a header). Entries that are not an address are dropped,
    /// so a hint of nothing usable allows nothing.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Self {
        let entries = items
            .into_iter()
            .flat_map(|item| item.split(','))
            .map(str::trim)
            .filter_map(|s| {
                s.parse()
                    .map(SubsetEntry::Exact)
                    .or_else(|_| s.parse().map(SubsetEntry::Host))
                    .ok()
            })
            .collect();
        Self { entries }
    }

    /// Whether `addr` is allowed.
    pub fn contains(&self, addr: SocketAddr) -> bool {
        self.entries.iter().any(|e| match e {
            SubsetEntry::Exact(a) => *a == addr,
            SubsetEntry::Host(ip) => *ip == addr.ip(),
        })
    }

    /// How many entries the hint has.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The hint allows nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a decision reads of one request.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The whole request body (an OpenAI request: JSON with `model`).
    pub body: &'a [u8],
    /// The request's `x-modelfleet-tier`, if any.
    pub tier: Option<&'a str>,
    /// The proxy's subset hint, if it sent one.
    pub subset: Option<&'a Subset>,
}

/// Where a request goes.
#[derive(Debug, Clone)]
pub struct Decision {
    /// `namespace/name` of the model that answers (a fallback, when routing chose one).
    pub model: String,
    /// The revision picked (by the canary sequence).
    pub revision: String,
    /// The endpoint picked.
    pub picked: Endpoint,
    /// The revision's other eligible endpoints, least loaded first (the proxy walks down the list
    /// on retry).
    pub fallbacks: Vec<Endpoint>,
    /// The body to send instead of the client's: `model` renamed to the served name (the server
    /// knows only that one). None: the body goes on unchanged.
    pub body: Option<Bytes>,
    /// Why a fallback model answers, if one does.
    pub fallback: Option<&'static str>,
}

impl Decision {
    /// `ip:port,ip:port,…`: the value of `x-gateway-destination-endpoint`.
    pub fn destination(&self) -> String {
        let addrs: Vec<String> = self.endpoints().map(|e| e.load.addr.to_string()).collect();
        addrs.join(",")
    }

    /// The pick, then the fallbacks.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint> {
        std::iter::once(&self.picked).chain(&self.fallbacks)
    }
}

/// Why a request gets no endpoint; the proxy answers the client with its status and the OpenAI
/// error envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The body is not a JSON object naming a `model`: 400.
    #[error("{0}")]
    BadRequest(String),
    /// The body is over `--max-body-bytes`: 413.
    #[error("the request body is larger than the router's limit of {0} bytes")]
    TooLarge(usize),
    /// No model by that name: 404.
    #[error(
        "The model `{requested}` does not exist or you do not have access to it. Models you may use: {available}."
    )]
    UnknownModel {
        /// The `model` asked for.
        requested: String,
        /// The served names, comma-separated (`none` when there are none).
        available: String,
    },
    /// No eligible endpoint (none Ready, none fresh, none in the subset hint): 503.
    #[error("{message}")]
    NoEndpoint {
        /// What the client reads.
        message: String,
        /// Its `Retry-After`.
        retry_after: Duration,
    },
    /// The model's servers report queues above its `queueDepthAbove`: 429, shed here.
    #[error("{0}")]
    Overloaded(String),
    /// The proxy is configured in a way the picker cannot serve (a body mode): 500.
    #[error("{0}")]
    Unsupported(String),
}

impl Refusal {
    /// The HTTP status the proxy answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::TooLarge(_) => 413,
            Self::UnknownModel { .. } => 404,
            Self::NoEndpoint { .. } => 503,
            Self::Overloaded(_) => 429,
            Self::Unsupported(_) => 500,
        }
    }

    /// The envelope's `code`; also the `result` label of the decision counter.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "invalid_request",
            Self::TooLarge(_) => "request_too_large",
            Self::UnknownModel { .. } => "model_not_found",
            Self::NoEndpoint { .. } => "model_unavailable",
            Self::Overloaded(_) => "model_overloaded",
            Self::Unsupported(_) => "picker_misconfigured",
        }
    }

    /// `Retry-After` for the statuses a client should retry.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::NoEndpoint { retry_after, .. } => Some(*retry_after),
            Self::Overloaded(_) => Some(Duration::from_secs(1)),
            _ => None,
        }
    }

    /// `{"error": {"message", "type", "param", "code"}}`, as the HTTP path answers.
    pub fn envelope(&self) -> Vec<u8> {
        let kind = match self {
            Self::BadRequest(_) | Self::TooLarge(_) | Self::UnknownModel { .. } => "invalid_request_error",
            _ => "server_error",
        };
        let param = matches!(self, Self::UnknownModel { .. }).then_some("model");
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": self.code()}})
            .to_string()
            .into_bytes()
    }
}

/// The decision for `ask`: which model, which revision, which endpoints.
pub fn decide(router: &Router, ask: &Ask<'_>, now: Instant) -> Result<Decision, Refusal> {
    let (json, requested) = route::parse_request(ask.body).map_err(Refusal::BadRequest)?;
    let table = router.table();
    if table.models().is_empty() && !router.is_ready() {
        return Err(Refusal::NoEndpoint {
            message: "the router has not listed the fleet yet".into(),
            retry_after: Duration::from_secs(1),
        });
    }
    let grant = Grant {
        tier: ask.tier.map(str::to_owned),
        ..anonymous()
    };
    let tokens = route::estimated_tokens(ask.body.len(), json.get("max_tokens").and_then(Value::as_u64));
    let in_subset = |e: &Endpoint| ask.subset.is_none_or(|s| s.contains(e.load.addr));
    let health = pick::LiveHealth {
        config: &router.config.pick,
        now,
        allowed: in_subset,
    };
    let routed = route::route(&table, &requested, &grant, tokens, &health)
        .ok_or_else(|| unknown(&table, &grant, &requested))?;
    // A fallback outside the subset cannot be reached through this pool: the primary answers.
    let (model, fallback) = match routed.fallback_from {
        Some((primary, _)) if ask.subset.is_some() && !routed.model.all_endpoints().any(in_subset) => {
            (primary, None)
        }
        Some((_, why)) => (routed.model, Some(why.as_str())),
        None => (routed.model, None),
    };
    let (revision, picked, fallbacks) = endpoints(router, model, ask.subset, now)?;
    router
        .metrics
        .picks
        .get_or_create(&PickLabels {
            model: model.key(),
            revision: revision.clone(),
            endpoint: picked.pod.clone(),
        })
        .inc();
    Ok(Decision {
        model: model.key(),
        revision,
        picked,
        fallbacks,
        body: renamed(json, &model.served),
        fallback,
    })
}

/// The revision by the canary sequence, and its eligible endpoints in the subset: the picker's
/// choice first, the rest least loaded first.
fn endpoints(
    router: &Router,
    model: &ModelEntry,
    subset: Option<&Subset>,
    now: Instant,
) -> Result<(String, Endpoint, Vec<Endpoint>), Refusal> {
    let config = &router.config.pick;
    let allowed = |e: &Endpoint| subset.is_none_or(|s| s.contains(e.load.addr));
    let usable = |r: &Revision| r.endpoints.iter().any(|e| allowed(e) && config.eligible(e, now));
    let sequence = router.next_sequence(&model.key());
    let revision = pick::revision(model, sequence, usable);
    let candidates: Vec<Endpoint> = revision
        .endpoints
        .iter()
        .filter(|e| allowed(e))
        .cloned()
        .collect();
    let Some(first) = router.picker.pick(config, &candidates, &[], now).cloned() else {
        // At zero replicas this is what wakes the model (throttled), as on the HTTP path.
        router.activity.seen(model, true, now);
        return Err(no_endpoint(router, model, subset));
    };
    router.activity.seen(model, false, now);
    let limit = model.routing.fallback.as_ref().and_then(|f| f.queue_depth_above);
    if pick::overloaded(&candidates, limit, config, now) {
        return Err(Refusal::Overloaded(format!(
            "model {} is overloaded: its servers' queues are above {} per replica",
            model.served,
            limit.unwrap_or_default()
        )));
    }
    let rest = router
        .picker
        .ranked(config, &candidates, now)
        .into_iter()
        .filter(|e| e.load.addr != first.load.addr)
        .cloned()
        .collect();
    Ok((revision.name.clone(), first, rest))
}

/// The body with `model` set to `served`; None when it names it already.
fn renamed(mut json: Value, served: &str) -> Option<Bytes> {
    if json.get("model").and_then(Value::as_str) == Some(served) {
        return None;
    }
    json["model"] = Value::String(served.to_owned());
    serde_json::to_vec(&json).ok().map(Bytes::from)
}

fn unknown(table: &Table, grant: &Grant, requested: &str) -> Refusal {
    let names: Vec<&str> = route::visible(table, grant)
        .iter()
        .map(|m| m.served.as_str())
        .collect();
    Refusal::UnknownModel {
        requested: requested.to_owned(),
        available: if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        },
    }
}

/// 503 for a model without an eligible endpoint; a model that scales from zero says to come back
/// after its measured cold start (the HTTP path would hold the request that long).
fn no_endpoint(router: &Router, model: &ModelEntry, subset: Option<&Subset>) -> Refusal {
    let retry_after = router.activity.retry_after(model);
    let message = match subset {
        Some(s) => format!(
            "model {} has no Ready replica among the {} endpoints of the subset hint",
            model.served,
            s.len()
        ),
        None => format!("model {} has no Ready replica", model.served),
    };
    Refusal::NoEndpoint { message, retry_after }
}
