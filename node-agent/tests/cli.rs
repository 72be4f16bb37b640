//! The binary: `--help`, and a clear start-up error on a machine without NVML.

use std::process::Command;

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_modelfleet-node-agent"))
}

#[test]
fn help_describes_the_agent_and_its_flags() {
    let out = agent().arg("--help").output().expect("runs");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "NVML",
        "--gpu-backend",
        "--operator-url",
        "--scrape-loopback-only",
        "[env: NODE_NAME=",
    ] {
        assert!(text.contains(needle), "--help lacks {needle}:\n{text}");
    }
}

#[test]
fn without_nvml_the_agent_says_what_to_do() {
    if std::path::Path::new("/dev/nvidiactl").exists() {
        // A GPU machine: NVML is there, nothing to check.
        return;
    }
    let out = agent()
        .args([
            "--node-name",
            "n1",
            "--gpu-backend",
            "nvml",
            "--log-format",
            "text",
        ])
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("NVML is not available"), "{text}");
    assert!(text.contains("--gpu-backend=simulated"), "{text}");
}
