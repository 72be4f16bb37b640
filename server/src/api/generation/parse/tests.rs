use serde_json::json;

use super::*;

const LIMITS: GenerationLimits = GenerationLimits {
    context_length: 2048,
    default_max_tokens: 256,
    max_prompt_bytes: 1000,
};

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    body
}

fn messages(prompt: &Prompt) -> Vec<(&str, &str)> {
    match prompt {
        Prompt::Chat(m) => m.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect(),
        Prompt::Text(_) => panic!("a chat"),
    }
}

fn error_param(result: Result<(Prompt, Options), InferError>) -> String {
    match result {
        Err(InferError::Invalid { param, .. } | InferError::TooLarge { param, .. }) => param,
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn a_chat_reads_its_messages_and_every_option() {
    let (prompt, options) = parse_chat(
        &chat(json!({
            "max_completion_tokens": 32, "temperature": 0, "top_p": 0.9, "top_k": 40, "seed": 7,
            "stop": ["\n\n", "END"], "stream": true, "stream_options": {"include_usage": true}, "logprobs": true
        })),
        &LIMITS,
    )
    .expect("valid");
    assert_eq!(messages(&prompt), vec![("user", "hi")]);
    assert_eq!(options.model.as_deref(), Some("m"));
    let p = &options.params;
    assert_eq!(
        (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed),
        (32, 0.0, Some(0.9), Some(40), Some(7))
    );
    assert_eq!(p.stop, vec!["\n\n".to_owned(), "END".to_owned()]);
    assert!(options.stream && options.include_usage && p.logprobs);
}

#[test]
fn defaults_are_openais_and_the_servers() {
    let (_, options) = parse_chat(&chat(json!({})), &LIMITS).expect("valid");
    let p = &options.params;
    assert_eq!(
        (p.max_tokens, p.temperature, p.top_p, p.top_k, p.seed),
        (256, 1.0, None, None, None)
    );
    assert!(!options.stream && !options.include_usage && !p.logprobs && p.stop.is_empty());
}

#[test]
fn text_parts_are_joined_and_other_parts_refused() {
    let body = json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]});
    let (prompt, _) = parse_chat(&body, &LIMITS).expect("valid");
    assert_eq!(messages(&prompt), vec![("user", "ab")]);
    let image = json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]});
    assert_eq!(
        error_param(parse_chat(&image, &LIMITS)),
        "messages[0].content[0].type"
    );
}

#[test]
fn every_bad_field_is_named() {
    let cases = [
        (json!({"n": 2}), "n"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": 4096}), "max_tokens"),
        (json!({"max_completion_tokens": "x"}), "max_completion_tokens"),
        (json!({"temperature": 3}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_k": 0}), "top_k"),
        (json!({"seed": "s"}), "seed"),
        (json!({"stop": ["a", "b", "c", "d", "e"]}), "stop"),
        (json!({"stop": [""]}), "stop"),
        (json!({"stop": 3}), "stop"),
        (json!({"stream": "yes"}), "stream"),
        (
            json!({"stream_options": {"include_usage": 1}}),
            "stream_options.include_usage",
        ),
        (json!({"logprobs": 5}), "logprobs"),
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "robot", "content": "x"}]}),
            "messages[0].role",
        ),
        (json!({"messages": [{"content": "x"}]}), "messages[0].role"),
        (
            json!({"messages": [{"role": "user", "content": 5}]}),
            "messages[0].content",
        ),
        (json!({"model": 5}), "model"),
    ];
    for (extra, param) in cases {
        assert_eq!(
            error_param(parse_chat(&chat(extra.clone()), &LIMITS)),
            param,
            "{extra}"
        );
    }
}

#[test]
fn a_prompt_over_the_byte_limit_is_refused_before_tokenisation() {
    let long = "x".repeat(1001);
    let body = json!({"messages": [{"role": "user", "content": long}]});
    assert!(matches!(
        parse_chat(&body, &LIMITS),
        Err(InferError::TooLarge { param, .. }) if param == "messages"
    ));
    assert!(matches!(
        parse_completion(&json!({"prompt": long}), &LIMITS),
        Err(InferError::TooLarge { param, .. }) if param == "prompt"
    ));
}

#[test]
fn a_completion_takes_one_prompt_and_a_logprobs_count() {
    let (prompt, options) = parse_completion(
        &json!({"prompt": ["Once"], "max_tokens": 8, "logprobs": 1}),
        &LIMITS,
    )
    .expect("valid");
    assert!(matches!(&prompt, Prompt::Text(t) if t == "Once"));
    assert_eq!(options.params.max_tokens, 8);
    assert!(options.params.logprobs);
    assert_eq!(
        error_param(parse_completion(&json!({"prompt": ["a", "b"]}), &LIMITS)),
        "prompt"
    );
    assert_eq!(error_param(parse_completion(&json!({}), &LIMITS)), "prompt");
    assert_eq!(
        error_param(parse_completion(
            &json!({"prompt": "a", "max_completion_tokens": 0, "max_tokens": 0}),
            &LIMITS
        )),
        "max_tokens"
    );
}
