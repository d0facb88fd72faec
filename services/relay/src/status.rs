//! Where each recipient stands: the record the route stage created in KV `mail-status`
//! (envelope and final recipients), with each recipient's latest event on `MAIL_EVENTS`
//! applied. A delivery attempt only appends events, one per recipient on
//! `mail.events.<queue id>.<index>`: no read-modify-write of the record on the hot path,
//! and no conflict between jobs of one message finishing at once.

use std::time::{Duration, SystemTime};

use async_nats::jetstream::{kv, stream};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::try_join_all;
use mailflow_bus::{Bus, BusError, Outgoing, names};
use mailflow_proto::v1::{
    DeliveryEvent, DeliveryJob, MessageStatus, RecipientState, RecipientStatus,
};
use prost::Message;

use crate::deliver::Outcome;

/// Reads status and records outcomes.
#[derive(Clone)]
pub struct StatusBook {
    /// KV `mail-status`: the records as routed.
    kv: kv::Store,
    /// Stream `MAIL_EVENTS`: the latest event per recipient.
    events: stream::Stream,
    /// For publishing events.
    bus: Bus,
}

fn storage(op: &'static str, name: &str, e: impl std::fmt::Display) -> BusError {
    BusError::Storage {
        op,
        name: name.to_string(),
        reason: e.to_string(),
    }
}

/// True for states that end a recipient's story.
pub fn is_final(state: RecipientState) -> bool {
    matches!(
        state,
        RecipientState::Delivered | RecipientState::Bounced | RecipientState::Discarded
    )
}

/// Applies an event to the recipient it is about.
pub fn apply(recipient: &mut RecipientStatus, event: DeliveryEvent) {
    recipient.state = event.state;
    recipient.attempts = event.attempt;
    recipient.remote_host = event.remote_host;
    recipient.remote_ip = event.remote_ip;
    recipient.last_reply = event.reply;
    recipient.updated_at = event.at;
    recipient.tls = event.tls;
    recipient.next_attempt_at = event.next_attempt_at;
}

impl StatusBook {
    /// A book over the status bucket and the events stream.
    pub fn new(kv: kv::Store, events: stream::Stream, bus: Bus) -> Self {
        Self { kv, events, bus }
    }

    /// The current state of a message: its record with every recipient's latest event.
    pub async fn get(&self, queue_id: &str) -> Result<Option<Current>, BusError> {
        let record = self
            .kv
            .get(queue_id)
            .await
            .map_err(|e| storage("get", &format!("{}/{queue_id}", names::STATUS_BUCKET), e))?;
        let Some(record) = record else {
            return Ok(None);
        };
        let mut status = MessageStatus::decode(record)?;
        // A recipient final at routing (an alias loop) has no events to look for.
        let open: Vec<usize> = (0..status.recipients.len())
            .filter(|&i| !is_final(status.recipients[i].state()))
            .collect();
        let events = try_join_all(open.iter().map(|&i| self.latest(queue_id, i))).await?;
        let mut latest = vec![0; status.recipients.len()];
        for (i, event) in open.into_iter().zip(events) {
            if let Some((event, sequence)) = event {
                apply(&mut status.recipients[i], event);
                latest[i] = sequence;
            }
        }
        Ok(Some(Current { status, latest }))
    }

    /// Waits until `queue_id` has a status record (the route stage writes it when it
    /// routes the message), then reads it as [`StatusBook::get`] does.
    pub async fn wait_routed(&self, queue_id: &str) -> Result<Current, BusError> {
        let bucket = || format!("{}/{queue_id}", names::STATUS_BUCKET);
        // With history: a record written since the caller looked is seen at once.
        let mut updates = self
            .kv
            .watch_with_history(queue_id)
            .await
            .map_err(|e| storage("watch", &bucket(), e))?;
        while let Some(entry) = updates.next().await {
            let entry = entry.map_err(|e| storage("watch", &bucket(), e))?;
            if entry.operation == kv::Operation::Put
                && let Some(current) = self.get(queue_id).await?
            {
                return Ok(current);
            }
        }
        Err(storage("watch", &bucket(), "the watch ended"))
    }

    /// The latest event of recipient `index` and its stream sequence, if any.
    async fn latest(
        &self,
        queue_id: &str,
        index: usize,
    ) -> Result<Option<(DeliveryEvent, u64)>, BusError> {
        let subject = names::event(queue_id, u32::try_from(index).unwrap_or(u32::MAX));
        match self.events.get_last_raw_message_by_subject(&subject).await {
            Ok(msg) => Ok(Some((DeliveryEvent::decode(msg.payload)?, msg.sequence))),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
            {
                Ok(None)
            }
            Err(e) => Err(storage("get", &subject, e)),
        }
    }

