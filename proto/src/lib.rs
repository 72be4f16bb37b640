//! modelfleet's wire protocols, generated from the `.proto` files in `proto/` at build time.
//!
//! - [`inference`]: the Open Inference Protocol v2 gRPC service (`inference.GRPCInferenceService`)
//!   served by modelfleet-server.
//! - [`telemetry`]: `modelfleet.telemetry.v1.Telemetry`, the NodeReport stream from the node
//!   agents to the operator.
//! - [`podresources`]: the part of the kubelet PodResources v1 API the node agent calls.

/// Open Inference Protocol v2, package `inference`.
#[allow(
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    reason = "generated code"
)]
pub mod inference {
    tonic::include_proto!("inference");
}

/// The node agents' telemetry stream, package `modelfleet.telemetry.v1`.
#[allow(
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    reason = "generated code"
)]
pub mod telemetry {
    tonic::include_proto!("modelfleet.telemetry.v1");
}

/// Kubelet PodResources v1 (`List` only), package `v1`.
#[allow(
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    reason = "generated code"
)]
pub mod podresources {
    tonic::include_proto!("v1");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::inference::*;

    #[test]
    fn field_numbers_follow_the_protocol() {
        // model_name is field 1 (tag 0x0a), raw_input_contents field 7 (tag 0x3a).
        let request = ModelInferRequest {
            model_name: "m".into(),
            raw_input_contents: vec![vec![1]],
            ..Default::default()
        };
        assert_eq!(request.encode_to_vec(), [0x0a, 0x01, b'm', 0x3a, 0x01, 0x01]);
        // fp32_contents is field 6, packed (tag 0x32).
        let contents = InferTensorContents {
            fp32_contents: vec![1.0],
            ..Default::default()
        };
        assert_eq!(contents.encode_to_vec(), [0x32, 0x04, 0x00, 0x00, 0x80, 0x3f]);
    }
}
