//! The mailflow contracts: protobuf bus payloads and gRPC services, package `mailflow.v1`.
//!
//! The `.proto` files in `proto/mailflow/v1/` are the source of truth; this crate compiles
//! them at build time (protox + tonic-prost-build, no `protoc` needed) and exposes the
//! encoded descriptor set so that every gRPC server can offer reflection.

#![forbid(unsafe_code)]

/// Generated types of package `mailflow.v1`.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    tonic::include_proto!("mailflow.v1");
}

/// The encoded `FileDescriptorSet` of every mailflow contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/mailflow_descriptor.bin"));
