//! Pure translations of a pod spec into what the live runtime runs: the program for an image,
//! the environment (with `fieldRef`, `resourceFieldRef`, ConfigMap and Secret references), `$(VAR)`
//! expansion of command and args, and the pod's `resolv.conf` and `hosts`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use k8s_openapi::api::core::v1::{Container, EnvVar, Pod};

use super::super::netns::DNS_IP;

/// The locally built binaries that stand in for images: binary name → path.
#[derive(Debug, Clone, Default)]
pub struct LocalImages {
    binaries: BTreeMap<String, PathBuf>,
}

impl LocalImages {
    /// Images named after these binaries.
    pub fn new(binaries: impl IntoIterator<Item = (String, PathBuf)>) -> Self {
        Self {
            binaries: binaries.into_iter().collect(),
        }
    }

    /// Adds a binary.
    pub fn insert(&mut self, name: &str, path: PathBuf) {
        self.binaries.insert(name.to_string(), path);
    }

    /// The binary an image maps to: the image's last path segment without tag or digest, as is
    /// or with a `modelfleet-` prefix (`ghcr.io/modelfleet/server:0.1.0` → `modelfleet-server`).
    pub fn binary_for(&self, image: &str) -> Result<&Path, String> {
        let name = image_name(image);
        [format!("modelfleet-{name}"), name.to_string()]
            .iter()
            .find_map(|candidate| self.binaries.get(candidate))
            .map(PathBuf::as_path)
            .ok_or_else(|| {
                format!(
                    "image {image:?} is not built locally: the live runtime runs only this workspace's binaries ({})",
                    self.binaries.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
    }
}

fn image_name(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split(':').next().unwrap_or(last)
}

/// `$(VAR)` expansion as kubelet does it: known variables are replaced, `$$(VAR)` gives a literal
/// `$(VAR)`, unknown references stay as written.
pub fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix("$(") {
            out.push_str("$(");
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('(') {
            match tail.find(')') {
                Some(end) if env.contains_key(&tail[..end]) => {
                    out.push_str(&env[&tail[..end]]);
                    rest = &tail[end + 1..];
                }
                _ => {
                    out.push_str("$(");
                    rest = tail;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The server's listen-address variable (`modelfleet-server --listen-address`), which the runtime
/// sets to the pod IP.
pub const LISTEN_ADDRESS_ENV: &str = "MODELFLEET_LISTEN_ADDRESS";

/// What a pod's environment may refer to beyond the pod itself.
#[derive(Debug, Clone, Default)]
pub struct EnvSources {
    /// The pod's IP.
    pub pod_ip: String,
    /// The node's IP.
    pub host_ip: String,
    /// Node allocatable CPU cores and memory bytes (the default of unset limits).
    pub node_cpu: f64,
    /// Node memory in bytes.
    pub node_memory: f64,
    /// ConfigMap name → data.
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    /// Secret name → decoded data.
    pub secrets: BTreeMap<String, BTreeMap<String, String>>,
    /// `NVIDIA_VISIBLE_DEVICES` for this container (the device plugin's job), if it has GPUs.
    pub gpu_devices: Vec<String>,
}

/// The container's environment in kubelet's order: `envFrom`, then `env` (each value expanded
/// against what came before), then what the runtime adds.
pub fn environment(
    pod: &Pod,
    container: &Container,
    sources: &EnvSources,
) -> Result<Vec<(String, String)>, String> {
    let mut env = BTreeMap::new();
    let mut order = Vec::new();
    let mut set = |env: &mut BTreeMap<String, String>, k: String, v: String| {
        if env.insert(k.clone(), v).is_none() {
            order.push(k);
        }
    };
    for from in container.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &from.config_map_ref {
            lookup_all(&sources.config_maps, &cm.name, cm.optional, "configMap")?
        } else if let Some(secret) = &from.secret_ref {
            lookup_all(&sources.secrets, &secret.name, secret.optional, "secret")?
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            set(&mut env, format!("{prefix}{k}"), v);
        }
    }
    for var in container.env.iter().flatten() {
        let value = env_value(pod, container, var, sources, &env)?;
        set(&mut env, var.name.clone(), value);
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    set(&mut env, "HOSTNAME".into(), name);
    if !sources.gpu_devices.is_empty() {
        set(
            &mut env,
            "NVIDIA_VISIBLE_DEVICES".into(),
            sources.gpu_devices.join(","),
        );
    }
    // Every live pod shares the fleet namespace, so two servers binding 0.0.0.0:8080 would
    // clash; on a real node each pod has its own namespace and binds the wildcard.
    if !env.contains_key(LISTEN_ADDRESS_ENV) && !sources.pod_ip.is_empty() {
        set(&mut env, LISTEN_ADDRESS_ENV.into(), sources.pod_ip.clone());
    }
    if !env.contains_key("PATH") {
        set(
            &mut env,
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        );
    }
    Ok(order
        .into_iter()
        .map(|k| {
            let v = env[&k].clone();
            (k, v)
        })
        .collect())
}

fn lookup_all(
    maps: &BTreeMap<String, BTreeMap<String, String>>,
    name: &str,
    optional: Option<bool>,
    kind: &str,
) -> Result<BTreeMap<String, String>, String> {
    match maps.get(name) {
        Some(data) => Ok(data.clone()),
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(format!("{kind} {name:?} not found")),
    }
}

fn env_value(
    pod: &Pod,
    container: &Container,
    var: &EnvVar,
    sources: &EnvSources,
    so_far: &BTreeMap<String, String>,
) -> Result<String, String> {
    if let Some(value) = &var.value {
        return Ok(expand(value, so_far));
    }
    let Some(from) = &var.value_from else {
        return Ok(String::new());
    };
    let what = |kind: &str| format!("env {}: {kind}", var.name);
    if let Some(field) = &from.field_ref {
        return field_value(pod, &field.field_path, sources).ok_or_else(|| {
            format!(
                "{}: fieldPath {:?} is not supported",
                what("fieldRef"),
                field.field_path
            )
        });
    }
    if let Some(field) = &from.resource_field_ref {
        return resource_value(
            container,
            &field.resource,
            field.divisor.as_ref().map(|q| q.0.as_str()),
            sources,
        )
        .map_err(|e| format!("{}: {e}", what("resourceFieldRef")));
    }
    let key_of = |maps: &BTreeMap<String, BTreeMap<String, String>>,
                  name: &str,
                  key: &str,
                  optional: Option<bool>,
                  kind: &str| {
        match maps.get(name).and_then(|d| d.get(key)) {
            Some(v) => Ok(v.clone()),
            None if optional == Some(true) => Ok(String::new()),
            None => Err(format!(
                "{}: key {key:?} of {kind} {name:?} not found",
                what(kind)
            )),
        }
    };
    if let Some(r) = &from.config_map_key_ref {
        return key_of(
            &sources.config_maps,
            &r.name,
            &r.key,
            r.optional,
            "configMapKeyRef",
        );
    }
    if let Some(r) = &from.secret_key_ref {
        return key_of(&sources.secrets, &r.name, &r.key, r.optional, "secretKeyRef");
    }
    Err(format!("{}: unsupported source", what("valueFrom")))
}

/// A downward-API field of the pod (`fieldRef.fieldPath`).
pub fn field_value(pod: &Pod, path: &str, sources: &EnvSources) -> Option<String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
        path.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix("']"))
            .map(|key| map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
    };
    if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
        return Some(v);
    }
    if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
        return Some(v);
    }
    Some(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => sources.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => sources.host_ip.clone(),
        _ => return None,
    })
}

fn resource_value(
    container: &Container,
    resource: &str,
    divisor: Option<&str>,
    sources: &EnvSources,
) -> Result<String, String> {
    let (kind, name) = resource
        .split_once('.')
        .ok_or_else(|| format!("resource {resource:?} is not limits.<name> or requests.<name>"))?;
    let resources = container.resources.as_ref();
    let table = match kind {
        "limits" => resources.and_then(|r| r.limits.as_ref()),
        "requests" => resources.and_then(|r| r.requests.as_ref()),
        _ => return Err(format!("resource {resource:?}: expected limits or requests")),
    };
    let set = table
        .and_then(|t| t.get(name))
        .map(|q| parse_quantity(&q.0))
        .transpose()?;
    let value = match (set, name) {
        (Some(v), _) => v,
        (None, "cpu") => sources.node_cpu,
        (None, "memory") => sources.node_memory,
        (None, _) => 0.0,
    };
    let divisor = divisor.map(parse_quantity).transpose()?.unwrap_or(1.0);
    if divisor <= 0.0 {
        return Err("divisor must be positive".into());
    }
    Ok(format!("{}", (value / divisor).ceil() as i64))
}

/// A Kubernetes quantity as a number (`500m` → 0.5, `2Gi` → 2147483648).
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let suffixes: [(&str, f64); 12] = [
        ("Ki", 1024.0),
        ("Mi", 1024.0 * 1024.0),
        ("Gi", 1024.0 * 1024.0 * 1024.0),
        ("Ti", 1024f64.powi(4)),
        ("Pi", 1024f64.powi(5)),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("n", 1e-9),
    ];
    let (number, factor) = suffixes
        .iter()
        .find_map(|(s, f)| text.strip_suffix(s).map(|n| (n, *f)))
        .unwrap_or((text, 1.0));
    number
        .parse::<f64>()
        .map(|n| n * factor)
        .map_err(|_| format!("{text:?} is not a quantity"))
}

/// The pod's `/etc/resolv.conf` for `dnsPolicy: ClusterFirst` (the default).
pub fn resolv_conf(namespace: &str) -> String {
    format!(
        "nameserver {DNS_IP}\nsearch {namespace}.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
    )
}

/// The pod's `/etc/hosts`.
pub fn hosts_file(pod_ip: &str, hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_ip}\t{hostname}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{EnvVarSource, ObjectFieldSelector, PodSpec};

