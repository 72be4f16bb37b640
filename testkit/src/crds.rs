//! Installing CRDs with server-side apply: ours (generated from the Rust types) and the Gateway
//! API's (from the toolchain; too large for client-side apply's annotation).

use std::{path::Path, time::Duration};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{
    Api, Client, CustomResourceExt, ResourceExt,
    api::{Patch, PatchParams},
    runtime::wait::{Condition, conditions::is_crd_established},
};
use modelfleet_crds::{ModelDeployment, constants::FIELD_MANAGER};

use crate::{Error, Result, Toolchain, wait};

/// Installs the ModelDeployment CRD and waits until it is established.
pub async fn install_modelfleet_crds(client: &Client) -> Result<()> {
    apply_crds(client, vec![ModelDeployment::crd()]).await
}

/// Installs the Gateway API standard CRDs shipped with the toolchain.
pub async fn install_gateway_api_crds(client: &Client, toolchain: &Toolchain) -> Result<()> {
    install_crd_files(client, &toolchain.gateway_api_crds()?).await
}

/// Installs the Gateway API Inference Extension CRDs shipped with the toolchain (InferencePool).
pub async fn install_inference_extension_crds(client: &Client, toolchain: &Toolchain) -> Result<()> {
    install_crd_files(client, &toolchain.inference_extension_crds()?).await
}

/// Installs every CRD in the given manifest files (for example the chart's `crds/`), as a user's
/// `kubectl apply --server-side` would, and waits until each is established.
pub async fn install_crd_files(client: &Client, files: &[std::path::PathBuf]) -> Result<()> {
    let mut crds = Vec::new();
    for file in files {
        crds.extend(read_crds(file)?);
    }
    apply_crds(client, crds).await
}

fn read_crds(path: &Path) -> Result<Vec<CustomResourceDefinition>> {
    let text = std::fs::read_to_string(path).map_err(Error::io(format!("read {}", path.display())))?;
    let mut out = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value: serde_yaml::Value = serde::Deserialize::deserialize(doc).map_err(|e| Error::Manifest {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        if value.get("kind").and_then(|k| k.as_str()) == Some("CustomResourceDefinition") {
            out.push(serde_yaml::from_value(value).map_err(|e| Error::Manifest {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?);
        }
    }
    Ok(out)
}

async fn apply_crds(client: &Client, crds: Vec<CustomResourceDefinition>) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for crd in &crds {
        api.patch(&crd.name_any(), &params, &Patch::Apply(crd)).await?;
    }
    for crd in &crds {
        let name = crd.name_any();
        wait::wait_for(&api, &name, Duration::from_secs(30), "CRD Established", |c| {
            is_crd_established().matches_object(Some(c))
        })
        .await?;
    }
    Ok(())
}
