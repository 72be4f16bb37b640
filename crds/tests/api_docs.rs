//! docs/api.md documents every field of the generated schema.

mod common;

use serde_json::Value;

/// Fields of standard Kubernetes types: docs/api.md links to the upstream reference for their sub-fields.
const KUBERNETES_TYPED: [&str; 3] = ["spec.runtime.env", "spec.runtime.resources", "status.conditions"];

fn field_paths(path: &str, schema: &Value, out: &mut Vec<String>) {
    let (props, prefix) = match schema.get("items") {
        Some(items) => (items.get("properties"), format!("{path}[]")),
        None => (schema.get("properties"), path.to_string()),
    };
    for (name, child) in props.and_then(Value::as_object).into_iter().flatten() {
        let p = format!("{prefix}.{name}");
        out.push(p.clone());
        if !KUBERNETES_TYPED.contains(&p.as_str()) {
            field_paths(&p, child, out);
        }
    }
}

#[test]
fn every_schema_field_is_in_docs_api_md() {
    let doc = std::fs::read_to_string(common::repo_root().join("docs/api.md")).unwrap();
    let schema = common::crd_schema();
    let mut paths = Vec::new();
    for top in ["spec", "status"] {
        field_paths(top, &schema["properties"][top], &mut paths);
    }
    assert!(paths.len() > 80, "the walk found only {} fields", paths.len());
    let missing: Vec<_> = paths
        .iter()
        .filter(|p| !doc.contains(&format!("| `{p}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/api.md lacks {missing:#?}; run `cargo run -p modelfleet-crds --bin crdgen`"
    );
}

#[test]
fn every_validation_message_is_in_docs_api_md() {
    let doc = std::fs::read_to_string(common::repo_root().join("docs/api.md")).unwrap();
    for rule in modelfleet_crds::rules::ALL {
        assert!(
            doc.contains(&rule.message.replace('|', "\\|")),
            "docs/api.md lacks «{}»",
            rule.message
        );
    }
}
