//! The decision loop: every tick, for each ModelDeployment with `spec.scaling`, turn the
//! telemetry and the watch caches into an [`Observation`], ask the [`Autoscaler`], and publish
//! the outcome in [`Decisions`]. The reconcile is the single writer: it reads the decided count
//! as its replica source, splits it over the revisions as the plan says, and writes the child
//! Deployments and `status.autoscaling`. The loop only asks for that reconcile when something a
//! user would see changed (the count, a condition, the history) or, for the metric values,
//! every [`STATUS_REFRESH`]. It also asks for the reconcile of any ModelDeployment whose
//! `status.routing` the routers' reports would refresh.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use k8s_openapi::jiff::Timestamp;
use kube::{
    ResourceExt,
    runtime::reflector::{ObjectRef, Store},
};
use modelfleet_crds::{ModelDeployment, validate};
use modelfleet_operator_core::{
    autoscale::{FleetView, Memory, Outcome, evaluate},
    diagnose,
};
use tokio::sync::mpsc;

use crate::{cache, metrics::Metrics, telemetry::TelemetryStore};

/// How often `status.autoscaling.currentMetrics` is refreshed when nothing else changed.
pub const STATUS_REFRESH: Duration = Duration::from_secs(30);

/// The ModelDeployment's uid: a deleted and re-created object of the same name starts afresh.
type Key = String;

/// The latest outcome per ModelDeployment, shared by the loop (writer) and the reconcile.
#[derive(Debug, Clone, Default)]
pub struct Decisions {
    inner: Arc<RwLock<HashMap<Key, Outcome>>>,
}

impl Decisions {
    /// The outcome for the ModelDeployment with this uid, if the loop has decided one.
    pub fn get(&self, uid: &str) -> Option<Outcome> {
        self.inner.read().ok()?.get(uid).cloned()
    }

    fn set(&self, key: Key, outcome: Outcome) {
        if let Ok(mut m) = self.inner.write() {
            m.insert(key, outcome);
        }
    }

    fn retain(&self, keep: impl Fn(&Key) -> bool) {
        if let Ok(mut m) = self.inner.write() {
            m.retain(|k, _| keep(k));
        }
    }
}

/// One ModelDeployment's memory in the loop: the autoscaler's, and what was last published.
#[derive(Debug)]
struct Tracked {
    memory: Memory,
    published: Option<(Instant, Outcome)>,
}

/// Everything the loop reads and where it publishes.
#[derive(Debug, Clone)]
pub struct LoopContext {
    /// ModelDeployments (the controller's cache).
    pub model_deployments: Store<ModelDeployment>,
    /// The children of every ModelDeployment.
    pub children: cache::Index,
    /// Node agents' telemetry.
    pub telemetry: TelemetryStore,
    /// Where outcomes go.
    pub decisions: Decisions,
    /// Asks the controller to reconcile one object.
    pub trigger: mpsc::Sender<ObjectRef<ModelDeployment>>,
    /// Metrics.
    pub metrics: Metrics,
    /// Tick.
    pub interval: Duration,
}

/// Runs the loop until `shutdown` completes.
pub async fn run(ctx: LoopContext, shutdown: impl std::future::Future<Output = ()>) {
    let mut tracked: HashMap<Key, Tracked> = HashMap::new();
    let mut ticker = tokio::time::interval(ctx.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            () = &mut shutdown => return,
        }
        let started = Instant::now();
        for md in tick(&ctx, &mut tracked, started, Timestamp::now()) {
            if ctx.trigger.send(md).await.is_err() {
                return;
            }
        }
        ctx.telemetry.forget_old(started);
        ctx.metrics
            .autoscaler_tick
            .observe(started.elapsed().as_secs_f64());
    }
}

/// One pass over every ModelDeployment; returns those whose outcome needs writing.
fn tick(
    ctx: &LoopContext,
    tracked: &mut HashMap<Key, Tracked>,
    now: Instant,
    wall: Timestamp,
) -> Vec<ObjectRef<ModelDeployment>> {
    let mut due = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for md in ctx.model_deployments.state() {
        // Routers report it and status.routing is due a refresh: reconcile, scaled or not.
        if md
            .namespace()
            .is_some_and(|ns| ctx.telemetry.routing_due(&ns, &md.name_any(), now))
        {
            due.push(ObjectRef::from_obj(md.as_ref()));
        }
        let (Some(namespace), Some(scaling), Some(key)) =
            (md.namespace(), md.spec.scaling.as_ref(), md.uid())
        else {
            continue;
        };
        // An invalid spec is reported by the reconcile and left alone here.
        if validate(&md.spec).is_err() {
            continue;
        }
        seen.insert(key.clone());
        let entry = tracked.entry(key.clone()).or_insert_with(|| Tracked {
            memory: Memory::resume(&md, scaling),
            published: None,
        });
        let view = fleet_view(ctx, &md, &key, &namespace, now);
        let evaluation = evaluate(scaling, &mut entry.memory, &view, now, wall);
        if let Some(reason) = evaluation.changed {
            ctx.metrics.autoscaler_decision(reason.as_str());
        }
        let outcome = evaluation.outcome;
        let urgent = entry
            .published
            .as_ref()
            .is_none_or(|(_, p)| p.shape() != outcome.shape());
        let refresh = entry
            .published
            .as_ref()
            .is_some_and(|(at, p)| *p != outcome && now.duration_since(*at) >= STATUS_REFRESH);
        ctx.decisions.set(key, outcome.clone());
        if urgent || refresh {
            entry.published = Some((now, outcome));
            due.push(ObjectRef::from_obj(md.as_ref()));
        }
    }
    tracked.retain(|k, _| seen.contains(k));
    ctx.decisions.retain(|k| seen.contains(k));
    due
}

/// What the loop sees of one ModelDeployment's fleet.
fn fleet_view(
    ctx: &LoopContext,
    md: &ModelDeployment,
    uid: &str,
    namespace: &str,
    now: Instant,
) -> FleetView {
    let name = md.name_any();
    let observed = ctx.children.observe(uid, namespace, &name);
    FleetView {
        ready: observed
            .revisions
            .iter()
            .map(|r| r.ready_replicas.max(0) as u32)
            .sum(),
        telemetry: ctx.telemetry.aggregate(namespace, &name, None, now),
        pods_short_of_gpu: diagnose::pods_short_of_gpu(&observed.pods),
        gpus_per_replica: md.spec.resources.gpus,
        last_request: last_request(md),
    }
}

/// The router's `modelfleet.dev/last-request`; an unreadable value counts as none (the model
/// then neither wakes on it nor idles from it).
fn last_request(md: &ModelDeployment) -> Option<Timestamp> {
    md.annotations()
        .get(modelfleet_crds::constants::annotations::LAST_REQUEST)?
        .parse()
        .ok()
}
