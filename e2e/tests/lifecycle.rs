//! A cluster of its own: start, serve, stop, and leave no process behind.

use std::time::Instant;

use modelfleet_testkit::{ClusterConfig, LocalCluster, process::is_alive};

#[tokio::test]
async fn stop_leaves_no_process_alive_and_removes_the_directory() {
    let t0 = Instant::now();
    let cluster = LocalCluster::start(ClusterConfig::default()).await.unwrap();
    eprintln!("cluster started in {:.1}s", t0.elapsed().as_secs_f64());

    let components: Vec<String> = cluster.components().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        components,
        [
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kwok"
        ]
    );
    let pids = cluster.pids();
    assert_eq!(
        pids.len(),
        11,
        "five components, their guards and the directory guard: {pids:?}"
    );
    assert!(pids.iter().all(|p| is_alive(*p)), "all started: {pids:?}");

    let client = cluster.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(version.git_version, "v1.36.3");
    assert!(cluster.kubeconfig_path().is_file());
    assert!(
        cluster
            .component_log("kube-apiserver", 5)
            .is_some_and(|l| !l.is_empty())
    );

    let dir = cluster.dir().to_path_buf();
    cluster.stop();
    let alive: Vec<u32> = pids.into_iter().filter(|p| is_alive(*p)).collect();
    assert!(alive.is_empty(), "still alive after stop: {alive:?}");
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test]
async fn a_failed_start_names_the_component_and_shows_its_log() {
    let mut config = ClusterConfig::default();
    config
        .extra_args
        .insert("kube-apiserver".into(), vec!["--no-such-flag".into()]);
    let err = LocalCluster::start(config).await.unwrap_err().to_string();
    assert!(
        err.contains("kube-apiserver did not start: it exited during start-up"),
        "{err}"
    );
    assert!(
        err.contains("--- last lines of") && err.contains("kube-apiserver.log"),
        "{err}"
    );
    assert!(err.contains("unknown flag: --no-such-flag"), "{err}");
}
