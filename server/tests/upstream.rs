//! `--backend upstream` in front of llama.cpp's real server on the test LLM (SmolLM2-135M-Instruct
//! Q4_1, CPU): answers and streams relayed with our served name, max_tokens and stop strings,
//! concurrent streams, tier admission bounding what the engine runs, our field checks before
//! the engine sees anything, TTFT and the engine's KV-cache usage in our metrics, readiness
//! that waits for the engine, a client that goes away, deadlines, and shadow mirroring.

use std::time::{Duration, Instant};

use modelfleet_testkit::{
    llama::{LlamaOptions, LlamaServer, free_port},
    server::{ServerProcess, eventually, get, get_text, llm_file, metric_value, post, post_raw},
    sse::post_stream,
};
use serde_json::{Value, json};

/// Starts llama.cpp's server with `parallel` slots of 1024 tokens each.
async fn engine(parallel: u32) -> LlamaServer {
    let options = LlamaOptions {
        parallel,
        context: 1024 * parallel,
        ..LlamaOptions::new(&llm_file())
    };
    LlamaServer::start(&options, Duration::from_secs(120)).await
}

/// Our server in front of the engine at `url`, serving the name `smollm`.
fn front(url: &str, extra: &[&str]) -> ServerProcess {
    let upstream = format!("--upstream-url={url}");
    let mut args = vec![
        "--task=generation",
        "--backend=upstream",
        upstream.as_str(),
        "--model-name=smollm",
    ];
    args.extend_from_slice(extra);
    ServerProcess::start(&args)
}

