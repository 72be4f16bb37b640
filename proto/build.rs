//! Compiles the .proto files with protox (pure Rust: no `protoc` on the build machine) and
//! generates tonic clients and servers. Also writes the Open Inference Protocol's own file
//! descriptor set (for gRPC reflection) to `$OUT_DIR/inference_descriptor.bin`.

use std::path::PathBuf;

use protox::prost::Message;

/// Every protocol of the crate; a new one is one more line here.
const PROTOS: &[&str] = &[
    "proto/inference/grpc_predict_v2.proto",
    "proto/modelfleet/telemetry/v1/telemetry.proto",
    "proto/kubelet/podresources/v1/api.proto",
    "proto/envoy/service/ext_proc/v3/ext_proc.proto",
];

/// The Open Inference Protocol file, as protox names it (relative to the include dir).
const OIP_PROTO: &str = "inference/grpc_predict_v2.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;

    // The OIP file imports nothing, so its descriptor alone is a complete set.
    let mut oip = descriptors.clone();
    oip.file.retain(|file| file.name() == OIP_PROTO);
    if oip.file.len() != 1 {
        return Err(format!("{OIP_PROTO} is not among the compiled files").into());
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("inference_descriptor.bin"), oip.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
