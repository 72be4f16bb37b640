//! Text to token ids, before queueing: the batcher budgets tokens, and over-long inputs are
//! rejected (or truncated) before they cost anything.

use std::path::Path;

use tokenizers::Tokenizer;

use super::BackendError;

/// One tokenized input.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
}

/// Tokenizes text for the model.
#[derive(Debug, Clone)]
pub struct TextEncoder {
    tokenizer: Option<Box<Tokenizer>>,
}

const CLS: u32 = 101;
const SEP: u32 = 102;

impl TextEncoder {
    /// The model's own tokenizer (`tokenizer.json`), without its padding or truncation settings:
    /// the batcher pads, and the server decides about over-long inputs.
    pub fn from_file(path: &Path) -> Result<Self, BackendError> {
        let mut tokenizer = Tokenizer::from_file(path)
            .map_err(|e| BackendError::Tokenizer(format!("{}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| BackendError::Tokenizer(e.to_string()))?;
        Ok(Self {
            tokenizer: Some(Box::new(tokenizer)),
        })
    }

    /// Without a model (synthetic backend): one token per word or punctuation mark, plus [CLS]
    /// and [SEP]; ids are hashes, stable across runs.
    pub fn approximate() -> Self {
        Self { tokenizer: None }
    }

    /// Token ids of `text`, special tokens included, never truncated.
    pub fn encode(&self, text: &str) -> Result<Encoded, BackendError> {
        match &self.tokenizer {
            Some(t) => {
                let encoding = t
                    .encode_fast(text, true)
                    .map_err(|e| BackendError::Tokenizer(e.to_string()))?;
                Ok(Encoded {
                    ids: encoding.get_ids().to_vec(),
                })
            }
            None => Ok(Encoded {
                ids: approximate_ids(text),
            }),
        }
    }
}

fn approximate_ids(text: &str) -> Vec<u32> {
    let mut ids = vec![CLS];
    for word in text.split(|c: char| c.is_whitespace() || c.is_ascii_punctuation()) {
        if !word.is_empty() {
            ids.push(1000 + (fnv1a(word.as_bytes()) % 29_000) as u32);
        }
    }
    ids.push(SEP);
    ids
}

/// FNV-1a: a tiny stable hash (std's hasher is randomly seeded per process).
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximate_tokens_are_stable_and_framed() {
        let e = TextEncoder::approximate();
        let a = e.encode("Hello, world!").unwrap();
        assert_eq!(a.ids.len(), 4);
        assert_eq!((a.ids[0], a.ids[3]), (CLS, SEP));
        assert_eq!(a, e.encode("Hello, world!").unwrap());
    }
}
