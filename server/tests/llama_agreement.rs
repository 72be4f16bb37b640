//! Agreement with llama.cpp on the test LLM (SmolLM2-135M-Instruct, Q4_1): four fixed chat
//! prompts (the GGUF's template applied by our tokenizer), 32 greedy tokens from llama.cpp's
//! server (`/completion`, temperature 0, the same prompt ids), against our GGUF llama.
//!
//! Two measures, both printed per prompt:
//! - **Greedy**: our own 32 greedy tokens against llama.cpp's, leading tokens that agree. Both
//!   quantise activations to 8 bits but differently (we run Q4_1 weights as Q8_0 with 256-wide
//!   input blocks, for candle's tile kernels), and this small model meets a near tie every few
//!   tokens (top-2 within 0.3 nats); after the first tie broken differently the texts part. Our
//!   exact f32 forward pass breaks ties differently from llama.cpp too, so whole 32-token
//!   sequences agree only by luck: reported, not asserted.
//! - **Teacher-forced**: along llama.cpp's tokens, whether our model's most likely next token is
//!   llama.cpp's, and by how much it prefers its own where not. Asserted: at least
//!   [`MIN_TOP1_AGREEMENT`] of the 128 positions agree and every other one is a near tie
//!   (within [`MAX_TIE_GAP`] nats). A wrong model (rotary layout, norms, template) agrees on a
//!   small share and misses by several nats.
//!
//! The reference is llama.cpp's ids recorded when this test was written ([`LLAMA_CPP_IDS`],
//! needs no llama.cpp), and llama.cpp's server live (built by `server/bench/build-llama-cpp.sh`
//! or found at `$MODELFLEET_LLAMA_CPP_DIR`).

use std::time::Duration;

use candle_core::Device;
use modelfleet_server::generate::{
    Feed, LanguageModel,
    model::GgufLlama,
    tokenizer::{ChatMessage, GgufTokenizer},
};
use modelfleet_testkit::{
    llama::{LlamaOptions, LlamaServer},
    server::{llm_file, post},
};
use serde_json::{Value, json};

/// Tokens generated per prompt.
const TOKENS: usize = 32;

/// Share of teacher-forced positions where our most likely token must be llama.cpp's (measured
/// when written: 119 of 128, 0.93; our exact f32 pass: 122 of 128).
const MIN_TOP1_AGREEMENT: f64 = 0.85;

/// Where our most likely token is not llama.cpp's, the most it may beat llama.cpp's token by,
/// in nats of our log-probabilities (measured when written: 0.98 at most, 0.39 median).
const MAX_TIE_GAP: f32 = 1.5;

/// The questions, each asked as one user turn with the template's default system prompt.
const PROMPTS: [&str; 4] = [
    "What is the capital of France?",
    "Write a short story about a robot who learns to paint.",
    "Explain how photosynthesis works in simple terms.",
    "List five fruits and describe the colour of each.",
];

/// What llama.cpp's server (llama.cpp as vendored in llama-cpp-python 0.3.36, CPU, the flags of
/// `build-llama-cpp.sh` but AVX-VNNI off: an AMD EPYC with AVX512-VNNI only; `-t 2`) generated
/// greedily for [`PROMPTS`]: a reference measured independently of our code, kept for when
/// llama.cpp's output changes (an AVX2-only build of the same source already breaks one tie
/// differently in prompt 0).
#[rustfmt::skip]
const LLAMA_CPP_IDS: [[u32; TOKENS]; 4] = [
    [60, 23, 39614, 1141, 552, 28, 2618, 2828, 313, 7712, 769, 28, 2618, 2849, 1558, 26261, 651,
     89, 28, 2618, 2849, 1558, 26261, 651, 89, 28, 2618, 2849, 1558, 26261, 651, 89],
    [1653, 260, 5646, 28, 5646, 29, 14519, 8085, 28, 476, 64, 32206, 1627, 2585, 624, 3444, 288,
     7670, 28, 260, 905, 436, 253, 16495, 327, 260, 5646, 506, 4833, 9256, 30, 378],
    [33580, 14870, 314, 253, 4334, 980, 338, 4149, 281, 2109, 28, 12325, 28, 284, 634, 3939, 28,
     837, 502, 7728, 1420, 1439, 429, 260, 2388, 618, 2819, 1439, 6314, 281, 8102, 30],
    [33, 30, 12619, 12310, 42, 3950, 198, 34, 30, 1816, 5120, 42, 13581, 198, 35, 30, 4924, 3030,
     42, 4910, 198, 36, 30, 37756, 11895, 42, 4910, 198, 37, 30, 1816, 5120],
];

fn prompt_ids(tokenizer: &GgufTokenizer, question: &str) -> Vec<u32> {
    let chat = [ChatMessage {
        role: "user".into(),
        content: question.into(),
    }];
    let text = tokenizer
        .apply_chat_template(&chat, true)
        .expect("the template renders");
    tokenizer.encode(&text).expect("encodes")
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::MIN, f32::max);
    let sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    logits.iter().map(|l| l - sum).collect()
}

fn argmax(values: &[f32]) -> u32 {
    let best = values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .expect("logits");
    best.0 as u32
}

