//! The ModelDeployment controller: watches, shared context, error policy, and the leader loop.

use std::{
    future::Future,
    sync::{Arc, atomic::Ordering},
};

use futures::{Stream, StreamExt};
use k8s_openapi::api::{
    apps::v1::Deployment,
    core::v1::{ConfigMap, Pod, Service},
    policy::v1::PodDisruptionBudget,
};
use kube::{
    Api, Client, ResourceExt,
    runtime::{
        Controller, Predicate, WatchStreamExt,
        controller::{Action, Config as ControllerConfig},
        events::{Recorder, Reporter},
        predicates,
        reflector::{self, ObjectRef, Store},
        watcher::{self, watcher},
    },
};
use modelfleet_crds::{ModelDeployment, constants::labels};
use serde::de::DeserializeOwned;

use crate::{
    Error, OperatorConfig,
    autoscaler::{Decisions, control},
    backoff::Failures,
    cache::{Child, Index},
    context::Context,
    http::HttpState,
    leader::{LeaderElector, LeaseConfig},
    memory::Written,
    metrics::Metrics,
    reconcile,
    telemetry::{Authenticator, Hub, TelemetryStore},
};

/// Retries a failed reconcile after a backoff that doubles per failure in a row, slower for a
/// failure that will repeat (see [`Retry`](crate::Retry)).
pub fn error_policy(md: Arc<ModelDeployment>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.failures.fail(&md.uid().unwrap_or_default());
    let retry = error.retry();
    let delay = retry.delay(failures);
    tracing::warn!(
        name = %md.name_any(), category = error.category(), ?retry, failures,
        retry_in_s = delay.as_secs(), error = %error, "reconcile failed"
    );
    Action::requeue(delay)
}

/// Forgets a deleted ModelDeployment at once, and after a relist (which reports no deletes)
/// every one the cache no longer holds.
fn evict_deleted(ctx: &Context, cache: &Store<ModelDeployment>, event: &watcher::Event<ModelDeployment>) {
    match event {
        watcher::Event::Delete(md) => {
            let uid = md.uid().unwrap_or_default();
            ctx.retain(|live| live != uid);
        }
        watcher::Event::InitDone => {
            let live: std::collections::HashSet<String> =
                cache.state().iter().filter_map(|md| md.uid()).collect();
            ctx.retain(|uid| live.contains(uid));
        }
        _ => {}
    }
}

/// A watch that keeps `index` (managedFields dropped to save memory) and passes on the objects.
fn indexed<K>(
    api: Api<K>,
    config: watcher::Config,
    index: Index,
) -> impl Stream<Item = Result<K, watcher::Error>> + Send
where
    K: Child + DeserializeOwned + std::fmt::Debug,
{
    watcher(api, config)
        .default_backoff()
        .modify(|o| o.managed_fields_mut().clear())
        .inspect(move |event| {
            if let Ok(event) = event {
                index.apply(event);
            }
        })
        .applied_objects()
}

/// Everything a controller needs besides its watches.
#[derive(Clone)]
struct Base {
    client: Client,
    recorder: Recorder,
    metrics: Metrics,
    config: OperatorConfig,
    telemetry: TelemetryStore,
}

/// Starts the autoscaler's loop once the children's caches are warm; it stops when the returned
/// sender fires (or is dropped). It does not wait on the ModelDeployment cache: kube-runtime
/// 5.0's `Store::wait_until_ready` wakes only one of several waiters and the controller waits on
/// that store too (a lost wake-up left the loop idle for good). A cold ModelDeployment cache
/// only means no work yet.
fn spawn_autoscaler(
    autoscaler: control::LoopContext,
    children: Index,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        let stop = async move {
            let _ = stop_rx.await;
        };
        tokio::pin!(stop);
        tokio::select! {
            ready = children.ready() => {
                if ready.is_ok() {
                    control::run(autoscaler, stop).await;
                }
            }
            () = &mut stop => {}
        }
    });
    (stop_tx, handle)
}

/// The ModelDeployment watch: fills the cache, forgets deleted objects, and passes on the events
/// that call for a reconcile. Status writes bump neither generation nor annotations, so they do
/// not retrigger reconciles.
fn model_deployment_events(
    client: Client,
    writer: reflector::store::Writer<ModelDeployment>,
    cache: Store<ModelDeployment>,
    ctx: Arc<Context>,
) -> impl Stream<Item = Result<ModelDeployment, watcher::Error>> + Send {
    watcher(Api::<ModelDeployment>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .inspect(move |event| {
            if let Ok(event) = event {
                evict_deleted(&ctx, &cache, event);
            }
        })
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::annotations),
            Default::default(),
        )
}

