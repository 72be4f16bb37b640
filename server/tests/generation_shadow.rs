//! Shadow mirroring of generation between real SmolLM2 servers (candle, CPU): deterministic
//! requests (temperature 0, or a seed), whole or streamed, are copied to the shadow as whole
//! requests with the same body and the texts compared; the same model and settings agree, a
//! shadow that generates fewer tokens by default disagrees (exactly) and agrees under a loose
//! `--shadow-text-agreement`; sampled requests are not mirrored.

use std::{path::Path, time::Duration};

use modelfleet_testkit::{
    server::{ServerProcess, eventually, llm_file, post},
    sse::post_stream,
};
use serde_json::{Value, json};

fn start(extra: &[&str]) -> ServerProcess {
    let uri = format!("--model-uri=file://{}", llm_file().display());
    let mut args = vec!["--task=generation", uri.as_str(), "--model-name=smollm"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

fn route(file: &Path, url: String) {
    // Written whole, then renamed, as the kubelet swaps ConfigMap files.
    let tmp = file.with_extension("tmp");
    let routing = json!({"mirror": {"url": url, "percent": 100}});
    std::fs::write(&tmp, routing.to_string()).expect("write routing");
    std::fs::rename(&tmp, file).expect("rename routing");
}

fn comparisons(result: &str) -> String {
    format!(r#"modelfleet_shadow_comparisons_total{{result="{result}"}}"#)
}

const QUEUED: &str = r#"modelfleet_shadow_requests_total{result="queued"}"#;

/// A chat with no `max_tokens`: each server generates its `--default-max-tokens`.
fn chat(question: &str, extra: Value) -> Value {
    let mut body = json!({"model": "smollm", "messages": [{"role": "user", "content": question}]});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

async fn ask(server: &ServerProcess, body: &Value) {
    let answer = post(&server.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
}

async fn ask_streamed(server: &ServerProcess, body: &Value) {
    let mut stream = post_stream(&server.url("/v1/chat/completions"), body, &[]).await;
    assert_eq!(stream.status, 200, "{:?}", stream.error_body);
    let (_, done) = stream.collect_json().await;
    assert!(done);
}

/// The shadow metrics of `server`, for failure messages.
async fn shadow_lines(server: &ServerProcess) -> String {
    let text = modelfleet_testkit::server::get_text(&format!("http://{}/metrics", server.metrics)).await;
    text.lines()
        .filter(|l| l.starts_with("modelfleet_shadow"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits (at most 15 s: a copy of 16 tokens takes about a second) until `server`'s comparison
/// counter `result` reaches `count`.
async fn compared(server: &ServerProcess, result: &str, count: f64) -> bool {
    eventually(Duration::from_secs(15), async || {
        server.metric(&comparisons(result)).await >= count
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_generations_are_mirrored_and_their_texts_compared() {
    let dir = tempfile::tempdir().expect("tempdir");
    let routing = dir.path().join("routing.json");
    let same = start(&["--default-max-tokens=16"]);
    let shorter = start(&["--default-max-tokens=8"]);
    route(&routing, format!("http://{}", same.http));
    let routing_arg = format!("--routing-file={}", routing.display());
    let exact = start(&["--default-max-tokens=16", &routing_arg]);

    // The same model and settings: greedy and seeded, whole and streamed, all agree.
    // A question whose answer runs past 16 tokens, so 8 tokens are not all of it.
    let greedy = chat(
        "Write a short story about a robot who learns to paint.",
        json!({"temperature": 0}),
    );
    // Until the server has read its routing file, nothing is mirrored.
    let applied = eventually(Duration::from_secs(40), async || {
        ask(&exact, &greedy).await;
        compared(&exact, "agree", 1.0).await
    })
    .await;
    assert!(applied, "{}", shadow_lines(&exact).await);
    let agreed = exact.metric(&comparisons("agree")).await;
    let seeded = chat(
        "Write a line about the sea.",
        json!({"temperature": 0.9, "seed": 7, "stream": true}),
    );
    ask_streamed(&exact, &seeded).await;
    assert!(
        compared(&exact, "agree", agreed + 1.0).await,
        "a seeded stream agrees: {}",
        shadow_lines(&exact).await
    );
    assert!(
        same.metric(r#"modelfleet_requests_total{api="openai_chat",tier="default",code="200"}"#)
            .await
            >= 2.0,
        "the shadow answered the copies"
    );

    // Sampled without a seed: another run would give another text, so nothing is sent.
    let sent = exact.metric(QUEUED).await;
    ask(&exact, &chat("Name a colour.", json!({"temperature": 0.8}))).await;
    ask_streamed(&exact, &chat("Name a colour.", json!({"stream": true}))).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        exact.metric(QUEUED).await,
        sent,
        "sampled requests are not mirrored"
    );

    // A shadow that stops at 8 tokens by default: its text is the first half of ours.
    route(&routing, format!("http://{}", shorter.http));
    let switched = eventually(Duration::from_secs(30), async || {
        ask(&exact, &greedy).await;
        exact.metric(&comparisons("disagree")).await > 0.0
    })
    .await;
    assert!(switched, "{}", shadow_lines(&exact).await);
    assert_eq!(exact.metric(&comparisons("error")).await, 0.0);
    // Half of the text in common is enough at --shadow-text-agreement=0.3 (this server only
    // ever mirrors to the shorter shadow).
    let loose = start(&[
        "--default-max-tokens=16",
        "--shadow-text-agreement=0.3",
        &routing_arg,
    ]);
    let agreed = eventually(Duration::from_secs(30), async || {
        ask(&loose, &greedy).await;
        loose.metric(&comparisons("agree")).await > 0.0
    })
    .await;
    assert!(agreed, "{}", shadow_lines(&loose).await);
    assert_eq!(loose.metric(&comparisons("disagree")).await, 0.0);
}
