//! Pod volumes on the host, bind-mounted into containers at their `mountPath`s: emptyDir and
//! hostPath as directories; ConfigMap, Secret, downwardAPI and projected volumes (service-account
//! tokens from TokenRequest) written as kubelet writes them, into a timestamped directory behind
//! a `..data` symlink that is swapped atomically, so an edit reaches a running container within
//! one refresh and no reader sees half a file.

use std::{
    collections::BTreeMap,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use k8s_openapi::api::{
    authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec},
    core::v1::{ConfigMap, DownwardAPIVolumeFile, KeyToPath, Pod, Secret, ServiceAccount, Volume},
};
use kube::{Api, Client, api::PostParams};

use super::spec::{EnvSources, field_value};

/// A file of a generated volume: its bytes and mode.
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// One prepared volume.
#[derive(Debug)]
pub struct PreparedVolume {
    /// The host directory (or file) to bind.
    pub host_path: PathBuf,
    /// Whether its content is generated from API objects (and refreshed).
    generated: bool,
    /// The content last written, to skip rewrites that change nothing.
    last: Option<Files>,
    /// When a service-account token in it must be renewed.
    renew_at: Option<Instant>,
}

/// The volumes of one pod.
#[derive(Debug, Default)]
pub struct PodVolumes {
    /// Volume name → prepared volume.
    pub volumes: BTreeMap<String, PreparedVolume>,
}

/// Why a volume cannot be set up (the pod waits with `CreateContainerConfigError`).
pub type VolumeError = String;

impl PodVolumes {
    /// Creates every volume of `pod` under `dir`.
    pub async fn prepare(
        client: &Client,
        pod: &Pod,
        dir: &Path,
        sources: &EnvSources,
    ) -> Result<Self, VolumeError> {
        let mut out = Self::default();
        for volume in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let host_path = dir.join(&volume.name);
            let prepared = if let Some(host) = &volume.host_path {
                let path = PathBuf::from(&host.path);
                if host.type_.as_deref() == Some("DirectoryOrCreate") {
                    std::fs::create_dir_all(&path).map_err(|e| format!("volume {}: {e}", volume.name))?;
                }
                if !path.exists() {
                    return Err(format!(
                        "volume {}: hostPath {} does not exist",
                        volume.name, host.path
                    ));
                }
                PreparedVolume {
                    host_path: path,
                    generated: false,
                    last: None,
                    renew_at: None,
                }
            } else if volume.empty_dir.is_some() {
                std::fs::create_dir_all(&host_path).map_err(|e| format!("volume {}: {e}", volume.name))?;
                let _ = std::fs::set_permissions(&host_path, std::fs::Permissions::from_mode(0o777));
                PreparedVolume {
                    host_path,
                    generated: false,
                    last: None,
                    renew_at: None,
                }
            } else if is_generated(volume) {
                PreparedVolume {
                    host_path,
                    generated: true,
                    last: None,
                    renew_at: None,
                }
            } else {
                return Err(format!(
                    "volume {}: only emptyDir, hostPath, configMap, secret, downwardAPI and projected volumes run on live nodes",
                    volume.name
                ));
            };
            out.volumes.insert(volume.name.clone(), prepared);
        }
        out.refresh(client, pod, sources).await?;
        Ok(out)
    }

    /// Rewrites generated volumes whose content changed (and renews tokens near expiry).
    pub async fn refresh(
        &mut self,
        client: &Client,
        pod: &Pod,
        sources: &EnvSources,
    ) -> Result<(), VolumeError> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        for volume in pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.as_ref())
            .into_iter()
            .flatten()
        {
            let Some(prepared) = self.volumes.get_mut(&volume.name) else {
                continue;
            };
            if !prepared.generated {
                continue;
            }
            let token_due = prepared.renew_at.is_none_or(|at| Instant::now() >= at);
            let (mut files, renew) = generate(client, &namespace, pod, volume, sources, token_due).await?;
            if !token_due {
                // Keep the token already written; only the other files are compared.
                if let Some(last) = &prepared.last {
                    for (path, content) in last {
                        files.entry(path.clone()).or_insert_with(|| content.clone());
                    }
                }
            }
            if prepared.last.as_ref() != Some(&files) {
                write_atomic(&prepared.host_path, &files)
                    .map_err(|e| format!("volume {}: {e}", volume.name))?;
                prepared.last = Some(files);
            }
            if let Some(renew) = renew {
                prepared.renew_at = Some(renew);
            }
        }
        Ok(())
    }
}

