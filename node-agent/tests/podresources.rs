//! GPU attribution through the kubelet PodResources API, against a fake kubelet (a tonic server
//! on a temporary unix socket).

use modelfleet_node_agent::attribution::{PodResourcesError, assign_from_devices, list_gpu_devices};
use modelfleet_proto::podresources::{
    ContainerDevices, ContainerResources, ListPodResourcesRequest, ListPodResourcesResponse, PodResources,
    pod_resources_lister_server::{PodResourcesLister, PodResourcesListerServer},
};
use tonic::{Request, Response, Status};

struct FakeKubelet;

#[tonic::async_trait]
impl PodResourcesLister for FakeKubelet {
    async fn list(
        &self,
        _: Request<ListPodResourcesRequest>,
    ) -> Result<Response<ListPodResourcesResponse>, Status> {
        let devices = |resource: &str, ids: &[&str]| ContainerDevices {
            resource_name: resource.into(),
            device_ids: ids.iter().map(|s| (*s).to_owned()).collect(),
        };
        Ok(Response::new(ListPodResourcesResponse {
            pod_resources: vec![
                PodResources {
                    name: "embed-0".into(),
                    namespace: "prod".into(),
                    containers: vec![ContainerResources {
                        name: "server".into(),
                        devices: vec![
                            devices("nvidia.com/gpu", &["GPU-aaa", "GPU-bbb"]),
                            devices("example.com/nic", &["nic0"]),
                        ],
                        cpu_ids: vec![],
                    }],
                },
                PodResources {
                    name: "batch".into(),
                    namespace: "jobs".into(),
                    containers: vec![ContainerResources {
                        name: "main".into(),
                        devices: vec![devices("nvidia.com/gpu", &["GPU-ccc::2"])],
                        cpu_ids: vec![1, 2],
                    }],
                },
            ],
        }))
    }
}

#[tokio::test]
async fn gpus_are_attributed_from_the_kubelet_socket() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("kubelet.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("bind the socket");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PodResourcesListerServer::new(FakeKubelet))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let devices = list_gpu_devices(&socket).await.expect("List answers");
    assert_eq!(devices.len(), 2, "the NIC-only entry is not a GPU: {devices:?}");
    let owners = assign_from_devices(&devices);
    assert_eq!(owners["GPU-aaa"].name, "embed-0");
    assert_eq!(owners["GPU-bbb"].container, "server");
    assert_eq!(owners["GPU-ccc"].namespace, "jobs");

    let missing = list_gpu_devices(&dir.path().join("absent.sock"))
        .await
        .unwrap_err();
    assert!(matches!(missing, PodResourcesError::NoSocket(_)));
}
