//! Prometheus from Debian's `prometheus` package, on a loopback port, scraping targets listed in
//! a file that tests rewrite (`file_sd_configs`, re-read every second).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    time::Duration,
};

use crate::{Error, Result, process::ManagedProcess};

/// Where Debian installs it; `$MODELFLEET_PROMETHEUS` overrides.
pub const DEFAULT_BINARY: &str = "/usr/bin/prometheus";

/// A scrape target: a loopback `host:port` and extra labels.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Target {
    /// `127.0.0.1:PORT`.
    pub address: String,
    /// Labels added to every series scraped from it.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    process: ManagedProcess,
    port: u16,
    targets_file: PathBuf,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus in `dir` scraping every `scrape_interval`, and waits until it is ready.
    pub async fn start(dir: &Path, scrape_interval: Duration) -> Result<Self> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(Error::io("pick a port for Prometheus"))?
            .port();
        Self::start_on(dir, scrape_interval, port).await
    }

    /// Stops it and starts it again on the same port with the same data and targets (for tests
    /// of a Prometheus outage).
    pub async fn restart(mut self, scrape_interval: Duration) -> Result<Self> {
        self.process.stop(crate::process::STOP_GRACE);
        let targets = std::fs::read_to_string(&self.targets_file).map_err(Error::io("read targets.json"))?;
        let next = Self::start_on(&self.dir, scrape_interval, self.port).await?;
        std::fs::write(&next.targets_file, targets).map_err(Error::io("write targets.json"))?;
        Ok(next)
    }

    /// Stops the process but keeps its port and data, for [`Prometheus::restart`].
    pub fn pause(&mut self) {
        self.process.stop(crate::process::STOP_GRACE);
    }

    async fn start_on(dir: &Path, scrape_interval: Duration, port: u16) -> Result<Self> {
        Self::launch(dir, scrape_interval, port, None).await
    }

    /// Starts Prometheus inside the live fleet's namespace on 127.0.0.1:`port` there (relay it out
    /// first). Besides the targets file it scrapes the pod targets of [`Prometheus::pods_file`]
    /// (job `live-pods`), which the fleet keeps current.
    pub async fn start_in_fleet(
        dir: &Path,
        scrape_interval: Duration,
        port: u16,
        net: &crate::live::netns::FleetNet,
    ) -> Result<Self> {
        Self::launch(dir, scrape_interval, port, Some(net)).await
    }

    async fn launch(
        dir: &Path,
        scrape_interval: Duration,
        port: u16,
        fleet: Option<&crate::live::netns::FleetNet>,
    ) -> Result<Self> {
        let binary = std::env::var_os("MODELFLEET_PROMETHEUS")
            .map(PathBuf::from)
            .unwrap_or(DEFAULT_BINARY.into());
        if !binary.is_file() {
            // The toolchain script installs Debian's prometheus when it is missing (a fresh
            // machine running the README's test command), then this check passes.
            tokio::task::spawn_blocking(crate::Toolchain::ensure)
                .await
                .map_err(|e| Error::Prometheus(format!("toolchain task: {e}")))??;
        }
        if !binary.is_file() {
            return Err(Error::Prometheus(format!(
                "{} not found: install Debian's package (`apt-get install --no-install-recommends prometheus`) \
                 or set MODELFLEET_PROMETHEUS",
                binary.display()
            )));
        }
        std::fs::create_dir_all(dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let targets_file = dir.join("targets.json");
        std::fs::write(&targets_file, "[]").map_err(Error::io("write targets.json"))?;
        let interval = format!("{}ms", scrape_interval.as_millis().max(100));
        let mut config = format!(
            "global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\nscrape_configs:\n  - job_name: modelfleet\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
            targets_file.display()
        );
        let pods_file = dir.join("pods.json");
        if fleet.is_some() {
            std::fs::write(&pods_file, "[]").map_err(Error::io("write pods.json"))?;
            config.push_str(&format!(
                "  - job_name: live-pods\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: 1s\n",
                pods_file.display()
            ));
        }
        let config_file = dir.join("prometheus.yml");
        std::fs::write(&config_file, config).map_err(Error::io("write prometheus.yml"))?;
        let args = vec![
            format!("--config.file={}", config_file.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--storage.tsdb.path={}", dir.join("data").display()),
            "--web.enable-lifecycle".to_string(),
        ];
        let (program, args) = match fleet {
            Some(net) => net.nsenter(&binary, args),
            None => (binary, args),
        };
        let mut process = ManagedProcess::spawn("prometheus", &program, &args, dir, true)?;
        process
            .wait_ready(Duration::from_secs(60), || async move {
                crate::http::get(port, "/-/ready")
                    .await
                    .is_some_and(|(s, _)| s == 200)
            })
            .await?;
        Ok(Self {
            process,
            port,
            targets_file,
            dir: dir.to_path_buf(),
        })
    }

    /// The file of pod targets (`live-pods` job) when it runs in the fleet namespace.
    pub fn pods_file(&self) -> PathBuf {
        self.dir.join("pods.json")
    }

    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Pid of the Prometheus process.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Replaces the scrape targets (Prometheus picks the file up within a second). Only loopback
    /// addresses are accepted.
    pub fn set_targets(&self, targets: &[Target]) -> Result<()> {
        if let Some(bad) = targets.iter().find(|t| !t.address.starts_with("127.")) {
            return Err(Error::Prometheus(format!(
                "target {} is not a loopback address",
                bad.address
            )));
        }
        let groups: Vec<serde_json::Value> = targets
            .iter()
            .map(|t| serde_json::json!({"targets": [t.address], "labels": t.labels}))
            .collect();
        let tmp = self.targets_file.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(&groups).map_err(|e| Error::Prometheus(e.to_string()))?;
        std::fs::write(&tmp, text).map_err(Error::io("write targets"))?;
        std::fs::rename(&tmp, &self.targets_file).map_err(Error::io("replace targets.json"))
    }

    /// Runs an instant PromQL query and returns the raw JSON answer's `data.result`.
    pub async fn query(&self, promql: &str) -> Result<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", urlencode(promql));
        let (status, body) = crate::http::get(self.port, &path)
            .await
            .ok_or_else(|| Error::Prometheus("no answer from Prometheus".into()))?;
        let json: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| Error::Prometheus(format!("HTTP {status}: {e}: {body}")))?;
        if json["status"] != "success" {
            return Err(Error::Prometheus(format!("query failed: {body}")));
        }
        Ok(json["data"]["result"].clone())
    }

    /// Stops it.
    pub fn stop(mut self) {
        self.process.stop(crate::process::STOP_GRACE);
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
