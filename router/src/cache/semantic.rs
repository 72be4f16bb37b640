//! The semantic cache (`spec.routing.semanticCache`): a generation answer served again for a
//! prompt whose embedding is close enough to one already answered, by the same revision, with
//! the same parameters (everything in the body but the prompt). Bounded like the exact cache:
//! by bytes (oldest first out), by age, and by entries, so a lookup's scan stays short.

use std::{collections::VecDeque, sync::Mutex, time::Instant};

use bytes::Bytes;
use serde_json::Value;

use super::{CacheConfig, Key};

/// Entries kept at most: a lookup compares its vector with each entry of the same parameters,
/// so this bounds a lookup to a few million multiply-adds.
pub const MAX_ENTRIES: usize = 4096;

/// Bytes of the prompt sent to the embedding model at most: its tail, where a conversation's
/// latest turn is. (Embedding models read a few hundred tokens; a longer prompt would be refused
/// or cut by the server anyway.)
pub const PROMPT_BYTES: usize = 1000;

/// The prompt of a non-streamed generation request, as one text: a chat's messages as
/// `role: content` lines, or a completion's prompt; its last [`PROMPT_BYTES`]. None for anything
/// else (embeddings, streams, a body without a prompt).
pub fn prompt_text(path: &str, body: &Value) -> Option<String> {
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        return None;
    }
    let text = if path.ends_with("/chat/completions") {
        let lines: Vec<String> = body
            .get("messages")?
            .as_array()?
            .iter()
            .map(|m| {
                let role = m.get("role").and_then(Value::as_str).unwrap_or("user");
                format!("{role}: {}", content_text(m.get("content")))
            })
            .collect();
        lines.join("\n")
    } else if path.ends_with("/completions") {
        match body.get("prompt")? {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("\n"),
            _ => return None,
        }
    } else {
        return None;
    };
    (!text.trim().is_empty()).then(|| tail(&text, PROMPT_BYTES).to_owned())
}

