//! A real shadow test: two MiniLM servers on loopback, the stable one mirroring a share of its
//! requests to the candidate through the routing file. The stable server's `/metrics` then goes
//! through the same code the product uses: the node agent's parser, a NodeReport into the
//! operator's telemetry store, and the operator's `outputAgreement` check. An identical model
//! passes; a variant of MiniLM with 3 of its 6 layers fails. The same for generation: two real
//! SmolLM2 servers, deterministic chats mirrored and their texts compared; the same
//! `spec.generation` passes, a changed `defaultMaxTokens` (what a rollout of that field changes in
//! the pod) fails.

mod common;

use std::{path::Path, time::Duration};

use common::*;
use modelfleet_crds::v1alpha1::AnalysisCheck;
use modelfleet_node_agent::scrape::{load_between, parse::parse, read_counters};
use modelfleet_operator::telemetry::TelemetryStore;
use modelfleet_operator_core::rollout::{analysis::evaluate_builtin, machine::CheckOutcome};
use modelfleet_proto::telemetry::{NodeReport, PodRef, ServerSample};
use serde_json::json;

const REQUESTS: usize = 40;
const PERCENT: u32 = 50;
const AGREED: &str = r#"modelfleet_shadow_comparisons_total{result="agree"}"#;
const DISAGREED: &str = r#"modelfleet_shadow_comparisons_total{result="disagree"}"#;

/// MiniLM with only its first `layers` transformer layers: same weights and tokenizer, a config
/// that stops early.
fn truncated_minilm(dir: &Path, layers: u32) -> std::path::PathBuf {
    let source = model_dir();
    let out = dir.join("minilm-truncated");
    std::fs::create_dir_all(&out).expect("variant dir");
    for entry in std::fs::read_dir(&source).expect("model dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name != "config.json" {
            std::os::unix::fs::symlink(entry.path(), out.join(&name)).expect("link model file");
        }
    }
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).expect("config.json"))
            .expect("config JSON");
    config["num_hidden_layers"] = json!(layers);
    std::fs::write(out.join("config.json"), config.to_string()).expect("write config");
    out
}

/// The stable server's counters as the node agent reads them.
async fn stable_sample(
    server: &ServerProcess,
    previous: Option<&modelfleet_node_agent::scrape::ServerCounters>,
) -> (ServerSample, modelfleet_node_agent::scrape::ServerCounters) {
    let text = get_text(&format!("http://{}/metrics", server.metrics)).await;
    let counters = read_counters(&parse(&text)).expect("the server's metrics parse");
    let load = load_between(previous, &counters, 1.0);
    let sample = ServerSample {
        pod: Some(PodRef {
            namespace: "search".into(),
            name: "minilm-stable-0".into(),
            container: "server".into(),
        }),
        deployment: "minilm".into(),
        revision: "stable".into(),
        scraped: true,
        request_rate: load.request_rate,
        error_rate: load.error_rate,
        shadow_agree: load.shadow_agree as u64,
        shadow_disagree: load.shadow_disagree as u64,
        shadow_error: load.shadow_error as u64,
        ..Default::default()
    };
    (sample, counters)
}

