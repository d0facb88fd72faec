//! Recording outcomes: the message's record in KV `mail-status` (compare-and-set, since the
//! jobs of one message may finish at the same moment on different replicas) and one event
//! per recipient on `MAIL_EVENTS`.

use std::time::SystemTime;

use async_nats::jetstream::kv;
use bytes::Bytes;
use mailflow_bus::{Bus, BusError, compare_and_set_from, names};
use mailflow_proto::v1::{
    DeliveryEvent, DeliveryJob, MessageStatus, RecipientState, RecipientStatus,
};
use prost::Message;

use crate::deliver::Outcome;

/// Reads and writes status records.
#[derive(Clone)]
pub struct StatusBook {
    /// KV `mail-status`.
    kv: kv::Store,
    /// For events.
    bus: Bus,
}

fn storage(op: &'static str, key: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Storage {
        op,
        name: format!("{}/{key}", names::STATUS_BUCKET),
        reason: e.to_string(),
    }
}

/// True for states that end a recipient's story.
pub fn is_final(state: RecipientState) -> bool {
    matches!(state, RecipientState::Delivered | RecipientState::Bounced)
}

impl StatusBook {
    /// A book over `kv`.
    pub fn new(kv: kv::Store, bus: Bus) -> Self {
        Self { kv, bus }
    }

    /// The current record of a message.
    pub async fn get(&self, queue_id: &str) -> Result<Option<MessageStatus>, BusError> {
        match self
            .kv
            .get(queue_id)
            .await
            .map_err(|e| storage("get", queue_id, e))?
        {
            Some(v) => Ok(Some(MessageStatus::decode(v)?)),
            None => Ok(None),
        }
    }

    /// Applies `results` (recipient index, address, outcome) to the record and publishes
    /// the events.
    pub async fn record(
        &self,
        job: &DeliveryJob,
        attempt: u32,
        results: &[(u32, String, Outcome)],
    ) -> Result<(), BusError> {
        let now = prost_types::Timestamp::from(SystemTime::now());
        // A first attempt starts from the record the job carries, if any; on later ones it
        // is surely stale.
        let known = job
            .created_status
            .as_ref()
            .filter(|_| attempt == 1 && job.created_revision > 0)
            .map(|s| (Bytes::from(s.encode_to_vec()), job.created_revision));
        // Jobs of one message may finish at the same moment: no bound on the retries, as a
        // conflict means another writer made progress.
        compare_and_set_from(&self.kv, &job.queue_id, known, usize::MAX, |current| {
            let mut status = match current {
                Some(value) => MessageStatus::decode(value)?,
                None => MessageStatus {
                    queue_id: job.queue_id.clone(),
                    sender: job
                        .mail_from
                        .as_ref()
                        .map(|m| m.address.clone())
                        .unwrap_or_default(),
                    received_at: job.received_at,
                    ..Default::default()
                },
            };
            for (index, address, outcome) in results {
                let i = *index as usize;
                if status.recipients.len() <= i {
                    status.recipients.resize(i + 1, RecipientStatus::default());
                }
                let r = &mut status.recipients[i];
                r.address = address.clone();
                r.state = outcome.state as i32;
                r.attempts = attempt;
                r.remote_host = outcome.remote_host.clone();
                r.remote_ip = outcome.remote_ip.clone();
                r.last_reply = Some(outcome.reply.clone());
                r.updated_at = Some(now);
            }
            Ok(Some(Bytes::from(status.encode_to_vec())))
        })
        .await?;
        let events: Vec<(String, String, Bytes)> = results
            .iter()
            .map(|(index, address, outcome)| {
                let event = DeliveryEvent {
                    queue_id: job.queue_id.clone(),
                    job_id: job.job_id.clone(),
                    recipient: address.clone(),
                    state: outcome.state as i32,
                    remote_host: outcome.remote_host.clone(),
                    remote_ip: outcome.remote_ip.clone(),
                    reply: Some(outcome.reply.clone()),
                    attempt,
                    at: Some(now),
                };
                (
                    names::events(&job.queue_id),
                    format!("{}.{index}.{attempt}", job.job_id),
                    Bytes::from(event.encode_to_vec()),
                )
            })
            .collect();
        self.bus.publish_all(events).await
    }
}
