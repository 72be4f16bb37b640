//! One run of a container: a process in the fleet network namespace, in private mount and pid
//! namespaces, with a copy-on-write view of the host's root (overlayfs, upper layer on a tmpfs
//! only it sees), its volumes bind-mounted at their `mountPath`s, the pod's `resolv.conf` and
//! `hosts`, and the pod's user.
//!
//! Processes are spawned from one long-lived thread with `setpriv --pdeathsig KILL`, so when the
//! harness dies (even by SIGKILL) the kernel kills each container's `unshare`, whose
//! `--kill-child` kills the container's init, which takes its whole pid namespace with it.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::Duration,
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq)]
pub struct Mount {
    /// Host path.
    pub source: PathBuf,
    /// Path inside the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything needed to start one run of a container.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    /// The program (a path on the host, or a name looked up on the container's PATH).
    pub program: PathBuf,
    /// Its arguments, already expanded.
    pub args: Vec<String>,
    /// Its environment, in order.
    pub env: Vec<(String, String)>,
    /// Bind mounts (volumes, resolv.conf, hosts).
    pub mounts: Vec<Mount>,
    /// `runAsUser` / `runAsGroup` / `fsGroup`.
    pub user: Option<i64>,
    /// Group.
    pub group: Option<i64>,
    /// Supplementary group (`fsGroup`).
    pub fs_group: Option<i64>,
    /// `workingDir`.
    pub working_dir: Option<String>,
    /// Scratch directory of this container (its overlay lives on a tmpfs mounted here).
    pub scratch: PathBuf,
}

/// Quotes `s` for `sh`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// PID 1 of every container: a root shell that runs the program as its child, passes SIGTERM and
/// SIGINT on, and exits with the program's status. The program does not run as PID 1 itself
/// because dropping to `runAsUser` clears the parent-death signal: a root PID 1 keeps it, so when
/// the harness dies (even by SIGKILL) `unshare` dies, PID 1 dies, and the kernel kills the whole
/// pid namespace with it.
const INIT: &str = "\"$@\" & child=$!\n\
    trap 'kill -TERM $child 2>/dev/null' TERM\n\
    trap 'kill -INT $child 2>/dev/null' INT\n\
    while :; do wait $child; status=$?; kill -0 $child 2>/dev/null || exit $status; done";

/// The `sh` script that builds the container's root and execs [`INIT`] there as PID 1, which
/// runs the program.
pub fn launch_script(plan: &LaunchPlan) -> String {
    let c = sh_quote(&plan.scratch.to_string_lossy());
    let mut s = String::from("set -e\n");
    s += &format!("C={c}\nmount -t tmpfs -o mode=0755 modelfleet-live \"$C\"\n");
    s += "mkdir -p \"$C/u\" \"$C/w\" \"$C/r\"\n";
    s += "mount -t overlay overlay -o lowerdir=/,upperdir=\"$C/u\",workdir=\"$C/w\" \"$C/r\"\n";
    s += "mount -t proc proc \"$C/r/proc\"\nmount --rbind /sys \"$C/r/sys\"\nmount --rbind /dev \"$C/r/dev\"\n";
    for m in &plan.mounts {
        let target = sh_quote(&format!("/r{}", m.target));
        let source = sh_quote(&m.source.to_string_lossy());
        s += &format!(
            "if [ -d {source} ]; then mkdir -p \"$C\"{target}; else mkdir -p \"$(dirname \"$C\"{target})\"; touch \"$C\"{target}; fi\n"
        );
        s += &format!("mount --bind {source} \"$C\"{target}\n");
        if m.read_only {
            s += &format!("mount -o remount,bind,ro \"$C\"{target}\n");
        }
    }
    let mut exec = vec![
        "exec chroot \"$C/r\" /bin/sh -c".to_string(),
        sh_quote(INIT),
        "modelfleet-init".into(),
        "setpriv".into(),
    ];
    if let Some(uid) = plan.user {
        exec.push(format!("--reuid={uid}"));
    }
    match (plan.group.or(plan.user), plan.fs_group) {
        (Some(gid), Some(fs)) => exec.extend([format!("--regid={gid}"), format!("--groups={fs}")]),
        (Some(gid), None) => exec.extend([format!("--regid={gid}"), "--clear-groups".into()]),
        (None, _) => {}
    }
    exec.push("--".into());
    exec.push("env".into());
    exec.push("-i".into());
    if let Some(dir) = &plan.working_dir {
        exec.push(format!("--chdir={}", sh_quote(dir)));
    }
    exec.extend(plan.env.iter().map(|(k, v)| sh_quote(&format!("{k}={v}"))));
    exec.push(sh_quote(&plan.program.to_string_lossy()));
    exec.extend(plan.args.iter().map(|a| sh_quote(a)));
    s += &exec.join(" ");
    s.push('\n');
    s
}

/// A running (or exited) container process.
#[derive(Debug)]
pub struct ContainerProcess {
    child: Child,
}

