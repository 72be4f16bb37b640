//! The Argo CD health check in docs/argocd/ (Lua) maps ModelDeployment status to Argo CD health,
//! run here in a real Lua 5.4 interpreter.

use mlua::{Lua, LuaSerdeExt};
use serde_json::{Value, json};

fn health(obj: Value) -> (String, String) {
    let script = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/argocd/modeldeployment-health.lua"
    ))
    .expect("the health check");
    let lua = Lua::new();
    let value = lua.to_value(&obj).expect("object converts to Lua");
    lua.globals().set("obj", value).expect("set obj");
    let hs: mlua::Table = lua.load(&script).eval().expect("the script runs");
    (
        hs.get("status").expect("status"),
        hs.get("message").expect("message"),
    )
}

fn md(generation: i64, observed: Option<i64>, conditions: Value) -> Value {
    json!({
        "metadata": {"name": "m", "generation": generation},
        "spec": {"rollout": {"paused": false}},
        "status": {"observedGeneration": observed, "conditions": conditions}
    })
}

fn cond(t: &str, s: &str, reason: &str, message: &str) -> Value {
    json!({"type": t, "status": s, "reason": reason, "message": message})
}

#[test]
fn available_and_settled_is_healthy() {
    let obj = md(
        3,
        Some(3),
        json!([
            cond("Available", "True", "AllReplicasReady", "2/2 ready"),
            cond("Progressing", "False", "Complete", ""),
            cond("Degraded", "False", "AsExpected", "")
        ]),
    );
    assert_eq!(health(obj), ("Healthy".into(), "2/2 ready".into()));
}

#[test]
fn no_status_or_an_old_generation_is_progressing() {
    assert_eq!(health(json!({"metadata": {"generation": 1}})).0, "Progressing");
    let obj = md(
        4,
        Some(3),
        json!([cond("Available", "True", "AllReplicasReady", "")]),
    );
    let (status, message) = health(obj);
    assert_eq!(status, "Progressing");
    assert!(message.contains("generation 4"), "{message}");
}

#[test]
fn degraded_wins_and_carries_the_reason() {
    let obj = md(
        2,
        Some(2),
        json!([
            cond("Available", "True", "AllReplicasReady", ""),
            cond(
                "Degraded",
                "True",
                "InsufficientGPU",
                "1 of 2 replicas cannot be scheduled"
            )
        ]),
    );
    assert_eq!(
        health(obj),
        (
            "Degraded".into(),
            "InsufficientGPU: 1 of 2 replicas cannot be scheduled".into()
        )
    );
    let invalid = md(
        2,
        Some(2),
        json!([cond(
            "Degraded",
            "True",
            "InvalidSpec",
            "spec.scaling.minReplicas must be …"
        )]),
    );
    assert_eq!(health(invalid).0, "Degraded");
}

#[test]
fn a_rollout_in_flight_is_progressing_and_a_paused_one_suspended() {
    let rolling = md(
        2,
        Some(2),
        json!([
            cond(
                "Available",
                "False",
                "RevisionRollingOut",
                "revision b has 1/2 ready replicas"
            ),
            cond("Progressing", "True", "NewRevision", "")
        ]),
    );
    assert_eq!(
        health(rolling),
        ("Progressing".into(), "revision b has 1/2 ready replicas".into())
    );
    let mut paused = md(
        2,
        Some(2),
        json!([cond("Available", "False", "RevisionRollingOut", "")]),
    );
    paused["spec"]["rollout"]["paused"] = json!(true);
    assert_eq!(health(paused).0, "Suspended");
}
