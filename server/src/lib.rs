//! modelfleet-server: the dynamic-batching inference server run in modelfleet GPU pods.
//!
//! Layers, outside in: `api` (OpenAI, OIP v2 HTTP and gRPC) → `engine` (validation,
//! tokenization, metrics, mirroring) → `batcher` (one actor owning the tiered queue) → `backend`
//! (candle or synthetic, on its own threads). The contract with the operator is docs/server.md.

pub mod api;
pub mod backend;
pub mod batcher;
pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod metrics;
pub mod serve;
pub mod shadow;
pub mod upstream;

pub use config::ServerConfig;
pub use serve::{Listening, start};
