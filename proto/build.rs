//! Compiles the .proto files with protox (pure Rust: no `protoc` on the build machine) and
//! generates tonic clients and servers.

/// Every protocol of the crate.
const PROTOS: &[&str] = &[
    "proto/inference/grpc_predict_v2.proto",
    "proto/modelfleet/telemetry/v1/telemetry.proto",
    "proto/kubelet/podresources/v1/api.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
