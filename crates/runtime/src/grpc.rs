//! The gRPC server every service builds on: health (`grpc.health.v1`) and reflection are
//! always there, so probes and generic clients work against any mailflow service.

use tonic::transport::Server;
use tonic::transport::server::Router;
use tonic_health::server::HealthReporter;

/// Why a gRPC server could not be built or stopped serving.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    /// The reflection service could not be built.
    #[error("cannot build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The server failed (typically: the address is in use).
    #[error("gRPC server on {addr}: {source}")]
    Serve {
        /// The listen address.
        addr: std::net::SocketAddr,
        /// The transport error.
        source: tonic::transport::Error,
    },
}

/// Marks the server as a whole (the empty service name, what probes ask by default) as
/// serving or not.
pub async fn set_overall(reporter: &HealthReporter, serving: bool) {
    use tonic_health::ServingStatus;
    let status = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    };
    reporter.set_service_status("", status).await;
}

/// A router with health and reflection, plus the reporter to mark services as serving.
pub fn server() -> Result<(HealthReporter, Router), GrpcError> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(mailflow_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    // v1alpha too: many clients (grpcurl's older releases, Python's grpcio-reflection)
    // still ask that version.
    let router = Server::builder()
        .trace_fn(crate::telemetry::request_span)
        .add_service(health)
        .add_service(builder().build_v1()?)
        .add_service(builder().build_v1alpha()?);
    Ok((reporter, router))
}
