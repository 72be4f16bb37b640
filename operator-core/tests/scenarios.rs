//! The core's behaviours as fixtures: each `tests/scenarios/<name>.yaml` holds a ModelDeployment
//! spec, the status the previous reconcile recorded, what the caches observe, the clock, the
//! control annotations, the analysis run and (for autoscaling) the decision loop's ticks; the
//! runner makes the decision and compares it with `<name>.decision.yaml`
//! (`UPDATE_GOLDEN=1 cargo test -p modelfleet-operator-core --test scenarios` rewrites those),
//! then checks the scenario's `expect` block, the facts a user would notice.
//!
//! `$current` in a fixture stands for the revision the spec asks for (its hash).

use std::{
    collections::BTreeMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use modelfleet_crds::{ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus, revision::revision_hash};
use modelfleet_operator_core::{
    Controls, Decision, Snapshot,
    autoscale::{self, FleetView, Memory, Outcome},
    decide,
    observed::Observed,
    rollout::machine::CheckOutcome,
};
use serde::{Deserialize, Serialize};

const IMAGE: &str = "ghcr.io/modelfleet/server:test";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Scenario {
    /// What the scenario shows (for people; unused).
    #[allow(dead_code)]
    about: String,
    spec: ModelDeploymentSpec,
    #[serde(default)]
    status: Option<ModelDeploymentStatus>,
    #[serde(default)]
    observed: Observed,
    now: Timestamp,
    #[serde(default)]
    controls: Controls,
    #[serde(default)]
    analysis: Option<Vec<CheckOutcome>>,
    /// The autoscaler's ticks before this reconcile (seconds after the first, the fleet seen).
    #[serde(default)]
    ticks: Vec<Tick>,
    expect: Expect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Tick {
    at: u64,
    fleet: FleetView,
}

/// What a user would notice; every field set is checked.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Expect {
    /// Live traffic on the candidate, percent.
    weight: Option<i32>,
    /// Mirrored traffic, percent.
    mirror: Option<i32>,
    /// Replicas per revision.
    replicas: Option<BTreeMap<String, i32>>,
    /// `status.rollout.state`.
    state: Option<String>,
    /// `status.rollout.step`.
    step: Option<i32>,
    /// Condition type → reason.
    #[serde(default)]
    conditions: BTreeMap<String, String>,
    /// Event reasons, in order.
    events: Option<Vec<String>>,
    /// Total replicas the autoscaler decided.
    autoscaled: Option<i32>,
    /// Text the message of the named condition contains: type → text.
    #[serde(default)]
    messages: BTreeMap<String, String>,
}

/// The golden output: the decision and, with ticks, the autoscaler's outcome.
#[derive(Serialize)]
struct Golden<'a> {
    decision: &'a Decision,
    #[serde(skip_serializing_if = "Option::is_none")]
    autoscaler: Option<&'a Outcome>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/scenarios")
}

fn load(name: &str) -> (Scenario, String) {
    let text = std::fs::read_to_string(dir().join(format!("{name}.yaml"))).expect("scenario");
    let spec_only: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let spec: ModelDeploymentSpec = serde_yaml::from_value(spec_only["spec"].clone()).expect("spec");
    let current = revision_hash(&spec, IMAGE);
    let text = text.replace("$current", &current);
    let scenario = serde_path_to_error::deserialize(serde_yaml::Deserializer::from_str(&text))
        .unwrap_or_else(|e| panic!("{name}.yaml: {e}"));
    (scenario, current)
}

/// Runs the autoscaler's ticks (its memory resumed from the recorded status, as a new leader's).
fn autoscale(md: &ModelDeployment, ticks: &[Tick], now: Timestamp) -> Option<Outcome> {
    let scaling = md.spec.scaling.as_ref()?;
    let mut memory = Memory::resume(md, scaling);
    let base = Instant::now();
    let mut outcome = None;
    for tick in ticks {
        let evaluation = autoscale::evaluate(
            scaling,
            &mut memory,
            &tick.fleet,
            base + Duration::from_secs(tick.at),
            now,
        );
        outcome = Some(evaluation.outcome);
    }
    outcome
}

