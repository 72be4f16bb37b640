//! The router's process state: the current table and keys (each swapped whole by discovery),
//! the load board, the cache, the limiters and the metrics. One per process, shared by every
//! request through an `Arc`.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tokio::sync::watch;

use crate::{
    activity::Activity,
    cache::{ResponseCache, semantic::SemanticCache},
    config::RouterConfig,
    keys::{Grant, KeyStore},
    limits::{Limiter, Verdict},
    load::LoadBoard,
    metrics::Metrics,
    pick::Picker,
    table::Table,
};

/// The HTTP client to the model servers (HTTP/1.1, pooled connections).
pub type Upstream = Client<HttpConnector, Full<Bytes>>;

/// Everything a request reads.
#[derive(Debug)]
pub struct Router {
    /// Settings.
    pub config: RouterConfig,
    /// The routing table, replaced on each watch event.
    pub table: watch::Receiver<Arc<Table>>,
    /// The API keys, replaced when a key Secret changes.
    pub keys: watch::Receiver<Arc<KeyStore>>,
    /// Every endpoint's load.
    pub board: LoadBoard,
    /// Endpoint picking.
    pub picker: Picker,
    /// The response cache.
    pub cache: ResponseCache,
    /// The semantic cache of generation models that turn it on.
    pub semantic: SemanticCache,
    /// Metrics.
    pub metrics: Metrics,
    /// The client to the servers.
    pub upstream: Upstream,
    /// Scale-from-zero reports and measured cold starts.
    pub activity: Activity,
    limiters: Mutex<HashMap<String, Limiter>>,
    sequence: Mutex<HashMap<String, u64>>,
    held: Mutex<HashMap<String, usize>>,
    synced: AtomicBool,
    draining: AtomicBool,
}

impl Router {
    /// A router reading `table` and `keys`, with endpoints' load on `board`.
    pub fn new(
        config: RouterConfig,
        table: watch::Receiver<Arc<Table>>,
        keys: watch::Receiver<Arc<KeyStore>>,
        board: LoadBoard,
        activity: Activity,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(std::time::Duration::from_secs(2)));
        let upstream = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(256)
            .build(connector);
        Self {
            cache: ResponseCache::new(config.cache),
            semantic: SemanticCache::new(config.cache),
            config,
            table,
            keys,
            board,
            picker: Picker::default(),
            metrics: Metrics::default(),
            upstream,
            activity,
            limiters: Mutex::default(),
            sequence: Mutex::default(),
            held: Mutex::default(),
            synced: AtomicBool::new(false),
            draining: AtomicBool::new(false),
        }
    }

    /// The table now.
    pub fn table(&self) -> Arc<Table> {
        self.table.borrow().clone()
    }

    /// The grant of a bearer key; `Ok(None)` without one when anonymous access is off.
    pub fn grant(&self, bearer: Option<&str>) -> Option<Grant> {
        match bearer {
            Some(key) => self.keys.borrow().lookup(key).cloned(),
            None => self.config.allow_anonymous.then(anonymous),
        }
    }

    /// Takes `tokens` from the tenant's limits (a grant without limits: always allowed).
    pub fn admit(&self, grant: &Grant, tokens: f64, now: Instant) -> Option<Verdict> {
        if grant.requests_per_second.is_none() && grant.tokens_per_minute.is_none() {
            return None;
        }
        let mut limiters = lock(&self.limiters);
        let limiter = limiters
            .entry(grant.tenant.clone())
            .or_insert_with(|| Limiter::new(grant.requests_per_second, grant.tokens_per_minute, now));
        Some(limiter.admit(tokens, now))
    }

    /// The model's next request number (the canary split counts them).
    pub fn next_sequence(&self, model: &str) -> u64 {
        let mut seq = lock(&self.sequence);
        let n = seq.entry(model.to_owned()).or_insert(0);
        let out = *n;
        *n += 1;
        out
    }

    /// Counts a held request of `model` unless `max` are held already.
    pub fn hold(self: &Arc<Self>, model: &str) -> Option<HeldSlot> {
        let mut held = lock(&self.held);
        let n = held.entry(model.to_owned()).or_insert(0);
        if *n >= self.config.hold_queue {
            return None;
        }
        *n += 1;
        self.metrics.held.get_or_create(&Metrics::model(model)).inc();
        Some(HeldSlot {
            router: self.clone(),
            model: model.to_owned(),
        })
    }

    /// Requests of `model` (`namespace/name`) held now.
    pub fn held(&self, model: &str) -> usize {
        lock(&self.held).get(model).copied().unwrap_or(0)
    }

    /// Discovery has listed everything once.
    pub fn set_synced(&self) {
        self.synced.store(true, Ordering::Relaxed);
    }

    /// Ready: synced and not draining.
    pub fn is_ready(&self) -> bool {
        self.synced.load(Ordering::Relaxed) && !self.draining.load(Ordering::Relaxed)
    }

    /// Starts draining: `/readyz` answers 503 from now on.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }
}

/// A held request; dropping it releases the slot.
#[derive(Debug)]
pub struct HeldSlot {
    router: Arc<Router>,
    model: String,
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        if let Some(n) = lock(&self.router.held).get_mut(&self.model) {
            *n = n.saturating_sub(1);
        }
        self.router
            .metrics
            .held
            .get_or_create(&Metrics::model(&self.model))
            .dec();
    }
}

/// What a caller without a key gets: every model, its lowest tier, no limits.
pub fn anonymous() -> Grant {
    Grant {
        tenant: "anonymous".into(),
        tier: None,
        models: None,
        requests_per_second: None,
        tokens_per_minute: None,
    }
}

/// The guarded value, also after a panic elsewhere poisoned the lock (every update is one step).
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
