//! The semantic cache in front of a generation model: the real SmolLM2 behind a
//! `modelfleet-server --task generation`, the real all-MiniLM-L6-v2 (another `modelfleet-server`)
//! embedding the prompts. A paraphrase is answered from the cache without reaching the
//! generation server (its request counter unchanged); another question, other parameters or a
//! stream are not; without its embeddings model the cache is skipped and requests are still
//! served.

mod common;

use std::net::SocketAddr;

use common::{Router, header};
use modelfleet_testkit::server::{ServerProcess, get_text, llm_file, metric_value, minilm_args, post};
use serde_json::json;

/// The real generation server and how many chat requests it answered.
struct Generation(ServerProcess);

impl Generation {
    fn start() -> Self {
        let uri = format!("--model-uri=file://{}", llm_file().display());
        Self(ServerProcess::start(&[
            "--task=generation",
            &uri,
            "--model-name=chat",
        ]))
    }

    async fn answered(&self) -> f64 {
        let text = get_text(&format!("http://{}/metrics", self.0.metrics)).await;
        metric_value(
            &text,
            "modelfleet_requests_total{api=\"openai_chat\",tier=\"default\",code=\"200\"}",
        )
    }
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
    let generation = Generation::start();
    let router = Router::start(
        &config(generation.0.http, "minilm", Some(minilm.http)),
        &["--allow-anonymous"],
    )
    .await;

    let first = ask(&router, "What is the capital of France?", 8).await;
    assert_eq!(header(&first, "x-modelfleet-cache"), "semantic-miss");

    let paraphrase = ask(&router, "what's the capital city of France", 8).await;
    assert_eq!(
        header(&paraphrase, "x-modelfleet-cache"),
        "semantic-hit",
        "{:?}",
        paraphrase.headers
    );
    assert_eq!(
        content(&paraphrase),
        content(&first),
        "the first question's answer"
    );
    let similarity: f64 = header(&paraphrase, "x-modelfleet-cache-similarity")
        .parse()
        .expect("a similarity header");
    assert!((0.85..=1.0).contains(&similarity), "similarity {similarity}");
    assert_eq!(
        generation.answered().await,
        1.0,
        "the generation server answered once"
    );

    let other = ask(&router, "How do I bake sourdough bread at home?", 8).await;
    assert_eq!(header(&other, "x-modelfleet-cache"), "semantic-miss");
    let longer = ask(&router, "What is the capital of France?", 9).await;
    assert_eq!(
        header(&longer, "x-modelfleet-cache"),
        "semantic-miss",
        "other parameters"
    );
    let streamed = post(
        &router.url("/v1/chat/completions"),
        &json!({"model": "chat", "stream": true, "max_tokens": 8, "messages": [{"role": "user", "content": "What is the capital of France?"}]}),
        &[],
    )
    .await;
    assert_eq!(
        header(&streamed, "x-modelfleet-cache"),
        "",
        "a stream is never cached"
    );
    assert_eq!(generation.answered().await, 4.0);

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
    let generation = Generation::start();
    let router = Router::start(
        &config(generation.0.http, "no-such-model", None),
        &["--allow-anonymous"],
    )
    .await;
    for _ in 0..2 {
        let a = ask(&router, "What is the capital of France?", 4).await;
        assert!(!content(&a).is_empty());
        assert_eq!(header(&a, "x-modelfleet-cache"), "");
    }
    assert_eq!(generation.answered().await, 2.0);
}