fn is_generated(volume: &Volume) -> bool {
    volume.config_map.is_some()
        || volume.secret.is_some()
        || volume.projected.is_some()
        || volume.downward_api.is_some()
}

/// The files of a generated volume, and when its token (if any) must be renewed. With
/// `with_token` false, token files are left out (the caller keeps the current ones).
async fn generate(
    client: &Client,
    namespace: &str,
    pod: &Pod,
    volume: &Volume,
    sources: &EnvSources,
    with_token: bool,
) -> Result<(Files, Option<Instant>), VolumeError> {
    let name = &volume.name;
    let mut files = Files::new();
    let mut renew = None;
    if let Some(cm) = &volume.config_map {
        let data = config_map(client, namespace, &cm.name, cm.optional, name).await?;
        add_items(
            &mut files,
            &data,
            cm.items.as_deref(),
            cm.default_mode,
            name,
            cm.optional,
        )?;
    }
    if let Some(s) = &volume.secret {
        let secret_name = s.secret_name.clone().unwrap_or_default();
        let data = secret(client, namespace, &secret_name, s.optional, name).await?;
        add_items(
            &mut files,
            &data,
            s.items.as_deref(),
            s.default_mode,
            name,
            s.optional,
        )?;
    }
    if let Some(d) = &volume.downward_api {
        add_fields(&mut files, d.items.as_deref(), d.default_mode, pod, sources);
    }
    if let Some(projected) = &volume.projected {
        for source in projected.sources.iter().flatten() {
            if let Some(cm) = &source.config_map {
                let data = config_map(client, namespace, &cm.name, cm.optional, name).await?;
                add_items(
                    &mut files,
                    &data,
                    cm.items.as_deref(),
                    projected.default_mode,
                    name,
                    cm.optional,
                )?;
            }
            if let Some(s) = &source.secret {
                let data = secret(client, namespace, &s.name, s.optional, name).await?;
                add_items(
                    &mut files,
                    &data,
                    s.items.as_deref(),
                    projected.default_mode,
                    name,
                    s.optional,
                )?;
            }
            if let Some(d) = &source.downward_api {
                add_fields(
                    &mut files,
                    d.items.as_deref(),
                    projected.default_mode,
                    pod,
                    sources,
                );
            }
            if let (Some(token), true) = (&source.service_account_token, with_token) {
                let seconds = token.expiration_seconds.unwrap_or(3600).max(600);
                let value = request_token(client, pod, token.audience.clone(), seconds)
                    .await
                    .map_err(|e| format!("volume {name}: service account token: {e}"))?;
                files.insert(
                    token.path.clone(),
                    (value.into_bytes(), mode(projected.default_mode)),
                );
                // kubelet renews at 80 % of the lifetime.
                renew = Some(
                    Instant::now() + Duration::from_secs(u64::try_from(seconds * 8 / 10).unwrap_or(480)),
                );
            }
        }
    }
    Ok((files, renew))
}

fn mode(m: Option<i32>) -> u32 {
    u32::try_from(m.unwrap_or(0o644)).unwrap_or(0o644) & 0o777
}

/// Downward-API files: one per `fieldRef` item.
fn add_fields(
    files: &mut Files,
    items: Option<&[DownwardAPIVolumeFile]>,
    default_mode: Option<i32>,
    pod: &Pod,
    sources: &EnvSources,
) {
    for item in items.into_iter().flatten() {
        if let Some(field) = &item.field_ref {
            let value = field_value(pod, &field.field_path, sources).unwrap_or_default();
            files.insert(
                item.path.clone(),
                (value.into_bytes(), mode(item.mode.or(default_mode))),
            );
        }
    }
}

fn add_items(
    files: &mut Files,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
    volume: &str,
    optional: Option<bool>,
) -> Result<(), VolumeError> {
    match items {
        None => {
            for (key, value) in data {
                files.insert(key.clone(), (value.clone(), mode(default_mode)));
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => {
                        files.insert(
                            item.path.clone(),
                            (value.clone(), mode(item.mode.or(default_mode))),
                        );
                    }
                    None if optional == Some(true) => {}
                    None => return Err(format!("volume {volume}: key {:?} not found", item.key)),
                }
            }
        }
    }
    Ok(())
}

