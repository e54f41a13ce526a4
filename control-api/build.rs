//! Generates the gRPC code from proto/ingress.proto with protox (a protobuf
//! compiler in Rust), so no `protoc` binary is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ingress.proto");
    let descriptors = protox::compile(["proto/ingress.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
