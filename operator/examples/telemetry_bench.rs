//! Telemetry hub ingest benchmark: N synthetic node agents each stream one NodeReport per
//! second (8 GPUs and 8 server pods per node, as a full H100 node) to the operator's hub, which
//! runs in a child process of its own so its CPU and memory are measured alone.
//!
//! ```sh
//! cargo run --release -p modelfleet-operator --example telemetry_bench -- 1000 60
//! ```
//! Arguments: agents (1000), seconds (60). The child also runs the autoscaler's read path: one
//! aggregation per ModelDeployment (one per node here) every 2 s.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use modelfleet_operator::{
    metrics::Metrics,
    telemetry::{Authenticator, Hub, TelemetryStore},
};
use modelfleet_proto::telemetry::{
    GpuSample, NodeReport, PodRef, ServerSample, telemetry_client::TelemetryClient,
};
use modelfleet_testkit::procfs::{cpu_seconds, proc_status_mib};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const TOKEN: &str = "bench-token";
const SERVERS_PER_NODE: usize = 8;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Runtime::new().expect("a Tokio runtime");
    if args.first().map(String::as_str) == Some("hub") {
        let nodes: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
        runtime.block_on(hub(nodes));
        return;
    }
    let agents: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let seconds: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(60);
    runtime.block_on(drive(agents, seconds));
}

/// The child: a hub on a free loopback port (printed on stdout), and the aggregation loop.
async fn hub(nodes: usize) {
    let store = TelemetryStore::default();
    let (_leading_tx, leading) = tokio::sync::watch::channel(true);
    let auth = Authenticator::Static(Arc::new(HashSet::from([TOKEN.to_string()])));
    let (addr, server) = Hub::new(store.clone(), auth, leading, Metrics::default())
        .serve("127.0.0.1:0".parse().expect("address"))
        .await
        .expect("bind the hub");
    println!("{addr}");
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        loop {
            tick.tick().await;
            let now = Instant::now();
            let mut queued = 0.0;
            for node in 0..nodes {
                queued += store
                    .aggregate("bench", &format!("md-{node}"), None, now)
                    .queue_depth;
            }
            store.forget_old(now);
            std::hint::black_box(queued);
        }
    });
    server.await;
}

fn report(node: usize, sequence: u64) -> NodeReport {
    let pod = |i: usize| PodRef {
        namespace: "bench".into(),
        name: format!("md-{node}-pod-{i}"),
        container: "server".into(),
    };
    NodeReport {
        node: format!("node-{node}"),
        sequence,
        timestamp_unix_ms: 0,
        interval_ms: 1000,
        simulated: true,
        gpus: (0..SERVERS_PER_NODE)
            .map(|i| GpuSample {
                uuid: format!("GPU-{node}-{i}"),
                index: i as u32,
                product: "NVIDIA-H100-80GB-HBM3".into(),
                utilization_gpu: 50.0,
                memory_total_bytes: 80 << 30,
                pod: Some(pod(i)),
                ..Default::default()
            })
            .collect(),
        servers: (0..SERVERS_PER_NODE)
            .map(|i| ServerSample {
                pod: Some(pod(i)),
                deployment: format!("md-{node}"),
                revision: "r1".into(),
                scraped: true,
                queue_depth: (sequence % 17) as f64,
                running_requests: 4.0,
                request_rate: 100.0,
                latency_p95_seconds: 0.05,
                ..Default::default()
            })
            .collect(),
        dropped_reports: 0,
    }
}

async fn agent(url: String, node: usize, until: Instant, acked: Arc<AtomicU64>) {
    let Ok(mut client) = TelemetryClient::connect(url).await else {
        eprintln!("agent {node}: cannot connect");
        return;
    };
    let (tx, rx) = mpsc::channel(4);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {TOKEN}").parse().expect("metadata"),
    );
    let Ok(response) = client.report(request).await else {
        eprintln!("agent {node}: refused");
        return;
    };
    let mut acks = response.into_inner();
    let counter = acked.clone();
    let reader = tokio::spawn(async move {
        while let Ok(Some(_)) = acks.message().await {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Spread the agents over the second, as real ones are.
    tokio::time::sleep(Duration::from_millis((node as u64 * 997) % 1000)).await;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut sequence = 0;
    while Instant::now() < until {
        tick.tick().await;
        sequence += 1;
        if tx.send(report(node, sequence)).await.is_err() {
            break;
        }
    }
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
}

async fn drive(agents: usize, seconds: u64) {
    let exe = std::env::current_exe().expect("own path");
    let mut child = tokio::process::Command::new(exe)
        .args(["hub", &agents.to_string()])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start the hub process");
    let pid = child.id().expect("pid");
    let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut line)
        .await
        .expect("the hub prints its address");
    let url = format!("http://{}", line.trim());
    let idle_rss = proc_status_mib(pid, "VmRSS:");

    let acked = Arc::new(AtomicU64::new(0));
    let warmup = Duration::from_secs(5);
    let until = Instant::now() + warmup + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..agents)
        .map(|node| tokio::spawn(agent(url.clone(), node, until, acked.clone())))
        .collect();
    tokio::time::sleep(warmup).await;
    let (cpu0, acked0, t0) = (cpu_seconds(pid), acked.load(Ordering::Relaxed), Instant::now());
    let mut peak_rss: f64 = 0.0;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        peak_rss = peak_rss.max(proc_status_mib(pid, "VmRSS:"));
    }
    let wall = t0.elapsed().as_secs_f64();
    let (cpu, reports) = (cpu_seconds(pid) - cpu0, acked.load(Ordering::Relaxed) - acked0);
    for t in tasks {
        let _ = t.await;
    }
    let hwm = proc_status_mib(pid, "VmHWM:");
    let _ = child.kill().await;
    println!("agents: {agents}, servers and GPUs per node: {SERVERS_PER_NODE}, measured: {wall:.1} s");
    println!("reports acknowledged: {reports} ({:.0}/s)", reports as f64 / wall);
    println!("hub CPU: {cpu:.2} s = {:.1}% of one core", 100.0 * cpu / wall);
    println!("hub memory: {idle_rss:.1} MiB idle, {peak_rss:.1} MiB peak RSS sampled, {hwm:.1} MiB VmHWM");
}
