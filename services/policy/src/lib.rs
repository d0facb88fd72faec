//! The mailflow policy service.
//!
//! - gRPC `Policy`: the in-session checks the ingress asks for while the client waits;
//! - gRPC `Directory`: local domains, users, aliases and DKIM keys, kept in the JetStream
//!   KV `directory` so that every replica sees the same data;
//! - gRPC `Quarantine`: held messages, listed, released or deleted by an operator;
//! - the scan-and-route stage: consumes `MAIL_IN`, scans each message (content rules,
//!   SPF/DKIM/DMARC/ARC verification, DKIM signing), splits it into one delivery job per
//!   destination domain on `MAIL_OUT`, and acknowledges its input only once the jobs are
//!   durable.

#![forbid(unsafe_code)]

pub mod auth;
pub mod checks;
pub mod directory;
pub mod dkim;
pub mod grpc;
pub mod quarantine;
pub mod rate;
pub mod route;
pub mod scan;

use mail_auth::MessageAuthenticator;
use mailflow_bus::{BodyStore, Bus, BusError, Topology};
use mailflow_proto::v1::{
    directory_server::DirectoryServer, policy_server::PolicyServer,
    quarantine_server::QuarantineServer,
};
use mailflow_runtime::Config;
use mailflow_runtime::grpc::GrpcError;
use tokio_util::sync::CancellationToken;

pub use directory::Directory;

/// Why the policy service stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// NATS could not be set up.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The gRPC server could not be built or failed.
    #[error(transparent)]
    Grpc(#[from] GrpcError),
    /// The DNS resolver could not be set up.
    #[error(transparent)]
    Dns(#[from] mailflow_dns::ResolverSetupError),
}

/// Runs the gRPC services and the scan-and-route stage until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), PolicyError> {
    let bus = Bus::connect(&config.nats, "mailflow-policy", &shutdown).await?;
    let topology = Topology::ensure(&bus, &shutdown).await?;
    let directory = Directory::open(topology.directory.clone(), shutdown.clone());
    let dns = mailflow_dns::MxResolver::new(&config.policy.dns_servers, 25)?;
    let quarantine = quarantine::Quarantine::new(
        topology.quarantine.clone(),
        topology.status.clone(),
        topology.bodies.clone(),
        bus.clone(),
    );
    let hostname = config.ingress.hostname.clone();

    let router_stage = route::RouteStage {
        bus: bus.clone(),
        bodies: BodyStore::new(&bus, &topology, config.nats.inline_body_limit),
        hostname: hostname.clone(),
        directory: directory.clone(),
        shards: config.policy.out_shards,
        scanner: scan::Scanner::new(
            MessageAuthenticator(dns.hickory()),
            hostname.clone(),
            config.policy.relay_networks.clone(),
            config.policy.scan.clone(),
        ),
        quarantine: quarantine.clone(),
    };
    let stage_shutdown = shutdown.clone();
    let stage = tokio::spawn(async move { router_stage.run(stage_shutdown).await });

    let (health, router) = mailflow_runtime::grpc::server()?;
    health
        .set_serving::<PolicyServer<grpc::PolicyService>>()
        .await;
    health
        .set_serving::<DirectoryServer<grpc::DirectoryService>>()
        .await;
    health
        .set_serving::<QuarantineServer<grpc::QuarantineService>>()
        .await;
    let failures = auth::FailureCounter::open(
        &bus,
        config.policy.auth_failure_limit,
        config.policy.auth_failure_window,
    )
    .await?;
    let rates = rate::RateLimiter::open(
        &bus,
        config.policy.rate_limit_per_ip,
        config.policy.rate_limit_per_user,
        config.policy.connection_rate_limit,
    )
    .await?;
    let policy = grpc::PolicyService {
        authenticator: MessageAuthenticator(dns.hickory()),
        directory: directory.clone(),
        relay_networks: config.policy.relay_networks.clone(),
        failures,
        dns,
        rates,
        dnsbl_zones: config.policy.dnsbl_zones.clone(),
        spf_enforce: config.policy.spf_enforce,
        hostname,
    };
    let addr = config.policy.grpc_listen;
    tracing::info!(%addr, "Policy, Directory and Quarantine gRPC ready");
    let served = router
        .add_service(PolicyServer::new(policy))
        .add_service(DirectoryServer::new(grpc::DirectoryService::new(directory)))
        .add_service(QuarantineServer::new(grpc::QuarantineService::new(
            quarantine,
        )))
        .serve_with_shutdown(addr, shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    if let Ok(Err(e)) = stage.await {
        tracing::error!(error = %e, "route stage failed");
    }
    served.map_err(|source| GrpcError::Serve { addr, source }.into())
}
