//! Every example manifest is a valid ModelDeployment, for both validators.

mod common;

use modelfleet_crds::{manifest::model_deployments_from_yaml, validate};

const EXPECTED: [&str; 8] = [
    "canary.yaml",
    "external-hpa.yaml",
    "gateway-canary.yaml",
    "generation.yaml",
    "gpu-autoscaled.yaml",
    "minimal.yaml",
    "shadow-then-canary.yaml",
    "upstream-llama-cpp.yaml",
];

#[test]
fn the_documented_examples_exist() {
    let names: Vec<String> = common::examples().into_iter().map(|(n, _)| n).collect();
    for name in EXPECTED {
        assert!(names.iter().any(|n| n == name), "examples/{name} is missing");
    }
}

#[test]
fn every_example_deserializes_and_validates() {
    for (name, text) in common::examples() {
        let found = model_deployments_from_yaml(&text).unwrap_or_else(|e| panic!("examples/{name}: {e}"));
        assert_eq!(found.len(), 1, "examples/{name} holds one ModelDeployment");
        validate(&found[0].spec).unwrap_or_else(|e| panic!("examples/{name}: {e}"));
    }
}

#[test]
fn every_example_passes_the_crd_cel_rules() {
    for (name, text) in common::examples() {
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            if value["kind"] == "ModelDeployment" {
                let violations = common::cel_violations(&value);
                assert!(violations.is_empty(), "examples/{name}: {violations:?}");
            }
        }
    }
}

#[test]
fn every_example_is_commented_for_a_reader() {
    for (name, text) in common::examples() {
        let comments = text
            .lines()
            .filter(|l| l.trim_start().starts_with('#') || l.contains(" # "))
            .count();
        assert!(
            comments >= 3,
            "examples/{name} needs comments explaining it ({comments} found)"
        );
    }
}
