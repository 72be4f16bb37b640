//! modelfleet's wire protocols.
//!
//! The `.proto` files and their tonic code generation land with the node-agent issue (#5,
//! `modelfleet.telemetry.v1.Telemetry` and kubelet PodResources v1) and the server issue (#8,
//! Open Inference Protocol v2). The crate exists now so the workspace layout is final.