/// A message's `content`: a string, or the text parts of a list of parts.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// The last `max` bytes of `s`, cut at a character boundary.
fn tail(s: &str, max: usize) -> &str {
    let mut start = s.len().saturating_sub(max);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// The key of everything but the prompt, for `revision`: two requests can share an answer only
/// when this matches.
pub fn parameters_key(revision: &str, path: &str, body: &Value) -> Key {
    let mut rest = body.clone();
    if let Some(map) = rest.as_object_mut() {
        for field in ["messages", "prompt", "user"] {
            map.remove(field);
        }
    }
    super::key(revision, path, &rest)
}

/// `v` scaled to unit length; None when it is empty, zero or not finite (nothing to compare).
pub fn unit(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if v.is_empty() || !norm.is_finite() || norm == 0.0 {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Some(v)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return -1.0;
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[derive(Debug)]
struct Entry {
    parameters: Key,
    vector: Vec<f32>,
    body: Bytes,
    at: Instant,
}

impl Entry {
    fn bytes(&self) -> usize {
        self.body.len() + self.vector.len() * 4
    }
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Entry>,
    bytes: usize,
}

/// A hit: the cached body and how similar its prompt was.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The answer.
    pub body: Bytes,
    /// Cosine similarity of the two prompts' embeddings.
    pub similarity: f32,
}

/// The semantic cache (one per router process).
#[derive(Debug)]
pub struct SemanticCache {
    config: CacheConfig,
    inner: Mutex<Inner>,
}

impl SemanticCache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        Self {
            config,
            inner: Mutex::default(),
        }
    }

    /// The fresh entry under `parameters` most similar to `vector` (unit length), if at least
    /// `threshold` similar.
    pub fn get(&self, parameters: &Key, vector: &[f32], threshold: f64, now: Instant) -> Option<Hit> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner
            .entries
            .iter()
            .filter(|e| &e.parameters == parameters)
            .filter(|e| now.saturating_duration_since(e.at) <= self.config.ttl)
            .map(|e| (e, cosine(&e.vector, vector)))
            .filter(|(_, s)| f64::from(*s) >= threshold)
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(e, similarity)| Hit {
                body: e.body.clone(),
                similarity,
            })
    }

    /// Stores `body` for a prompt embedded as `vector`, evicting the oldest entries past the
    /// bounds. An entry larger than a quarter of the byte bound is not stored.
    pub fn put(&self, parameters: Key, vector: Vec<f32>, body: Bytes, now: Instant) {
        let entry = Entry {
            parameters,
            vector,
            body,
            at: now,
        };
        if entry.bytes() > self.config.max_bytes / 4 {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.bytes += entry.bytes();
        inner.entries.push_back(entry);
        while inner.bytes > self.config.max_bytes || inner.entries.len() > MAX_ENTRIES {
            let Some(oldest) = inner.entries.pop_front() else {
                break;
            };
            inner.bytes -= oldest.bytes();
        }
    }

    /// Bytes stored.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn cache(max_bytes: usize) -> SemanticCache {
        SemanticCache::new(CacheConfig {
            max_bytes,
            ttl: Duration::from_secs(60),
        })
    }

    #[test]
    fn the_prompt_is_a_chats_messages_or_a_completions_prompt_and_never_a_streams() {
        let chat = json!({"messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Capital"}, {"type": "text", "text": "of France?"}]}
        ]});
        assert_eq!(
            prompt_text("/v1/chat/completions", &chat).as_deref(),
            Some("system: Be brief.\nuser: Capital of France?")
        );
        assert_eq!(
            prompt_text("/v1/completions", &json!({"prompt": ["a", "b"]})).as_deref(),
            Some("a\nb")
        );
        let mut streamed = chat.clone();
        streamed["stream"] = json!(true);
        assert_eq!(prompt_text("/v1/chat/completions", &streamed), None);
        assert_eq!(prompt_text("/v1/embeddings", &json!({"input": "x"})), None);
        assert_eq!(prompt_text("/v1/completions", &json!({"prompt": "  "})), None);
    }

    #[test]
    fn a_long_prompt_keeps_its_tail_cut_at_a_character() {
        let long = format!("{}é{}", "a".repeat(5000), "z".repeat(PROMPT_BYTES - 1));
        let text = prompt_text("/v1/completions", &json!({ "prompt": long })).expect("text");
        assert!(text.len() < PROMPT_BYTES, "the split é is dropped, not cut");
        assert!(text.ends_with('z') && text.starts_with('z'));
    }

    #[test]
    fn parameters_but_not_the_prompt_separate_entries() {
        let a = json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]});
        let b = json!({"model": "m", "max_tokens": 16, "messages": [{"role": "user", "content": "hello"}]});
        let c = json!({"model": "m", "max_tokens": 32, "messages": [{"role": "user", "content": "hi"}]});
        let path = "/v1/chat/completions";
        assert_eq!(parameters_key("r1", path, &a), parameters_key("r1", path, &b));
        assert_ne!(parameters_key("r1", path, &a), parameters_key("r1", path, &c));
        assert_ne!(parameters_key("r1", path, &a), parameters_key("r2", path, &a));
    }

    #[test]
    fn the_most_similar_fresh_entry_above_the_threshold_answers() {
        let c = cache(1 << 20);
        let now = Instant::now();
        let p = [1; 32];
        let v = |x: f32, y: f32| unit(vec![x, y]).expect("unit");
        c.put(p, v(1.0, 0.0), Bytes::from_static(b"east"), now);
        c.put(p, v(0.0, 1.0), Bytes::from_static(b"north"), now);
        let hit = c.get(&p, &v(0.9, 0.1), 0.95, now).expect("close to east");
        assert_eq!(hit.body, "east");
        assert!(hit.similarity > 0.99);
        assert!(
            c.get(&p, &v(1.0, 1.0), 0.95, now).is_none(),
            "halfway: under the threshold"
        );
        assert!(
            c.get(&[2; 32], &v(1.0, 0.0), 0.95, now).is_none(),
            "other parameters"
        );
        assert!(
            c.get(&p, &v(1.0, 0.0), 0.95, now + Duration::from_secs(61))
                .is_none(),
            "expired"
        );
        assert!(
            c.get(&p, &[1.0, 0.0, 0.0], 0.5, now).is_none(),
            "another dimension never matches"
        );
    }

    #[test]
    fn bytes_and_entries_are_bounded_oldest_first() {
        let c = cache(400);
        let now = Instant::now();
        for i in 0..5u8 {
            c.put([i; 32], vec![1.0], Bytes::from(vec![b'x'; 96]), now);
        }
        assert_eq!(c.bytes(), 400);
        assert!(c.get(&[0; 32], &[1.0], 0.5, now).is_none(), "evicted first");
        assert!(c.get(&[4; 32], &[1.0], 0.5, now).is_some());
        let big = cache(usize::MAX / 2);
        for i in 0..=MAX_ENTRIES {
            big.put([0; 32], vec![1.0], Bytes::from(vec![(i % 256) as u8]), now);
        }
        assert_eq!(
            big.bytes(),
            MAX_ENTRIES * 5,
            "one entry out for the one past the bound"
        );
    }

    #[test]
    fn vectors_without_a_direction_are_not_used() {
        assert!(unit(vec![]).is_none());
        assert!(unit(vec![0.0, 0.0]).is_none());
        assert!(unit(vec![f32::NAN, 1.0]).is_none());
        assert_eq!(unit(vec![3.0, 4.0]), Some(vec![0.6, 0.8]));
    }
}
