//! The engine container of `backend: upstream`: vLLM, llama.cpp's server or TGI beside
//! modelfleet-server in the same pod. The engine holds the GPUs and the model; the server in
//! front of it keeps admission, tiers, deadlines, mirroring and metrics, and reaches it on
//! localhost.

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, ResourceRequirements, SecurityContext, VolumeMount,
};
use modelfleet_crds::{
    ModelDeployment,
    v1alpha1::{Backend, UpstreamSpec},
};

/// The engine container's name.
pub const ENGINE_CONTAINER: &str = "engine";
/// The engine's container port name.
const ENGINE_PORT_NAME: &str = "engine";

/// The engine of an upstream ModelDeployment; None for the other backends.
pub fn upstream(md: &ModelDeployment) -> Option<&UpstreamSpec> {
    let runtime = &md.spec.runtime;
    (runtime.backend == Backend::Upstream)
        .then_some(runtime.upstream.as_ref())
        .flatten()
}

/// The URL the server forwards to: the engine on the pod's loopback.
pub fn upstream_url(engine: &UpstreamSpec) -> String {
    format!("http://127.0.0.1:{}", engine.port)
}

/// The engine container: its image, arguments and environment as given, the pod's GPUs and
/// memory (`resources`, derived from `spec.resources`), and the same mounts and restricted
/// security context as the server.
pub fn engine_container(
    engine: &UpstreamSpec,
    resources: ResourceRequirements,
    security: SecurityContext,
    mounts: Vec<VolumeMount>,
) -> Container {
    Container {
        name: ENGINE_CONTAINER.into(),
        image: Some(engine.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        args: (!engine.args.is_empty()).then(|| engine.args.clone()),
        env: (!engine.env.is_empty()).then(|| engine.env.clone()),
        ports: Some(vec![ContainerPort {
            name: Some(ENGINE_PORT_NAME.into()),
            container_port: engine.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        resources: Some(resources),
        // No probes of its own: the server's readiness follows the engine's `/health`, and the
        // server's liveness restarts the pod's work when either hangs.
        security_context: Some(security),
        volume_mounts: Some(mounts),
        ..Default::default()
    }
}
