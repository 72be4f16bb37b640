//! The operator binary's commands.

use std::process::Command;

#[test]
fn crd_prints_the_committed_crd() {
    let out = Command::new(env!("CARGO_BIN_EXE_modelfleet-operator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../charts/modelfleet/crds/modeldeployments.modelfleet.dev.yaml"
    ))
    .unwrap();
    assert!(
        committed.ends_with(&printed),
        "`modelfleet-operator crd` and the chart's CRD differ"
    );
}

#[test]
fn help_lists_the_commands_and_flags() {
    let top = Command::new(env!("CARGO_BIN_EXE_modelfleet-operator"))
        .arg("--help")
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout);
    assert!(top.contains("run") && top.contains("crd"), "{top}");
    let run = Command::new(env!("CARGO_BIN_EXE_modelfleet-operator"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    let run = String::from_utf8_lossy(&run.stdout);
    for flag in [
        "--default-image",
        "--lease-duration",
        "--http-addr",
        "--concurrency",
        "--telemetry-addr",
        "--autoscale-interval",
        "MODELFLEET_LEASE_NAME",
    ] {
        assert!(run.contains(flag), "{flag} missing from run --help");
    }
}

#[test]
fn a_bad_duration_flag_names_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_modelfleet-operator"))
        .args(["run", "--lease-duration=ten seconds"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--lease-duration") && err.contains("invalid duration"),
        "{err}"
    );
}
