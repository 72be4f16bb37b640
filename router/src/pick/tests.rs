use std::collections::HashMap;

use super::*;
use crate::load::LoadBoard;

fn endpoints(board: &LoadBoard, n: u8) -> Vec<Endpoint> {
    (1..=n)
        .map(|i| Endpoint {
            pod: format!("p{i}"),
            load: board.entry(SocketAddr::from(([10, 0, 0, i], 8080))),
        })
        .collect()
}

#[test]
fn a_weight_sends_exactly_that_share_of_every_hundred_requests() {
    for weight in [0, 1, 20, 33, 50, 99, 100] {
        let hits = (0..1000).filter(|&n| to_candidate(n, weight)).count();
        assert_eq!(hits, weight as usize * 10, "weight {weight}");
        let first_hundred = (0..100).filter(|&n| to_candidate(n, weight)).count();
        assert_eq!(first_hundred, weight as usize, "weight {weight}");
    }
}

#[test]
fn least_loaded_avoids_the_busy_endpoint() {
    let board = LoadBoard::default();
    let list = endpoints(&board, 2);
    let now = Instant::now();
    list[0].load.report(50, now);
    list[1].load.report(1, now);
    let picker = Picker::default();
    let config = PickConfig::default();
    for _ in 0..100 {
        let e = picker.pick(&config, &list, &[], now).expect("an endpoint");
        assert_eq!(e.pod, "p2");
    }
}

#[test]
fn round_robin_ignores_load() {
    let board = LoadBoard::default();
    let list = endpoints(&board, 2);
    let now = Instant::now();
    list[0].load.report(50, now);
    let picker = Picker::default();
    let config = PickConfig {
        strategy: Strategy::RoundRobin,
        ..PickConfig::default()
    };
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..10 {
        let e = picker.pick(&config, &list, &[], now).expect("an endpoint");
        *seen.entry(e.pod.clone()).or_default() += 1;
    }
    assert_eq!((seen["p1"], seen["p2"]), (5, 5));
}

#[test]
fn p2c_spreads_equal_load_over_every_endpoint() {
    let board = LoadBoard::default();
    let list = endpoints(&board, 4);
    let picker = Picker::default();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let e = picker
            .pick(&PickConfig::default(), &list, &[], Instant::now())
            .expect("one");
        *seen.entry(e.pod.clone()).or_default() += 1;
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(seen.values().all(|&n| n > 40), "{seen:?}");
}

#[test]
fn stale_and_excluded_endpoints_are_never_picked() {
    let board = LoadBoard::default();
    let list = endpoints(&board, 3);
    let later = Instant::now() + Duration::from_secs(10);
    list[1].load.report(0, later);
    list[2].load.report(0, later);
    let picker = Picker::default();
    let config = PickConfig::default();
    for _ in 0..50 {
        let e = picker
            .pick(&config, &list, &[list[2].load.addr], later)
            .expect("the fresh, untried one");
        assert_eq!(e.pod, "p2", "p1 never reported; p3 was tried");
    }
    assert!(picker.pick(&config, &list[..1], &[], later).is_none());
}

#[test]
fn the_revision_follows_the_weight_and_falls_back_when_empty() {
    let board = LoadBoard::default();
    let model = crate::table::tests_support::model_with_candidate(&board, 20);
    let usable = |r: &Revision| !r.endpoints.is_empty();
    let to_candidate = (0..100)
        .filter(|&n| revision(&model, n, usable).name == "r2")
        .count();
    assert_eq!(to_candidate, 20);
    let mut empty = model.clone();
    if let Some((c, _)) = empty.candidate.as_mut() {
        c.endpoints.clear();
    }
    assert!((0..100).all(|n| revision(&empty, n, usable).name == "r1"));
    let aborted = crate::table::tests_support::model_with_candidate(&board, 0);
    assert!((0..100).all(|n| revision(&aborted, n, usable).name == "r1"));
}

#[test]
fn overload_is_the_mean_reported_load_above_the_threshold() {
    let board = LoadBoard::default();
    let list = endpoints(&board, 2);
    let now = Instant::now();
    list[0].load.report(30, now);
    list[1].load.report(10, now);
    let config = PickConfig::default();
    assert!(overloaded(&list, Some(15.0), &config, now));
    assert!(!overloaded(&list, Some(25.0), &config, now));
    assert!(!overloaded(&list, None, &config, now));
}