/// Our model and the prompts' ids.
fn load() -> (GgufLlama, Vec<Vec<u32>>, Vec<u32>) {
    let (model, tokenizer) = GgufLlama::load(&llm_file(), &Device::Cpu).expect("the model loads");
    let prompts = PROMPTS.iter().map(|q| prompt_ids(&tokenizer, q)).collect();
    (model, prompts, tokenizer.eos_ids())
}

/// Our greedy continuation: [`TOKENS`] tokens, fewer at an end-of-turn token (not included;
/// llama.cpp stops there too).
fn greedy(model: &mut GgufLlama, prompt: &[u32], eos: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    let mut logits = model
        .forward(&[Feed {
            seq: 0,
            tokens: prompt,
        }])
        .expect("prefill");
    while out.len() < TOKENS {
        let next = argmax(&logits[0]);
        if eos.contains(&next) {
            break;
        }
        out.push(next);
        logits = model
            .forward(&[Feed {
                seq: 0,
                tokens: &[next],
            }])
            .expect("decode");
    }
    model.release(0);
    out
}

/// Along `theirs` after `prompt`: per position, None where our most likely token is theirs,
/// else by how many nats ours beats theirs.
fn teacher_forced(model: &mut GgufLlama, prompt: &[u32], theirs: &[u32]) -> Vec<Option<f32>> {
    let mut logits = model
        .forward(&[Feed {
            seq: 0,
            tokens: prompt,
        }])
        .expect("prefill");
    let mut out = Vec::new();
    for &token in theirs {
        let lp = log_softmax(&logits[0]);
        let ours = argmax(&lp);
        out.push((ours != token).then(|| lp[ours as usize] - lp[token as usize]));
        logits = model
            .forward(&[Feed {
                seq: 0,
                tokens: &[token],
            }])
            .expect("decode");
    }
    model.release(0);
    out
}

/// Prints both measures per prompt and asserts the teacher-forced one.
fn compare(what: &str, model: &mut GgufLlama, prompts: &[Vec<u32>], eos: &[u32], theirs: &[Vec<u32>]) {
    let (mut agreeing, mut positions, mut whole) = (0, 0, 0);
    let mut worst = 0f32;
    for (i, (prompt, theirs)) in prompts.iter().zip(theirs).enumerate() {
        let ours = greedy(model, prompt, eos);
        let leading = ours.iter().zip(theirs).take_while(|(a, b)| a == b).count();
        whole += usize::from(ours == *theirs);
        let forced = teacher_forced(model, prompt, theirs);
        let misses: Vec<String> = forced.iter().flatten().map(|g| format!("{g:.2}")).collect();
        agreeing += forced.iter().filter(|f| f.is_none()).count();
        positions += forced.len();
        worst = forced.iter().flatten().fold(worst, |w, g| w.max(*g));
        println!(
            "{what}: prompt {i} {:?}: greedy {leading} of {TOKENS} leading tokens agree; \
             teacher-forced top-1 {} of {}, gaps where not [{}] nats",
            PROMPTS[i],
            forced.len() - misses.len(),
            forced.len(),
            misses.join(", ")
        );
    }
    let share = agreeing as f64 / positions as f64;
    println!(
        "{what}: greedy: {whole} of {} prompts agree on all {TOKENS} tokens; teacher-forced: \
         {agreeing} of {positions} ({share:.3}), worst gap {worst:.2} nats",
        prompts.len()
    );
    assert!(
        share >= MIN_TOP1_AGREEMENT,
        "{agreeing} of {positions} positions agree"
    );
    assert!(worst <= MAX_TIE_GAP, "a gap of {worst} nats is no near tie");
}

#[test]
fn our_model_follows_the_recorded_llama_cpp_tokens() {
    let (mut model, prompts, eos) = load();
    let recorded: Vec<Vec<u32>> = LLAMA_CPP_IDS.iter().map(|ids| ids.to_vec()).collect();
    compare("recorded llama.cpp", &mut model, &prompts, &eos, &recorded);
}

/// llama.cpp's greedy ids for `prompt` from its server's `/completion`.
async fn llama_cpp_greedy(server: &LlamaServer, prompt: &[u32]) -> Vec<u32> {
    let body = json!({
        "prompt": prompt,
        "n_predict": TOKENS,
        "temperature": 0,
        "cache_prompt": false,
        "return_tokens": true,
    });
    let answer = post(&server.url("/completion"), &body, &[]).await;
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    let ids: Option<Vec<u32>> = answer.body["tokens"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_u64).map(|id| id as u32).collect());
    ids.unwrap_or_else(|| panic!("no token ids in llama.cpp's answer: {:?}", answer.body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_model_follows_llama_cpps_server() {
    let server = LlamaServer::start(&LlamaOptions::new(&llm_file()), Duration::from_secs(120)).await;
    let (mut model, prompts, eos) = tokio::task::spawn_blocking(load).await.expect("our model");
    let mut theirs = Vec::new();
    for prompt in &prompts {
        theirs.push(llama_cpp_greedy(&server, prompt).await);
    }
    let recorded = theirs
        .iter()
        .zip(&LLAMA_CPP_IDS)
        .filter(|(live, recorded)| live.as_slice() == recorded.as_slice())
        .count();
    println!("llama-server: {recorded} of 4 prompts as recorded; ids {theirs:?}");
    tokio::task::spawn_blocking(move || compare("llama-server", &mut model, &prompts, &eos, &theirs))
        .await
        .expect("the comparison");
}
