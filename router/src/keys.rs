//! API keys: read from labelled Secrets, kept only as SHA-256 hashes, compared in constant time.
//!
//! A key Secret (label [`KEY_LABEL`]`: "true"`) holds `key` (the secret the client sends as
//! `Authorization: Bearer <key>`), `tenant`, `tier`, `models` (comma list of served names or
//! `namespace/name`, `*` for all; default `*`), `requestsPerSecond` and `tokensPerMinute`
//! (optional numbers).

use std::collections::{BTreeMap, HashMap};

use sha2::{Digest, Sha256};

/// The label that marks a key Secret.
pub const KEY_LABEL: &str = "modelfleet.dev/router-key";

/// What a key grants.
#[derive(Debug, Clone, PartialEq)]
pub struct Grant {
    /// The tenant (metrics and logs; never the key).
    pub tenant: String,
    /// The tier requested of the ModelDeployment (`paid`, `free`, …); None: its lowest.
    pub tier: Option<String>,
    /// Allowed models; None: all.
    pub models: Option<Vec<String>>,
    /// Requests per second.
    pub requests_per_second: Option<f64>,
    /// Tokens per minute.
    pub tokens_per_minute: Option<f64>,
}

impl Grant {
    /// Whether `model` (as sent, or the model's `namespace/name` key) is allowed.
    pub fn allows(&self, names: &[&str]) -> bool {
        self.models
            .as_ref()
            .is_none_or(|list| list.iter().any(|m| names.contains(&m.as_str())))
    }
}

/// A key Secret that could not be read, naming the Secret and the field.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("key secret {secret}: {field}: {reason}")]
pub struct KeyError {
    /// `namespace/name`.
    pub secret: String,
    /// The data field.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

type Hash = [u8; 32];

fn hash(key: &str) -> Hash {
    Sha256::digest(key.as_bytes()).into()
}

/// Constant time in the length of the hashes: no early exit on the first differing byte.
fn same(a: &Hash, b: &Hash) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Every key, by hash. Looking a key up hashes it first, so the map's comparisons see hashes.
#[derive(Debug, Default, Clone)]
pub struct KeyStore {
    by_hash: HashMap<Hash, (Hash, Grant)>,
}

impl KeyStore {
    /// Builds the store from Secrets' `(namespace/name, data)`; unreadable ones are returned, not
    /// stored.
    pub fn from_secrets<'a>(
        secrets: impl IntoIterator<Item = (String, &'a BTreeMap<String, Vec<u8>>)>,
    ) -> (Self, Vec<KeyError>) {
        let mut store = Self::default();
        let mut errors = Vec::new();
        for (name, data) in secrets {
            match parse(&name, data) {
                Ok((key, grant)) => {
                    let h = hash(&key);
                    store.by_hash.insert(h, (h, grant));
                }
                Err(e) => errors.push(e),
            }
        }
        (store, errors)
    }

    /// The grant of `key`, if it is one.
    pub fn lookup(&self, key: &str) -> Option<&Grant> {
        let h = hash(key);
        self.by_hash
            .get(&h)
            .filter(|(stored, _)| same(stored, &h))
            .map(|(_, g)| g)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// No keys.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

fn parse(secret: &str, data: &BTreeMap<String, Vec<u8>>) -> Result<(String, Grant), KeyError> {
    let err = |field: &'static str, reason: &str| KeyError {
        secret: secret.to_owned(),
        field,
        reason: reason.to_owned(),
    };
    let text = |field: &'static str| -> Result<Option<String>, KeyError> {
        data.get(field)
            .map(|v| String::from_utf8(v.clone()).map(|s| s.trim().to_owned()))
            .transpose()
            .map_err(|_| err(field, "not UTF-8"))
    };
    let number = |field: &'static str| -> Result<Option<f64>, KeyError> {
        match text(field)? {
            None => Ok(None),
            Some(s) => match s.parse::<f64>() {
                Ok(v) if v.is_finite() && v > 0.0 => Ok(Some(v)),
                _ => Err(err(field, &format!("`{s}` is not a number greater than 0"))),
            },
        }
    };
    let key = text("key")?.ok_or_else(|| err("key", "missing"))?;
    if key.len() < 16 {
        return Err(err("key", "must be at least 16 characters"));
    }
    let models = text("models")?.filter(|m| m != "*" && !m.is_empty()).map(|m| {
        m.split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect()
    });
    let grant = Grant {
        tenant: text("tenant")?.unwrap_or_else(|| secret.to_owned()),
        tier: text("tier")?.filter(|t| !t.is_empty()),
        models,
        requests_per_second: number("requestsPerSecond")?,
        tokens_per_minute: number("tokensPerMinute")?,
    };
    Ok((key, grant))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
            .collect()
    }

    #[test]
    fn keys_are_found_by_their_secret_and_grant_what_the_secret_says() {
        let paid = data(&[
            ("key", "sk-paid-0123456789"),
            ("tenant", "acme"),
            ("tier", "paid"),
        ]);
        let free = data(&[
            ("key", "sk-free-0123456789"),
            ("tier", "free"),
            ("models", "emb, ns/other"),
            ("requestsPerSecond", "5"),
        ]);
        let (store, errors) =
            KeyStore::from_secrets([("ns/paid".to_string(), &paid), ("ns/free".to_string(), &free)]);
        assert!(errors.is_empty(), "{errors:?}");
        let g = store.lookup("sk-paid-0123456789").expect("paid key");
        assert_eq!((g.tenant.as_str(), g.tier.as_deref()), ("acme", Some("paid")));
        assert!(g.allows(&["anything"]));
        let f = store.lookup("sk-free-0123456789").expect("free key");
        assert_eq!(f.tenant, "ns/free", "no tenant: the Secret's name");
        assert_eq!(f.requests_per_second, Some(5.0));
        assert!(f.allows(&["emb"]) && f.allows(&["x", "ns/other"]) && !f.allows(&["big"]));
        assert!(store.lookup("sk-free-012345678").is_none());
        assert!(store.lookup("").is_none());
    }

    #[test]
    fn bad_secrets_are_refused_naming_the_field() {
        let short = data(&[("key", "short")]);
        let rate = data(&[("key", "sk-0123456789abcdef"), ("tokensPerMinute", "lots")]);
        let (store, errors) =
            KeyStore::from_secrets([("ns/a".to_string(), &short), ("ns/b".to_string(), &rate)]);
        assert!(store.is_empty());
        assert_eq!(errors[0].field, "key");
        assert_eq!(errors[1].field, "tokensPerMinute");
        assert!(errors[1].to_string().contains("ns/b"), "{}", errors[1]);
    }

    #[test]
    fn the_comparison_checks_every_byte() {
        let a = hash("a");
        let mut b = a;
        b[31] ^= 1;
        assert!(same(&a, &a) && !same(&a, &b));
    }
}
