//! The gRPC server every service builds on: health (`grpc.health.v1`) and reflection are
//! always there, so probes and generic clients work against any mailflow service.

use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;

/// Why the gRPC server could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the reflection service: {0}")]
pub struct GrpcSetupError(#[from] tonic_reflection::server::Error);

/// A router with health and reflection, plus the reporter to mark services as serving.
pub fn server() -> Result<(HealthReporter, Router), GrpcSetupError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mailflow_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let router = Server::builder()
        .add_service(health)
        .add_service(reflection);
    Ok((reporter, router))
}
