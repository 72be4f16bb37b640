//! Names shared by every part of modelfleet: API group, label keys, annotations, condition types
//! and the field manager. Changing one of these is an API change.

/// API group of every modelfleet custom resource.
pub const GROUP: &str = "modelfleet.dev";
/// Field manager for every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "modelfleet-operator";
/// Audience of the projected service-account token node agents present to the operator.
pub const TELEMETRY_TOKEN_AUDIENCE: &str = "modelfleet-operator";

/// Label keys put on every object the operator owns.
pub mod labels {
    /// `app.kubernetes.io/name`: always `modelfleet-server` on serving objects.
    pub const NAME: &str = "app.kubernetes.io/name";
    /// `app.kubernetes.io/instance`: the ModelDeployment name.
    pub const INSTANCE: &str = "app.kubernetes.io/instance";
    /// `app.kubernetes.io/managed-by`: always [`MANAGED_BY_VALUE`].
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// `app.kubernetes.io/component`: `server`, `routing`, `traffic`, …
    pub const COMPONENT: &str = "app.kubernetes.io/component";
    /// The owning ModelDeployment's name; the scale subresource selector uses it.
    pub const DEPLOYMENT: &str = "modelfleet.dev/deployment";
    /// The revision hash of the pod template (see [`crate::revision`]).
    pub const REVISION: &str = "modelfleet.dev/revision";
    /// On each revision's Deployment (not its pods, so a promotion restarts nothing): one of
    /// [`ROLE_STABLE`], [`ROLE_CANARY`].
    pub const ROLE: &str = "modelfleet.dev/role";

    /// Value of [`MANAGED_BY`].
    pub const MANAGED_BY_VALUE: &str = "modelfleet-operator";
    /// Value of [`NAME`] on serving objects.
    pub const NAME_VALUE: &str = "modelfleet-server";
    /// The revision that serves production traffic.
    pub const ROLE_STABLE: &str = "stable";
    /// A candidate revision (canary or shadow step).
    pub const ROLE_CANARY: &str = "canary";
    /// The `app.kubernetes.io/component` of the `<name>-shadow` Service.
    pub const ROLE_SHADOW: &str = "shadow";
}

/// Annotations users (or `kubectl modelfleet`) set on a ModelDeployment to steer a rollout.
/// The operator removes them once consumed.
pub mod annotations {
    /// Skip the remaining rollout steps and promote the candidate now.
    pub const PROMOTE: &str = "modelfleet.dev/promote";
    /// Roll the candidate back now.
    pub const ABORT: &str = "modelfleet.dev/abort";
    /// RFC 3339 time of the latest request the router saw for a ModelDeployment with
    /// `minReplicas: 0`. The router writes it (at once when a request finds no replica, else at
    /// most every `idlePeriod / 4`); the autoscaler wakes the model from zero on a request newer
    /// than its scale-down and scales to zero after `idlePeriod` without one. Never removed.
    pub const LAST_REQUEST: &str = "modelfleet.dev/last-request";
}

/// Condition types in `status.conditions` (kstatus style: `kubectl wait --for=condition=Available`).
pub mod conditions {
    /// The current revision's replicas are all ready and serving.
    pub const AVAILABLE: &str = "Available";
    /// A new revision is being rolled out or replicas are changing.
    pub const PROGRESSING: &str = "Progressing";
    /// Something is wrong that the operator cannot fix by itself (see the reason).
    pub const DEGRADED: &str = "Degraded";
    /// The autoscaler wants more replicas than it can have (maxReplicas or no free GPUs).
    pub const SCALING_LIMITED: &str = "ScalingLimited";
    /// Telemetry for the autoscaler and analysis is present and fresh.
    pub const METRICS_AVAILABLE: &str = "MetricsAvailable";
}

/// NVIDIA's device-plugin resource: GPU requests and limits, node capacity, and the GPU taint key.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

// The request headers the server reads (tier, timeout, shadow) are in modelfleet-contract's
// `headers`, with the rest of the server's contract.
