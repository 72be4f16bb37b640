//! Helpers for the server's integration tests: the shared ones from
//! [`modelfleet_testkit::server`] (the real binary, the HTTP client, metrics, the test model) and
//! the embeddings helpers only these tests use.
#![allow(dead_code)]

// Each test binary uses part of it.
#[allow(unused_imports)]
pub use modelfleet_testkit::server::*;

/// The embeddings of an OpenAI response.
pub fn embeddings(answer: &Answer) -> Vec<Vec<f32>> {
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    answer.body["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .expect("embedding")
                .iter()
                .map(|x| x.as_f64().expect("a float") as f32)
                .collect()
        })
        .collect()
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    modelfleet_server::shadow::cosine(a, b)
}
