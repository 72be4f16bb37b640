//! `modelfleet-e2e up`, `up --keep` / `down`, run as a user would.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use modelfleet_testkit::process::is_alive;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

fn cli(state_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_modelfleet-e2e"));
    // Keep each test's `up --keep` record apart from the user's.
    cmd.env("MODELFLEET_E2E_STATE", state_dir.join("cluster.json"));
    cmd.env("MODELFLEET_E2E_LIVE_STATE", state_dir.join("live.json"));
    // Without $CARGO the CLI runs the binaries `cargo test` already built beside it instead of
    // building its own: `cargo build -p …` resolves other features than the workspace test
    // build, so it recompiled the operator's dependencies inside the test's start-up timeout
    // (CI: `up --with-agents` still building the operator after 300 s).
    cmd.env_remove("CARGO");
    cmd
}

/// Stops a kept cluster even when an assertion fails midway.
struct DownOnDrop<'a>(&'a Path);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = cli(self.0).arg("down").output();
    }
}

#[test]
fn up_keep_then_down_stops_every_component() {
    let home = tempfile::tempdir().unwrap();
    let _down = DownOnDrop(home.path());
    let out = cli(home.path())
        .args(["up", "--keep", "--gpu-nodes", "1", "--cpu-nodes", "0"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("[4/4] adding 1 GPU nodes"),
        "progress lines: {stderr}"
    );
    let kubeconfig = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .unwrap_or_else(|| panic!("no KUBECONFIG line in {stdout}"));
    assert!(Path::new(kubeconfig).is_file());

    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join("cluster.json")).unwrap()).unwrap();
    let pids: Vec<u32> = state["components"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[1].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(pids.len(), 5);
    assert!(
        pids.iter().all(|p| is_alive(*p)),
        "components run after `up --keep` exits"
    );

    let again = cli(home.path()).args(["up", "--keep"]).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already running"));

    let down = cli(home.path()).arg("down").output().unwrap();
    assert!(down.status.success(), "{}", String::from_utf8_lossy(&down.stderr));
    let alive: Vec<_> = pids.iter().filter(|p| is_alive(**p)).collect();
    assert!(alive.is_empty(), "alive after down: {alive:?}");
    assert!(
        !Path::new(kubeconfig).exists(),
        "down removes the cluster directory"
    );
    assert!(
        !cli(home.path()).arg("down").output().unwrap().status.success(),
        "nothing left to stop"
    );
}

#[test]
fn up_tears_down_on_ctrl_c() {
    let home = tempfile::tempdir().unwrap();
    let (mut child, prompted_rx, reader) = start_up(home.path(), &["--gpu-nodes", "1", "--cpu-nodes", "0"]);
    prompted_rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("`up` prompts for Ctrl-C");
    let status = child.interrupt();
    let seen = reader.join().unwrap();
    assert!(status.success(), "{status}: {seen:#?}");
    assert_eq!(seen.last().map(String::as_str), Some("stopped"), "{seen:#?}");

    let stdout = std::io::read_to_string(child.0.stdout.take().unwrap()).unwrap();
    let kubeconfig = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .unwrap();
    let dir = Path::new(kubeconfig).parent().unwrap();
    assert!(!dir.exists(), "{} survived Ctrl-C", dir.display());
    let survivors = processes_mentioning(&dir.display().to_string());
    assert!(survivors.is_empty(), "components still running: {survivors:#?}");
}

