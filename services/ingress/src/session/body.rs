//! The body of a transaction on its way to storage: inline while it is small, streamed into
//! the backend's spool (the JetStream object store) once it outgrows the inline limit, so
//! that a session never holds a whole large message in memory.

use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use mailflow_proto::v1::{Body, body::Location};
use mailflow_smtp::BodyBuffer;

use crate::backend::{Backend, BackendError, Spool};

/// Content goes to the spool in pieces of at least this size (fewer, larger writes).
const WRITE_CHUNK: usize = 64 * 1024;

/// One message body being received.
#[derive(Debug)]
pub(super) struct Incoming<P> {
    /// The queue id, fixed when the body starts: it names the stored object and appears in
    /// the Received header.
    pub(super) queue_id: String,
    /// When the body started: the Received date and the envelope's `received_at`.
    pub(super) at: SystemTime,
    /// The Received header, the first octets of the stored content.
    header: Bytes,
    /// Where the content is going.
    stage: Stage<P>,
}

/// Where the content of an [`Incoming`] body is going.
#[derive(Debug)]
enum Stage<P> {
    /// Still small enough to travel inline: the receiver's buffer holds it.
    Inline,
    /// Streaming into the spool.
    Spooled(P),
    /// The spool failed: content is dropped as it arrives, and the transaction ends with a
    /// temporary failure.
    Broken(BackendError),
}

impl<P: Spool> Incoming<P> {
    /// A body whose stored content starts with `header`.
    pub(super) fn new(queue_id: String, at: SystemTime, header: Bytes) -> Self {
        Self {
            queue_id,
            at,
            header,
            stage: Stage::Inline,
        }
    }

    /// Moves received content along: into the spool once the body is too big to travel
    /// inline, and from then on whenever a chunk's worth has arrived.
    pub(super) async fn absorb<B>(&mut self, backend: &B, body: &mut BodyBuffer)
    where
        B: Backend<Spool = P>,
    {
        if body.refused() {
            // The message will be refused whatever follows: stop storing it now.
            self.abort_spool().await;
            return;
        }
        match &mut self.stage {
            Stage::Inline if self.header.len() + body.len() > backend.inline_limit() => {
                let mut spool = backend.spool(&self.queue_id);
                let written = match spool.write(&self.header).await {
                    Ok(()) => spool.write(&body.take()).await,
                    Err(e) => Err(e),
                };
                self.stage = match written {
                    Ok(()) => Stage::Spooled(spool),
                    Err(e) => {
                        spool.abort().await;
                        Stage::Broken(e)
                    }
                };
            }
            Stage::Spooled(spool) if body.buffered() >= WRITE_CHUNK => {
                if let Err(e) = spool.write(&body.take()).await {
                    self.break_with(e).await;
                }
            }
            Stage::Broken(_) => {
                body.take();
            }
            Stage::Inline | Stage::Spooled(_) => {}
        }
    }

    /// The stored body, once the receiver has the rest of the content (`rest`, what was not
    /// absorbed yet).
    pub(super) async fn finish<B>(self, backend: &B, rest: BytesMut) -> Result<Body, BackendError>
    where
        B: Backend<Spool = P>,
    {
        let size = (self.header.len() + rest.len()) as u64;
        match self.stage {
            Stage::Inline if size as usize <= backend.inline_limit() => {
                let mut content = BytesMut::with_capacity(size as usize);
                content.extend_from_slice(&self.header);
                content.extend_from_slice(&rest);
                Ok(Body {
                    location: Some(Location::Inline(content.freeze())),
                    size,
                    ..Default::default()
                })
            }
            Stage::Inline => {
                let mut spool = backend.spool(&self.queue_id);
                finish_spool(&mut spool, &[&self.header, &rest]).await?;
                spool.finish().await
            }
            Stage::Spooled(mut spool) => {
                finish_spool(&mut spool, &[&rest]).await?;
                spool.finish().await
            }
            Stage::Broken(e) => Err(e),
        }
    }

    /// Gives the body up (the message was refused).
    pub(super) async fn abort(mut self) {
        self.abort_spool().await;
    }

    async fn abort_spool(&mut self) {
        if let Stage::Spooled(spool) = std::mem::replace(&mut self.stage, Stage::Inline) {
            spool.abort().await;
        }
    }

    async fn break_with(&mut self, e: BackendError) {
        if let Stage::Spooled(spool) = std::mem::replace(&mut self.stage, Stage::Broken(e)) {
            spool.abort().await;
        }
    }
}

/// Writes the last pieces; on failure the spool is left for the caller to drop (dropping it
/// removes what was written).
async fn finish_spool<P: Spool>(spool: &mut P, pieces: &[&[u8]]) -> Result<(), BackendError> {
    for piece in pieces {
        spool.write(piece).await?;
    }
    Ok(())
}
