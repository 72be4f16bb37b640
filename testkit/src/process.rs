//! Child processes the harness owns: started with their output in a log file, in their own
//! process group (a Ctrl-C in the terminal reaches only the harness, which tears down in order),
//! watched by a guard that kills them if the harness dies without stopping them, and stopped by
//! pid: SIGTERM, then SIGKILL after a grace period.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

use crate::{Error, Result};

/// A started component.
#[derive(Debug)]
pub struct ManagedProcess {
    name: String,
    child: Child,
    guard: Option<Child>,
    log: PathBuf,
}

/// How long a component gets to exit after SIGTERM before SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

impl ManagedProcess {
    /// Starts `program args…` with stdout and stderr appended to `<log_dir>/<name>.log`.
    /// With `guarded`, a small shell guard kills the process when this harness process exits
    /// (even by panic or SIGKILL); `modelfleet-e2e up --keep` starts unguarded processes.
    pub fn spawn(name: &str, program: &Path, args: &[String], log_dir: &Path, guarded: bool) -> Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log_dir, guarded)
    }

    /// [`ManagedProcess::spawn`] with extra environment variables.
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &std::ffi::OsStr)],
        log_dir: &Path,
        guarded: bool,
    ) -> Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).map_err(Error::io(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(Error::io("duplicate a log file handle"))?;
        let child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(Error::io(format!("start {name} ({})", program.display())))?;
        let guard = if guarded {
            Some(spawn_guard(child.id())?)
        } else {
            None
        };
        Ok(Self {
            name: name.to_string(),
            child,
            guard,
            log,
        })
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The component's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Pids of the component and its guard.
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.child.id()];
        pids.extend(self.guard.as_ref().map(Child::id));
        pids
    }

    /// Its log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log, lines)
    }

    /// An error describing why it did not start, with the end of its log.
    pub fn start_error(&mut self, reason: impl Into<String>) -> Error {
        let mut reason = reason.into();
        if let Some(status) = self.exited() {
            reason = format!("{reason} (it exited: {status})");
        }
        Error::ComponentStart {
            component: self.name.clone(),
            reason,
            log: self.log.clone(),
            tail: self.log_tail(30),
        }
    }

    /// Polls `ready` every 200 ms until it holds, failing early (with the log tail) if the process
    /// exits or `timeout` passes.
    pub async fn wait_ready<F, Fut>(&mut self, timeout: Duration, mut ready: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if self.exited().is_some() {
                return Err(self.start_error("it exited during start-up"));
            }
            if ready().await {
                tracing::info!(component = self.name(), "ready");
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.start_error(format!("not ready after {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Stops it: SIGTERM, SIGKILL after `grace`, and reaps it. Idempotent.
    pub fn stop(&mut self, grace: Duration) {
        if self.exited().is_none() {
            let _ = kill(pid(self.child.id()), Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while self.exited().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.exited().is_none() {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
        }
        if let Some(mut guard) = self.guard.take() {
            let _ = guard.kill();
            let _ = guard.wait();
        }
    }

    /// Gives up ownership without stopping it (for `up --keep`); returns its pid.
    pub fn detach(mut self) -> u32 {
        let pid = self.child.id();
        if let Some(mut guard) = self.guard.take() {
            let _ = guard.kill();
            let _ = guard.wait();
        }
        std::mem::forget(self);
        pid
    }
}

impl Drop for ManagedProcess {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

fn pid(raw: u32) -> Pid {
    Pid::from_raw(i32::try_from(raw).unwrap_or(i32::MAX))
}

/// Whether a process with this pid exists (and is not a zombie we could still reap).
pub fn is_alive(raw: u32) -> bool {
    let alive = kill(pid(raw), None).is_ok();
    alive && !is_zombie(raw)
}

fn is_zombie(raw: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{raw}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// Sends SIGTERM to `raw`, then SIGKILL if it is still alive after `grace` (for `down`).
pub fn terminate_pid(raw: u32, grace: Duration) {
    if !is_alive(raw) {
        return;
    }
    let _ = kill(pid(raw), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while is_alive(raw) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    if is_alive(raw) {
        let _ = kill(pid(raw), Signal::SIGKILL);
    }
}

/// Runs `script` in `sh` with `$1` = this harness's pid and `$2` = `target`, in its own process
/// group: the guards below wait for the harness to exit, then clean up after it.
fn spawn_shell_guard(name: &str, script: &str, target: &std::ffi::OsStr) -> Result<Child> {
    Command::new("sh")
        .args(["-c", script, name, &std::process::id().to_string()])
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .map_err(Error::io(format!("start {name}")))
}

/// Kills `child` once this harness exits: the safety net for test binaries, whose statics are
/// never dropped.
fn spawn_guard(child: u32) -> Result<Child> {
    let script = "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; \
                  kill -TERM \"$2\" 2>/dev/null; sleep 3; kill -KILL \"$2\" 2>/dev/null; exit 0";
    spawn_shell_guard("modelfleet-e2e-guard", script, child.to_string().as_ref())
}

/// Deletes network namespace `name` (and its `/etc/netns` files) once this harness exits.
pub(crate) fn spawn_netns_guard(name: &str) -> Result<Child> {
    // Whatever still runs in the namespace once the harness is gone is a leak: killed first.
    let script = "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; sleep 4; \
                  for i in 1 2 3; do ip netns pids \"$2\" 2>/dev/null | xargs -r kill -KILL; sleep 0.2; done; \
                  ip netns del \"$2\" 2>/dev/null; rm -rf -- \"/etc/netns/$2\"";
    spawn_shell_guard("modelfleet-e2e-netns-guard", script, name.as_ref())
}

/// Removes `dir` once this harness exits and the components' guards have finished: temporary
/// cluster directories of test binaries.
pub(crate) fn spawn_cleanup_guard(dir: &Path) -> Result<Child> {
    let script = "while kill -0 \"$1\" 2>/dev/null; do sleep 1; done; sleep 5; rm -rf -- \"$2\"";
    spawn_shell_guard("modelfleet-e2e-cleanup", script, dir.as_os_str())
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(file) = File::open(path) else {
        return format!("(cannot read {})", path.display());
    };
    let all: Vec<String> = BufReader::new(file).lines().map_while(|l| l.ok()).collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