/// Our server in front of `engine`, once it reports ready.
async fn ready_front(engine: &LlamaServer, extra: &[&str]) -> ServerProcess {
    let server = front(&engine.base_url(), extra);
    let ready = eventually(Duration::from_secs(10), async || {
        get(&server.url("/health/ready")).await.status == 200
    })
    .await;
    assert!(ready, "not ready in front of a healthy engine\n{}", server.log());
    server
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

async fn metrics(server: &ServerProcess) -> String {
    get_text(&format!("http://{}/metrics", server.metrics)).await
}

async fn engine_metric(engine: &LlamaServer, sample: &str) -> f64 {
    metric_value(&get_text(&engine.url("/metrics")).await, sample)
}

/// The streamed text, the finish reason and every chunk (up to `[DONE]`, which must come).
async fn streamed(
    server: &ServerProcess,
    body: &Value,
    headers: &[(&str, &str)],
) -> (String, String, Vec<Value>) {
    let mut stream = post_stream(&server.url("/v1/chat/completions"), body, headers).await;
    assert_eq!(stream.status, 200, "{:?}", stream.error_body);
    let (chunks, done) = stream.collect_json().await;
    assert!(done, "the stream ends with [DONE]: {chunks:?}");
    let mut text = String::new();
    let mut finish = String::new();
    for (_, c) in &chunks {
        if let Some(piece) = c["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
        if let Some(f) = c["choices"][0]["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    (text, finish, chunks.into_iter().map(|(_, c)| c).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_through_llama_cpp_answers_under_our_name_and_repeats_itself_at_temperature_0() {
    let engine = engine(1).await;
    let server = ready_front(&engine, &[]).await;
    let body = chat_body(
        "What is the capital of France?",
        json!({"temperature": 0, "max_tokens": 24}),
    );
    let a = post(&server.url("/v1/chat/completions"), &body, &[]).await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(!content(&a.body).is_empty(), "{:?}", a.body);
    assert_eq!(a.body["model"], "smollm", "our served name, not the engine's");
    assert_eq!(a.body["object"], "chat.completion");
    assert!(
        a.body["usage"]["prompt_tokens"].as_u64().unwrap_or(0) > 5,
        "{:?}",
        a.body
    );
    let b = post(&server.url("/v1/chat/completions"), &body, &[]).await;
    assert_eq!(content(&a.body), content(&b.body), "temperature 0: the same text");

    let completion = post(
        &server.url("/v1/completions"),
        &json!({"model": "smollm", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}),
        &[],
    )
    .await;
    assert_eq!(completion.status, 200, "{:?}", completion.body);
    assert_eq!(completion.body["choices"][0]["finish_reason"], "length");
    assert_eq!(completion.body["usage"]["completion_tokens"], 4);
    let models = get(&server.url("/v1/models")).await;
    assert_eq!(models.body["data"][0]["id"], "smollm", "{:?}", models.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_stream_adds_up_to_the_whole_answer_and_honours_max_tokens_and_stop() {
    let engine = engine(1).await;
    let server = ready_front(&engine, &[]).await;
    let question = "Name three primary colours.";
    let whole = post(
        &server.url("/v1/chat/completions"),
        &chat_body(question, json!({"temperature": 0, "max_tokens": 32})),
        &[],
    )
    .await;
    let expected = content(&whole.body).to_owned();
    let asked = chat_body(
        question,
        json!({"temperature": 0, "max_tokens": 32, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let (text, finish, chunks) = streamed(&server, &asked, &[]).await;
    assert_eq!(text, expected, "the stream's chunks add up to the whole answer");
    assert!(chunks.len() > 5, "incremental: {} chunks", chunks.len());
    assert_eq!(
        finish,
        whole.body["choices"][0]["finish_reason"].as_str().unwrap_or("")
    );
    assert!(chunks.iter().all(|c| c["model"] == "smollm"), "{chunks:?}");
    let last = chunks.last().expect("chunks");
    assert_eq!(
        last["choices"],
        json!([]),
        "usage comes last, with no choices: {last}"
    );
    assert_eq!(
        last["usage"]["completion_tokens"],
        whole.body["usage"]["completion_tokens"]
    );

    let unasked = chat_body(
        question,
        json!({"temperature": 0, "max_tokens": 8, "stream": true}),
    );
    let (_, _, chunks) = streamed(&server, &unasked, &[]).await;
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none_or(Value::is_null)),
        "no usage unless asked: {chunks:?}"
    );

    let limited = post(
        &server.url("/v1/chat/completions"),
        &chat_body(question, json!({"temperature": 0, "max_tokens": 3})),
        &[],
    )
    .await;
    assert_eq!(
        limited.body["choices"][0]["finish_reason"], "length",
        "{:?}",
        limited.body
    );
    assert_eq!(limited.body["usage"]["completion_tokens"], 3);

    let words: Vec<&str> = expected.split_whitespace().collect();
    let stop = words.get(words.len() / 2).copied().unwrap_or("the");
    let stopped = post(
        &server.url("/v1/chat/completions"),
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
async fn four_concurrent_streams_are_all_answered() {
    let engine = engine(4).await;
    let server = ready_front(&engine, &["--max-running-sequences=4"]).await;
    let prompts = [
        "Tell me about cats.",
        "What is rain?",
        "Explain gravity.",
        "What is music?",
    ];
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let body = chat_body(p, json!({"temperature": 0, "max_tokens": 16, "stream": true}));
            let url = server.url("/v1/chat/completions");
            tokio::spawn(async move {
                let mut s = post_stream(&url, &body, &[]).await;
                assert_eq!(s.status, 200, "{:?}", s.error_body);
                let (chunks, done) = s.collect_json().await;
                let text: String = chunks
                    .iter()
                    .filter_map(|(_, c)| c["choices"][0]["delta"]["content"].as_str())
                    .collect();
                (done, text)
            })
        })
        .collect();
    for t in tasks {
        let (done, text) = t.await.expect("stream");
        assert!(done && !text.is_empty(), "{done} {text:?}");
    }
    let m = metrics(&server).await;
    let ok = r#"modelfleet_requests_total{api="openai_chat",tier="default",code="200"}"#;
    assert_eq!(metric_value(&m, ok), 4.0, "{m}");
}

/// Opens a long stream and waits for its first chunk: it holds a running place.
async fn hold_a_place(server: &ServerProcess, tier: &str) -> modelfleet_testkit::sse::EventStream {
    let body = chat_body(
        "Write a very long story about a dragon.",
        json!({"max_tokens": 400, "stream": true, "temperature": 0}),
    );
    let mut s = post_stream(
        &server.url("/v1/chat/completions"),
        &body,
        &[("x-modelfleet-tier", tier)],
    )
    .await;
    assert_eq!(s.status, 200, "{:?}", s.error_body);
    s.next_data().await.expect("a first chunk");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_bounds_what_the_engine_runs_and_sheds_by_tier_with_429() {
    let engine = engine(2).await;
    let server = ready_front(
        &engine,
        &[
            "--max-running-sequences=1",
            "--max-queue-size=2",
            "--tier=paid::1",
            "--tier=free::0.5",
        ],
    )
    .await;
    let running = hold_a_place(&server, "free").await;
    let url = server.url("/v1/chat/completions");
    let short = chat_body("Say hi.", json!({"max_tokens": 4, "temperature": 0}));
    let queued = |tier: &'static str| {
        let (url, body) = (url.clone(), short.clone());
        tokio::spawn(async move {
            let a = post(&url, &body, &[("x-modelfleet-tier", tier)]).await;
            (a.status, Instant::now())
        })
    };
    let free = queued("free");
    assert!(
        eventually(Duration::from_secs(5), async || server
            .metric("modelfleet_requests_queued")
            .await
            == 1.0)
        .await
    );
    let refused = post(&url, &short, &[("x-modelfleet-tier", "free")]).await;
    assert_eq!(refused.status, 429, "free holds its share: {:?}", refused.body);
    assert!(refused.headers.contains_key("retry-after"));
    let paid = queued("paid");
    assert!(
        eventually(Duration::from_secs(5), async || server
            .metric("modelfleet_requests_queued")
            .await
            == 2.0)
        .await
    );
    let full = post(&url, &short, &[("x-modelfleet-tier", "paid")]).await;
    assert_eq!(full.status, 429, "the queue is full: {:?}", full.body);
    assert_eq!(full.body["error"]["code"], "overloaded");
    assert!(
        engine_metric(&engine, "llamacpp:requests_processing").await <= 1.0,
        "the engine runs one request at most"
    );

    drop(running);
    let (paid_status, paid_at) = paid.await.expect("paid");
    let (free_status, free_at) = free.await.expect("free");
    assert_eq!((paid_status, free_status), (200, 200));
    assert!(paid_at < free_at, "strict priority: the paid request went first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_fields_get_a_400_naming_them_before_the_engine_sees_anything() {
    let engine = engine(1).await;
    let server = ready_front(&engine, &["--max-request-bytes=4096"]).await;
    let url = server.url("/v1/chat/completions");
    for (extra, param) in [
        (json!({"n": 3}), "n"),
        (json!({"temperature": -1}), "temperature"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"stop": 5}), "stop"),
        (json!({"stream": "yes"}), "stream"),
        (
            json!({"stream_options": {"include_usage": 1}}),
            "stream_options.include_usage",
        ),
    ] {
        let a = post(&url, &chat_body("Hi", extra), &[]).await;
        assert_eq!(a.status, 400, "{:?}", a.body);
        assert_eq!(a.body["error"]["param"], param, "{:?}", a.body);
    }
    let big = chat_body(&"word ".repeat(2000), json!({}));
    let too_large = post(&url, &big, &[]).await;
    assert_eq!(too_large.status, 413, "{:?}", too_large.body);
    let not_json = post_raw(&url, bytes::Bytes::from_static(b"{nope"), &[]).await;
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.body["error"]["param"], "body");
    let other = post(
        &url,
        &json!({"model": "gpt-4", "messages": [{"role": "user", "content": "Hi"}]}),
        &[],
    )
    .await;
    assert_eq!(other.status, 404, "{:?}", other.body);
    let tier = post(
        &url,
        &chat_body("Hi", json!({})),
        &[("x-modelfleet-tier", "gold")],
    )
    .await;
    assert_eq!(
        tier.body["error"]["param"], "x-modelfleet-tier",
        "{:?}",
        tier.body
    );
    assert_eq!(
        engine_metric(&engine, "llamacpp:prompt_tokens_total").await,
        0.0,
        "the engine processed no prompt"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_ttft_samples_tokens_and_the_engines_kv_cache_usage() {
    let engine = engine(1).await;
    let server = ready_front(&engine, &[]).await;
    let body = chat_body(
        "Name three primary colours.",
        json!({"temperature": 0, "max_tokens": 12, "stream": true, "stream_options": {"include_usage": true}}),
    );
    let mut generated = 0;
    for _ in 0..3 {
        let (_, _, chunks) = streamed(&server, &body, &[]).await;
        let usage = &chunks.last().expect("a usage chunk")["usage"];
        generated += usage["completion_tokens"].as_u64().expect("completion tokens");
    }
    let m = metrics(&server).await;
    let ttft = metric_value(
        &m,
        r#"modelfleet_time_to_first_token_seconds_count{tier="default"}"#,
    );
    assert_eq!(ttft, 3.0, "one TTFT sample per stream\n{m}");
    assert!(
        metric_value(&m, "modelfleet_inter_token_latency_seconds_count") >= 3.0 * 5.0,
        "{m}"
    );
    assert!(generated >= 3, "{generated}");
    assert_eq!(
        metric_value(&m, "modelfleet_generated_tokens_total"),
        generated as f64,
        "{m}"
    );
    assert!(metric_value(&m, "modelfleet_prompt_tokens_total") > 15.0, "{m}");
    // While a long stream runs, the engine's KV cache holds its tokens; we export its usage.
    let running = hold_a_place(&server, "default").await;
    let seen = eventually(Duration::from_secs(5), async || {
        let m = metrics(&server).await;
        let ours = metric_value(&m, "modelfleet_kv_cache_usage_ratio");
        ours > 0.0 && metric_value(&m, "vllm:kv_cache_usage_perc") == ours
    })
    .await;
    assert!(seen, "{}", metrics(&server).await);
    assert_eq!(server.metric("modelfleet_requests_running").await, 1.0);
    drop(running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_engine_answers_its_health() {
    let port = free_port();
    let server = front(&format!("http://127.0.0.1:{port}"), &[]);
    let ready = get(&server.url("/health/ready")).await;
    assert_eq!(ready.status, 503, "nothing listens yet: {:?}", ready.body);
    let early = post(
        &server.url("/v1/chat/completions"),
        &chat_body("Hi", json!({"max_tokens": 2})),
        &[],
    )
    .await;
    assert_eq!(early.status, 503, "{:?}", early.body);
    assert!(early.headers.contains_key("retry-after"));
    assert_eq!(server.metric("modelfleet_ready").await, 0.0);

    let options = LlamaOptions {
        port: Some(port),
        ..LlamaOptions::new(&llm_file())
    };
    let mut engine = LlamaServer::spawn(&options);
    assert!(
        engine.wait_healthy(Duration::from_secs(120)).await,
        "{}",
        engine.log()
    );
    let became = eventually(Duration::from_secs(5), async || {
        get(&server.url("/health/ready")).await.status == 200
    })
    .await;
    assert!(became, "ready once the engine is\n{}", server.log());
    let answer = post(
        &server.url("/v1/chat/completions"),
        &chat_body("Hi", json!({"max_tokens": 2})),
        &[],
    )
    .await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(server.metric("modelfleet_ready").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_cancels_the_engines_request() {
    let engine = engine(1).await;
    let server = ready_front(&engine, &[]).await;
    let mut stream = hold_a_place(&server, "default").await;
    for _ in 0..3 {
        stream.next_data().await.expect("a chunk");
    }
    assert_eq!(engine_metric(&engine, "llamacpp:requests_processing").await, 1.0);
    drop(stream);
    let freed = eventually(Duration::from_secs(5), async || {
        engine_metric(&engine, "llamacpp:requests_processing").await == 0.0
            && server.metric("modelfleet_requests_running").await == 0.0
    })
    .await;
    assert!(freed, "the engine stopped generating\n{}", engine.log());
    assert_eq!(server.metric("modelfleet_sequences_cancelled_total").await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_cuts_a_stream_short_and_a_queued_request_gets_503() {
    let engine = engine(1).await;
    let server = ready_front(&engine, &["--max-running-sequences=1"]).await;
    let long = chat_body(
        "Write a very long story about a dragon.",
        json!({"max_tokens": 400, "stream": true}),
    );
    let started = Instant::now();
    let (_, finish, _) = streamed(&server, &long, &[("x-modelfleet-timeout", "700ms")]).await;
    assert_eq!(finish, "length", "ended at the deadline");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );

    let running = hold_a_place(&server, "default").await;
    let queued = post(
        &server.url("/v1/chat/completions"),
        &chat_body("Hi", json!({"max_tokens": 2})),
        &[("x-modelfleet-timeout", "300ms")],
    )
    .await;
    assert_eq!(queued.status, 503, "{:?}", queued.body);
    assert_eq!(queued.body["error"]["code"], "queue_timeout");
    drop(running);
}

/// The shadow metrics of `server`, for failure messages.
async fn shadow_lines(server: &ServerProcess) -> String {
    let text = metrics(server).await;
    text.lines()
        .filter(|l| l.starts_with("modelfleet_shadow") && !l.contains("_bucket"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn route(file: &std::path::Path, url: &str) {
    let tmp = file.with_extension("tmp");
    let routing = json!({"mirror": {"url": url, "percent": 100}});
    std::fs::write(&tmp, routing.to_string()).expect("write routing");
    std::fs::rename(&tmp, file).expect("rename routing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_requests_are_mirrored_and_the_same_engine_agrees() {
    let engine = engine(2).await;
    let shadow = ready_front(&engine, &[]).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let routing = dir.path().join("routing.json");
    route(&routing, &format!("http://{}", shadow.http));
    let routing_arg = format!("--routing-file={}", routing.display());
    let primary = ready_front(&engine, &[&routing_arg]).await;
    let agree = r#"modelfleet_shadow_comparisons_total{result="agree"}"#;
    let greedy = chat_body(
        "What is the capital of France?",
        json!({"temperature": 0, "max_tokens": 8}),
    );
    let applied = eventually(Duration::from_secs(20), async || {
        post(&primary.url("/v1/chat/completions"), &greedy, &[]).await;
        primary.metric(agree).await > 0.0
    })
    .await;
    assert!(applied, "{}", shadow_lines(&primary).await);
    let before = primary.metric(agree).await;
    let streaming = chat_body(
        "Name a colour.",
        json!({"seed": 3, "temperature": 0.8, "max_tokens": 8, "stream": true}),
    );
    streamed(&primary, &streaming, &[]).await;
    let queued = r#"modelfleet_shadow_requests_total{result="queued"}"#;
    let sent = primary.metric(queued).await;
    assert!(
        eventually(Duration::from_secs(20), async || primary.metric(agree).await
            == before + 1.0)
        .await,
        "a seeded stream is mirrored and agrees"
    );
    let random = chat_body("Name a colour.", json!({"temperature": 0.8, "max_tokens": 4}));
    post(&primary.url("/v1/chat/completions"), &random, &[]).await;
    assert_eq!(
        primary.metric(queued).await,
        sent,
        "a sampled request is not mirrored"
    );
    assert_eq!(
        primary
            .metric(r#"modelfleet_shadow_comparisons_total{result="disagree"}"#)
            .await,
        0.0
    );
}
