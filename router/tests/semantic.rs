//! The semantic cache in front of a generation model, with the real all-MiniLM-L6-v2 (a
//! `modelfleet-server` process) embedding the prompts: a paraphrase is answered from the cache
//! without reaching the generation server; another question, other parameters or a stream are
//! not; without its embeddings model the cache is skipped and requests are still served.
//!
//! The generation server is a counting stand-in (the router only forwards its bytes); the real
//! generation server is exercised through the router in the live tests.

mod common;

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{Json, routing::post as post_route};
use common::{Router, header};
use modelfleet_testkit::server::{ServerProcess, metric_value, minilm_args, post};
use serde_json::{Value, json};

/// A chat server that answers `answer <n>` to its n-th request, and how many it got.
async fn counting_chat_server() -> (SocketAddr, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post_route(move |Json(_): Json<Value>| {
            let n = seen.fetch_add(1, Ordering::SeqCst) + 1;
            async move {
                Json(json!({
                    "object": "chat.completion",
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": format!("answer {n}")}}]
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, count)
}

fn config(chat: SocketAddr, embedding_model: &str, minilm: Option<SocketAddr>) -> String {
    let mut c = format!(
        "models:\n  - name: chat\n    task: generation\n    endpoints: ['{chat}']\n    routing: {{semanticCache: {{embeddingModel: {embedding_model}, similarityAbove: 0.85}}}}\n"
    );
    if let Some(m) = minilm {
        c.push_str(&format!("  - name: minilm\n    endpoints: ['{m}']\n"));
    }
    c
}

async fn ask(router: &Router, question: &str, max_tokens: u32) -> modelfleet_testkit::server::Answer {
    let a = post(
        &router.url("/v1/chat/completions"),
        &json!({"model": "chat", "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": question}]}),
        &[],
    )
    .await;
    assert_eq!(a.status, 200, "{question}: {:?}", a.body);
    a
}

fn content(a: &modelfleet_testkit::server::Answer) -> &str {
    a.body["choices"][0]["message"]["content"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrased_question_is_answered_from_the_cache_and_another_question_is_not() {
    let args = minilm_args();
    let mut args: Vec<&str> = args.iter().map(String::as_str).collect();
    args.push("--model-name=minilm");
    let minilm = ServerProcess::start(&args);
    let (chat, generated) = counting_chat_server().await;
    let router = Router::start(&config(chat, "minilm", Some(minilm.http)), &["--allow-anonymous"]).await;

    let first = ask(&router, "What is the capital of France?", 32).await;
    assert_eq!(header(&first, "x-modelfleet-cache"), "semantic-miss");
    assert_eq!(content(&first), "answer 1");

    let paraphrase = ask(&router, "what's the capital city of France", 32).await;
    assert_eq!(
        header(&paraphrase, "x-modelfleet-cache"),
        "semantic-hit",
        "{:?}",
        paraphrase.headers
    );
    assert_eq!(content(&paraphrase), "answer 1", "the first question's answer");
    let similarity: f64 = header(&paraphrase, "x-modelfleet-cache-similarity")
        .parse()
        .expect("a similarity header");
    assert!((0.85..=1.0).contains(&similarity), "similarity {similarity}");
    assert_eq!(
        generated.load(Ordering::SeqCst),
        1,
        "the generation server saw one request"
    );

    let other = ask(&router, "How do I bake sourdough bread at home?", 32).await;
    assert_eq!(header(&other, "x-modelfleet-cache"), "semantic-miss");
    assert_eq!(content(&other), "answer 2");
    let longer = ask(&router, "What is the capital of France?", 64).await;
    assert_eq!(
        content(&longer),
        "answer 3",
        "other parameters: not the same answer"
    );
    let streamed = post(
        &router.url("/v1/chat/completions"),
        &json!({"model": "chat", "stream": true, "messages": [{"role": "user", "content": "What is the capital of France?"}]}),
        &[],
    )
    .await;
    assert_eq!(
        header(&streamed, "x-modelfleet-cache"),
        "",
        "a stream is never cached"
    );
    assert_eq!(generated.load(Ordering::SeqCst), 4);

    let metrics = router.metrics().await;
    let lookups = |result: &str| {
        metric_value(
            &metrics,
            &format!("modelfleet_router_cache_lookups_total{{model=\"default/chat\",result=\"{result}\"}}"),
        )
    };
    assert_eq!(lookups("semantic_hit"), 1.0, "{metrics}");
    assert_eq!(lookups("semantic_miss"), 3.0, "{metrics}");
    assert!(
        metric_value(&metrics, "modelfleet_router_semantic_cache_bytes") > 0.0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_embeddings_model_the_cache_is_skipped_and_every_request_served() {
    let (chat, generated) = counting_chat_server().await;
    let router = Router::start(&config(chat, "no-such-model", None), &["--allow-anonymous"]).await;
    for n in 1..=2 {
        let a = ask(&router, "What is the capital of France?", 32).await;
        assert_eq!(content(&a), format!("answer {n}"));
        assert_eq!(header(&a, "x-modelfleet-cache"), "");
    }
    assert_eq!(generated.load(Ordering::SeqCst), 2);
}
