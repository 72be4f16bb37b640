//! modelfleet's wire protocols, generated from the `.proto` files in `proto/` at build time.
//!
//! - [`inference`]: the Open Inference Protocol v2 gRPC service (`inference.GRPCInferenceService`)
//!   served by modelfleet-server.
//! - [`telemetry`]: `modelfleet.telemetry.v1.Telemetry`, the NodeReport stream from the node
//!   agents to the operator.
//! - [`podresources`]: the part of the kubelet PodResources v1 API the node agent calls.
//! - [`ext_proc`]: the part of Envoy's external processing v3 API
//!   (`envoy.service.ext_proc.v3.ExternalProcessor`) the router serves as a Gateway API
//!   Inference Extension Endpoint Picker; the client is generated too, for tests.
//!
//! [`OIP_FILE_DESCRIPTOR_SET`] holds the encoded descriptor of the inference protocol alone, for
//! gRPC server reflection.

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

/// The encoded `google.protobuf.FileDescriptorSet` of `inference/grpc_predict_v2.proto` (the
/// Open Inference Protocol v2 and nothing else), for a gRPC reflection service.
pub const OIP_FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptor");

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

/// Envoy external processing v3 (`Process` only), package `envoy.service.ext_proc.v3`. The
/// messages Envoy keeps in other packages (`envoy.config.core.v3`, `google.protobuf.Struct`, ...)
/// are declared in this package: the wire format does not carry message names.
#[allow(
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    reason = "generated code"
)]
pub mod ext_proc {
    tonic::include_proto!("envoy.service.ext_proc.v3");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::inference::model_infer_request::InferInputTensor;
    use super::inference::*;

    #[test]
    fn field_numbers_follow_the_protocol() {
        // model_name is field 1 (tag 0x0a), raw_input_contents field 7 (tag 0x3a).
        let request = ModelInferRequest {
            model_name: "m".into(),
            ..Default::default()
        };
        assert_eq!(request.encode_to_vec(), [0x0a, 0x01, b'm']);
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
        // bytes_contents is field 8 (tag 0x42), one length-delimited entry per element.
        let contents = InferTensorContents {
            bytes_contents: vec![b"ab".to_vec()],
            ..Default::default()
        };
        assert_eq!(contents.encode_to_vec(), [0x42, 0x02, b'a', b'b']);
        // InferParameter's oneof: string_param is field 3 (tag 0x1a).
        let parameter = InferParameter {
            parameter_choice: Some(infer_parameter::ParameterChoice::StringParam("x".into())),
        };
        assert_eq!(parameter.encode_to_vec(), [0x1a, 0x01, b'x']);
    }

    #[test]
    fn bytes_input_round_trips() {
        // A BYTES tensor of two elements in the raw form: each element is a 4-byte little-endian
        // length followed by its bytes.
        let mut raw = Vec::new();
        for text in ["hello", "wörld"] {
            raw.extend_from_slice(&u32::try_from(text.len()).expect("short").to_le_bytes());
            raw.extend_from_slice(text.as_bytes());
        }
        let request = ModelInferRequest {
            model_name: "minilm".into(),
            model_version: "1".into(),
            id: "req-1".into(),
            parameters: [(
                "truncate".to_owned(),
                InferParameter {
                    parameter_choice: Some(infer_parameter::ParameterChoice::BoolParam(true)),
                },
            )]
            .into(),
            inputs: vec![InferInputTensor {
                name: "text".into(),
                datatype: "BYTES".into(),
                shape: vec![2],
                ..Default::default()
            }],
            outputs: vec![model_infer_request::InferRequestedOutputTensor {
                name: "embedding".into(),
                ..Default::default()
            }],
            raw_input_contents: vec![raw.clone()],
        };
        let wire = request.encode_to_vec();
        // Fields are written in field-number order; the raw contents come last, under tag 7.
        let tail = [[0x3a, u8::try_from(raw.len()).expect("short")].as_slice(), &raw].concat();
        assert!(
            wire.ends_with(&tail),
            "raw_input_contents is not field 7: {wire:02x?}"
        );

        let decoded = ModelInferRequest::decode(wire.as_slice()).expect("decodes");
        assert_eq!(decoded, request);
        assert_eq!(decoded.inputs[0].datatype, "BYTES");
        assert_eq!(decoded.inputs[0].shape, [2]);
        assert_eq!(&decoded.raw_input_contents[0][..4], 5u32.to_le_bytes());
        assert_eq!(&decoded.raw_input_contents[0][4..9], b"hello");
    }

    #[test]
    fn ext_proc_fields_carry_envoys_numbers() {
        use super::ext_proc::{
            HeaderValue, ImmediateResponse, ProcessingResponse, Struct, processing_response::Response,
        };
        // HeaderValue.raw_value is field 3 (tag 0x1a): what Envoy reads in set_headers.
        let header = HeaderValue {
            key: "k".into(),
            value: String::new(),
            raw_value: b"v".to_vec(),
        };
        assert_eq!(header.encode_to_vec(), [0x0a, 0x01, b'k', 0x1a, 0x01, b'v']);
        // ProcessingResponse: immediate_response is field 7 (tag 0x3a), dynamic_metadata 8 (0x42).
        let response = ProcessingResponse {
            response: Some(Response::ImmediateResponse(ImmediateResponse::default())),
            dynamic_metadata: Some(Struct::default()),
        };
        assert_eq!(response.encode_to_vec(), [0x3a, 0x00, 0x42, 0x00]);
    }

    /// The parts of `google.protobuf.FileDescriptorSet` the test reads (prost skips the rest).
    #[derive(Clone, PartialEq, prost::Message)]
    struct FileDescriptorSet {
        #[prost(message, repeated, tag = "1")]
        file: Vec<FileDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct FileDescriptorProto {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(string, tag = "2")]
        package: String,
        #[prost(message, repeated, tag = "6")]
        service: Vec<ServiceDescriptorProto>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct ServiceDescriptorProto {
        #[prost(string, tag = "1")]
        name: String,
    }

    #[test]
    fn descriptor_set_holds_the_inference_protocol_only() {
        let set = FileDescriptorSet::decode(super::OIP_FILE_DESCRIPTOR_SET).expect("decodes");
        assert_eq!(set.file.len(), 1);
        let file = &set.file[0];
        assert_eq!(file.name, "inference/grpc_predict_v2.proto");
        assert_eq!(file.package, "inference");
        let services: Vec<&str> = file.service.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(services, ["GRPCInferenceService"]);
    }
}
