use modelfleet_crds::v1alpha1::{FallbackSpec, RoutingSpec};

use super::*;
use crate::{
    load::LoadBoard,
    table::{Table, tests_support::model_with_candidate},
};

struct Fixed {
    overloaded: Vec<&'static str>,
    down: Vec<&'static str>,
}

impl Health for Fixed {
    fn overloaded(&self, m: &ModelEntry) -> bool {
        self.overloaded.contains(&m.served.as_str())
    }
    fn available(&self, m: &ModelEntry) -> bool {
        !self.down.contains(&m.served.as_str())
    }
}

fn healthy() -> Fixed {
    Fixed {
        overloaded: vec![],
        down: vec![],
    }
}

fn anyone() -> Grant {
    Grant {
        tenant: "t".into(),
        tier: None,
        models: None,
        requests_per_second: None,
        tokens_per_minute: None,
    }
}

/// `big` (falls back to `small` by `rule`) and `small`, in namespace `ns`.
fn table(rule: FallbackSpec) -> Table {
    let board = LoadBoard::default();
    let mut big = model_with_candidate(&board, 0);
    big.deployment = "big".into();
    big.served = "big".into();
    big.aliases = vec!["large".into()];
    big.routing = RoutingSpec {
        fallback: Some(rule),
        ..RoutingSpec::default()
    };
    let mut small = model_with_candidate(&board, 0);
    small.deployment = "small".into();
    small.served = "small".into();
    small.created = 1;
    Table::new(vec![big, small])
}

fn to_small() -> FallbackSpec {
    FallbackSpec {
        model: "small".into(),
        queue_depth_above: Some(4.0),
        prompt_tokens_above: Some(1000),
        tiers: vec!["free".into()],
    }
}

fn served(r: Option<Routed<'_>>) -> Option<(String, Option<&'static str>)> {
    r.map(|r| {
        (
            r.model.served.clone(),
            r.fallback_from.map(|(_, why)| why.as_str()),
        )
    })
}

#[test]
fn the_named_model_answers_by_name_alias_or_key() {
    let t = table(to_small());
    let paid = Grant {
        tier: Some("paid".into()),
        ..anyone()
    };
    for name in ["big", "large", "ns/big"] {
        assert_eq!(
            served(route(&t, name, &paid, 10, &healthy())),
            Some(("big".into(), None))
        );
    }
    assert_eq!(served(route(&t, "nope", &paid, 10, &healthy())), None);
}

#[test]
fn a_model_the_key_may_not_use_is_unknown_to_it() {
    let t = table(to_small());
    let only_small = Grant {
        models: Some(vec!["small".into()]),
        ..anyone()
    };
    assert_eq!(served(route(&t, "big", &only_small, 10, &healthy())), None);
    let names: Vec<&str> = visible(&t, &only_small)
        .iter()
        .map(|m| m.served.as_str())
        .collect();
    assert_eq!(names, ["small"]);
}

#[test]
fn each_rule_sends_to_the_fallback_with_its_reason() {
    let t = table(to_small());
    let paid = Grant {
        tier: Some("paid".into()),
        ..anyone()
    };
    // The anonymous caller gets the lowest tier, `free`, which the rule names.
    assert_eq!(
        served(route(&t, "big", &anyone(), 10, &healthy())),
        Some(("small".into(), Some("tier")))
    );
    assert_eq!(
        served(route(&t, "big", &paid, 5000, &healthy())),
        Some(("small".into(), Some("prompt_tokens")))
    );
    let busy = Fixed {
        overloaded: vec!["big"],
        down: vec![],
    };
    assert_eq!(
        served(route(&t, "big", &paid, 10, &busy)),
        Some(("small".into(), Some("overloaded")))
    );
    let down = Fixed {
        overloaded: vec![],
        down: vec!["big"],
    };
    assert_eq!(
        served(route(&t, "big", &paid, 10, &down)),
        Some(("small".into(), Some("unavailable")))
    );
}

#[test]
fn no_fallback_to_a_model_in_no_better_state_or_not_the_callers() {
    let t = table(to_small());
    let paid = Grant {
        tier: Some("paid".into()),
        ..anyone()
    };
    let both_busy = Fixed {
        overloaded: vec!["big", "small"],
        down: vec![],
    };
    assert_eq!(
        served(route(&t, "big", &paid, 10, &both_busy)),
        Some(("big".into(), None))
    );
    let both_down = Fixed {
        overloaded: vec![],
        down: vec!["big", "small"],
    };
    assert_eq!(
        served(route(&t, "big", &paid, 10, &both_down)),
        Some(("big".into(), None))
    );
    let only_big = Grant {
        tier: Some("free".into()),
        models: Some(vec!["big".into()]),
        ..anyone()
    };
    assert_eq!(
        served(route(&t, "big", &only_big, 10, &healthy())),
        Some(("big".into(), None))
    );
}

#[test]
fn token_estimates_count_the_body_and_the_completion() {
    assert_eq!(estimated_tokens(9, None), 3);
    assert_eq!(estimated_tokens(8, Some(100)), 102);
}