/// Runs the controller until `shutdown` completes.
async fn run_controller(base: Base, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let client = base.client.clone();
    let owned =
        watcher::Config::default().labels(&format!("{}={}", labels::MANAGED_BY, labels::MANAGED_BY_VALUE));
    let children = Index::default();
    let deployment_events = indexed(
        Api::<Deployment>::all(client.clone()),
        owned.clone(),
        children.clone(),
    );
    let service_events = indexed(
        Api::<Service>::all(client.clone()),
        owned.clone(),
        children.clone(),
    );
    let config_map_events = indexed(
        Api::<ConfigMap>::all(client.clone()),
        owned.clone(),
        children.clone(),
    );
    let pdb_events = indexed(
        Api::<PodDisruptionBudget>::all(client.clone()),
        owned,
        children.clone(),
    );
    let pods = watcher::Config::default().labels(labels::DEPLOYMENT);
    let pod_events = indexed(Api::<Pod>::all(client.clone()), pods, children.clone());

    let (md_reader, md_writer) = reflector::store();
    let ctx = Arc::new(Context {
        client: base.client.clone(),
        recorder: base.recorder,
        metrics: base.metrics.clone(),
        config: base.config,
        children: children.clone(),
        decisions: Decisions::default(),
        telemetry: base.telemetry.clone(),
        written: Written::default(),
        failures: Failures::default(),
        model_deployments: md_reader.clone(),
    });
    let md_events = model_deployment_events(client, md_writer, md_reader.clone(), ctx.clone());
    let (trigger, triggered) = tokio::sync::mpsc::channel(1024);
    let autoscaler = control::LoopContext {
        model_deployments: md_reader.clone(),
        children,
        telemetry: base.telemetry,
        decisions: ctx.decisions.clone(),
        trigger,
        metrics: base.metrics,
        interval: ctx.config.autoscale_interval,
    };
    let (loop_stop_tx, autoscaler_loop) = spawn_autoscaler(autoscaler, ctx.children.clone());
    Controller::for_stream(md_events, md_reader)
        .owns_stream(deployment_events)
        .owns_stream(service_events)
        .owns_stream(config_map_events)
        .owns_stream(pdb_events)
        // Pods belong to ReplicaSets; map them to their ModelDeployment by label so scheduling
        // failures and crash loops show up in status promptly.
        .watches_stream(pod_events, |pod: Pod| {
            let name = pod.labels().get(labels::DEPLOYMENT)?.clone();
            Some(ObjectRef::<ModelDeployment>::new(&name).within(&pod.namespace()?))
        })
        // The autoscaler asks for a reconcile when its outcome changed.
        .reconcile_on(tokio_stream::wrappers::ReceiverStream::new(triggered))
        .with_config(ControllerConfig::default().concurrency(ctx.config.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    let _ = loop_stop_tx.send(());
    let _ = autoscaler_loop.await;
}

/// Serves the telemetry hub until the returned guard drops.
async fn serve_hub(
    client: &Client,
    config: &OperatorConfig,
    http: &HttpState,
    telemetry: TelemetryStore,
    leading: tokio::sync::watch::Receiver<bool>,
) -> crate::Result<AbortOnDrop> {
    let hub = Hub::new(
        telemetry,
        Authenticator::token_review(client.clone(), config.telemetry_audience.clone()),
        leading,
        http.metrics.clone(),
    );
    let (telemetry_addr, hub_server) = hub
        .serve(config.telemetry_addr)
        .await
        .map_err(|e| Error::Listen(config.telemetry_addr, e))?;
    tracing::info!(addr = %telemetry_addr, "serving the telemetry hub (gRPC)");
    Ok(AbortOnDrop(tokio::spawn(hub_server)))
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
    // Every replica serves the telemetry hub; only the leader accepts streams.
    let telemetry = TelemetryStore::default();
    let (leading_tx, leading_rx) = tokio::sync::watch::channel(false);
    let _hub = serve_hub(&client, &config, &http, telemetry.clone(), leading_rx).await?;
    let base = Base {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        metrics: http.metrics.clone(),
        config,
        telemetry,
    };
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
        base.metrics.leader.set(1);
        let _ = leading_tx.send(true);
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
        let mut stopped = stop_rx.clone();
        let controller = tokio::spawn(run_controller(base.clone(), async move {
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
        let _ = leading_tx.send(false);
        let _ = lost_tx.send(());
        let _ = controller.await;
        base.metrics.leader.set(0);
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

/// Stops a background task when the scope that started it ends, on every return path.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{error::api_error, fake_api};

    fn apply_error(code: u16) -> Error {
        Error::Apply {
            kind: "Deployment".into(),
            name: "m-abc".into(),
            source: api_error(code),
        }
    }

    #[tokio::test]
    async fn a_permanent_error_backs_off_and_a_success_resets_the_backoff() {
        let mut md = ModelDeployment::new(
            "m",
            serde_yaml::from_str("model: {name: m, version: '1', uri: 'hf://o/m'}").expect("fixture"),
        );
        md.metadata.uid = Some("uid-1".into());
        let (client, _) = fake_api::client(&md, Arc::new(|_: &fake_api::Seen| None));
        let ctx = fake_api::context(client);
        let md = Arc::new(md);
        let retry = |error: Error| error_policy(md.clone(), &error, ctx.clone());
        // The API refuses the object as invalid (422): it will again until someone changes it.
        assert_eq!(retry(apply_error(422)), Action::requeue(Duration::from_secs(30)));
        assert_eq!(retry(apply_error(422)), Action::requeue(Duration::from_secs(60)));
        assert_eq!(retry(apply_error(422)), Action::requeue(Duration::from_secs(120)));
        ctx.failures.succeeded("uid-1");
        // A server error may pass on the next try.
        assert_eq!(retry(apply_error(500)), Action::requeue(Duration::from_secs(5)));
        assert_eq!(retry(apply_error(500)), Action::requeue(Duration::from_secs(10)));
    }
}