/// Mirrors `PERCENT`% of `REQUESTS` from a MiniLM server to `candidate` and returns
/// (requests compared, the outputAgreement outcome).
async fn shadow_against(candidate_args: &[&str]) -> (u64, CheckOutcome) {
    let dir = tempfile::tempdir().expect("tempdir");
    let routing = dir.path().join("routing.json");
    std::fs::write(&routing, r#"{"mirror":null}"#).expect("routing file");
    let routing_arg = format!("--routing-file={}", routing.display());
    let minilm = minilm_args();
    let mut stable_args: Vec<&str> = minilm.iter().map(String::as_str).collect();
    stable_args.push(&routing_arg);
    let stable = ServerProcess::start(&stable_args);
    let candidate = ServerProcess::start(candidate_args);

    let baseline = stable_sample(&stable, None).await;

    let mirror = json!({"mirror": {"url": format!("http://{}", candidate.http), "percent": PERCENT}});
    let tmp = routing.with_extension("tmp");
    std::fs::write(&tmp, mirror.to_string()).expect("write routing");
    std::fs::rename(&tmp, &routing).expect("swap routing");
    // The server re-reads the file within a second; wait until a mirrored copy is compared.
    let applied = eventually(Duration::from_secs(20), async || {
        let a = post(
            &stable.url("/v1/embeddings"),
            &json!({"input": "warm up the mirror"}),
            &[],
        )
        .await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        stable.metric(AGREED).await + stable.metric(DISAGREED).await > 0.0
    })
    .await;
    assert!(applied, "the routing file was not applied\n{}", stable.log());
    let before = stable.metric(AGREED).await + stable.metric(DISAGREED).await;
    for i in 0..REQUESTS {
        let input = format!("request number {i}: how do I reset my password?");
        let a = post(&stable.url("/v1/embeddings"), &json!({"input": input}), &[]).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    // Mirrored copies are sent in the background: wait until they settle.
    let last = settled_comparisons(&stable).await;
    let mirrored = (last - before).max(0.0) as u64;
    (mirrored, judge(&stable, baseline).await)
}

/// One NodeReport of the stable server, as its node agent would send it.
fn report(sample: ServerSample) -> NodeReport {
    NodeReport {
        node: "gpu-node-0".into(),
        interval_ms: 1000,
        servers: vec![sample],
        ..Default::default()
    }
}

/// The stable server's scrape at the start (`baseline`) and now, as two consecutive node
/// reports one second apart (however long the requests took: the store judges a 30 s window),
/// through the operator's telemetry store and its `outputAgreement` check (min 0.98).
async fn judge(
    stable: &ServerProcess,
    baseline: (ServerSample, modelfleet_node_agent::scrape::ServerCounters),
) -> CheckOutcome {
    let (first, counters) = baseline;
    let (sample, _) = stable_sample(stable, Some(&counters)).await;
    let store = TelemetryStore::default();
    let now = std::time::Instant::now();
    store.ingest(&report(first), now - Duration::from_secs(1));
    store.ingest(&report(sample), now);
    let stable_agg = store.aggregate("search", "minilm", Some("stable"), now);
    let candidate_agg = store.aggregate("search", "minilm", Some("candidate"), now);
    let check: AnalysisCheck = serde_yaml::from_str("{builtin: outputAgreement, min: 0.98}").expect("check");
    evaluate_builtin(&check, &candidate_agg, &stable_agg)
}

/// Waits until the stable server's shadow comparisons stop changing; returns their count.
async fn settled_comparisons(stable: &ServerProcess) -> f64 {
    let mut last = -1.0;
    let _ = eventually(Duration::from_secs(60), async || {
        let now = stable.metric(AGREED).await + stable.metric(DISAGREED).await;
        let settled = now == last;
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
        settled
    })
    .await;
    last
}

fn assert_share(mirrored: u64) {
    // Each request is mirrored with probability 1/2: 40 requests give 20 ± 12 at about 4 sigma
    // (sigma = 3.2), while 0% or 100% would be far outside.
    let expected = REQUESTS as u64 * u64::from(PERCENT) / 100;
    assert!(
        (expected - 12..=expected + 12).contains(&mirrored),
        "{mirrored} of {REQUESTS} requests mirrored at {PERCENT}%"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_agreement_passes_for_an_identical_minilm_and_fails_for_a_truncated_one() {
    let minilm = minilm_args();
    let same: Vec<&str> = minilm.iter().map(String::as_str).collect();
    let (mirrored, outcome) = shadow_against(&same).await;
    eprintln!("identical: {mirrored} mirrored, {outcome:?}");
    assert_share(mirrored);
    let CheckOutcome::Passed { value, .. } = outcome else {
        panic!("an identical model must agree: {outcome:?}")
    };
    assert!(value >= 0.98, "{value}");

    let dir = tempfile::tempdir().expect("tempdir");
    let variant = truncated_minilm(dir.path(), 3);
    let variant_uri = format!("--model-uri=file://{}", variant.display());
    let (mirrored, outcome) = shadow_against(&["--backend=candle", &variant_uri]).await;
    eprintln!("3 of 6 layers: {mirrored} mirrored, {outcome:?}");
    assert_share(mirrored);
    let CheckOutcome::Failed { value, threshold, .. } = outcome else {
        panic!("a truncated model must disagree: {outcome:?}")
    };
    assert!(value < 0.98 && threshold == "min 0.98", "{value} {threshold}");
}

/// Generation: the stable SmolLM2 server (`--default-max-tokens=12`) mirrors every
/// deterministic chat to a candidate started with `candidate_max_tokens`; returns (chats
/// compared, the outputAgreement outcome).
async fn generation_shadow_against(candidate_max_tokens: u32) -> (u64, CheckOutcome) {
    const CHATS: usize = 6;
    let dir = tempfile::tempdir().expect("tempdir");
    let routing = dir.path().join("routing.json");
    let uri = format!("--model-uri=file://{}", llm_file().display());
    let routing_arg = format!("--routing-file={}", routing.display());
    let candidate_arg = format!("--default-max-tokens={candidate_max_tokens}");
    let generation = |extra: &[&str]| {
        let mut args = vec!["--task=generation", uri.as_str(), "--model-name=smollm"];
        args.extend_from_slice(extra);
        ServerProcess::start(&args)
    };
    let candidate = generation(&[candidate_arg.as_str()]);
    let mirror = json!({"mirror": {"url": format!("http://{}", candidate.http), "percent": 100}});
    std::fs::write(&routing, mirror.to_string()).expect("routing file");
    let stable = generation(&["--default-max-tokens=12", routing_arg.as_str()]);
    let chat = |i: usize| {
        // No max_tokens: each server generates its own default, as a rollout of
        // spec.generation.defaultMaxTokens would make it.
        json!({
            "messages": [{"role": "user", "content": format!("Name an animal, number {i}.")}],
            "temperature": 0,
        })
    };
    let comparisons = async || stable.metric(AGREED).await + stable.metric(DISAGREED).await;
    // The server reads the routing file within a second of starting: warm up until a mirrored
    // chat is compared, then count from there.
    let applied = eventually(Duration::from_secs(60), async || {
        let a = post(&stable.url("/v1/chat/completions"), &chat(99), &[]).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
        comparisons().await > 0.0
    })
    .await;
    assert!(applied, "the routing file was not applied\n{}", stable.log());
    let before = comparisons().await;
    let baseline = stable_sample(&stable, None).await;
    for i in 0..CHATS {
        let a = post(&stable.url("/v1/chat/completions"), &chat(i), &[]).await;
        assert_eq!(a.status, 200, "{:?}", a.body);
    }
    // Mirrored chats generate on the candidate in the background: wait for all of them.
    let all = before + CHATS as f64;
    let _ = eventually(Duration::from_secs(90), async || comparisons().await >= all).await;
    let compared = comparisons().await - before;
    (compared as u64, judge(&stable, baseline).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_text_agreement_passes_for_the_same_config_and_fails_for_a_changed_default_max_tokens() {
    let (compared, outcome) = generation_shadow_against(12).await;
    eprintln!("same config: {compared} compared, {outcome:?}");
    assert!(compared >= 6, "every deterministic chat is compared: {compared}");
    assert!(
        matches!(outcome, CheckOutcome::Passed { value, .. } if value == 1.0),
        "the same model and config must agree: {outcome:?}"
    );
    let (compared, outcome) = generation_shadow_against(6).await;
    eprintln!("defaultMaxTokens 12 -> 6: {compared} compared, {outcome:?}");
    let CheckOutcome::Failed { value, threshold, .. } = outcome else {
        panic!("texts cut at 6 tokens instead of 12 must disagree: {outcome:?}")
    };
    assert!(value < 0.98 && threshold == "min 0.98", "{value} {threshold}");
}
