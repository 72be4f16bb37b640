//! The operator ↔ server contract, checked on the pods the operator builds: for every example
//! ModelDeployment, each Deployment's server arguments go through modelfleet-server's own parser
//! (the binary's `Cli`), which must accept them and read what the operator meant; each routing
//! file goes through the server's routing-file parser. Pure: no cluster, no server process.

use std::{path::PathBuf, time::Duration};

use clap::Parser;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Container};
use modelfleet_crds::{ModelDeployment, manifest::model_deployments_from_yaml, revision::revision_hash};
use modelfleet_operator_core::{
    build::{DesiredObjects, build, server_args},
    observed::{Observed, ObservedRevision},
    plan::{Traffic, desired_replicas, plan},
};
use modelfleet_server::{
    config::{Cli, ServerConfig},
    shadow::RoutingFile,
};

const IMAGE: &str = "ghcr.io/modelfleet/server:test";

/// Every ModelDeployment in `examples/*.yaml`, with the file it came from.
fn examples() -> Vec<(String, ModelDeployment)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("example");
        let name = file.file_name().expect("name").to_string_lossy().into_owned();
        for mut md in model_deployments_from_yaml(&text).expect("valid example") {
            md.metadata.namespace.get_or_insert_with(|| "default".into());
            out.push((name.clone(), md));
        }
    }
    out
}

/// What the operator builds for `md` before any rollout: its current revision alone.
fn desired(md: &ModelDeployment) -> DesiredObjects {
    let current = revision_hash(&md.spec, IMAGE);
    let p = plan(desired_replicas(md, None), &current, None, &[]);
    build(md, &p, &Observed::default(), IMAGE)
}

fn server_container(d: &Deployment) -> Container {
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    pod.containers
        .iter()
        .find(|c| c.name == "server")
        .cloned()
        .expect("a server container")
}

/// The server's configuration as its binary would parse the container's arguments.
fn parse(file: &str, c: &Container) -> ServerConfig {
    let argv = std::iter::once("modelfleet-server".to_string()).chain(c.args.clone().unwrap_or_default());
    match Cli::try_parse_from(argv) {
        Ok(cli) => cli.config,
        Err(e) => panic!(
            "{file}: the server refuses the operator's arguments {:?}:\n{e}",
            c.args
        ),
    }
}

fn container_port(c: &Container, name: &str) -> u16 {
    let port = c.ports.iter().flatten().find(|p| p.name.as_deref() == Some(name));
    u16::try_from(port.expect("the named port").container_port).expect("a port number")
}

fn mount_path(c: &Container, volume: &str) -> PathBuf {
    let mount = c.volume_mounts.iter().flatten().find(|m| m.name == volume);
    PathBuf::from(&mount.expect("the volume's mount").mount_path)
}

/// The parsed values against the ModelDeployment and the pod around the container, not against
/// the operator's own conversion alone.
fn assert_meant(file: &str, md: &ModelDeployment, c: &Container, parsed: &ServerConfig) {
    let got = &parsed.contract;
    let spec = &md.spec;
    assert_eq!(
        *got,
        server_args(md),
        "{file}: parsed arguments differ from the operator's"
    );
    assert_eq!(got.model_name, spec.model.name, "{file}");
    assert_eq!(got.model_version, spec.model.version, "{file}");
    let enums = (spec.model.task, spec.runtime.backend, spec.runtime.device);
    assert_eq!((got.task, got.backend, got.device), enums, "{file}");
    let ports = (got.ports.http_port, got.ports.grpc_port, got.ports.metrics_port);
    let container = (
        container_port(c, "http"),
        container_port(c, "grpc"),
        container_port(c, "metrics"),
    );
    assert_eq!(
        ports, container,
        "{file}: the server listens on the container's ports"
    );
    assert_eq!(got.model_cache, mount_path(c, "models"), "{file}");
    let routing = got.routing_file.as_ref().expect("a routing file");
    assert_eq!(
        routing.parent(),
        Some(mount_path(c, "routing").as_path()),
        "{file}"
    );
    let b = &spec.batching;
    let g = &got.batching;
    let limits = [g.max_batch_size, g.max_batch_tokens, g.max_queue_size].map(i64::from);
    let wanted = [b.max_batch_size, b.max_batch_tokens, b.max_queue_size].map(i64::from);
    assert_eq!(limits, wanted, "{file}: batch and queue limits");
    assert_eq!(got.batching.max_queue_delay, b.max_queue_delay.as_std(), "{file}");
    let tiers: Vec<(&str, Option<Duration>, Option<f64>)> = b
        .tiers
        .iter()
        .map(|t| (t.name.as_str(), t.timeout.map(|d| d.as_std()), t.max_queue_share))
        .collect();
    let parsed_tiers: Vec<(&str, Option<Duration>, Option<f64>)> = got
        .batching
        .tiers
        .iter()
        .map(|t| (t.name.as_str(), t.timeout, t.max_queue_share))
        .collect();
    assert_eq!(parsed_tiers, tiers, "{file}: tiers");
}