fn run(name: &str) {
    let (scenario, current) = load(name);
    let mut md = ModelDeployment::new("m", scenario.spec.clone());
    md.metadata.namespace = Some("default".into());
    md.metadata.generation = Some(1);
    md.status = scenario.status.clone();
    let outcome = autoscale(&md, &scenario.ticks, scenario.now);
    let snapshot = Snapshot {
        md: &md,
        observed: &scenario.observed,
        autoscaling: outcome.as_ref(),
        analysis: scenario.analysis.as_deref(),
        controls: scenario.controls,
        now: scenario.now,
        default_image: IMAGE,
        name_claims: &[],
    };
    let decision = decide(&snapshot);
    let golden = Golden {
        decision: &decision,
        autoscaler: outcome.as_ref(),
    };
    let yaml = serde_yaml::to_string(&golden)
        .expect("yaml")
        .replace(&current, "$current");
    let path = dir().join(format!("{name}.decision.yaml"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &yaml).expect("write golden");
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        yaml == expected,
        "{name}: the decision differs from {} (UPDATE_GOLDEN=1 rewrites it):\n{yaml}",
        path.display()
    );
    check(name, &scenario.expect, &decision, outcome.as_ref());
}

fn check(name: &str, expect: &Expect, d: &Decision, outcome: Option<&Outcome>) {
    let traffic = d.plan.traffic;
    let rollout = d.status.rollout.as_ref();
    let condition = |t: &str| d.status.conditions.iter().find(|c| c.type_ == t);
    if let Some(w) = expect.weight {
        assert_eq!(traffic.weight, w, "{name}: weight");
    }
    if let Some(m) = expect.mirror {
        assert_eq!(traffic.mirror, m, "{name}: mirror");
    }
    if let Some(replicas) = &expect.replicas {
        assert_eq!(&d.plan.replicas, replicas, "{name}: replicas per revision");
    }
    if let Some(state) = &expect.state {
        let got = rollout.map(|r| format!("{:?}", r.state));
        assert_eq!(
            got.as_deref(),
            Some(state.as_str()),
            "{name}: status.rollout.state"
        );
    }
    if let Some(step) = expect.step {
        assert_eq!(
            rollout.and_then(|r| r.step),
            Some(step),
            "{name}: status.rollout.step"
        );
    }
    for (t, reason) in &expect.conditions {
        assert_eq!(
            condition(t).map(|c| c.reason.as_str()),
            Some(reason.as_str()),
            "{name}: {t} reason"
        );
    }
    for (t, text) in &expect.messages {
        let message = condition(t).map(|c| c.message.clone()).unwrap_or_default();
        assert!(
            message.contains(text.as_str()),
            "{name}: {t} message {message:?} lacks {text:?}"
        );
    }
    if let Some(events) = &expect.events {
        let got: Vec<&str> = d.events.iter().map(|e| e.reason).collect();
        assert_eq!(got, *events, "{name}: events");
    }
    if let Some(n) = expect.autoscaled {
        assert_eq!(
            outcome.map(|o| o.replicas),
            Some(n),
            "{name}: autoscaled replicas"
        );
    }
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        $(#[test] fn $name() { run(&stringify!($name).replace('_', "-")); })*

        #[test]
        fn every_fixture_has_a_test() {
            let listed = [$(stringify!($name).replace('_', "-")),*];
            for entry in std::fs::read_dir(dir()).expect("scenarios dir").flatten() {
                let file = entry.file_name().to_string_lossy().to_string();
                if let Some(name) = file.strip_suffix(".yaml").filter(|n| !n.ends_with(".decision")) {
                    assert!(listed.contains(&name.to_string()), "{file} has no test in scenarios!()");
                }
            }
        }
    };
}

scenarios!(
    rollout_start,
    rollout_first_step_runs,
    rollout_advances_to_the_next_step,
    rollout_waits_for_the_next_steps_replicas,
    rollout_inconclusive_holds,
    rollout_paused_holds,
    rollout_promote_annotation,
    rollout_abort_annotation,
    rollout_analysis_fails_and_rolls_back,
    rollout_rolled_back_stays,
    rollout_grows_before_promotion,
    rollout_promotes_at_full_size,
    rollout_progress_deadline,
    rollout_spec_change_mid_rollout,
    autoscale_panic_scale_up,
    autoscale_stale_telemetry_holds,
    autoscale_gpu_exhaustion,
    autoscale_wakes_from_zero,
    autoscale_idles_to_zero,
    autoscale_idle_but_busy_keeps_one,
);