    /// Of the recipients `indexes` of `queue_id`, those with an event newer than `before`
    /// (the state an attempt started from; `None`: a first attempt, before any event): an
    /// operator acted on them meanwhile.
    pub async fn changed_since(
        &self,
        queue_id: &str,
        indexes: &[u32],
        before: Option<&Current>,
    ) -> Result<Vec<u32>, BusError> {
        let latest = try_join_all(
            indexes
                .iter()
                .map(|&i| self.latest(queue_id, usize::try_from(i).unwrap_or(usize::MAX))),
        )
        .await?;
        Ok(indexes
            .iter()
            .zip(latest)
            .filter(|(i, latest)| {
                latest
                    .as_ref()
                    .is_some_and(|(_, sequence)| *sequence > Current::after_in(before, **i))
            })
            .map(|(i, _)| *i)
            .collect())
    }

    /// Records `results` (recipient index, address, outcome) of one attempt: one event per
    /// recipient, all acknowledged before this returns. A deferral says when the next
    /// attempt is due, `retry_in` from now. `before` is the state the attempt started from
    /// (`None`: a first attempt, before any event). An outcome other than a delivery is
    /// recorded only if no event came for its recipient meanwhile (an operator's cancel
    /// during the attempt stays final rather than being undone by a deferral); a delivery
    /// is a fact and always recorded. Returns the indexes of the outcomes not recorded.
    pub async fn record(
        &self,
        job: &DeliveryJob,
        attempt: u32,
        results: &[(u32, String, Outcome)],
        retry_in: Duration,
        before: Option<&Current>,
    ) -> Result<Vec<u32>, BusError> {
        let now = SystemTime::now();
        let at = Some(prost_types::Timestamp::from(now));
        let next = Some(prost_types::Timestamp::from(now + retry_in));
        let events: Vec<Outgoing> = results
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
                    at,
                    tls: outcome.tls.clone(),
                    next_attempt_at: (outcome.state == RecipientState::Deferred)
                        .then_some(next)
                        .flatten(),
                };
                Outgoing {
                    subject: names::event(&job.queue_id, *index),
                    msg_id: format!("{}.{index}.{attempt}", job.job_id),
                    payload: Bytes::from(event.encode_to_vec()),
                    after: (outcome.state != RecipientState::Delivered)
                        .then(|| Current::after_in(before, *index)),
                }
            })
            .collect();
        let stored = self.bus.publish_guarded(events).await?;
        Ok(results
            .iter()
            .zip(stored)
            .filter(|(_, stored)| !stored)
            .map(|((index, _, _), _)| *index)
            .collect())
    }
}

/// A message's state as read, and what a later event about each recipient must follow.
#[derive(Debug, Clone)]
pub struct Current {
    /// The record with each recipient's latest event applied.
    pub status: MessageStatus,
    /// For each recipient by index, the stream sequence of its latest event (0: none).
    latest: Vec<u64>,
}

impl Current {
    /// [`Current::after`] of the state an attempt started from; with none (a first
    /// attempt, before any event), 0.
    fn after_in(before: Option<&Self>, index: u32) -> u64 {
        before.map_or(0, |c| c.after(index))
    }

    /// The sequence an event about recipient `index` must follow to be recorded.
    pub fn after(&self, index: u32) -> u64 {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.latest.get(i))
            .copied()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_proto::v1::RemoteReply;

    #[test]
    fn an_event_sets_the_recipient_state_and_keeps_its_identity() {
        let mut r = RecipientStatus {
            address: "a@x.test".into(),
            original: "list@x.test".into(),
            state: RecipientState::Queued as i32,
            ..Default::default()
        };
        apply(
            &mut r,
            DeliveryEvent {
                recipient: "a@x.test".into(),
                state: RecipientState::Deferred as i32,
                remote_host: "mx.x.test".into(),
                remote_ip: "192.0.2.1".into(),
                reply: Some(RemoteReply {
                    code: 451,
                    enhanced: "4.2.0".into(),
                    text: "busy".into(),
                }),
                attempt: 2,
                ..Default::default()
            },
        );
        assert_eq!(r.state(), RecipientState::Deferred);
        assert_eq!((r.attempts, r.remote_host.as_str()), (2, "mx.x.test"));
        assert_eq!(r.last_reply.unwrap().code, 451);
        assert_eq!(
            (r.address.as_str(), r.original.as_str()),
            ("a@x.test", "list@x.test")
        );
    }
}
