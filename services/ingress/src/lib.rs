//! The mailflow ingress: the SMTP server.
//!
//! It accepts SMTP sessions on the MX, submission and implicit-TLS listeners ([`server`],
//! [`session`]), asks the policy service about senders, recipients and credentials over gRPC
//! while the client waits, and answers `250 2.0.0 Ok: queued as <id>` only after the message
//! is durable in the JetStream stream `MAIL_IN` ([`backend`]).

#![forbid(unsafe_code)]

pub mod backend;
pub mod limits;
pub mod received;
pub mod server;
pub mod session;
pub mod tls;
pub mod verdicts;

use std::net::SocketAddr;
use std::sync::Arc;

use mailflow_bus::{BodyStore, Bus, BusError, Topology};
use mailflow_runtime::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use backend::{Backend, BackendError, Services};
pub use session::{ListenerKind, Session, SessionConfig};

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
        addr: SocketAddr,
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
    /// The TLS certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The health server could not be built or serve.
    #[error(transparent)]
    Health(#[from] mailflow_runtime::grpc::GrpcError),
    /// A TLS listener is configured without a certificate.
    #[error("ingress.{listener} needs ingress.tls_cert and ingress.tls_key")]
    NoCertificate {
        /// The listener's key.
        listener: &'static str,
    },
}

/// Runs the ingress until `shutdown` is cancelled and open sessions have drained.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), IngressError> {
    let ingress = &config.ingress;
    let cert = match (&ingress.tls_cert, &ingress.tls_key) {
        (Some(cert), Some(key)) => Some(Arc::new(tls::ReloadingCert::new(
            cert.clone(),
            key.clone(),
        )?)),
        _ => None,
    };
    for (addr, listener) in [
        (ingress.submission_listen, "submission_listen"),
        (ingress.smtps_listen, "smtps_listen"),
    ] {
        if addr.is_some() && cert.is_none() {
            return Err(IngressError::NoCertificate { listener });
        }
    }
    let acceptor = cert
        .as_ref()
        .map(|c| tls::acceptor(c.clone()))
        .transpose()?;
    if let Some(cert) = &cert {
        tokio::spawn(
            cert.clone()
                .watch(ingress.tls_reload_interval, shutdown.clone()),
        );
    }

    let bus = Bus::connect(&config.nats, "mailflow-ingress", &shutdown).await?;
    let topology = Topology::ensure(&bus, &shutdown).await?;
    let bodies = BodyStore::new(&bus, &topology, config.nats.inline_body_limit);
    let services = Services::new(ingress, bus, bodies)?;

    let mut listeners = Vec::new();
    for (addr, kind) in [
        (Some(ingress.mx_listen), ListenerKind::Mx),
        (ingress.submission_listen, ListenerKind::Submission),
        (ingress.smtps_listen, ListenerKind::Smtps),
    ] {
        let Some(addr) = addr else { continue };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| IngressError::Bind { addr, source })?;
        tracing::info!(%addr, listener = kind.name(), "SMTP listener ready");
        let session = SessionConfig::from_config(ingress, kind, acceptor.is_some());
        listeners.push((listener, Arc::new(session)));
    }
    if let Some(addr) = ingress.health_listen {
        serve_health(addr, shutdown.clone()).await?;
    }
    let shared = Arc::new(server::Shared {
        backend: services,
        tls: acceptor,
        limits: limits::Limits::new(ingress.max_connections, ingress.max_connections_per_ip),
        shutdown,
        handshake_timeout: ingress.command_timeout,
    });
    server::serve(listeners, shared, ingress.shutdown_grace).await;
    Ok(())
}

/// Serves gRPC health on `addr`: the whole server is serving from now (the listeners are
/// bound) until `shutdown`, when it turns not serving so that no new clients are sent here
/// while open sessions drain.
async fn serve_health(addr: SocketAddr, shutdown: CancellationToken) -> Result<(), IngressError> {
    use mailflow_runtime::grpc;
    let (health, router) = grpc::server()?;
    grpc::set_overall(&health, true).await;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| IngressError::Bind { addr, source })?;
    tracing::info!(%addr, "gRPC health ready");
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(async move {
        shutdown.cancelled().await;
        grpc::set_overall(&health, false).await;
    });
    tokio::spawn(async move {
        // Kept up through the drain (answering not serving); ends with the process.
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::warn!(error = %e, "gRPC health server stopped");
        }
    });
    Ok(())
}
