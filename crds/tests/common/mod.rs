//! Helpers shared by the crds integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use kube::{CustomResourceExt, core::cel};
use modelfleet_crds::ModelDeployment;
use serde_json::Value;

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `examples/*.yaml` with its text.
pub fn examples() -> Vec<(String, String)> {
    let dir = std::fs::read_dir(repo_root().join("examples")).expect("examples/ is readable");
    let mut out: Vec<_> = dir
        .map(|e| e.expect("examples/ entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("example is readable");
            (
                p.file_name().unwrap_or_default().to_string_lossy().into_owned(),
                text,
            )
        })
        .collect();
    out.sort();
    out
}

/// The CRD's openAPIV3Schema as JSON.
pub fn crd_schema() -> Value {
    let crd = ModelDeployment::crd();
    let schema = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref());
    serde_json::to_value(schema.expect("the CRD has a schema")).expect("the schema serializes")
}

/// What the API server's CEL admission would report for `object` (defaults applied first, as the
/// API server does): `(field path, message)` pairs. Panics if a rule cannot be evaluated, so an
/// unsupported or mistyped CEL expression fails the tests instead of passing silently.
pub fn cel_violations(object: &Value) -> Vec<(String, String)> {
    let Err(errors) = cel::Validator::new().validate(&crd_schema(), object, None) else {
        return Vec::new();
    };
    errors
        .into_vec()
        .into_iter()
        .map(|e| {
            assert_eq!(
                e.kind,
                cel::ErrorKind::ValidationFailure,
                "rule `{}` did not evaluate: {}",
                e.rule,
                e.message
            );
            (e.field_path, e.message)
        })
        .collect()
}