#[test]
fn up_live_runs_exec_inside_the_fleet_with_its_dns_and_tears_down_on_ctrl_c() {
    let home = tempfile::tempdir().unwrap();
    let args = ["--live", "--live-nodes", "1", "--live-gpus-per-node", "1"];
    let (mut child, prompted_rx, reader) = start_up(home.path(), &args);
    // Cold, this builds the workspace binaries the live pods run.
    prompted_rx
        .recv_timeout(std::time::Duration::from_secs(900))
        .expect("`up --live` prompts for Ctrl-C");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(home.path().join("live.json")).unwrap()).unwrap();
    let netns = state["netns"].as_str().unwrap().to_string();
    let kubeconfig = state["kubeconfig"].as_str().unwrap().to_string();

    let exec = |command: &[&str]| {
        cli(home.path())
            .arg("exec")
            .arg("--")
            .args(command)
            .output()
            .unwrap()
    };
    let resolved = exec(&["getent", "hosts", "kubernetes.default.svc"]);
    assert!(
        String::from_utf8_lossy(&resolved.stdout).starts_with("10.96.0.1 "),
        "the API server's Service through the fleet's CoreDNS: {resolved:?}"
    );
    let env = exec(&["sh", "-c", "echo $KUBECONFIG; ip -o route show table all"]);
    let text = String::from_utf8_lossy(&env.stdout);
    assert!(text.starts_with(&kubeconfig), "{text}");
    assert!(
        text.lines().skip(1).all(|l| l.contains("dev lo")),
        "a route out of the fleet: {text}"
    );
    assert_eq!(
        exec(&["sh", "-c", "exit 3"]).status.code(),
        Some(3),
        "exec passes the exit status on"
    );

    let status = child.interrupt();
    let seen = reader.join().unwrap();
    assert!(status.success(), "{status}: {seen:#?}");
    assert!(
        !Path::new("/run/netns").join(&netns).exists(),
        "{netns} survived Ctrl-C"
    );
    assert!(
        !home.path().join("live.json").exists(),
        "the state file survived Ctrl-C"
    );
    let dir = Path::new(&kubeconfig).parent().unwrap();
    let survivors = processes_mentioning(&dir.display().to_string());
    assert!(survivors.is_empty(), "components still running: {survivors:#?}");
    let no_cluster = exec(&["true"]);
    assert!(
        String::from_utf8_lossy(&no_cluster.stderr).contains("no live cluster is running"),
        "{no_cluster:?}"
    );
}

/// Command lines of running processes that mention `needle` (every component's flags name the
/// cluster directory).
fn processes_mentioning(needle: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .chars()
                .all(|c| c.is_ascii_digit())
        })
        .filter(|e| is_alive(e.file_name().to_string_lossy().parse().unwrap_or(0)))
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmd| cmd.contains(needle))
        .collect()
}

