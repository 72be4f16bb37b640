//! Two operator processes: one leads; killing it, the other takes over and applies a change
//! within 20 s.

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use k8s_openapi::api::{apps::v1::Deployment, coordination::v1::Lease};
use kube::{
    Api,
    api::{ListParams, Patch, PatchParams, PostParams},
};
use modelfleet_crds::ModelDeployment;
use modelfleet_testkit::{ClusterConfig, LocalCluster, crds, nodes, wait::poll_until};
use serde_json::json;

struct Operator(Child);

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn operator(cluster: &LocalCluster, identity: &str) -> Operator {
    let log =
        std::fs::File::create(cluster.dir().join(format!("operator-{identity}.log"))).expect("a log file");
    let child = Command::new(env!("CARGO_BIN_EXE_modelfleet-operator"))
        .args([
            "run",
            "--http-addr=127.0.0.1:0",
            "--telemetry-addr=127.0.0.1:0",
            "--log-format=text",
            "--lease-duration=10s",
            "--lease-retry=2s",
        ])
        .arg(format!("--identity={identity}"))
        .env("KUBECONFIG", cluster.kubeconfig_path())
        .stdout(log.try_clone().expect("a log handle"))
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .expect("the operator starts");
    Operator(child)
}

async fn holder(leases: &Api<Lease>) -> Option<String> {
    leases
        .get_opt("modelfleet-operator")
        .await
        .ok()
        .flatten()?
        .spec?
        .holder_identity
}

async fn replicas_of(client: &kube::Client, want: i32) -> Result<Option<()>, String> {
    let list = Api::<Deployment>::namespaced(client.clone(), "default")
        .list(&ListParams::default().labels("modelfleet.dev/deployment=led"))
        .await
        .map_err(|e| e.to_string())?;
    let got: Vec<_> = list
        .items
        .iter()
        .map(|d| d.spec.as_ref().and_then(|s| s.replicas))
        .collect();
    if got == [Some(want)] {
        Ok(Some(()))
    } else {
        Err(format!("Deployment replicas {got:?}"))
    }
}

#[tokio::test]
async fn the_follower_takes_over_within_20_seconds_when_the_leader_dies() {
    let cluster = LocalCluster::start(ClusterConfig::default()).await.unwrap();
    let client = cluster.client().await.unwrap();
    crds::install_modelfleet_crds(&client).await.unwrap();
    nodes::add_cpu_nodes(&client, 1).await.unwrap();
    let leases: Api<Lease> = Api::namespaced(client.clone(), "default");

    let mut a = Some(operator(&cluster, "a"));
    let first = poll_until(Duration::from_secs(30), "a leader", || async {
        Ok(holder(&leases).await)
    })
    .await
    .unwrap();
    assert_eq!(first, "a");
    let mut b = operator(&cluster, "b");

    let spec = serde_yaml::from_str("model: {name: m, version: '1', uri: 'hf://o/m'}\nruntime: {device: cpu}\nresources: {gpus: 0}\nreplicas: 1\n").unwrap();
    let mut md = ModelDeployment::new("led", spec);
    md.metadata.namespace = Some("default".into());
    let api: Api<ModelDeployment> = Api::namespaced(client.clone(), "default");
    api.create(&PostParams::default(), &md).await.unwrap();
    poll_until(Duration::from_secs(30), "the leader reconciles", || {
        replicas_of(&client, 1)
    })
    .await
    .unwrap();

    // Kill the leader without letting it release the Lease.
    drop(a.take());
    let killed = Instant::now();
    api.patch(
        "led",
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"replicas": 2}})),
    )
    .await
    .unwrap();
    poll_until(Duration::from_secs(20), "the follower applies the change", || {
        replicas_of(&client, 2)
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            std::fs::read_to_string(cluster.dir().join("operator-b.log")).unwrap_or_default()
        )
    });
    let took = killed.elapsed();
    eprintln!("takeover and reconcile took {:.1}s", took.as_secs_f64());
    assert_eq!(holder(&leases).await.as_deref(), Some("b"));

    // SIGTERM: a clean exit that hands the Lease back at once.
    let pid = b.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = poll_until(Duration::from_secs(15), "the operator exits", || {
        let exited = b.0.try_wait().map_err(|e| e.to_string());
        async move { exited }
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status}");
    assert_eq!(holder(&leases).await, None, "the Lease is released on shutdown");
}
