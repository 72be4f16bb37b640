//! The response cache: exact match on deterministic requests, keyed by the revision that would
//! answer, the path and the normalised body, so a new revision never gets an old one's answers.
//! Bounded by bytes (oldest first out) and by age. [`semantic`]: the opt-in cache by prompt
//! similarity for generation.

pub mod semantic;

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Bytes of response bodies kept, at most (0: no cache).
    pub max_bytes: usize,
    /// An entry older than this is not served.
    pub ttl: Duration,
}

/// A cache key.
pub type Key = [u8; 32];

/// Whether a request body is deterministic enough to cache: embeddings always; completions at
/// temperature 0 with a seed, not streamed.
pub fn cacheable(path: &str, body: &Value) -> bool {
    if path.ends_with("/embeddings") {
        return true;
    }
    let zero_temperature = body.get("temperature").and_then(Value::as_f64) == Some(0.0);
    let seeded = body.get("seed").is_some_and(Value::is_number);
    let streamed = body.get("stream").and_then(Value::as_bool) == Some(true);
    zero_temperature && seeded && !streamed
}

/// The key of a request for `revision`: the body with its object keys sorted, so field order
/// and whitespace do not matter.
pub fn key(revision: &str, path: &str, body: &Value) -> Key {
    let mut h = Sha256::new();
    h.update(revision.as_bytes());
    h.update(b"\n");
    h.update(path.as_bytes());
    h.update(b"\n");
    h.update(canonical(body).as_bytes());
    h.finalize().into()
}

fn canonical(v: &Value) -> String {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .iter()
                .map(|k| format!("{}:{}", Value::String((*k).clone()), canonical(&map[*k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

#[derive(Debug)]
struct Entry {
    body: Bytes,
    at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    order: VecDeque<Key>,
    bytes: usize,
}

/// The cache (one per router process).
#[derive(Debug)]
pub struct ResponseCache {
    config: CacheConfig,
    inner: Mutex<Inner>,
}

impl ResponseCache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        Self {
            config,
            inner: Mutex::default(),
        }
    }

    /// The body stored under `key`, if fresh.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Bytes> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .map
            .get(key)
            .filter(|e| now.saturating_duration_since(e.at) <= self.config.ttl)
            .map(|e| e.body.clone())
    }

    /// Stores `body` under `key`, evicting the oldest entries past the byte bound. A body larger
    /// than a quarter of the bound is not stored.
    pub fn put(&self, key: Key, body: Bytes, now: Instant) {
        if body.len() > self.config.max_bytes / 4 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = inner.map.insert(
            key,
            Entry {
                body: body.clone(),
                at: now,
            },
        ) {
            inner.bytes -= old.body.len();
            inner.order.retain(|k| k != &key);
        }
        inner.bytes += body.len();
        inner.order.push_back(key);
        while inner.bytes > self.config.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(e) = inner.map.remove(&oldest) {
                inner.bytes -= e.body.len();
            }
        }
    }

    /// Bytes stored.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn cache(max_bytes: usize) -> ResponseCache {
        ResponseCache::new(CacheConfig {
            max_bytes,
            ttl: Duration::from_secs(60),
        })
    }

    #[test]
    fn keys_ignore_field_order_but_not_the_revision_or_the_input() {
        let a = json!({"model": "m", "input": ["x", "y"]});
        let b: Value = serde_json::from_str(r#"{ "input": ["x","y"], "model":"m" }"#).expect("json");
        assert_eq!(key("r1", "/v1/embeddings", &a), key("r1", "/v1/embeddings", &b));
        assert_ne!(key("r1", "/v1/embeddings", &a), key("r2", "/v1/embeddings", &a));
        let c = json!({"model": "m", "input": ["y", "x"]});
        assert_ne!(key("r1", "/v1/embeddings", &a), key("r1", "/v1/embeddings", &c));
    }

    #[test]
    fn only_deterministic_requests_are_cacheable() {
        assert!(cacheable("/v1/embeddings", &json!({})));
        let chat = "/v1/chat/completions";
        assert!(cacheable(chat, &json!({"temperature": 0, "seed": 1})));
        assert!(!cacheable(chat, &json!({"temperature": 0})));
        assert!(!cacheable(chat, &json!({"temperature": 0.7, "seed": 1})));
        assert!(!cacheable(
            chat,
            &json!({"temperature": 0, "seed": 1, "stream": true})
        ));
    }

    #[test]
    fn entries_expire_and_the_oldest_go_first_past_the_bound() {
        let c = cache(400);
        let now = Instant::now();
        let k = |i: u8| [i; 32];
        for i in 0..5 {
            c.put(k(i), Bytes::from(vec![b'x'; 100]), now);
        }
        assert_eq!(c.bytes(), 400);
        assert!(c.get(&k(0), now).is_none(), "evicted first");
        assert!(c.get(&k(4), now).is_some());
        assert!(c.get(&k(4), now + Duration::from_secs(61)).is_none(), "expired");
        c.put(k(9), Bytes::from(vec![b'x'; 101]), now);
        assert!(
            c.get(&k(9), now).is_none(),
            "over a quarter of the bound: not stored"
        );
        c.put(k(4), Bytes::from(vec![b'y'; 50]), now);
        assert_eq!(c.bytes(), 350, "a replaced entry's bytes are given back");
    }
}
