//! Debian's Prometheus, started by the harness, scrapes a loopback target from its targets file.

use std::{collections::BTreeMap, time::Duration};

use modelfleet_testkit::{
    prometheus::{Prometheus, Target},
    wait::poll_until,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Serves `/metrics` with one gauge on a loopback port until the test ends.
async fn serve_metrics(value: f64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = [0u8; 2048];
            let _ = stream.read(&mut buf).await;
            let body = format!("# TYPE modelfleet_test_value gauge\nmodelfleet_test_value {value}\n");
            let response = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    port
}

#[tokio::test]
async fn scrapes_targets_from_the_file_and_answers_promql() {
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(dir.path(), Duration::from_millis(500))
        .await
        .unwrap();
    let port = serve_metrics(42.0).await;
    let labels = BTreeMap::from([("revision".to_string(), "abc123".to_string())]);
    prom.set_targets(&[Target {
        address: format!("127.0.0.1:{port}"),
        labels,
    }])
    .unwrap();

    let value = poll_until(Duration::from_secs(30), "the scraped gauge", || async {
        let result = prom
            .query("modelfleet_test_value{revision=\"abc123\"}")
            .await
            .map_err(|e| e.to_string())?;
        Ok(result[0]["value"][1].as_str().map(str::to_string))
    })
    .await
    .unwrap();
    assert_eq!(value, "42");
    prom.stop();
}

#[tokio::test]
async fn refuses_non_loopback_targets() {
    let dir = tempfile::tempdir().unwrap();
    let prom = Prometheus::start(dir.path(), Duration::from_secs(1))
        .await
        .unwrap();
    let err = prom
        .set_targets(&[Target {
            address: "10.244.0.5:9090".into(),
            labels: BTreeMap::new(),
        }])
        .unwrap_err();
    assert!(err.to_string().contains("not a loopback address"), "{err}");
    prom.stop();
}
