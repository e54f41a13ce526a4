//! Generates the gRPC code from proto/ingress.proto with protox (a protobuf
//! compiler in Rust), so no `protoc` binary is needed. Also writes the names of
//! the `Admin` service's methods (`admin_rpcs.rs`), so that a test can check that
//! the scope table (`src/scopes.rs`) decides every one of them, and the encoded
//! descriptor set (`ingress_descriptor.bin`, with the proto's comments) that
//! gRPC server reflection serves (`src/grpc_tools.rs`).

use std::fmt::Write;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/ingress.proto");
    let descriptors = protox::compile(["proto/ingress.proto"], ["proto"])?;
    let mut names = String::from("/// Every method of the `Admin` service, as the proto names it.\n#[cfg(test)]\npub(crate) const ADMIN_RPCS: &[&str] = &[\n");
    for file in &descriptors.file {
        for service in file.service.iter().filter(|s| s.name() == "Admin") {
            for method in &service.method {
                writeln!(names, "    {:?},", method.name())?;
            }
        }
    }
    names.push_str("];\n");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("admin_rpcs.rs"), names)?;
    std::fs::write(
        out.join("ingress_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
