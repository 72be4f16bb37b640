//! The kubelet PodResources v1 `List` call over the kubelet's unix socket.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use modelfleet_crds::constants::GPU_RESOURCE;
use modelfleet_proto::podresources::{
    ListPodResourcesRequest, pod_resources_lister_client::PodResourcesListerClient,
};
use tokio::net::UnixStream;
use tonic::transport::{Endpoint, Uri};
use tower::service_fn;

use super::PodRef;

/// Why the PodResources API could not be read.
#[derive(Debug, thiserror::Error)]
pub enum PodResourcesError {
    #[error("kubelet PodResources socket {0}: not present")]
    NoSocket(PathBuf),
    #[error("kubelet PodResources socket {path}: {error}")]
    Call { path: PathBuf, error: String },
}

/// GPU device ids per pod container, from the kubelet.
pub async fn list_gpu_devices(socket: &Path) -> Result<Vec<(PodRef, Vec<String>)>, PodResourcesError> {
    if !socket.exists() {
        return Err(PodResourcesError::NoSocket(socket.to_path_buf()));
    }
    let call_error = |error: String| PodResourcesError::Call {
        path: socket.to_path_buf(),
        error,
    };
    let path = socket.to_path_buf();
    // The URI is required by tonic but unused: the connector dials the socket.
    let channel = Endpoint::from_static("http://kubelet.sock")
        .connect_with_connector(service_fn(move |_: Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        }))
        .await
        .map_err(|e| call_error(e.to_string()))?;
    let response = PodResourcesListerClient::new(channel)
        .list(ListPodResourcesRequest {})
        .await
        .map_err(|e| call_error(e.to_string()))?
        .into_inner();
    let mut out = Vec::new();
    for pod in response.pod_resources {
        for container in pod.containers {
            let ids: Vec<String> = container
                .devices
                .into_iter()
                .filter(|d| d.resource_name == GPU_RESOURCE)
                .flat_map(|d| d.device_ids)
                .collect();
            if !ids.is_empty() {
                out.push((
                    PodRef {
                        namespace: pod.namespace.clone(),
                        name: pod.name.clone(),
                        container: container.name,
                    },
                    ids,
                ));
            }
        }
    }
    Ok(out)
}