    #[test]
    fn images_map_to_local_binaries_by_their_last_segment() {
        let images = LocalImages::new([(
            "modelfleet-server".to_string(),
            PathBuf::from("/b/modelfleet-server"),
        )]);
        assert_eq!(
            images.binary_for("ghcr.io/modelfleet/server:0.1.0").unwrap(),
            Path::new("/b/modelfleet-server")
        );
        assert_eq!(
            images.binary_for("modelfleet-server@sha256:ab").unwrap(),
            Path::new("/b/modelfleet-server")
        );
        let err = images.binary_for("nginx:1.27").unwrap_err();
        assert!(
            err.contains("\"nginx:1.27\"") && err.contains("modelfleet-server"),
            "{err}"
        );
    }

    #[test]
    fn expansion_follows_kubelet() {
        let env = BTreeMap::from([("POD_IP".to_string(), "10.246.0.2".to_string())]);
        assert_eq!(expand("--listen=$(POD_IP):80", &env), "--listen=10.246.0.2:80");
        assert_eq!(expand("$$(POD_IP) $(NOPE) $", &env), "$(POD_IP) $(NOPE) $");
    }

    #[test]
    fn field_refs_and_resources_resolve_in_order() {
        let pod = Pod {
            metadata: kube::api::ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([("app".to_string(), "x".to_string())])),
                ..Default::default()
            },
            spec: Some(PodSpec::default()),
            ..Default::default()
        };
        let field = |name: &str, path: &str| EnvVar {
            name: name.into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let container = Container {
            env: Some(vec![
                field("IP", "status.podIP"),
                field("APP", "metadata.labels['app']"),
                EnvVar {
                    name: "URL".into(),
                    value: Some("http://$(IP):8080".into()),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let sources = EnvSources {
            pod_ip: "10.246.0.9".into(),
            gpu_devices: vec!["GPU-sim-n-0".into()],
            ..Default::default()
        };
        let env: BTreeMap<_, _> = environment(&pod, &container, &sources)
            .unwrap()
            .into_iter()
            .collect();
        assert_eq!(env["URL"], "http://10.246.0.9:8080");
        assert_eq!(env["APP"], "x");
        assert_eq!(env["NVIDIA_VISIBLE_DEVICES"], "GPU-sim-n-0");
        assert_eq!(env[LISTEN_ADDRESS_ENV], "10.246.0.9", "pods share one namespace");
        let bad = Container {
            env: Some(vec![field("X", "status.nope")]),
            ..Default::default()
        };
        assert!(
            environment(&pod, &bad, &sources)
                .unwrap_err()
                .contains("status.nope")
        );
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("2Gi").unwrap(), 2.0 * 1024.0 * 1024.0 * 1024.0);
        assert!(parse_quantity("lots").is_err());
    }
}
