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

#[test]
fn rollout_phases_map_to_progressing_suspended_and_degraded() {
    let step = md(
        5,
        Some(5),
        json!([
            cond(
                "Available",
                "False",
                "RolloutInProgress",
                "version 2 is at step 2/3"
            ),
            cond(
                "Progressing",
                "True",
                "RolloutStep",
                "version 2 is at step 2/3: weight 10%"
            ),
            cond("Degraded", "False", "AsExpected", ""),
            cond("Paused", "False", "Running", "the rollout advances")
        ]),
    );
    let (status, message) = health(step);
    assert_eq!(status, "Progressing");
    assert!(message.contains("step 2/3"), "{message}");

    for reason in ["AnalysisInconclusive", "RolloutPaused"] {
        let held = md(
            5,
            Some(5),
            json!([
                cond("Available", "False", "RolloutInProgress", ""),
                cond("Progressing", "True", reason, ""),
                cond("Degraded", "False", "AsExpected", ""),
                cond("Paused", "True", reason, "prometheus: did not answer")
            ]),
        );
        let (status, message) = health(held);
        assert_eq!(status, "Suspended", "{reason}");
        assert!(message.starts_with(reason), "{message}");
    }

    let rolled_back = md(
        5,
        Some(5),
        json!([
            cond("Available", "False", "RolledBack", ""),
            cond("Progressing", "False", "RolledBack", ""),
            cond(
                "Degraded",
                "True",
                "AnalysisFailed",
                "check errorRate failed 2 times in a row: value 0.2 against max 0.01"
            ),
            cond("Paused", "False", "Running", "")
        ]),
    );
    let (status, message) = health(rolled_back);
    assert_eq!(status, "Degraded");
    assert!(
        message.contains("AnalysisFailed") && message.contains("errorRate"),
        "{message}"
    );
}
