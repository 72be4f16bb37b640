//! Text generation with the real SmolLM2-135M-Instruct (Q4_1 GGUF) on CPU, through the
//! `modelfleet-server` binary: OpenAI chat and completions, whole and streamed; seeds, stop
//! strings and max_tokens; continuous batching of concurrent streams; a client that goes away;
//! priority tiers under saturation; and a KV budget too small for the load.

use std::time::{Duration, Instant};

use modelfleet_testkit::{
    server::{ServerProcess, eventually, get_text, llm_file, metric_value, post},
    sse::post_stream,
};
use serde_json::{Value, json};

fn start(extra: &[&str]) -> ServerProcess {
    let uri = format!("--model-uri=file://{}", llm_file().display());
    let mut args = vec!["--task=generation", uri.as_str(), "--model-name=smollm"];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

fn url(server: &ServerProcess, path: &str) -> String {
    format!("http://{}{path}", server.http)
}

async fn metrics(server: &ServerProcess) -> String {
    get_text(&format!("http://{}/metrics", server.metrics)).await
}

fn chat_body(question: &str, extra: Value) -> Value {
    let mut body = json!({"model": "smollm", "messages": [{"role": "user", "content": question}]});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

fn content(answer: &Value) -> &str {
    answer["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

/// The streamed text, the number of chunks with text, and the finish reason.
async fn streamed(server: &ServerProcess, body: &Value) -> (String, usize, String, Vec<Value>) {
    let mut stream = post_stream(&url(server, "/v1/chat/completions"), body, &[]).await;
    assert_eq!(stream.status, 200, "{:?}", stream.error_body);
    let (chunks, done) = stream.collect_json().await;
    assert!(done, "the stream ends with [DONE]");
    let mut text = String::new();
    let mut pieces = 0;
    let mut finish = String::new();
    for (_, c) in &chunks {
        if let Some(piece) = c["choices"][0]["delta"]["content"].as_str()
            && !piece.is_empty()
        {
            text.push_str(piece);
            pieces += 1;
        }
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    (text, pieces, finish, chunks.into_iter().map(|(_, c)| c).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_answers_coherently_and_a_seed_repeats_its_answer() {
    let server = start(&[]);
    let greedy = post(
        &url(&server, "/v1/chat/completions"),
        &chat_body(
            "What is the capital of France?",
            json!({"temperature": 0, "max_tokens": 24}),
        ),
        &[],
    )
    .await;
    assert_eq!(greedy.status, 200, "{:?}", greedy.body);
    assert!(content(&greedy.body).contains("Paris"), "{:?}", greedy.body);
    assert_eq!(greedy.body["object"], "chat.completion");
    let usage = &greedy.body["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap_or(0) > 5, "{usage}");
    assert_eq!(
        usage["total_tokens"].as_u64(),
        Some(usage["prompt_tokens"].as_u64().unwrap_or(0) + usage["completion_tokens"].as_u64().unwrap_or(0))
    );

    let seeded = chat_body(
        "Write a short poem about the sea.",
        json!({"temperature": 0.9, "top_p": 0.95, "seed": 42, "max_tokens": 24}),
    );
    let a = post(&url(&server, "/v1/chat/completions"), &seeded, &[]).await;
    let b = post(&url(&server, "/v1/chat/completions"), &seeded, &[]).await;
    assert_eq!(
        content(&a.body),
        content(&b.body),
        "same seed, same input: same text"
    );
    assert!(!content(&a.body).is_empty());

    let completion = post(
        &url(&server, "/v1/completions"),
        &json!({"model": "smollm", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}),
        &[],
    )
    .await;
    assert_eq!(
        completion.body["object"], "text_completion",
        "{:?}",
        completion.body
    );
    assert_eq!(completion.body["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_is_incremental_and_adds_up_to_the_whole_answer_and_stops_where_asked() {
    let server = start(&[]);
    let question = "Name three primary colours.";
    let whole = post(
        &url(&server, "/v1/chat/completions"),
        &chat_body(question, json!({"temperature": 0, "max_tokens": 32})),
        &[],
    )
    .await;
    let expected = content(&whole.body).to_owned();
    let (text, pieces, finish, chunks) = streamed(
        &server,
        &chat_body(
            question,
            json!({"temperature": 0, "max_tokens": 32, "stream": true, "stream_options": {"include_usage": true}}),
        ),
    )
    .await;
    assert_eq!(text, expected, "the stream's chunks add up to the whole answer");
    assert!(pieces > 3, "incremental: {pieces} chunks with text");
    assert_eq!(
        finish,
        whole.body["choices"][0]["finish_reason"].as_str().unwrap_or("")
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = &chunks.last().expect("a usage chunk")["usage"];
    assert_eq!(
        usage["completion_tokens"], whole.body["usage"]["completion_tokens"],
        "{usage}"
    );

    let limited = post(
        &url(&server, "/v1/chat/completions"),
        &chat_body(question, json!({"temperature": 0, "max_tokens": 3})),
        &[],
    )
    .await;
    assert_eq!(limited.body["choices"][0]["finish_reason"], "length");
    assert_eq!(limited.body["usage"]["completion_tokens"], 3);

    // A stop string from the middle of the greedy answer: the answer ends just before it.
    let words: Vec<&str> = expected.split_whitespace().collect();
    let stop = words.get(words.len() / 2).copied().unwrap_or("the");
    let stopped = post(
        &url(&server, "/v1/chat/completions"),
        &chat_body(
            question,
            json!({"temperature": 0, "max_tokens": 32, "stop": [stop]}),
        ),
        &[],
    )
    .await;
    assert_eq!(
        stopped.body["choices"][0]["finish_reason"], "stop",
        "{:?}",
        stopped.body
    );
    let cut = content(&stopped.body);
    assert!(
        !cut.contains(stop) && expected.starts_with(cut),
        "{cut:?} of {expected:?} at {stop:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_streams_are_batched_and_each_starts_while_the_others_decode() {
    let server = start(&["--max-running-sequences=8"]);
    let prompts = [
        "Tell me about cats.",
        "Tell me about dogs.",
        "What is rain?",
        "Explain gravity.",
        "Describe a forest.",
        "What is music?",
        "How do birds fly?",
        "What is the moon?",
    ];
    let streams: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = chat_body(p, json!({"temperature": 0, "max_tokens": 24, "stream": true}));
            let url = url(&server, "/v1/chat/completions");
            tokio::spawn(async move {
                let mut s = post_stream(&url, &body, &[]).await;
                let (chunks, done) = s.collect_json().await;
                assert!(done);
                let first = chunks
                    .iter()
                    .find(|(_, c)| {
                        c["choices"][0]["delta"]["content"]
                            .as_str()
                            .is_some_and(|t| !t.is_empty())
                    })
                    .map(|(at, _)| *at)
                    .expect("a first token");
                let last = chunks.last().map(|(at, _)| *at).expect("chunks");
                (first, last)
            })
        })
        .collect();
    let mut times = Vec::new();
    for s in streams {
        times.push(s.await.expect("stream"));
    }
    let latest_first = times.iter().map(|t| t.0).max().expect("times");
    let earliest_end = times.iter().map(|t| t.1).min().expect("times");
    assert!(
        latest_first < earliest_end,
        "every stream got its first token before any finished"
    );
    let m = metrics(&server).await;
    let steps = metric_value(&m, "modelfleet_generation_steps_total");
    let sequences = metric_value(&m, "modelfleet_step_sequences_total");
    assert!(
        steps > 0.0 && sequences / steps > 4.0,
        "mean batch {sequences} / {steps} steps"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_frees_its_sequence() {
    let server = start(&[]);
    let body = chat_body(
        "Write a very long story about a dragon.",
        json!({"max_tokens": 1000, "stream": true}),
    );
    let mut stream = post_stream(&url(&server, "/v1/chat/completions"), &body, &[]).await;
    for _ in 0..3 {
        stream.next_data().await.expect("a chunk");
    }
    drop(stream);
    let dropped_at = Instant::now();
    let freed = eventually(Duration::from_secs(5), async || {
        let m = metrics(&server).await;
        metric_value(&m, "modelfleet_sequences_cancelled_total") == 1.0
            && metric_value(&m, "modelfleet_requests_running") == 0.0
    })
    .await;
    assert!(freed, "{}", metrics(&server).await);
    assert!(
        dropped_at.elapsed() < Duration::from_secs(2),
        "freed within a step or two"
    );
}

/// Time to first token of one streamed request, in seconds.
async fn ttft(url: String, body: Value, tier: &'static str) -> f64 {
    let started = Instant::now();
    let mut s = post_stream(&url, &body, &[("x-modelfleet-tier", tier)]).await;
    assert_eq!(s.status, 200, "{:?}", s.error_body);
    while let Some((at, data)) = s.next_data().await {
        if data.contains("\"content\":\"") && !data.contains("\"content\":\"\"") {
            return at.duration_since(started).as_secs_f64();
        }
    }
    panic!("no token")
}

fn p95(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * 0.95).ceil() as usize).saturating_sub(1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_saturation_the_paid_tiers_first_tokens_come_sooner() {
    let server = start(&["--max-running-sequences=2", "--tier=paid::1", "--tier=free::1"]);
    let u = url(&server, "/v1/chat/completions");
    let body = chat_body(
        "Count from one to twenty.",
        json!({"temperature": 0, "max_tokens": 16, "stream": true}),
    );
    let mut tasks = Vec::new();
    for i in 0..12 {
        let tier = if i % 2 == 0 { "free" } else { "paid" };
        tasks.push((tier, tokio::spawn(ttft(u.clone(), body.clone(), tier))));
    }
    let (mut paid, mut free) = (Vec::new(), Vec::new());
    for (tier, t) in tasks {
        let v = t.await.expect("request");
        if tier == "paid" {
            paid.push(v)
        } else {
            free.push(v)
        }
    }
    let (paid95, free95) = (p95(paid), p95(free));
    assert!(paid95 < free95, "paid TTFT p95 {paid95:.3}s, free {free95:.3}s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_budget_too_small_for_the_load_preempts_or_sheds_and_never_crashes() {
    let server = start(&[
        "--kv-budget-tokens=200",
        "--max-queue-size=4",
        "--tier=paid::1",
        "--tier=free::1",
    ]);
    let u = url(&server, "/v1/chat/completions");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let tier = if i < 5 { "free" } else { "paid" };
        let body = chat_body("Tell me a story.", json!({"max_tokens": 64, "temperature": 0}));
        let u = u.clone();
        tasks.push(tokio::spawn(async move {
            post(&u, &body, &[("x-modelfleet-tier", tier)]).await.status
        }));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.expect("request"));
    }
    assert!(codes.iter().all(|c| *c == 200 || *c == 429), "{codes:?}");
    assert!(codes.contains(&200), "{codes:?}");
    let too_long = post(
        &u,
        &chat_body("Tell me a story.", json!({"max_tokens": 500})),
        &[],
    )
    .await;
    assert_eq!(too_long.status, 400, "{:?}", too_long.body);
    assert_eq!(
        too_long.body["error"]["param"], "max_tokens",
        "{:?}",
        too_long.body
    );
    let after = post(&u, &chat_body("Hi", json!({"max_tokens": 4})), &[]).await;
    assert_eq!(after.status, 200, "still serving: {:?}", after.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_400_naming_the_field() {
    let server = start(&[]);
    let u = url(&server, "/v1/chat/completions");
    for (extra, param) in [
        (json!({"n": 3}), "n"),
        (json!({"temperature": -1}), "temperature"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"stop": 5}), "stop"),
    ] {
        let a = post(&u, &chat_body("Hi", extra), &[]).await;
        assert_eq!(a.status, 400, "{:?}", a.body);
        assert_eq!(a.body["error"]["param"], param, "{:?}", a.body);
    }
    let other_model = post(
        &u,
        &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}),
        &[],
    )
    .await;
    assert_eq!(other_model.status, 404, "{:?}", other_model.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_served_name_defaults_to_the_gguf_files_stem() {
    let uri = format!("--model-uri=file://{}", llm_file().display());
    let server = ServerProcess::start(&["--task=generation", uri.as_str()]);
    let models = modelfleet_testkit::server::get(&url(&server, "/v1/models")).await;
    assert_eq!(
        models.body["data"][0]["id"], "SmolLM2-135M-Instruct.Q4_1",
        "{:?}",
        models.body
    );
    assert_eq!(models.body["data"][0]["task"], "generation");
}
