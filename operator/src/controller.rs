//! The ModelDeployment controller: watches, shared context, error policy, and the leader loop.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::StreamExt;
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller,
        controller::{Action, Config as ControllerConfig},
        events::{Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use modelfleet_crds::{ModelDeployment, constants::labels};

use crate::{
    Error, OperatorConfig,
    http::HttpState,
    leader::{LeaderElector, LeaseConfig},
    metrics::Metrics,
    reconcile,
};

/// What every reconcile shares.
pub struct Context {
    /// API client.
    pub client: Client,
    /// The one Event recorder (it aggregates repeated Events).
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Settings.
    pub config: OperatorConfig,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn error_policy(md: Arc<ModelDeployment>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(name = %md.name_any(), category = error.category(), error = %error, "reconcile failed");
    Action::requeue(Duration::from_secs(5))
}

/// Runs the controller until `shutdown` completes.
pub async fn run_controller(ctx: Arc<Context>, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = ctx.client.clone();
    let owned =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE));
    let pods = watcher::Config::default().labels(labels::DEPLOYMENT);
    Controller::new(
        Api::<ModelDeployment>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Deployment>::all(client.clone()), owned.clone())
    .owns(Api::<Service>::all(client.clone()), owned.clone())
    .owns(Api::<ConfigMap>::all(client.clone()), owned.clone())
    .owns(Api::<PodDisruptionBudget>::all(client.clone()), owned)
    // Pods belong to ReplicaSets; map them to their ModelDeployment by label so scheduling
    // failures and crash loops show up in status promptly.
    .watches(Api::<Pod>::all(client), pods, |pod: Pod| {
        let name = pod.labels().get(labels::DEPLOYMENT)?.clone();
        Some(ObjectRef::<ModelDeployment>::new(&name).within(&pod.namespace()?))
    })
    .with_config(ControllerConfig::default().concurrency(ctx.config.concurrency))
    .graceful_shutdown_on(shutdown)
    .run(reconcile::reconcile, error_policy, ctx)
    .for_each(|result| async move {
        if let Err(e) = result {
            tracing::debug!(error = %e, "controller event");
        }
    })
    .await;
}

/// Runs the operator: leader election, then the controller while leading. Returns when `stop`
/// fires (after releasing the Lease) or with an error when the Lease cannot be handled.
pub async fn run(
    client: Client,
    config: OperatorConfig,
    http: HttpState,
    stop: impl Future<Output = ()> + Send + 'static,
) -> crate::Result<()> {
    let identity = config.identity.clone().unwrap_or_else(default_identity);
    let mut elector = LeaderElector::new(
        client.clone(),
        LeaseConfig {
            namespace: config.lease_namespace.clone(),
            name: config.lease_name.clone(),
            identity: identity.clone(),
            duration: config.lease_duration,
            retry: config.lease_retry,
        },
    );
    let reporter = Reporter {
        controller: "modelfleet-operator".into(),
        instance: Some(identity),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics: http.metrics.clone(),
        config,
    });
    http.ready.store(true, Ordering::Relaxed);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        stop.await;
        let _ = stop_tx.send(true);
    });
    loop {
        let mut stopped = stop_rx.clone();
        tokio::select! {
            r = elector.acquire() => r?,
            _ = stopped.wait_for(|s| *s) => return Ok(()),
        }
        ctx.metrics.leader.set(1);
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let mut stopped = stop_rx.clone();
        let controller = tokio::spawn(run_controller(ctx.clone(), async move {
            tokio::select! {
                _ = lost_rx => {},
                _ = stopped.wait_for(|s| *s) => {},
            }
        }));
        let mut stopped = stop_rx.clone();
        let outcome = tokio::select! {
            r = elector.hold() => r.map(|()| false),
            _ = stopped.wait_for(|s| *s) => Ok(true),
        };
        let _ = lost_tx.send(());
        let _ = controller.await;
        ctx.metrics.leader.set(0);
        match outcome {
            Ok(true) => {
                elector.release().await;
                return Ok(());
            }
            Ok(false) => tracing::warn!("lost the leader lease; waiting to reacquire it"),
            Err(e) => return Err(e),
        }
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}
