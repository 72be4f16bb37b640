//! The scheduler end to end on its thread, with a fake model that records every forward and
//! a gate the test opens step by step, so batching, chunking and preemption are observed
//! deterministically.

mod harness;

use std::time::{Duration, Instant};

use harness::*;

use super::*;

#[test]
fn greedy_output_is_deterministic_and_max_tokens_ends_it_with_length() {
    let (model, probe) = FakeModel::new();
    let scheduler = start(model, config());
    for _ in 0..2 {
        let s = run_alone(&scheduler, &probe, request(&[1, 2, 3], 5));
        assert_eq!(s.tokens, [4, 5, 6, 7, 8]);
        assert_eq!(s.text(), "defgh");
        assert_eq!(s.done(), Some((FinishReason::Length, 3, 5)));
    }
    let stats = scheduler.stats();
    assert_eq!(stats.generated_tokens_total.load(Relaxed), 10);
    assert_eq!(stats.prompt_tokens_total.load(Relaxed), 6);
    assert_eq!(stats.finished_total.load(Relaxed), 2);
    assert_eq!(stats.kv_reserved_tokens.load(Relaxed), 0);
    assert_eq!(stats.waiting.load(Relaxed), 0);
}

#[test]
fn an_eos_token_ends_with_stop_and_adds_no_text() {
    let (mut model, probe) = FakeModel::new();
    model.eos_at = Some(6);
    let scheduler = start(model, config());
    let s = run_alone(&scheduler, &probe, request(&[1, 2, 3], 20));
    assert_eq!(s.tokens, [4, 5, 6, EOS]);
    assert_eq!(s.texts, ["d", "e", "f", ""]);
    assert_eq!(s.done(), Some((FinishReason::Stop, 3, 4)));
}

#[test]
fn the_same_seed_gives_the_same_text_and_another_seed_another() {
    let (mut model, probe) = FakeModel::new();
    model.peak = 1.0;
    let scheduler = start(model, config());
    let sampled = |seed: u64, top_k: Option<usize>| {
        let mut r = request(&[1], 24);
        r.params.temperature = 1.0;
        r.params.seed = Some(seed);
        r.params.top_k = top_k;
        run_alone(&scheduler, &probe, r).text()
    };
    assert_eq!(sampled(7, None), sampled(7, None));
    assert_ne!(sampled(7, None), sampled(8, None));
    let greedy = run_alone(&scheduler, &probe, request(&[1], 24)).text();
    assert_eq!(sampled(9, Some(1)), greedy, "top_k 1 is greedy");
}

#[test]
fn a_stop_string_split_across_two_tokens_stops_unemitted() {
    let (model, probe) = FakeModel::new();
    let scheduler = start(model, config());
    let mut r = request(&[1, 2, 3], 20);
    r.params.stop = vec!["fg".into()];
    let s = run_alone(&scheduler, &probe, r);
    assert_eq!(
        s.texts,
        ["d", "e", "", ""],
        "`f` is held back until `g` makes the stop"
    );
    assert_eq!(s.text(), "de");
    assert_eq!(s.done(), Some((FinishReason::Stop, 3, 4)));
}

#[test]
fn logprobs_come_only_when_asked() {
    let (model, _probe) = FakeModel::new();
    let scheduler = start(model, config());
    let mut r = request(&[1], 2);
    r.params.logprobs = true;
    let mut rx = scheduler.submit(r).expect("admitted");
    let first = rx.blocking_recv();
    assert!(matches!(first, Some(Event::Token { logprob: Some(lp), .. }) if lp < 0.0 && lp > -0.01));
    let mut rx = scheduler.submit(request(&[1], 2)).expect("admitted");
    assert!(matches!(
        rx.blocking_recv(),
        Some(Event::Token { logprob: None, .. })
    ));
}