#[test]
fn the_server_parses_every_examples_pod_arguments_as_the_operator_meant() {
    let mut deployments = 0;
    let mut tiered = 0;
    for (file, md) in examples() {
        let d = desired(&md);
        for deployment in &d.deployments {
            let c = server_container(deployment);
            let parsed = parse(&file, &c);
            assert_meant(&file, &md, &c, &parsed);
            deployments += 1;
            tiered += usize::from(!parsed.contract.batching.tiers.is_empty());
        }
        for (key, text) in d.routing.data.iter().flatten() {
            let routing = RoutingFile::parse(text).unwrap_or_else(|e| panic!("{file}: {key}: {e}"));
            assert_eq!(routing.mirror, None, "{file}: {key}: no mirror before a rollout");
        }
    }
    assert!(
        deployments >= 6,
        "every example builds a Deployment ({deployments})"
    );
    assert!(tiered > 0, "some example has tiers");
}

#[test]
fn during_a_shadow_step_the_stable_servers_read_a_mirror_to_the_shadow_service_port() {
    let (file, old) = examples()
        .into_iter()
        .find(|(f, _)| f == "minimal.yaml")
        .expect("minimal.yaml");
    let old_rev = revision_hash(&old.spec, IMAGE);
    let mut new = old.clone();
    new.spec.model.version = "99".into();
    let new_rev = revision_hash(&new.spec, IMAGE);
    let observed = Observed {
        revisions: vec![ObservedRevision {
            revision: old_rev.clone(),
            version: old.spec.model.version.clone(),
            replicas: 2,
            ready_replicas: 2,
            template: None,
        }],
        ..Default::default()
    };
    let mut p = plan(2, &new_rev, Some(&old_rev), &observed.revisions);
    p.traffic = Traffic {
        weight: 0,
        mirror: 20,
        entry_stable_only: true,
    };
    let d = build(&new, &p, &observed, IMAGE);
    let data = d.routing.data.expect("routing data");
    let stable = RoutingFile::parse(&data[&format!("{old_rev}.json")]).expect("the server reads it");
    let mirror = stable.mirror.expect("the stable revision mirrors");
    assert_eq!(mirror.percent, 20.0, "{file}");
    let shadow = d
        .services
        .iter()
        .find(|s| s.metadata.name.as_ref().is_some_and(|n| n.ends_with("-shadow")))
        .expect("the shadow Service");
    let port = shadow
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_ref())
        .expect("ports");
    let http = port
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .expect("http");
    let (name, namespace) = (new.metadata.name.as_deref(), new.metadata.namespace.as_deref());
    let service = format!(
        "{}-shadow.{}.svc",
        name.expect("name"),
        namespace.expect("namespace")
    );
    assert_eq!(mirror.url, format!("http://{service}:{}", http.port), "{file}");
    let candidate = RoutingFile::parse(&data[&format!("{new_rev}.json")]).expect("the server reads it");
    assert_eq!(candidate.mirror, None, "the candidate mirrors nothing");
}
