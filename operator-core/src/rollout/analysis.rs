//! Built-in analysis checks from node-agent telemetry, pure: a check, the candidate's and the
//! stable revision's aggregates in, a [`CheckOutcome`] out. No data is inconclusive, never a
//! pass.

use modelfleet_crds::v1alpha1::{AnalysisCheck, BuiltinCheck};

use crate::{rollout::machine::CheckOutcome, telemetry::Aggregate};

/// The name a check reports under: its `name`, else the builtin's.
pub fn check_name(check: &AnalysisCheck) -> String {
    check.name.clone().unwrap_or_else(|| match check.builtin {
        Some(BuiltinCheck::ErrorRate) => "errorRate".into(),
        Some(BuiltinCheck::P95Latency) => "p95Latency".into(),
        Some(BuiltinCheck::OutputAgreement) => "outputAgreement".into(),
        Some(BuiltinCheck::TtftP95) => "ttftP95".into(),
        Some(BuiltinCheck::TokensPerSecond) => "tokensPerSecond".into(),
        None => "prometheus".into(),
    })
}

/// Compares `value` with the check's `min`, `max` and (with `stable_value`) `maxRatioToStable`
/// and `minRatioToStable`.
pub fn judge(check: &AnalysisCheck, value: f64, stable_value: Option<f64>) -> CheckOutcome {
    let name = check_name(check);
    let failed = |threshold: String| CheckOutcome::Failed {
        check: name.clone(),
        value,
        threshold,
    };
    if let Some(max) = check.max
        && value > max
    {
        return failed(format!("max {max}"));
    }
    if let Some(min) = check.min
        && value < min
    {
        return failed(format!("min {min}"));
    }
    let ratios = check.max_ratio_to_stable.is_some() || check.min_ratio_to_stable.is_some();
    let stable = match stable_value {
        Some(stable) => stable,
        None if ratios => {
            return CheckOutcome::Inconclusive {
                check: name,
                reason: "no stable-revision data to compare with".into(),
            };
        }
        None => return CheckOutcome::Passed { check: name, value },
    };
    if let Some(ratio) = check.max_ratio_to_stable
        && value > stable * ratio
    {
        return failed(format!("maxRatioToStable {ratio} (stable {stable})"));
    }
    if let Some(ratio) = check.min_ratio_to_stable
        && value < stable * ratio
    {
        return failed(format!("minRatioToStable {ratio} (stable {stable})"));
    }
    CheckOutcome::Passed { check: name, value }
}

/// Evaluates a built-in check. `candidate` and `stable` aggregate the two revisions' pods over
/// the telemetry window; mirrored outputs are compared by the stable pods, so agreement is read
/// from theirs.
pub fn evaluate_builtin(check: &AnalysisCheck, candidate: &Aggregate, stable: &Aggregate) -> CheckOutcome {
    let name = check_name(check);
    let inconclusive = |reason: &str| CheckOutcome::Inconclusive {
        check: name.clone(),
        reason: reason.into(),
    };
    let served = |a: &Aggregate| a.fresh_pods > 0 && a.request_rate > 0.0;
    match check.builtin {
        Some(BuiltinCheck::ErrorRate) if served(candidate) => judge(check, candidate.error_ratio(), None),
        Some(BuiltinCheck::P95Latency) if served(candidate) => judge(
            check,
            candidate.latency_p95,
            served(stable).then_some(stable.latency_p95),
        ),
        Some(BuiltinCheck::TtftP95) if served(candidate) => judge(
            check,
            candidate.ttft_p95,
            served(stable).then_some(stable.ttft_p95),
        ),
        Some(BuiltinCheck::TokensPerSecond) if served(candidate) => judge(
            check,
            tokens_per_replica(candidate),
            served(stable).then(|| tokens_per_replica(stable)),
        ),
        Some(
            BuiltinCheck::ErrorRate
            | BuiltinCheck::P95Latency
            | BuiltinCheck::TtftP95
            | BuiltinCheck::TokensPerSecond,
        ) => inconclusive("no fresh telemetry with requests from the candidate yet"),
        Some(BuiltinCheck::OutputAgreement) => {
            let compared = stable.shadow_agree + stable.shadow_disagree + stable.shadow_error;
            if compared == 0 {
                return inconclusive("no mirrored request compared yet");
            }
            // A mirror that failed is not an agreement.
            judge(check, stable.shadow_agree as f64 / compared as f64, None)
        }
        None => inconclusive("not a built-in check"),
    }
}