#[test]
fn concurrent_requests_are_batched_and_start_while_others_decode() {
    let (model, probe) = FakeModel::new();
    probe.gate.set(Some(0));
    let scheduler = start(model, config());
    // Two-token prompts: no decode feed (one token) can be mistaken for their prefill.
    let mut first = Stream::new(scheduler.submit(request(&[1, 1], 10)).expect("admitted"));
    step_until(&probe, &mut [&mut first], |s| !s[0].tokens.is_empty());
    let mut others: Vec<Stream> = (2..=8)
        .map(|p| Stream::new(scheduler.submit(request(&[p, p], 10)).expect("admitted")))
        .collect();
    let mut all: Vec<&mut Stream> = std::iter::once(&mut first).chain(others.iter_mut()).collect();
    finish_all(&probe, &mut all);
    for (i, s) in all.iter().enumerate() {
        assert_eq!(s.tokens.len(), 10, "request {i}");
        assert_eq!(s.done().map(|d| d.0), Some(FinishReason::Length));
    }
    let forwards = probe.forwards();
    assert!(
        forwards.iter().any(|f| f.len() == 8),
        "all eight ran in one forward"
    );
    let first_seq = seq_of(&forwards, &[1, 1]);
    for p in 2..=8 {
        let seq = seq_of(&forwards, &[p, p]);
        let prefill = forwards
            .iter()
            .find(|f| f.iter().any(|(s, _)| *s == seq))
            .expect("prefilled");
        assert!(
            prefill.iter().any(|(s, t)| *s == first_seq && t.len() == 1),
            "request {p} prefilled in the same forward as the first one decoded"
        );
    }
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_while_a_stream_decodes() {
    let (model, probe) = FakeModel::new();
    probe.gate.set(Some(0));
    let scheduler = start(
        model,
        SchedulerConfig {
            prefill_chunk: 4,
            step_token_budget: 8,
            ..config()
        },
    );
    let mut running = Stream::new(scheduler.submit(request(&[40], 30)).expect("admitted"));
    step_until(&probe, &mut [&mut running], |s| !s[0].tokens.is_empty());
    let prompt: Vec<u32> = (1..=18).collect();
    let mut long = Stream::new(scheduler.submit(request(&prompt, 2)).expect("admitted"));
    finish_all(&probe, &mut [&mut running, &mut long]);
    assert_eq!(long.tokens, [19, 20]);
    let forwards = probe.forwards();
    let (decoder, prefiller) = (seq_of(&forwards, &[40]), seq_of(&forwards, &[1, 2]));
    let with_prefill: Vec<_> = forwards
        .iter()
        .filter(|f| f.iter().any(|(s, t)| *s == prefiller && t.len() > 1))
        .collect();
    let chunks: Vec<usize> = with_prefill
        .iter()
        .flat_map(|f| f.iter().filter(|(s, _)| *s == prefiller).map(|(_, t)| t.len()))
        .collect();
    assert_eq!(chunks, [4, 4, 4, 4, 2]);
    for f in with_prefill {
        assert!(
            f.iter().any(|(s, t)| *s == decoder && t.len() == 1),
            "the stream decodes in every prefill step"
        );
    }
}

#[test]
fn a_later_paid_request_is_admitted_before_an_earlier_free_one() {
    let (model, probe) = FakeModel::new();
    probe.gate.set(Some(0));
    let scheduler = start(
        model,
        SchedulerConfig {
            max_running: 1,
            ..config()
        },
    );
    let mut running = Stream::new(scheduler.submit(request(&[1], 3)).expect("admitted"));
    step_until(&probe, &mut [&mut running], |s| !s[0].tokens.is_empty());
    let mut free = Stream::new(scheduler.submit(request(&[20], 3)).expect("admitted"));
    let mut paid_request = request(&[30], 3);
    paid_request.tier = PAID;
    let mut paid = Stream::new(scheduler.submit(paid_request).expect("admitted"));
    assert_eq!(scheduler.stats().waiting_in(FREE), 1);
    assert_eq!(scheduler.stats().waiting_in(PAID), 1);
    finish_all(&probe, &mut [&mut running, &mut free, &mut paid]);
    let forwards = probe.forwards();
    let first_feed = |prompt: u32| {
        forwards
            .iter()
            .position(|f| f.iter().any(|(_, t)| t[0] == prompt))
    };
    assert!(first_feed(30) < first_feed(20), "paid before free");
    assert_eq!(
        scheduler.stats().preemptions_total.load(Relaxed),
        0,
        "slots never preempt"
    );
}

#[test]
fn a_paid_request_preempts_a_free_one_which_resumes_with_the_same_text() {
    let make = || {
        let (mut model, probe) = FakeModel::new();
        model.positional = true;
        (model, probe)
    };
    // What each would generate alone.
    let (model, probe) = make();
    let alone = start(model, config());
    let prompts = [[1u32, 2, 3], [11, 12, 13], [21, 22, 23]];
    let expected: Vec<String> = prompts
        .iter()
        .map(|p| run_alone(&alone, &probe, request(p, 8)).text())
        .collect();

    let (model, probe) = make();
    probe.gate.set(Some(0));
    let scheduler = start(
        model,
        SchedulerConfig {
            kv_budget_tokens: 2 * (3 + 8),
            ..config()
        },
    );
    let mut a = Stream::new(scheduler.submit(request(&prompts[0], 8)).expect("admitted"));
    let mut b = Stream::new(scheduler.submit(request(&prompts[1], 8)).expect("admitted"));
    step_until(&probe, &mut [&mut a, &mut b], |s| {
        s.iter().all(|s| s.tokens.len() >= 2)
    });
    let mut paid_request = request(&prompts[2], 8);
    paid_request.tier = PAID;
    let mut paid = Stream::new(scheduler.submit(paid_request).expect("admitted"));
    finish_all(&probe, &mut [&mut a, &mut b, &mut paid]);

    let forwards = probe.forwards();
    let (seq_b, seq_paid) = (seq_of(&forwards, &prompts[1]), seq_of(&forwards, &prompts[2]));
    assert_eq!(scheduler.stats().preemptions_total.load(Relaxed), 1);
    let record = probe.record();
    let b_released = record.released.iter().position(|&(s, _)| s == seq_b);
    let paid_released = record.released.iter().position(|&(s, _)| s == seq_paid);
    assert!(
        b_released < paid_released,
        "b was released to make room, before paid finished"
    );
    drop(record);
    let recomputed = forwards
        .iter()
        .flatten()
        .filter(|(s, t)| *s == seq_b && t.starts_with(&prompts[1]))
        .count();
    assert_eq!(
        recomputed, 2,
        "b's prompt fed twice: first, and with its tokens on resuming"
    );
    for (s, expected) in [&a, &b, &paid].iter().zip(&expected) {
        assert_eq!(&s.text(), expected);
        assert_eq!(s.tokens.len(), 8, "no token re-sent");
        assert_eq!(s.done().map(|d| d.0), Some(FinishReason::Length));
    }
}

#[test]
fn a_dropped_receiver_releases_the_sequence_within_one_step() {
    let (model, probe) = FakeModel::new();
    probe.gate.set(Some(0));
    let scheduler = start(model, config());
    let mut s = Stream::new(scheduler.submit(request(&[1], 100)).expect("admitted"));
    step_until(&probe, &mut [&mut s], |s| !s[0].tokens.is_empty());
    let seq = seq_of(&probe.forwards(), &[1]);
    let forwards_before = probe.forwards().len();
    drop(s);
    // The step already planned may run once more; the next one sees the closed channel.
    let started = Instant::now();
    while !probe.released(seq) {
        assert!(started.elapsed() < WAIT, "not released");
        if probe.gate.is_exhausted() {
            probe.gate.allow_one();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let later = probe.forwards()[forwards_before..]
        .iter()
        .filter(|f| f.iter().any(|(s, _)| *s == seq))
        .count();
    assert!(later <= 1, "fed {later} times after the drop");
    assert_eq!(scheduler.stats().cancelled_total.load(Relaxed), 1);
}

#[test]
fn a_full_queue_or_tier_share_is_overloaded_with_retry_after() {
    let (model, probe) = FakeModel::new();
    probe.gate.set(Some(0));
    let scheduler = start(
        model,
        SchedulerConfig {
            max_running: 1,
            max_waiting: 3,
            tiers: vec![tier("paid", 1.0), tier("free", 0.34)],
            ..config()
        },
    );
    let mut running = Stream::new(scheduler.submit(request(&[1], 2)).expect("admitted"));
    step_until(&probe, &mut [&mut running], |s| !s[0].tokens.is_empty());
    let mut queued = vec![Stream::new(scheduler.submit(request(&[2], 2)).expect("admitted"))];
    match scheduler.submit(request(&[3], 2)) {
        Err(InferError::Overloaded { message, retry_after }) => {
            assert!(message.contains("tier `free`"), "{message}");
            assert!(retry_after >= Duration::from_secs(1));
        }
        other => panic!("expected the free tier's share to be full, got {other:?}"),
    }
    let mut paid = request(&[4], 2);
    paid.tier = PAID;
    for _ in 0..2 {
        queued.push(Stream::new(scheduler.submit(paid.clone()).expect("admitted")));
    }
    let refused = scheduler.submit(paid);
    assert!(
        matches!(&refused, Err(InferError::Overloaded { message, .. }) if message.contains("queue full"))
    );
    assert_eq!(refused.err().map(|e| e.status().as_u16()), Some(429));
    let mut all: Vec<&mut Stream> = std::iter::once(&mut running).chain(queued.iter_mut()).collect();
    finish_all(&probe, &mut all);
    assert!(all.iter().all(|s| s.done().is_some()));
    assert_eq!(scheduler.stats().waiting.load(Relaxed), 0);
}

#[test]
fn requests_that_cannot_fit_are_refused_at_once() {
    let (model, _probe) = FakeModel::new();
    let scheduler = start(
        model,
        SchedulerConfig {
            kv_budget_tokens: 100,
            ..config()
        },
    );
    let param = |r: GenerationRequest| match scheduler.submit(r) {
        Err(InferError::TooLarge { param, .. }) => format!("too large: {param}"),
        Err(InferError::Invalid { param, .. }) => format!("invalid: {param}"),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(param(request(&[1; CONTEXT], 1)), "invalid: messages");
    assert_eq!(
        param(request(&[1; 60], 50)),
        "invalid: max_tokens",
        "over the KV budget"
    );
    assert_eq!(param(request(&[], 5)), "invalid: messages");
    assert_eq!(param(request(&[1], 0)), "invalid: max_tokens");
    let mut unknown_tier = request(&[1], 1);
    unknown_tier.tier = 9;
    assert_eq!(param(unknown_tier), "invalid: x-modelfleet-tier");
    let Err(e) = check_lengths(250, 10, CONTEXT, 10_000) else {
        panic!("over the context length");
    };
    assert!(e.to_string().contains("max_tokens may be at most 6"), "{e}");
    assert!(
        check_lengths(1, usize::MAX, CONTEXT, 10_000).is_err(),
        "no overflow"
    );
    assert_eq!(
        scheduler.stats().waiting.load(Relaxed),
        0,
        "refusals hold no place"
    );
}

#[test]
fn a_configured_context_length_caps_the_models_and_never_raises_it() {
    let (model, _probe) = FakeModel::new();
    let capped = start(
        model,
        SchedulerConfig {
            context_length: Some(40),
            ..config()
        },
    );
    assert_eq!(capped.context_length(), 40);
    let Err(e) = capped.submit(request(&[1; 30], 20)) else {
        panic!("30 + 20 tokens is over a context of 40");
    };
    assert!(e.to_string().contains("max_tokens may be at most 10"), "{e}");
    let (model, _probe) = FakeModel::new();
    let above = start(
        model,
        SchedulerConfig {
            context_length: Some(CONTEXT * 4),
            ..config()
        },
    );
    assert_eq!(above.context_length(), CONTEXT, "never above the model's");
}

#[test]
fn a_model_error_or_panic_fails_its_step_and_the_next_request_succeeds() {
    let (model, probe) = FakeModel::new();
    let scheduler = start(model, config());
    for bad in [ERROR_TOKEN, PANIC_TOKEN] {
        let failed = run_alone(&scheduler, &probe, request(&[1, bad], 3));
        match &failed.end {
            Some(Event::Failed(InferError::Backend(message))) => {
                assert!(message.contains("injected"), "{message}");
            }
            other => panic!("expected a backend failure, got {other:?}"),
        }
        let seq = seq_of(&probe.forwards(), &[1, bad]);
        assert!(probe.released(seq), "the failed sequence's cache is freed");
        let ok = run_alone(&scheduler, &probe, request(&[1, 2], 3));
        assert_eq!(ok.text(), "cde");
    }
    assert_eq!(scheduler.stats().failed_total.load(Relaxed), 2);
}

#[test]
fn a_deadline_fails_before_the_first_token_and_cuts_the_stream_after() {
    let (model, probe) = FakeModel::new();
    probe.gate.set(Some(0));
    let scheduler = start(
        model,
        SchedulerConfig {
            max_running: 1,
            ..config()
        },
    );
    let mut running_request = request(&[1], 50);
    running_request.deadline = Some(Instant::now() + Duration::from_millis(500));
    let mut running = Stream::new(scheduler.submit(running_request).expect("admitted"));
    step_until(&probe, &mut [&mut running], |s| s[0].tokens.len() >= 2);
    let mut waiting_request = request(&[2], 5);
    waiting_request.deadline = Some(Instant::now() + Duration::from_millis(20));
    let mut waiting = Stream::new(scheduler.submit(waiting_request).expect("admitted"));
    std::thread::sleep(Duration::from_millis(550));
    step_until(&probe, &mut [&mut running, &mut waiting], |s| {
        s.iter().all(|s| s.end.is_some())
    });
    assert!(
        matches!(&waiting.end, Some(Event::Failed(InferError::QueueTimeout { source_of_limit, .. })) if *source_of_limit == headers::TIMEOUT)
    );
    let (finish, _, completion) = running.done().expect("cut with what it had");
    assert_eq!(finish, FinishReason::Length);
    assert_eq!(completion, running.tokens.len());
    assert!(completion < 50);
    assert_eq!(scheduler.stats().timed_out_total.load(Relaxed), 2);
}

#[test]
fn a_tier_timeout_bounds_the_wait_for_the_first_admission() {
    let (model, probe) = FakeModel::new();
    probe.gate.set(Some(0));
    let mut free = tier("free", 1.0);
    free.timeout = Some(Duration::from_millis(20));
    let scheduler = start(
        model,
        SchedulerConfig {
            max_running: 1,
            tiers: vec![free],
            ..config()
        },
    );
    let mut r = request(&[1], 5);
    r.tier = 0;
    let mut running = Stream::new(scheduler.submit(r.clone()).expect("admitted"));
    step_until(&probe, &mut [&mut running], |s| !s[0].tokens.is_empty());
    let mut waiting = Stream::new(scheduler.submit(r).expect("admitted"));
    std::thread::sleep(Duration::from_millis(30));
    finish_all(&probe, &mut [&mut running, &mut waiting]);
    assert!(matches!(
        &waiting.end,
        Some(Event::Failed(InferError::QueueTimeout {
            source_of_limit: "tier timeout",
            ..
        }))
    ));
    assert_eq!(
        running.done().map(|d| d.0),
        Some(FinishReason::Length),
        "the running one is unaffected"
    );
}

#[test]
fn the_thread_ends_when_every_handle_is_gone() {
    let (model, probe) = FakeModel::new();
    let scheduler = start(model, config());
    let other = scheduler.clone();
    drop(scheduler);
    let s = run_alone(&other, &probe, request(&[1], 2));
    assert_eq!(s.text(), "bc");
    drop(other);
    let started = Instant::now();
    while !probe.record().dropped {
        assert!(started.elapsed() < WAIT, "the scheduler thread kept the model");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn tiers_map_from_the_tier_flags() {
    let arg: TierArg = "free:2s:0.5".parse().expect("a tier flag");
    let tier = TierConfig::from(&arg);
    assert_eq!(
        tier,
        TierConfig {
            name: "free".into(),
            timeout: Some(Duration::from_secs(2)),
            queue_share: 0.5,
        }
    );
    let (model, _probe) = FakeModel::new();
    let scheduler = start(
        model,
        SchedulerConfig {
            tiers: Vec::new(),
            ..config()
        },
    );
    assert_eq!(scheduler.tiers().len(), 1);
    assert_eq!(scheduler.tier_index(None), Ok(0));
    assert_eq!(scheduler.tier_index(Some(BatchingArgs::DEFAULT_TIER)), Ok(0));
    assert!(scheduler.tier_index(Some("gold")).is_err());
}

#[test]
fn a_panic_while_decoding_fails_only_that_sequence() {
    /// Letters, except that `e` (id 5) panics.
    struct PanicsOnE;
    impl Decode for PanicsOnE {
        fn decode(&self, ids: &[u32]) -> String {
            assert!(!ids.contains(&5), "injected decode panic");
            Letters.decode(ids)
        }
    }
    let (model, probe) = FakeModel::new();
    let scheduler = Scheduler::start(Box::new(model), Arc::new(PanicsOnE), config());
    let failed = run_alone(&scheduler, &probe, request(&[3], 5));
    assert_eq!(failed.texts, ["d"]);
    assert!(
        matches!(&failed.end, Some(Event::Failed(InferError::Backend(m))) if m.contains("injected decode panic"))
    );
    let ok = run_alone(&scheduler, &probe, request(&[10], 3));
    assert_eq!(ok.text(), "klm");
    assert_eq!(scheduler.stats().failed_total.load(Relaxed), 1);
}
