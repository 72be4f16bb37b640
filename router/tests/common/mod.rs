//! The test harness of the router's integration tests: a router on loopback ports from a
//! static table, in front of real `modelfleet-server` processes.

#![allow(dead_code)]

use std::path::PathBuf;

use clap::Parser;
use modelfleet_router::{config::Cli, serve};
use modelfleet_testkit::server::{Answer, get_text, post};
use serde_json::json;

pub struct Router {
    pub running: serve::Running,
    _dir: tempfile::TempDir,
}

impl Router {
    pub async fn start(config: &str, flags: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let file: PathBuf = dir.path().join("router.yaml");
        std::fs::write(&file, config).expect("write the static config");
        let mut args = vec![
            "modelfleet-router".to_owned(),
            format!("--static-config={}", file.display()),
            "--http-addr=127.0.0.1:0".into(),
            "--metrics-addr=127.0.0.1:0".into(),
            "--hold-timeout=1s".into(),
        ];
        args.extend(flags.iter().map(|f| (*f).to_owned()));
        let cli = Cli::parse_from(args);
        let running = serve::start(&cli, std::future::pending())
            .await
            .expect("router starts");
        Self { running, _dir: dir }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.http_addr)
    }

    pub async fn metrics(&self) -> String {
        get_text(&format!("http://{}/metrics", self.running.metrics_addr)).await
    }

    pub async fn embed(&self, model: &str, input: &str, headers: &[(&str, &str)]) -> Answer {
        post(
            &self.url("/v1/embeddings"),
            &json!({"model": model, "input": input}),
            headers,
        )
        .await
    }
}

pub fn header<'a>(a: &'a Answer, name: &str) -> &'a str {
    a.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

pub fn dim(a: &Answer) -> usize {
    a.body["data"][0]["embedding"].as_array().map_or(0, Vec::len)
}
