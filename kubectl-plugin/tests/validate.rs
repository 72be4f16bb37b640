//! `kubectl modelfleet validate` on real files.

use std::{path::PathBuf, process::Command};

fn plugin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kubectl-modelfleet"))
}

fn examples_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn accepts_every_example() {
    let mut cmd = plugin();
    cmd.arg("validate");
    let mut files = 0;
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        cmd.arg("-f").arg(entry.unwrap().path());
        files += 1;
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("modeldeployment/classifier is valid"), "{stdout}");
    assert_eq!(stdout.lines().count(), files, "one line per example: {stdout}");
}

#[test]
fn explains_every_problem_and_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        r#"apiVersion: modelfleet.dev/v1alpha1
kind: ModelDeployment
metadata: {name: broken}
spec:
  model: {name: m, version: "1", uri: "http://example.com/m"}
  rollout:
    steps:
      - canary: {weight: 50, duration: 5m}
      - canary: {weight: 10, duration: 5m}
"#,
    )
    .unwrap();
    let out = plugin().args(["validate", "-f"]).arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("(broken)"), "{stderr}");
    assert!(
        stderr.contains("spec.model.uri: spec.model.uri must start with hf://"),
        "{stderr}"
    );
    assert!(
        stderr.contains("spec.rollout.steps: spec.rollout.steps[*].canary.weight must not decrease"),
        "{stderr}"
    );
}

#[test]
fn reports_unreadable_files_and_bad_durations() {
    let out = plugin()
        .args(["validate", "-f", "/nonexistent/x.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.yaml: cannot read"));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("d.yaml");
    std::fs::write(
        &bad,
        "kind: ModelDeployment\nmetadata: {name: d}\nspec:\n  model: {name: m, version: '1', uri: 'hf://o/m'}\n  batching: {maxQueueDelay: 5 minutes}\n",
    )
    .unwrap();
    let out = plugin().args(["validate", "-f"]).arg(&bad).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("spec.batching.maxQueueDelay: invalid duration \"5 minutes\""),
        "{stderr}"
    );
}

#[test]
fn help_describes_the_command() {
    let out = plugin().arg("--help").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("validate"));
}
