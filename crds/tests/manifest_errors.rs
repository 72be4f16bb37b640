//! Bad manifests give errors that name the field, and nothing panics.

use modelfleet_crds::manifest::{ManifestError, model_deployments_from_yaml};

fn with_stable_window(value: &str) -> String {
    format!(
        r#"apiVersion: modelfleet.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: m}}
spec:
  model: {{name: m, version: "1", uri: "hf://org/m"}}
  scaling:
    maxReplicas: 3
    targets: {{queueDepthPerReplica: 8}}
    stableWindow: {value}
"#
    )
}

#[test]
fn malformed_durations_name_the_field() {
    for bad in ["'5 minutes'", "-1s", "''"] {
        let err = model_deployments_from_yaml(&with_stable_window(bad)).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, ManifestError::Field { .. }), "{text}");
        assert!(text.contains("spec.scaling.stableWindow"), "{bad}: {text}");
        assert!(text.contains("invalid duration"), "{bad}: {text}");
        assert!(text.contains("like 500ms, 30s, 5m or 1h30m"), "{bad}: {text}");
    }
    assert!(model_deployments_from_yaml(&with_stable_window("1h30m")).is_ok());
}

#[test]
fn wrong_types_and_rule_violations_name_the_field() {
    let text = with_stable_window("60s").replace("maxReplicas: 3", "maxReplicas: lots");
    let err = model_deployments_from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("spec.scaling.maxReplicas"), "{err}");

    let text = with_stable_window("60s").replace("maxReplicas: 3", "maxReplicas: 3\n    minReplicas: 5");
    let err = model_deployments_from_yaml(&text).unwrap_err().to_string();
    assert!(err.contains("document 1 (m)"), "{err}");
    assert!(
        err.contains("spec.scaling.minReplicas must be less than or equal to spec.scaling.maxReplicas"),
        "{err}"
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for text in [
        "{",
        "kind: ModelDeployment\nspec: 7",
        "kind: ModelDeployment\n",
        "\u{0}",
    ] {
        assert!(model_deployments_from_yaml(text).is_err(), "{text:?}");
    }
    assert_eq!(model_deployments_from_yaml("kind: ConfigMap\n").unwrap().len(), 0);
}