/// Generated tokens per second per fresh pod: comparable across revisions when the traffic split
/// follows the replica split (a canary's weight matches its share of replicas).
fn tokens_per_replica(a: &Aggregate) -> f64 {
    a.generated_tokens_rate / f64::from(a.fresh_pods.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(yaml: &str) -> AnalysisCheck {
        serde_yaml::from_str(yaml).expect("check fixture")
    }

    fn serving(requests: f64, errors: f64, p95: f64) -> Aggregate {
        Aggregate {
            fresh_pods: 2,
            request_rate: requests,
            error_rate: errors,
            latency_p95: p95,
            ..Default::default()
        }
    }

    #[test]
    fn error_rate_against_its_max() {
        let c = check("{builtin: errorRate, max: 0.01}");
        let good = evaluate_builtin(&c, &serving(100.0, 0.5, 0.1), &Aggregate::default());
        assert_eq!(
            good,
            CheckOutcome::Passed {
                check: "errorRate".into(),
                value: 0.005
            }
        );
        let bad = evaluate_builtin(&c, &serving(100.0, 20.0, 0.1), &Aggregate::default());
        assert_eq!(
            bad,
            CheckOutcome::Failed {
                check: "errorRate".into(),
                value: 0.2,
                threshold: "max 0.01".into()
            }
        );
    }

    #[test]
    fn latency_ratio_to_stable() {
        let c = check("{builtin: p95Latency, maxRatioToStable: 1.2}");
        let stable = serving(100.0, 0.0, 0.1);
        assert!(matches!(
            evaluate_builtin(&c, &serving(10.0, 0.0, 0.11), &stable),
            CheckOutcome::Passed { .. }
        ));
        let CheckOutcome::Failed { threshold, .. } = evaluate_builtin(&c, &serving(10.0, 0.0, 0.2), &stable)
        else {
            panic!("0.2 s is more than 1.2 x 0.1 s")
        };
        assert!(threshold.contains("maxRatioToStable 1.2"), "{threshold}");
        assert!(matches!(
            evaluate_builtin(&c, &serving(10.0, 0.0, 0.2), &Aggregate::default()),
            CheckOutcome::Inconclusive { .. }
        ));
    }

    #[test]
    fn output_agreement_is_read_from_the_stable_pods_and_failed_mirrors_count_against_it() {
        let c = check("{builtin: outputAgreement, min: 0.98}");
        let stable = |agree, disagree, error| Aggregate {
            shadow_agree: agree,
            shadow_disagree: disagree,
            shadow_error: error,
            ..Default::default()
        };
        let candidate = Aggregate::default();
        assert!(matches!(
            evaluate_builtin(&c, &candidate, &stable(990, 5, 5)),
            CheckOutcome::Passed { .. }
        ));
        assert!(matches!(
            evaluate_builtin(&c, &candidate, &stable(900, 0, 100)),
            CheckOutcome::Failed { .. }
        ));
        assert!(matches!(
            evaluate_builtin(&c, &candidate, &stable(0, 0, 0)),
            CheckOutcome::Inconclusive { .. }
        ));
    }

    fn generating(pods: u32, tokens_per_second: f64, ttft: f64) -> Aggregate {
        Aggregate {
            fresh_pods: pods,
            request_rate: 1.0,
            generated_tokens_rate: tokens_per_second,
            ttft_p95: ttft,
            ..Default::default()
        }
    }

    #[test]
    fn ttft_against_its_max_and_the_stable_revision() {
        let c = check("{builtin: ttftP95, max: 0.5, maxRatioToStable: 1.5}");
        let stable = generating(4, 400.0, 0.2);
        assert!(matches!(
            evaluate_builtin(&c, &generating(1, 100.0, 0.25), &stable),
            CheckOutcome::Passed { .. }
        ));
        let CheckOutcome::Failed { check, threshold, .. } =
            evaluate_builtin(&c, &generating(1, 100.0, 0.4), &stable)
        else {
            panic!("0.4 s is more than 1.5 x 0.2 s")
        };
        assert_eq!(check, "ttftP95");
        assert!(threshold.contains("maxRatioToStable 1.5"), "{threshold}");
        assert!(matches!(
            evaluate_builtin(&c, &generating(1, 100.0, 0.6), &stable),
            CheckOutcome::Failed { threshold, .. } if threshold == "max 0.5"
        ));
    }

    #[test]
    fn tokens_per_second_per_replica_has_a_lower_bound_against_stable() {
        let c = check("{builtin: tokensPerSecond, minRatioToStable: 0.9}");
        // Stable: 400 tokens/s over 4 pods = 100 per replica.
        let stable = generating(4, 400.0, 0.2);
        assert!(matches!(
            evaluate_builtin(&c, &generating(1, 95.0, 0.2), &stable),
            CheckOutcome::Passed { value, .. } if value == 95.0
        ));
        let CheckOutcome::Failed { value, threshold, .. } =
            evaluate_builtin(&c, &generating(2, 120.0, 0.2), &stable)
        else {
            panic!("60 tokens/s per replica is under 0.9 x 100")
        };
        assert_eq!(value, 60.0);
        assert!(
            threshold.contains("minRatioToStable 0.9 (stable 100)"),
            "{threshold}"
        );
        assert!(matches!(
            evaluate_builtin(&c, &generating(1, 95.0, 0.2), &Aggregate::default()),
            CheckOutcome::Inconclusive { .. }
        ));
    }

    #[test]
    fn no_requests_or_no_telemetry_is_inconclusive_not_a_pass() {
        let c = check("{name: errors, builtin: errorRate, max: 0.01}");
        for candidate in [Aggregate::default(), serving(0.0, 0.0, 0.0)] {
            let outcome = evaluate_builtin(&c, &candidate, &Aggregate::default());
            assert!(
                matches!(&outcome, CheckOutcome::Inconclusive { check, .. } if check == "errors"),
                "{outcome:?}"
            );
        }
    }
}
