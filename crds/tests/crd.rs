//! The generated CRD: what the API server and kubectl users get from it.

mod common;

use kube::CustomResourceExt;
use modelfleet_crds::{ModelDeployment, rules};
use serde_json::Value;

fn version()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinitionVersion {
    ModelDeployment::crd().spec.versions.remove(0)
}

#[test]
fn names_scope_and_categories() {
    let crd = ModelDeployment::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("modeldeployments.modelfleet.dev")
    );
    assert_eq!(crd.spec.group, "modelfleet.dev");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(crd.spec.names.kind, "ModelDeployment");
    assert_eq!(crd.spec.names.short_names, Some(vec!["mdep".to_string()]));
    assert_eq!(crd.spec.names.categories, Some(vec!["modelfleet".to_string()]));
    let v = version();
    assert_eq!(v.name, "v1alpha1");
    assert!(v.served && v.storage);
}

#[test]
fn has_status_and_scale_subresources() {
    let sub = version().subresources.expect("subresources");
    assert!(sub.status.is_some(), "status subresource");
    let scale = sub.scale.expect("scale subresource");
    assert_eq!(scale.spec_replicas_path, ".spec.replicas");
    assert_eq!(scale.status_replicas_path, ".status.replicas");
    assert_eq!(scale.label_selector_path.as_deref(), Some(".status.selector"));
}

#[test]
fn has_the_six_printer_columns_in_order() {
    let columns = version().additional_printer_columns.expect("printer columns");
    let got: Vec<(String, String)> = columns
        .iter()
        .map(|c| (c.name.to_uppercase(), c.json_path.clone()))
        .collect();
    let want = [
        ("READY", ".status.ready"),
        ("STABLE", ".status.stable.version"),
        ("CANARY", ".status.canary"),
        ("WEIGHT", ".status.canaryWeight"),
        ("PHASE", ".status.phase"),
        ("AGE", ".metadata.creationTimestamp"),
    ];
    assert_eq!(got, want.map(|(n, p)| (n.to_string(), p.to_string())));
    assert!(
        columns.iter().all(|c| c.description.is_some()),
        "every column is described"
    );
}

#[test]
fn carries_every_cel_rule() {
    let schema = serde_json::to_string(&common::crd_schema()).unwrap();
    for rule in rules::ALL {
        let rule_json = serde_json::to_string(rule.rule).unwrap();
        let message_json = serde_json::to_string(rule.message).unwrap();
        assert!(schema.contains(&rule_json), "CRD lacks rule {}", rule.rule);
        assert!(
            schema.contains(&message_json),
            "CRD lacks message {}",
            rule.message
        );
    }
}

/// Every property below `spec` and `status` (including embedded Kubernetes types) has a description.
#[test]
fn every_field_has_a_description() {
    fn walk(path: &str, schema: &Value, missing: &mut Vec<String>) {
        if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let p = format!("{path}.{name}");
                let described = child
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.trim().is_empty());
                if !described {
                    missing.push(p.clone());
                }
                walk(&p, child, missing);
            }
        }
        if let Some(items) = schema.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let schema = common::crd_schema();
    let mut missing = Vec::new();
    for top in ["spec", "status"] {
        let s = &schema["properties"][top];
        assert!(s["description"].is_string(), "{top} has no description");
        walk(top, s, &mut missing);
    }
    assert!(missing.is_empty(), "fields without a description: {missing:#?}");
}

#[test]
fn committed_crd_matches_a_fresh_generation() {
    let committed = std::fs::read_to_string(
        common::repo_root().join("charts/modelfleet/crds/modeldeployments.modelfleet.dev.yaml"),
    )
    .expect("the generated CRD is committed");
    let fresh = serde_yaml::to_string(&ModelDeployment::crd()).unwrap();
    assert!(
        committed.ends_with(&fresh),
        "charts/modelfleet/crds/modeldeployments.modelfleet.dev.yaml is stale: run `cargo run -p modelfleet-crds --bin crdgen`"
    );
}
