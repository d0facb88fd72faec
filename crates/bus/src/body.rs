//! Message bodies: inline in the bus payload when small, in the object store otherwise
//! (NATS' max_payload is 1 MB by default).

use async_nats::jetstream::object_store::ObjectStore;
use bytes::Bytes;
use mailflow_proto::v1::{Body, body::Location};
use tokio::io::AsyncReadExt;

use crate::connect::BusError;

/// Decides where a body goes and puts it there.
#[derive(Clone)]
pub struct BodyStore {
    /// The `mail-bodies` object store.
    store: ObjectStore,
    /// Bodies up to this size stay inline.
    inline_limit: usize,
}

impl BodyStore {
    /// A store that keeps bodies up to `inline_limit` octets inline.
    pub fn new(store: ObjectStore, inline_limit: usize) -> Self {
        Self {
            store,
            inline_limit,
        }
    }

    /// Stores `content` for message `queue_id` and returns its reference.
    pub async fn store(&self, queue_id: &str, content: Bytes) -> Result<Body, BusError> {
        let size = content.len() as u64;
        if content.len() <= self.inline_limit {
            return Ok(Body {
                location: Some(Location::Inline(content)),
                size,
            });
        }
        let mut reader = &content[..];
        self.store
            .put(queue_id, &mut reader)
            .await
            .map_err(|e| BusError::Storage {
                op: "put",
                name: format!("mail-bodies/{queue_id}"),
                reason: e.to_string(),
            })?;
        Ok(Body {
            location: Some(Location::Object(queue_id.to_string())),
            size,
        })
    }
}

/// Returns the content a [`Body`] refers to.
pub async fn load_body(store: &ObjectStore, body: &Body) -> Result<Bytes, BusError> {
    match &body.location {
        Some(Location::Inline(b)) => Ok(b.clone()),
        Some(Location::Object(name)) => {
            let err = |e: String| BusError::Storage {
                op: "get",
                name: format!("mail-bodies/{name}"),
                reason: e,
            };
            let mut object = store.get(name).await.map_err(|e| err(e.to_string()))?;
            let mut buf = Vec::with_capacity(usize::try_from(body.size).unwrap_or(0));
            object
                .read_to_end(&mut buf)
                .await
                .map_err(|e| err(e.to_string()))?;
            Ok(Bytes::from(buf))
        }
        None => Ok(Bytes::new()),
    }
}
