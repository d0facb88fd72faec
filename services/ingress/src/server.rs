//! The accept loop: bounded connections, one task per session, graceful drain.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::backend::Backend;
use crate::session::{Session, SessionConfig};

/// Accepts sessions until `shutdown`, then waits up to the grace period for open ones.
pub async fn serve<B: Backend>(
    listener: TcpListener,
    config: Arc<SessionConfig>,
    backend: B,
    shutdown: CancellationToken,
    max_connections: usize,
    grace: std::time::Duration,
) {
    let permits = Arc::new(Semaphore::new(max_connections));
    let sessions = TaskTracker::new();
    loop {
        let (mut stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Typically EMFILE: keep serving the sessions we have.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::task::yield_now().await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            sessions.spawn(async move {
                let _ = stream
                    .write_all(b"421 4.7.0 Error: too many connections, try again later\r\n")
                    .await;
            });
            continue;
        };
        let _ = stream.set_nodelay(true);
        let session = Session::new(
            stream,
            peer.ip(),
            config.clone(),
            backend.clone(),
            shutdown.clone(),
        );
        let span = tracing::info_span!("smtp", client = %peer, listener = %config.listener);
        sessions.spawn(
            async move {
                if let Err(e) = session.run().await {
                    tracing::debug!(error = %e, "session ended");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
    sessions.close();
    if tokio::time::timeout(grace, sessions.wait()).await.is_err() {
        tracing::warn!(
            open = sessions.len(),
            "grace period over; closing open sessions"
        );
    }
}
