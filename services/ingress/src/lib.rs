//! The mailflow ingress: the SMTP server.
//!
//! It accepts SMTP sessions ([`session`]), asks the policy service about every recipient
//! over gRPC while the client waits, and answers `250 2.0.0 Ok: queued as <id>` only after
//! the message is durable in the JetStream stream `MAIL_IN` ([`backend`]).

#![forbid(unsafe_code)]

pub mod backend;
pub mod received;
pub mod server;
pub mod session;

use std::sync::Arc;

use mailflow_bus::{BodyStore, Bus, BusError, Topology};
use mailflow_runtime::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use backend::{Backend, BackendError, Services};
pub use session::{Session, SessionConfig};

/// Why the ingress stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum IngressError {
    /// NATS could not be set up.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The configured address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The policy endpoint is not a valid URI.
    #[error("invalid ingress.policy_url {url:?}: {reason}")]
    PolicyUrl {
        /// The configured URL.
        url: String,
        /// Why it is invalid.
        reason: String,
    },
}

/// Runs the ingress until `shutdown` is cancelled and open sessions have drained.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), IngressError> {
    let bus = Bus::connect(&config.nats, "mailflow-ingress", &shutdown).await?;
    let topology = Topology::ensure(&bus, &shutdown).await?;
    let bodies = BodyStore::new(topology.bodies, config.nats.inline_body_limit);
    let services = Services::new(&config.ingress, bus, bodies)?;
    let addr = config.ingress.mx_listen;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| IngressError::Bind { addr, source })?;
    tracing::info!(%addr, "SMTP listener (mx) ready");
    let session_config = Arc::new(SessionConfig::from_config(&config.ingress, "mx"));
    server::serve(
        listener,
        session_config,
        services,
        shutdown,
        config.ingress.max_connections,
        config.ingress.shutdown_grace,
    )
    .await;
    Ok(())
}