#[tokio::test]
async fn up_with_operator_serves_the_minimal_example() {
    let state = tempfile::tempdir().unwrap();
    let _down = DownOnDrop(state.path());
    let out = cli(state.path())
        .args([
            "up",
            "--keep",
            "--with-operator",
            "--gpu-nodes",
            "0",
            "--cpu-nodes",
            "1",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("kubectl get mdep -A -w"), "{stdout}");
    let kubeconfig = stdout
        .lines()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .unwrap()
        .to_string();

    let api = default_model_deployments(&kubeconfig).await;
    modelfleet_testkit::wait::wait_for(
        &api,
        "minilm",
        std::time::Duration::from_secs(60),
        "Available",
        |md: &modelfleet_crds::ModelDeployment| {
            md.status
                .as_ref()
                .is_some_and(|s| s.phase == Some(modelfleet_crds::v1alpha1::Phase::Available))
        },
    )
    .await
    .unwrap();

    let recorded = std::fs::read_to_string(state.path().join("cluster.json")).unwrap();
    assert!(
        recorded.contains("modelfleet-operator"),
        "down also stops the operator: {recorded}"
    );
    assert!(cli(state.path()).arg("down").output().unwrap().status.success());
    let survivors = processes_mentioning(Path::new(&kubeconfig).parent().unwrap().to_str().unwrap());
    assert!(survivors.is_empty(), "{survivors:#?}");
}

#[test]
fn up_with_agents_autoscales_on_the_annotated_load_and_stops_everything_on_ctrl_c() {
    let home = tempfile::tempdir().unwrap();
    let (mut child, prompted_rx, reader) = start_up(
        home.path(),
        &[
            "--with-operator",
            "--with-agents",
            "--gpu-nodes",
            "2",
            "--cpu-nodes",
            "1",
        ],
    );
    let stdout = BufReader::new(child.0.stdout.take().unwrap());
    let (stdout_tx, stdout_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = stdout_tx.send(line);
        }
    });
    if prompted_rx
        .recv_timeout(std::time::Duration::from_secs(300))
        .is_err()
    {
        child.interrupt();
        panic!("`up --with-agents` did not start: {:#?}", reader.join().unwrap());
    }
    // stdout is read on its own thread: take lines until the hint, which comes last.
    let mut printed = Vec::new();
    while let Ok(line) = stdout_rx.recv_timeout(std::time::Duration::from_secs(30)) {
        let hint = line.contains("kubectl annotate mdep embedder modelfleet.dev/simulated-load=");
        printed.push(line);
        if hint {
            break;
        }
    }
    let Some(kubeconfig) = printed
        .iter()
        .find_map(|l| l.strip_prefix("export KUBECONFIG="))
        .map(str::to_owned)
    else {
        panic!("no KUBECONFIG line: {printed:#?}");
    };
    assert!(
        printed
            .iter()
            .any(|l| l.contains("kubectl annotate mdep embedder")),
        "no hint to annotate the load: {printed:#?}"
    );

    let scaled = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let api = default_model_deployments(&kubeconfig).await;
        // Telemetry flows before the load is put on: MetricsAvailable turns True.
        modelfleet_testkit::wait::wait_for(
            &api,
            "embedder",
            // Generous: the other tests of this binary run clusters of their own at the same time.
            std::time::Duration::from_secs(240),
            "MetricsAvailable=True",
            |md: &modelfleet_crds::ModelDeployment| {
                md.status.as_ref().is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "MetricsAvailable" && c.status == "True")
                })
            },
        )
        .await?;
        let patch =
            serde_json::json!({"metadata": {"annotations": {"modelfleet.dev/simulated-load": "queued=80"}}});
        api.patch("embedder", &Default::default(), &kube::api::Patch::Merge(&patch))
            .await?;
        // 80 queued against queueDepthPerReplica 16: 5 replicas.
        modelfleet_testkit::wait::wait_for(
            &api,
            "embedder",
            std::time::Duration::from_secs(120),
            "5 replicas",
            |md: &modelfleet_crds::ModelDeployment| {
                md.status
                    .as_ref()
                    .and_then(|s| s.autoscaling.as_ref())
                    .is_some_and(|a| a.desired_replicas == 5)
            },
        )
        .await
    });
    let status = child.interrupt();
    let seen = reader.join().unwrap();
    scaled.unwrap_or_else(|e| panic!("{e}\n{seen:#?}"));
    assert!(status.success(), "{status}: {seen:#?}");
    assert_eq!(seen.last().map(String::as_str), Some("stopped"), "{seen:#?}");
    let dir = Path::new(&kubeconfig).parent().unwrap();
    let survivors = processes_mentioning(&dir.display().to_string());
    assert!(survivors.is_empty(), "still running after Ctrl-C: {survivors:#?}");
}

/// Interrupts (Ctrl-C) a foreground `up` when the test ends, also when it fails midway, so its
/// cluster, operator and agents never outlive the test.
struct InterruptOnDrop(std::process::Child);

impl InterruptOnDrop {
    fn interrupt(&mut self) -> std::process::ExitStatus {
        let _ = kill(Pid::from_raw(self.0.id() as i32), Signal::SIGINT);
        self.0.wait().expect("wait for `up`")
    }
}

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            self.interrupt();
        }
    }
}

/// A foreground `up`: the process (interrupted when dropped), a signal when it prompts for Ctrl-C,
/// and its stderr read on a thread to the end (it keeps reporting while it tears down).
fn start_up(
    home: &Path,
    args: &[&str],
) -> (
    InterruptOnDrop,
    std::sync::mpsc::Receiver<()>,
    std::thread::JoinHandle<Vec<String>>,
) {
    let mut child = InterruptOnDrop(
        cli(home)
            .arg("up")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("`modelfleet-e2e up` starts"),
    );
    let (prompted_tx, prompted_rx) = std::sync::mpsc::channel();
    let stderr = BufReader::new(child.0.stderr.take().expect("piped stderr"));
    let reader = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains("press Ctrl-C") {
                let _ = prompted_tx.send(());
            }
            seen.push(line);
        }
        seen
    });
    (child, prompted_rx, reader)
}

/// ModelDeployments in namespace `default` of the cluster whose kubeconfig `up` printed.
async fn default_model_deployments(kubeconfig: &str) -> kube::Api<modelfleet_crds::ModelDeployment> {
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).expect("the printed kubeconfig"),
        &Default::default(),
    )
    .await
    .expect("a client config");
    let client = kube::Client::try_from(config).expect("a client");
    kube::Api::namespaced(client, "default")
}
