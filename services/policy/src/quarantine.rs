//! The quarantine: messages the scan stage held back, in the KV bucket `quarantine` (key =
//! queue id), until an operator releases or deletes them. Their bodies stay where the
//! ingress put them; entries and bodies expire together after the retention period.

use std::time::SystemTime;

use async_nats::jetstream::kv;
use async_nats::jetstream::object_store::ObjectStore;
use bytes::Bytes;
use futures::TryStreamExt;
use mailflow_bus::{Bus, BusError, names};
use mailflow_proto::v1::{
    AcceptedMessage, DeliveryEvent, MessageStatus, QuarantineEntry, QuarantinedMessage,
    RecipientState, RemoteReply, body::Location,
};
use prost::Message;

/// Why a quarantine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    /// No quarantined message has this queue id.
    #[error("no quarantined message {0}")]
    NotFound(String),
    /// KV, the object store or publishing failed.
    #[error("quarantine storage: {0}")]
    Storage(String),
}

fn storage(e: impl std::fmt::Display) -> QuarantineError {
    QuarantineError::Storage(e.to_string())
}

impl From<BusError> for QuarantineError {
    fn from(e: BusError) -> Self {
        storage(e)
    }
}

/// The quarantine, shared by every policy replica.
#[derive(Clone)]
pub struct Quarantine {
    /// KV `quarantine`.
    kv: kv::Store,
    /// KV `mail-status`, for the recipients a deletion discards.
    status: kv::Store,
    /// `mail-bodies`, where a deleted message's body is removed.
    bodies: ObjectStore,
    /// Publishes released messages and discard events.
    bus: Bus,
}

/// What an operator sees of a held message.
fn entry(held: &QuarantinedMessage) -> QuarantineEntry {
    let msg = held.message.clone().unwrap_or_default();
    QuarantineEntry {
        queue_id: msg.queue_id.clone(),
        sender: msg.mail_from.map(|m| m.address).unwrap_or_default(),
        recipients: msg.recipients.into_iter().map(|r| r.address).collect(),
        subject: held.subject.clone(),
        reason: held.reason.clone(),
        size: msg.body.map_or(0, |b| b.size),
        client_ip: msg.client_ip,
        quarantined_at: held.quarantined_at,
    }
}

impl Quarantine {
    /// The quarantine in `kv`.
    pub fn new(kv: kv::Store, status: kv::Store, bodies: ObjectStore, bus: Bus) -> Self {
        Self {
            kv,
            status,
            bodies,
            bus,
        }
    }

    /// Holds `msg`. Holding a message twice (the route stage redelivered) keeps the first.
    pub async fn hold(
        &self,
        msg: &AcceptedMessage,
        reason: &str,
        subject: String,
    ) -> Result<(), QuarantineError> {
        let held = QuarantinedMessage {
            message: Some(msg.clone()),
            reason: reason.to_string(),
            quarantined_at: Some(SystemTime::now().into()),
            subject,
        };
        match self
            .kv
            .create(&msg.queue_id, Bytes::from(held.encode_to_vec()))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(storage(e)),
        }
    }

    /// The held message `queue_id`.
    async fn get(&self, queue_id: &str) -> Result<QuarantinedMessage, QuarantineError> {
        let value = self
            .kv
            .get(queue_id)
            .await
            .map_err(storage)?
            .ok_or_else(|| QuarantineError::NotFound(queue_id.to_string()))?;
        QuarantinedMessage::decode(value).map_err(storage)
    }

    /// Every held message, oldest first.
    pub async fn list(&self) -> Result<Vec<QuarantineEntry>, QuarantineError> {
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect().await.map_err(storage)?,
            Err(e) => return Err(storage(e)),
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            match self.get(&key).await {
                Ok(held) => out.push(entry(&held)),
                // Released or deleted meanwhile.
                Err(QuarantineError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|e| e.quarantined_at.map(|t| (t.seconds, t.nanos)));
        Ok(out)
    }

    /// Sends a held message to the route stage again, marked so that it is not scanned
    /// again, and forgets it. A repeated release within the duplicate window publishes
    /// nothing new (`Nats-Msg-Id = release.<queue id>`).
    pub async fn release(&self, queue_id: &str) -> Result<QuarantineEntry, QuarantineError> {
        let held = self.get(queue_id).await?;
        let mut msg = held.message.clone().unwrap_or_default();
        msg.released = true;
        self.bus
            .publish(
                names::MAIL_IN_SUBJECT.into(),
                &format!("release.{queue_id}"),
                Bytes::from(msg.encode_to_vec()),
            )
            .await?;
        self.kv.purge(queue_id).await.map_err(storage)?;
        tracing::info!(%queue_id, "released from quarantine");
        Ok(entry(&held))
    }

    /// Drops a held message: each recipient gets a `discarded` event, the body is deleted,
    /// and the entry goes. No notification is sent: the sender of quarantined mail is
    /// often forged.
    pub async fn delete(&self, queue_id: &str) -> Result<QuarantineEntry, QuarantineError> {
        let held = self.get(queue_id).await?;
        let record = match self.status.get(queue_id).await.map_err(storage)? {
            Some(value) => MessageStatus::decode(value).map_err(storage)?,
            None => MessageStatus::default(),
        };
        let at = Some(SystemTime::now().into());
        let reply = RemoteReply {
            code: 550,
            enhanced: "5.7.1".into(),
            text: "deleted from quarantine by an operator".into(),
        };
        let events: Vec<(String, String, Bytes)> = record
            .recipients
            .iter()
            .zip(0u32..)
            .map(|(r, index)| {
                let event = DeliveryEvent {
                    queue_id: queue_id.to_string(),
                    recipient: r.address.clone(),
                    state: RecipientState::Discarded as i32,
                    reply: Some(reply.clone()),
                    at,
                    ..Default::default()
                };
                (
                    names::event(queue_id, index),
                    format!("{queue_id}.{index}.discard"),
                    Bytes::from(event.encode_to_vec()),
                )
            })
            .collect();
        self.bus.publish_all(events).await?;
        let body = held.message.as_ref().and_then(|m| m.body.as_ref());
        if let Some(Location::Object(name)) = body.and_then(|b| b.location.as_ref()) {
            // A body already gone (expired) is no reason to keep the entry.
            if let Err(e) = self.bodies.delete(name.as_str()).await {
                tracing::warn!(%queue_id, error = %e, "quarantined body not deleted");
            }
        }
        self.kv.purge(queue_id).await.map_err(storage)?;
        tracing::info!(%queue_id, "deleted from quarantine");
        Ok(entry(&held))
    }
}
