//! The accept loops: one per listener, bounded connections, TLS (implicit or by STARTTLS),
//! one task per session, and a graceful drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backend::Backend;
use crate::limits::{Limits, Refusal};
use crate::session::{Ending, ListenerKind, Session, SessionConfig};

/// Everything the sessions of all listeners share.
pub struct Shared<B> {
    /// Policy and queue.
    pub backend: B,
    /// TLS, when a certificate is configured.
    pub tls: Option<TlsAcceptor>,
    /// Connection limits.
    pub limits: Arc<Limits>,
    /// Cancelled on SIGTERM.
    pub shutdown: CancellationToken,
    /// How long the TLS handshake may take.
    pub handshake_timeout: Duration,
}

/// Runs every listener until shutdown, then waits up to `grace` for open sessions.
pub async fn serve<B: Backend>(
    listeners: Vec<(TcpListener, Arc<SessionConfig>)>,
    shared: Arc<Shared<B>>,
    grace: Duration,
) {
    let sessions = TaskTracker::new();
    let mut loops = JoinSet::new();
    for (listener, config) in listeners {
        loops.spawn(accept_loop(
            listener,
            config,
            shared.clone(),
            sessions.clone(),
        ));
    }
    while loops.join_next().await.is_some() {}
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(
            open = sessions.len(),
            "grace period over; closing open sessions"
        );
    }
}

async fn accept_loop<B: Backend>(
    listener: TcpListener,
    config: Arc<SessionConfig>,
    shared: Arc<Shared<B>>,
    sessions: TaskTracker,
) {
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: keep serving the sessions we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // An IPv4 client of a dual-stack listener arrives as `::ffff:a.b.c.d`: seen as the
        // IPv4 address it is, for limits, relay networks, blocklists and Received.
        let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
        let admission = match shared.limits.admit(peer.ip()) {
            Ok(a) => a,
            Err(refusal) => {
                let text: &[u8] = match refusal {
                    Refusal::Total => b"421 4.7.0 Error: too many connections, try again later\r\n",
                    Refusal::PerIp => {
                        b"421 4.7.0 Error: too many connections from your address\r\n"
                    }
                };
                tracing::info!(client = %peer, ?refusal, "connection refused");
                sessions.spawn(async move {
                    let _ = stream.write_all(text).await;
                });
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let listener_name = config.kind.name();
        metrics::counter!("mailflow_smtp_connections_total", "listener" => listener_name)
            .increment(1);
        let open = metrics::gauge!("mailflow_smtp_sessions", "listener" => listener_name);
        open.increment(1.0);
        let span = tracing::info_span!("smtp", client = %peer, listener = listener_name);
        let (config, shared) = (config.clone(), shared.clone());
        sessions.spawn(
            async move {
                if let Err(e) = handle(stream, peer, config, shared).await {
                    tracing::debug!(error = %e, "session ended");
                }
                open.decrement(1.0);
                drop(admission);
            }
            .instrument(span),
        );
    }
}

/// Why a connection ended abnormally.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    /// The session failed.
    #[error(transparent)]
    Session(#[from] crate::session::SessionError),
    /// The TLS handshake failed or timed out.
    #[error("TLS handshake: {0}")]
    Handshake(String),
}

async fn handshake<B: Backend>(
    shared: &Shared<B>,
    stream: TcpStream,
) -> Result<
    (
        tokio_rustls::server::TlsStream<TcpStream>,
        mailflow_proto::v1::TlsInfo,
    ),
    ConnectionError,
> {
    let acceptor = shared
        .tls
        .as_ref()
        .ok_or_else(|| ConnectionError::Handshake("no certificate configured".into()))?;
    let tls = tokio::time::timeout(shared.handshake_timeout, acceptor.accept(stream))
        .await
        .map_err(|_| ConnectionError::Handshake("timed out".into()))?
        .map_err(|e| ConnectionError::Handshake(e.to_string()))?;
    let info = mailflow_runtime::tls::session_info(tls.get_ref().1);
    metrics::counter!("mailflow_tls_sessions_total", "direction" => "in", "version" => info.version.clone())
        .increment(1);
    Ok((tls, info))
}

async fn handle<B: Backend>(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<SessionConfig>,
    shared: Arc<Shared<B>>,
) -> Result<(), ConnectionError> {
    // The TLS part is boxed: its future is large (rustls state), and most sessions of an
    // MX never get there, so idle plaintext sessions stay small.
    if config.kind == ListenerKind::Smtps {
        return Box::pin(encrypted(stream, peer, config, shared, false)).await;
    }
    let plain = Session::new(
        stream,
        peer.ip(),
        None,
        config.clone(),
        shared.backend.clone(),
        shared.shutdown.clone(),
    );
    if let Ending::StartTls(stream) = plain.run().await? {
        Box::pin(encrypted(stream, peer, config, shared, true)).await?;
    }
    Ok(())
}

/// A session over TLS: implicit (greeting after the handshake) or after STARTTLS (no
/// greeting; the client speaks first).
async fn encrypted<B: Backend>(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<SessionConfig>,
    shared: Arc<Shared<B>>,
    after_starttls: bool,
) -> Result<(), ConnectionError> {
    let (tls, info) = handshake(&shared, stream).await?;
    let session = Session::new(
        tls,
        peer.ip(),
        Some(info),
        config,
        shared.backend.clone(),
        shared.shutdown.clone(),
    );
    if after_starttls {
        session.resume().await?;
    } else {
        session.run().await?;
    }
    Ok(())
}
