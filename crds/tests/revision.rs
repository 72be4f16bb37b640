//! The revision hash changes exactly when the serving pods would change.

use modelfleet_crds::{
    ModelDeploymentSpec,
    revision::{REVISION_HASH_LEN, revision_hash},
    v1alpha1::{ScalingSpec, ScalingTargets},
};

const DEFAULT_IMAGE: &str = "ghcr.io/modelfleet/server:0.1.0";

fn spec() -> ModelDeploymentSpec {
    serde_yaml::from_str(
        r#"
model: {name: all-MiniLM-L6-v2, version: "1", uri: "hf://sentence-transformers/all-MiniLM-L6-v2"}
resources: {gpus: 1, cpu: "4", memory: 16Gi}
batching: {maxBatchSize: 64, tiers: [{name: paid, timeout: 2s}]}
"#,
    )
    .expect("the fixture parses")
}

fn hash(s: &ModelDeploymentSpec) -> String {
    revision_hash(s, DEFAULT_IMAGE)
}

#[test]
fn is_short_lowercase_hex_and_pinned() {
    let h = hash(&spec());
    assert_eq!(h.len(), REVISION_HASH_LEN);
    assert!(
        h.chars()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()),
        "{h}"
    );
    // Pinned: a different value here means every running ModelDeployment would roll out after an
    // operator upgrade. Change it only together with the hash format version.
    assert_eq!(h, PINNED_HASH);
}

const PINNED_HASH: &str = "ba86f9eb02";

#[test]
fn ignores_replicas_scaling_rollout_and_traffic() {
    let base = hash(&spec());
    let mut s = spec();
    s.replicas = 7;
    s.scaling = Some(ScalingSpec::new(
        2,
        9,
        ScalingTargets {
            queue_depth_per_replica: Some(16.0),
            ..Default::default()
        },
    ));
    s.rollout = Some(serde_yaml::from_str("steps: [{canary: {weight: 10, duration: 5m}}]").unwrap());
    s.traffic = Some(serde_yaml::from_str("gateway: {parentRefs: [{name: gw}]}").unwrap());
    assert_eq!(hash(&s), base);
}

#[test]
fn ignores_how_defaults_and_durations_are_written() {
    let explicit: ModelDeploymentSpec = serde_yaml::from_str(
        r#"
model: {name: all-MiniLM-L6-v2, version: "1", uri: "hf://sentence-transformers/all-MiniLM-L6-v2", task: embedding}
runtime: {backend: candle, device: cuda}
resources: {gpus: 1, cpu: "4", memory: 16Gi}
replicas: 3
batching: {maxBatchSize: 64, maxBatchTokens: 16384, maxQueueDelay: 5ms, maxQueueSize: 1024, tiers: [{name: paid, timeout: 2000ms}]}
"#,
    )
    .unwrap();
    assert_eq!(hash(&explicit), hash(&spec()));
}

#[test]
fn changes_with_model_version_image_and_resources() {
    let base = hash(&spec());
    type Change = Box<dyn Fn(&mut ModelDeploymentSpec)>;
    let changes: Vec<(&str, Change)> = vec![
        ("model version", Box::new(|s| s.model.version = "2".into())),
        (
            "model uri",
            Box::new(|s| s.model.uri = "s3://bucket/minilm".into()),
        ),
        (
            "image",
            Box::new(|s| s.runtime.image = Some("ghcr.io/modelfleet/server:0.2.0".into())),
        ),
        ("gpus", Box::new(|s| s.resources.gpus = 2)),
        (
            "gpu product",
            Box::new(|s| s.resources.gpu_product = Some("NVIDIA-A100-SXM4-80GB".into())),
        ),
        (
            "memory",
            Box::new(|s| {
                s.resources.memory = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
                    "32Gi".into(),
                ))
            }),
        ),
        ("batch size", Box::new(|s| s.batching.max_batch_size = 32)),
        (
            "env",
            Box::new(|s| {
                s.runtime.env.push(k8s_openapi::api::core::v1::EnvVar {
                    name: "RUST_LOG".into(),
                    value: Some("debug".into()),
                    ..Default::default()
                })
            }),
        ),
    ];
    for (what, change) in changes {
        let mut s = spec();
        change(&mut s);
        assert_ne!(hash(&s), base, "a change of {what} must create a new revision");
    }
}

#[test]
fn the_default_image_counts_only_when_no_image_is_set() {
    let s = spec();
    assert_ne!(revision_hash(&s, "server:a"), revision_hash(&s, "server:b"));
    let mut pinned = spec();
    pinned.runtime.image = Some("mine:1".into());
    assert_eq!(
        revision_hash(&pinned, "server:a"),
        revision_hash(&pinned, "server:b")
    );
}