async fn config_map(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
    volume: &str,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    match Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
    {
        Ok(Some(cm)) => {
            let mut data: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            data.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(data)
        }
        Ok(None) if optional == Some(true) => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("volume {volume}: configmap {name:?} not found")),
        Err(e) => Err(format!("volume {volume}: configmap {name:?}: {e}")),
    }
}

async fn secret(
    client: &Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
    volume: &str,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    match Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
    {
        Ok(Some(s)) => Ok(s
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()),
        Ok(None) if optional == Some(true) => Ok(BTreeMap::new()),
        Ok(None) => Err(format!("volume {volume}: secret {name:?} not found")),
        Err(e) => Err(format!("volume {volume}: secret {name:?}: {e}")),
    }
}

/// A token of the pod's service account bound to the pod (TokenRequest), as kubelet obtains it.
async fn request_token(
    client: &Client,
    pod: &Pod,
    audience: Option<String>,
    seconds: i64,
) -> Result<String, String> {
    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.filter(|a| !a.is_empty()).map(|a| vec![a]),
            expiration_seconds: Some(seconds),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
        }),
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create_token_request(&account, &PostParams::default(), &request)
        .await
        .map_err(|e| e.to_string())?;
    answer
        .status
        .and_then(|s| s.token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| "the TokenRequest came back without a token".into())
}

/// Writes `files` into `dir` as kubelet's atomic writer does: a new `..<stamp>` directory, a
/// `..data` symlink renamed over the old one, and one top-level symlink per entry.
pub fn write_atomic(dir: &Path, files: &Files) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let stamp = format!(
        "..{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let target = dir.join(&stamp);
    std::fs::create_dir(&target)?;
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o755))?;
    for (path, (bytes, file_mode)) in files {
        let relative = Path::new(path);
        if relative.is_absolute()
            || relative
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(std::io::Error::other(format!(
                "path {path:?} must be relative without '..'"
            )));
        }
        let file = target.join(relative);
        if let Some(parent) = file.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&file, bytes)?;
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(*file_mode))?;
    }
    let old = std::fs::read_link(dir.join("..data")).ok();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, dir.join("..data"))?;
    let tops: std::collections::BTreeSet<String> = files
        .keys()
        .filter_map(|p| p.split('/').next().map(str::to_string))
        .collect();
    for top in &tops {
        let link = dir.join(top);
        if std::fs::symlink_metadata(&link).is_err() {
            symlink(Path::new("..data").join(top), &link)?;
        }
    }
    for entry in std::fs::read_dir(dir)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with("..") && !tops.contains(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    if let Some(old) = old.filter(|o| o != Path::new(&stamp)) {
        let _ = std::fs::remove_dir_all(dir.join(old));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_swaps_the_data_link_and_keeps_paths_stable() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("routing");
        let one = Files::from([("routing.json".to_string(), (b"{\"v\":1}".to_vec(), 0o644))]);
        write_atomic(&vol, &one).unwrap();
        assert_eq!(
            std::fs::read_to_string(vol.join("routing.json")).unwrap(),
            "{\"v\":1}"
        );
        let first = std::fs::read_link(vol.join("..data")).unwrap();
        let two = Files::from([("routing.json".to_string(), (b"{\"v\":2}".to_vec(), 0o644))]);
        write_atomic(&vol, &two).unwrap();
        assert_eq!(
            std::fs::read_to_string(vol.join("routing.json")).unwrap(),
            "{\"v\":2}"
        );
        assert_ne!(std::fs::read_link(vol.join("..data")).unwrap(), first);
        assert!(!vol.join(first).exists(), "the old generation is removed");
        assert_eq!(
            std::fs::read_link(vol.join("routing.json")).unwrap(),
            Path::new("..data/routing.json")
        );
    }

    #[test]
    fn escaping_paths_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bad = Files::from([("../x".to_string(), (Vec::new(), 0o644))]);
        assert!(write_atomic(dir.path(), &bad).is_err());
    }
}
