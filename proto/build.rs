//! Compiles the contracts in `mailflow/v1/` with protox (pure Rust, no protoc needed) and
//! generates prost messages and tonic services. The descriptor set is written to OUT_DIR so
//! that every gRPC server can serve reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "mailflow/v1/envelope.proto",
    "mailflow/v1/policy.proto",
    "mailflow/v1/directory.proto",
    "mailflow/v1/queue.proto",
    "mailflow/v1/quarantine.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("mailflow_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Bodies are shared, not copied, between stages.
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
