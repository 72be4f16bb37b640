//! Load a person sets with kubectl, for `modelfleet-e2e up --with-agents`: the annotation
//! `modelfleet.dev/simulated-load` on a ModelDeployment sets the total load the
//! [`LoadSimulator`] spreads over its pods, for example
//! `kubectl annotate mdep embedder modelfleet.dev/simulated-load=queued=80,rps=400,p95=0.2`.

use futures::StreamExt;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, watcher},
};
use modelfleet_crds::ModelDeployment;
use tokio::task::JoinHandle;

use super::{LoadSimulator, PodLoad};

/// The annotation read.
pub const SIMULATED_LOAD_ANNOTATION: &str = "modelfleet.dev/simulated-load";

/// Parses `key=value` pairs separated by commas: `queued`, `running`, `rps`, `errors` (share
/// 0..1), `p95` (seconds), `busy` (0..1), `batch`.
pub fn parse_load(text: &str) -> Result<PodLoad, String> {
    let mut load = PodLoad::default();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{SIMULATED_LOAD_ANNOTATION}: `{pair}` is not key=value"))?;
        let value: f64 = value
            .trim()
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v >= 0.0)
            .ok_or_else(|| {
                format!("{SIMULATED_LOAD_ANNOTATION}: {key} must be a number >= 0, got `{value}`")
            })?;
        match key.trim() {
            "queued" => load.queued = value,
            "running" => load.running = value,
            "rps" => load.request_rate = value,
            "errors" if value <= 1.0 => load.error_rate = value,
            "p95" => load.latency_seconds = value,
            "busy" if value <= 1.0 => load.busy_ratio = value,
            "batch" => load.batch_size = value,
            "errors" | "busy" => {
                return Err(format!(
                    "{SIMULATED_LOAD_ANNOTATION}: {key} is a share from 0 to 1, got {value}"
                ));
            }
            other => {
                return Err(format!(
                    "{SIMULATED_LOAD_ANNOTATION}: unknown key `{other}` (queued, running, rps, errors, p95, busy, batch)"
                ));
            }
        }
    }
    Ok(load)
}

/// Watches every ModelDeployment and applies its annotation to `simulator` until aborted.
pub fn follow_annotations(client: Client, simulator: std::sync::Arc<LoadSimulator>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<ModelDeployment> = Api::all(client);
        let mut events = watcher(api, watcher::Config::default())
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(md) = event else { continue };
            let (Some(namespace), Some(text)) =
                (md.namespace(), md.annotations().get(SIMULATED_LOAD_ANNOTATION))
            else {
                continue;
            };
            match parse_load(text) {
                Ok(load) => {
                    eprintln!("simulated load of {namespace}/{}: {text}", md.name_any());
                    simulator.set_deployment_total_load(&namespace, &md.name_any(), load);
                }
                Err(e) => eprintln!("{namespace}/{}: {e}", md.name_any()),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key_and_names_bad_ones() {
        let load = parse_load("queued=80, rps=400,p95=0.2,errors=0.01,busy=0.5,batch=8,running=3").unwrap();
        assert_eq!(
            (
                load.queued,
                load.request_rate,
                load.latency_seconds,
                load.error_rate
            ),
            (80.0, 400.0, 0.2, 0.01)
        );
        assert_eq!((load.busy_ratio, load.batch_size, load.running), (0.5, 8.0, 3.0));
        assert!(parse_load("queue=1").unwrap_err().contains("unknown key `queue`"));
        assert!(
            parse_load("queued=-1")
                .unwrap_err()
                .contains("queued must be a number >= 0")
        );
        assert!(parse_load("errors=2").unwrap_err().contains("share from 0 to 1"));
        assert!(parse_load("queued").unwrap_err().contains("not key=value"));
        assert_eq!(parse_load("").unwrap(), PodLoad::default());
    }
}
