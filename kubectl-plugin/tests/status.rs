//! `kubectl modelfleet list` and `status` against a real API server, with the kubeconfig found
//! as kubectl finds it ($KUBECONFIG).

use std::process::Command;

use kube::{
    Api,
    api::{Patch, PatchParams, PostParams},
};
use modelfleet_crds::ModelDeployment;
use modelfleet_testkit::testing::{TestNamespace, shared_cluster};

fn plugin(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kubectl-modelfleet"))
        .args(args)
        .env("KUBECONFIG", shared_cluster().kubeconfig_path())
        .output()
        .expect("the plugin runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn list_and_status_read_the_cluster() {
    let cluster = shared_cluster();
    let client = cluster.client().await.unwrap();
    let ns = TestNamespace::create(cluster, &client, "plugin").await.unwrap();
    let spec = serde_yaml::from_str(
        "model: {name: minilm, version: '3', uri: 'hf://o/m'}
scaling: {minReplicas: 1, maxReplicas: 4, targets: {queueDepthPerReplica: 8}}",
    )
    .unwrap();
    let mut md = ModelDeployment::new("embed", spec);
    md.metadata.namespace = Some(ns.name().to_string());
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    api.create(&PostParams::default(), &md).await.unwrap();
    // No operator runs in this test binary: the status is written as the operator would.
    let status = serde_json::json!({
        "apiVersion": "modelfleet.dev/v1alpha1",
        "kind": "ModelDeployment",
        "status": {
            "observedGeneration": 1, "phase": "Available", "replicas": 3, "readyReplicas": 3,
            "stable": {"revision": "abc1234", "version": "3", "replicas": 3, "readyReplicas": 3},
            "autoscaling": {"desiredReplicas": 3, "history": [
                {"time": "2026-12-01T10:00:00Z", "from": 1, "to": 3, "reason": "queueDepthPerReplica 20 > 8"}
            ]},
            "conditions": [{"type": "MetricsAvailable", "status": "True", "reason": "TelemetryFresh",
                "message": "fresh telemetry from 3 of 3 ready replicas", "lastTransitionTime": "2026-12-01T10:00:00Z"}]
        }
    });
    api.patch_status(
        "embed",
        &PatchParams::apply("test").force(),
        &Patch::Apply(&status),
    )
    .await
    .unwrap();

    let (ok, stdout, stderr) = plugin(&["list", "-n", ns.name()]);
    assert!(ok, "{stderr}");
    let row = stdout
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(
        row,
        ["embed", "3/3", "3", "-", "0%", "Available", "desired", "3"],
        "{stdout}"
    );

    let (ok, stdout, stderr) = plugin(&["status", "embed", "-n", ns.name()]);
    assert!(ok, "{stderr}");
    assert!(
        stdout.starts_with(&format!(
            "ModelDeployment {}/embed: Available, 3/3 ready",
            ns.name()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("stable    abc1234  version 3  3/3 ready"),
        "{stdout}"
    );
    assert!(stdout.contains("1 → 3: queueDepthPerReplica 20 > 8"), "{stdout}");
    assert!(
        stdout.contains("MetricsAvailable True TelemetryFresh"),
        "{stdout}"
    );

    let (ok, _, stderr) = plugin(&["status", "missing", "-n", ns.name()]);
    assert!(!ok);
    assert!(
        stderr.contains("modeldeployment missing not found in namespace"),
        "{stderr}"
    );
}

#[tokio::test]
async fn promote_abort_pause_and_resume_write_what_the_operator_reads() {
    let cluster = shared_cluster();
    let client = cluster.client().await.unwrap();
    let ns = TestNamespace::create(cluster, &client, "plugin-controls")
        .await
        .unwrap();
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), ns.name());
    for (name, spec) in [
        (
            "rolling",
            "model: {name: minilm, version: '3', uri: 'hf://o/m'}
rollout: {steps: [{canary: {weight: 10, duration: 1m}}]}",
        ),
        ("plain", "model: {name: minilm, version: '3', uri: 'hf://o/m'}"),
    ] {
        let mut md = ModelDeployment::new(name, serde_yaml::from_str(spec).unwrap());
        md.metadata.namespace = Some(ns.name().to_string());
        api.create(&PostParams::default(), &md).await.unwrap();
    }
    let n = ns.name();

    let (ok, out, err) = plugin(&["pause", "rolling", "-n", n]);
    assert!(ok, "{err}");
    assert!(out.contains("rollout paused"), "{out}");
    let md = api.get("rolling").await.unwrap();
    assert!(md.spec.rollout.as_ref().is_some_and(|r| r.paused));
    let (ok, _, err) = plugin(&["resume", "rolling", "-n", n]);
    assert!(ok, "{err}");
    assert!(!api.get("rolling").await.unwrap().spec.rollout.unwrap().paused);

    for (command, key) in [
        ("promote", "modelfleet.dev/promote"),
        ("abort", "modelfleet.dev/abort"),
    ] {
        let (ok, _, err) = plugin(&[command, "rolling", "-n", n]);
        assert!(ok, "{command}: {err}");
        let md = api.get("rolling").await.unwrap();
        assert!(
            md.metadata.annotations.unwrap_or_default().contains_key(key),
            "{command}"
        );
    }

    let (ok, _, err) = plugin(&["promote", "plain", "-n", n]);
    assert!(!ok);
    assert!(err.contains("has no spec.rollout"), "{err}");
    let (ok, _, err) = plugin(&["abort", "missing", "-n", n]);
    assert!(!ok);
    assert!(err.contains("modeldeployment missing not found"), "{err}");
}

#[tokio::test]
async fn status_watch_prints_the_tree_and_stops_on_interrupt() {
    use std::io::{BufRead, BufReader};
    let cluster = shared_cluster();
    let client = cluster.client().await.unwrap();
    let ns = TestNamespace::create(cluster, &client, "plugin-watch")
        .await
        .unwrap();
    let mut md = ModelDeployment::new(
        "watched",
        serde_yaml::from_str("model: {name: minilm, version: '3', uri: 'hf://o/m'}").unwrap(),
    );
    md.metadata.namespace = Some(ns.name().to_string());
    Api::<ModelDeployment>::namespaced(client.clone(), ns.name())
        .create(&PostParams::default(), &md)
        .await
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kubectl-modelfleet"))
        .args(["status", "watched", "-w", "-n", ns.name()])
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("the plugin runs");
    let stdout = child.stdout.take().expect("stdout");
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .take(2)
        .collect();
    assert!(lines[0].starts_with("--- "), "{lines:?}");
    assert!(
        lines[1].contains("ModelDeployment") && lines[1].contains("watched"),
        "{lines:?}"
    );
    // Ctrl-C ends the watch cleanly.
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().expect("kill");
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status:?}");
}
