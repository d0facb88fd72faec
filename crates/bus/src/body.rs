//! Message bodies: inline in the bus payload when small, in the object store otherwise
//! (NATS' max_payload is 1 MB by default).

use async_nats::jetstream::object_store::{ObjectInfo, ObjectStore};
use bytes::Bytes;
use mailflow_proto::v1::{Body, body::Location};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::connect::{Bus, BusError};
use crate::topology::Topology;

/// The `mail-bodies` object store, and the size up to which a body travels inline instead.
#[derive(Clone)]
pub struct BodyStore {
    /// The `mail-bodies` object store.
    store: ObjectStore,
    /// Bodies up to this size stay inline.
    inline_limit: usize,
}

/// How much body the pipe to an upload holds before the writer waits (backpressure: a
/// client sending faster than JetStream stores waits in TCP, not in ingress memory).
const PIPE_BUFFER: usize = 256 * 1024;

impl BodyStore {
    /// The bodies of `topology` (made only once nats-server answered, so that its
    /// `max_payload` is known), keeping those up to `inline_limit` octets inline, but never
    /// more than half of `max_payload`: the other half is room for the envelope of the bus
    /// message carrying the body (recipients, added header fields), so that every message
    /// and delivery job fits in one. A larger body inline would be refused by nats-server on
    /// every try: the ingress could not accept the message, the route stage could not
    /// publish its jobs. The value is read once: a server with a smaller one needs a restart.
    pub fn new(bus: &Bus, topology: &Topology, inline_limit: usize) -> Self {
        let max_payload = bus.max_payload();
        let most = if max_payload == 0 {
            tracing::warn!("nats-server's max_payload is not known; inline bodies are not capped");
            inline_limit
        } else {
            max_payload / 2
        };
        if inline_limit > most {
            tracing::warn!(
                inline_body_limit = inline_limit,
                max_payload,
                used = most,
                "nats.inline_body_limit is over half of nats-server's max_payload; using half"
            );
        }
        Self {
            store: topology.bodies.clone(),
            inline_limit: inline_limit.min(most),
        }
    }

    /// Bodies up to this size travel inside the bus message.
    pub fn inline_limit(&self) -> usize {
        self.inline_limit
    }

    /// Stores a whole body: inline when small, else as object `name`.
    pub async fn put(&self, name: &str, content: Vec<u8>) -> Result<Body, BusError> {
        let size = content.len() as u64;
        if content.len() <= self.inline_limit {
            return Ok(Body {
                location: Some(Location::Inline(content.into())),
                size,
                ..Default::default()
            });
        }
        self.store
            .put(name, &mut content.as_slice())
            .await
            .map_err(|e| storage_error("put", name, e.to_string()))?;
        Ok(Body {
            location: Some(Location::Object(name.to_string())),
            size,
            ..Default::default()
        })
    }

    /// The content `body` refers to, its prefix first.
    pub async fn load(&self, body: &Body) -> Result<Bytes, BusError> {
        load_body(&self.store, body).await
    }

    /// Starts writing the body of message `name` into the object store while it arrives.
    pub fn spool(&self, name: &str) -> Spool {
        let (writer, mut reader) = tokio::io::duplex(PIPE_BUFFER);
        let (commit, committed) = oneshot::channel::<()>();
        let (store, object) = (self.store.clone(), name.to_string());
        let upload = tokio::spawn(async move {
            let put = store.put(object.as_str(), &mut reader).await;
            drop(reader);
            if committed.await.is_err() {
                // The writer went away without finishing: what was stored is a truncated
                // body that nothing refers to. Remove it rather than wait for max_age.
                if put.is_ok() {
                    let _ = store.delete(object.as_str()).await;
                }
                return Err(storage_error(
                    "put",
                    &object,
                    "the body was abandoned".into(),
                ));
            }
            put.map_err(|e| storage_error("put", &object, e.to_string()))
        });
        Spool {
            name: name.to_string(),
            writer,
            commit,
            upload,
            size: 0,
        }
    }
}

fn storage_error(op: &'static str, name: &str, reason: String) -> BusError {
    BusError::Storage {
        op,
        name: format!("mail-bodies/{name}"),
        reason,
    }
}

/// A body on its way into the object store. [`Spool::finish`] makes it whole; dropping the
/// spool (or [`Spool::abort`]) removes whatever was written.
#[derive(Debug)]
pub struct Spool {
    /// The object's name (the queue id).
    name: String,
    /// The pipe the upload reads from.
    writer: DuplexStream,
    /// Sent by `finish`: the end of the pipe is the end of the body, not an abandonment.
    commit: oneshot::Sender<()>,
    /// The upload task.
    upload: JoinHandle<Result<ObjectInfo, BusError>>,
    /// Octets written so far.
    size: u64,
}

impl Spool {
    /// Appends content; waits while the upload is behind.
    pub async fn write(&mut self, content: &[u8]) -> Result<(), BusError> {
        if self.writer.write_all(content).await.is_err() {
            // The upload ended early: it says why.
            return Err(self.upload_error().await);
        }
        self.size += content.len() as u64;
        Ok(())
    }

    /// Ends the body and waits until it is stored.
    pub async fn finish(self) -> Result<Body, BusError> {
        let Spool {
            name,
            mut writer,
            commit,
            upload,
            size,
        } = self;
        let _ = commit.send(());
        let _ = writer.shutdown().await;
        drop(writer);
        let info = upload
            .await
            .map_err(|e| storage_error("put", &name, e.to_string()))??;
        if info.size as u64 != size {
            return Err(storage_error(
                "put",
                &name,
                format!("stored {} octets of {size}", info.size),
            ));
        }
        Ok(Body {
            location: Some(Location::Object(name)),
            size,
            ..Default::default()
        })
    }

    /// Gives the body up and waits until what was written is removed.
    pub async fn abort(self) {
        let Spool {
            writer,
            commit,
            upload,
            ..
        } = self;
        // Both ends go now (fields left in a pattern would live to the end of this scope,
        // and the upload waits for the commit signal).
        drop((writer, commit));
        let _ = upload.await;
    }

    /// The error that ended the upload.
    async fn upload_error(&mut self) -> BusError {
        match (&mut self.upload).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => storage_error("put", &self.name, "upload ended early".into()),
            Err(e) => storage_error("put", &self.name, e.to_string()),
        }
    }
}

/// Returns the content a [`Body`] refers to, its prefix first.
pub async fn load_body(store: &ObjectStore, body: &Body) -> Result<Bytes, BusError> {
    let stored = match &body.location {
        Some(Location::Inline(b)) => b.clone(),
        Some(Location::Object(name)) => {
            let err = |e: String| storage_error("get", name, e);
            let mut object = store.get(name).await.map_err(|e| err(e.to_string()))?;
            let mut buf = Vec::with_capacity(usize::try_from(body.size).unwrap_or(0));
            buf.extend_from_slice(&body.prefix);
            object
                .read_to_end(&mut buf)
                .await
                .map_err(|e| err(e.to_string()))?;
            return Ok(Bytes::from(buf));
        }
        None => Bytes::new(),
    };
    if body.prefix.is_empty() {
        return Ok(stored);
    }
    Ok(Bytes::from(
        [body.prefix.as_ref(), stored.as_ref()].concat(),
    ))
}
