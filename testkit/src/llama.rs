//! llama.cpp's own server as a test peer: the binaries `server/bench/build-llama-cpp.sh` builds
//! (once, cached by version), and [`LlamaServer`], a `llama-server` process on 127.0.0.1 killed
//! on drop. The generation tests compare our backend with it and run our upstream backend in
//! front of it.

use std::{
    io::{BufRead, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Lines of llama-server's log kept for a failure message; it logs every request.
const LOG_LINES: usize = 400;

/// The directory holding llama.cpp's `llama-server` and `llama-batched-bench`:
/// `$MODELFLEET_LLAMA_CPP_DIR`, else what `server/bench/build-llama-cpp.sh --print-dir` prints
/// (it builds them the first time, about 35 minutes on 2 cores, then answers from its cache).
pub fn llama_cpp_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MODELFLEET_LLAMA_CPP_DIR") {
        return PathBuf::from(dir);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../server/bench/build-llama-cpp.sh");
    let out = Command::new("bash")
        .arg(&script)
        .arg("--print-dir")
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "set MODELFLEET_LLAMA_CPP_DIR or let {} build llama.cpp",
        script.display()
    );
    // The script logs on stderr; its last stdout line is the directory.
    let stdout = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(stdout.lines().last().unwrap_or_default().trim())
}

/// The path of llama.cpp binary `name` (`llama-server`, `llama-batched-bench`).
pub fn llama_cpp_bin(name: &str) -> PathBuf {
    let path = llama_cpp_dir().join(name);
    assert!(path.is_file(), "{} is not a file", path.display());
    path
}

/// A free TCP port on 127.0.0.1 (free when this returns; the caller binds it soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port on 127.0.0.1")
}

/// How to start a `llama-server`.
#[derive(Debug, Clone)]
pub struct LlamaOptions {
    /// The GGUF model file.
    pub model: PathBuf,
    /// Parallel sequences (slots), `-np`.
    pub parallel: u32,
    /// Context tokens in all, `-c` (llama.cpp splits it evenly across the slots).
    pub context: u32,
    /// The port; None: a free one.
    pub port: Option<u16>,
}

impl LlamaOptions {
    /// `model` with one slot and a 2048-token context.
    pub fn new(model: &Path) -> Self {
        Self {
            model: model.to_owned(),
            parallel: 1,
            context: 2048,
            port: None,
        }
    }
}

/// A running `llama-server` on 127.0.0.1, killed on drop.
pub struct LlamaServer {
    child: Child,
    /// Its port on 127.0.0.1.
    pub port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for LlamaServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LlamaServer")
            .field("port", &self.port)
            .field("pid", &self.child.id())
            .finish_non_exhaustive()
    }
}

impl LlamaServer {
    /// Starts it and waits (at most `limit`) until `GET /health` answers 200: the model is
    /// loaded and the slots are ready.
    pub async fn start(options: &LlamaOptions, limit: Duration) -> Self {
        let mut server = Self::spawn(options);
        if !server.wait_healthy(limit).await {
            let exit = match server.child.try_wait() {
                // SIGILL: a build for instructions this CPU lacks (see build-llama-cpp.sh).
                Ok(Some(status)) => format!("it exited ({status})"),
                _ => format!("it is still starting after {limit:?}"),
            };
            panic!("llama-server did not become healthy: {exit}:\n{}", server.log());
        }
        server
    }

    /// Starts it without waiting for the model to load.
    pub fn spawn(options: &LlamaOptions) -> Self {
        let port = options.port.unwrap_or_else(free_port);
        let binary = llama_cpp_bin("llama-server");
        let args: Vec<String> = [
            "-m",
            &options.model.display().to_string(),
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-t",
            "2",
            "-np",
            &options.parallel.to_string(),
            "-c",
            &options.context.to_string(),
            "--metrics",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut child = Command::new(&binary)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", binary.display()));
        let log = Arc::new(Mutex::new(Vec::new()));
        if let Some(stderr) = child.stderr.take() {
            let lines = log.clone();
            // Read to the end so llama-server never blocks on a full pipe; keep the tail.
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    let mut kept = lines.lock().unwrap_or_else(|e| e.into_inner());
                    if kept.len() >= LOG_LINES {
                        kept.remove(0);
                    }
                    kept.push(line);
                }
            });
        }
        Self { child, port, log }
    }

    /// Polls `GET /health` every 100 ms until it answers 200, at most `limit`; false when it
    /// did not, or the process exited.
    pub async fn wait_healthy(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Some((200, _)) = crate::http::get(self.port, "/health").await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url())
    }

    /// The last lines of its log.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).join("\n")
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