struct SpawnRequest {
    command: Command,
    reply: mpsc::Sender<std::io::Result<Child>>,
}

/// The thread every container is spawned from: it never exits, so the parent-death signal of
/// each `unshare` fires only when the harness process dies.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("live-spawner".into())
            .spawn(move || {
                for mut request in rx {
                    let _ = request.reply.send(request.command.spawn());
                }
            })
            .expect("start the live runtime's spawner thread (this is a bug)");
        Mutex::new(tx)
    })
}

fn spawn_from_spawner(command: Command) -> std::io::Result<Child> {
    let (reply, answer) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("the spawner lock is poisoned"))?
        .send(SpawnRequest { command, reply })
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| std::io::Error::other("the spawner thread is gone"))?
}

impl ContainerProcess {
    /// Starts one run in the namespace at `netns`, output appended to `log`.
    pub fn start(plan: &LaunchPlan, netns: &Path, log: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(&plan.scratch)?;
        if let Some(parent) = log.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let out = File::options().create(true).append(true).open(log)?;
        let err = out.try_clone()?;
        let mut command = Command::new("setpriv");
        command
            .args(["--pdeathsig", "KILL", "nsenter"])
            .arg(format!("--net={}", netns.display()))
            .args([
                "--",
                "unshare",
                "--mount",
                "--propagation",
                "private",
                "--pid",
                "--fork",
            ])
            .args(["--kill-child=SIGKILL", "--", "sh", "-c"])
            .arg(launch_script(plan))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        Ok(Self {
            child: spawn_from_spawner(command)?,
        })
    }

    /// The pid of `unshare` (the container's parent on the host).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The host pid of the container's PID 1, once it exists.
    pub fn init_pid(&self) -> Option<u32> {
        first_child(self.child.id())
    }

    /// The exit code if it has exited (128 + signal for a signal).
    pub fn exit_code(&mut self) -> Option<i32> {
        use std::os::unix::process::ExitStatusExt;
        let status = self.child.try_wait().ok().flatten()?;
        Some(
            status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(9)),
        )
    }

    /// Sends SIGTERM to the container's PID 1.
    pub fn terminate(&self) {
        if let Some(init) = self.init_pid() {
            let _ = kill(pid(init), Signal::SIGTERM);
        }
    }

    /// SIGKILL: the container's PID 1 (and so its pid namespace) and the `unshare` above it.
    pub fn kill_now(&mut self) {
        if let Some(init) = self.init_pid() {
            let _ = kill(pid(init), Signal::SIGKILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits up to `grace` for exit after SIGTERM, then kills; returns the exit code.
    pub async fn stop(&mut self, grace: Duration) -> i32 {
        self.terminate();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if let Some(code) = self.exit_code() {
                return code;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.kill_now();
        self.exit_code().unwrap_or(137)
    }
}

impl Drop for ContainerProcess {
    fn drop(&mut self) {
        if self.exit_code().is_none() {
            self.kill_now();
        }
    }
}

/// The first child of process `pid` (from `/proc`), if it has one.
pub fn first_child(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn pid(raw: u32) -> Pid {
    Pid::from_raw(i32::try_from(raw).unwrap_or(i32::MAX))
}

/// `nsenter` into a running container (network, mount, pid, root) running `command` as its user:
/// exec probes and preStop hooks.
pub fn exec_command(
    init_pid: u32,
    user: Option<i64>,
    group: Option<i64>,
    command: &[String],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("nsenter");
    cmd.arg(format!("--target={init_pid}"))
        .args(["--net", "--mount", "--pid", "--root", "--wd=/", "--"]);
    cmd.arg("setpriv");
    if let Some(uid) = user {
        cmd.arg(format!("--reuid={uid}"));
    }
    if let Some(gid) = group.or(user) {
        cmd.args([format!("--regid={gid}"), "--clear-groups".into()]);
    }
    cmd.arg("--").args(command);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_mounts_volumes_read_only_and_runs_as_the_pod_user() {
        let plan = LaunchPlan {
            program: "/bin/server".into(),
            args: vec!["--name=it's".into()],
            env: vec![("A".into(), "b c".into())],
            mounts: vec![Mount {
                source: "/pods/u/routing".into(),
                target: "/etc/modelfleet/routing".into(),
                read_only: true,
            }],
            user: Some(65532),
            group: None,
            fs_group: Some(65532),
            working_dir: None,
            scratch: "/pods/u/c/server".into(),
        };
        let s = launch_script(&plan);
        assert!(
            s.contains("mount --bind '/pods/u/routing' \"$C\"'/r/etc/modelfleet/routing'"),
            "{s}"
        );
        assert!(s.contains("remount,bind,ro"));
        assert!(
            s.contains("exec chroot \"$C/r\" /bin/sh -c '\"$@\" & child=$!"),
            "{s}"
        );
        assert!(s.ends_with("modelfleet-init setpriv --reuid=65532 --regid=65532 --groups=65532 -- env -i 'A=b c' '/bin/server' '--name=it'\\''s'\n"), "{s}");
    }
}
