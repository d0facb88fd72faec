//! The route stage: one delivery job per destination domain.
//!
//! For each accepted message it records the initial status (every recipient queued),
//! publishes the jobs to `MAIL_OUT` with their acknowledgements in flight together, and only
//! then acknowledges the message on `MAIL_IN`. A crash anywhere in between redelivers the
//! message; the status record is only created if missing and the jobs carry a
//! `Nats-Msg-Id`, so a second pass changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, kv};
use bytes::Bytes;
use mailflow_bus::{Bus, BusError, ConsumerSpec, consume, names};
use mailflow_proto::v1::{
    AcceptedMessage, DeliveryJob, JobRecipient, LocalRoute, MessageStatus, RecipientState,
    RecipientStatus, RemoteRoute, Route, route,
};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::directory::{Directory, DirectoryError};

/// Messages routed at once by one replica.
const CONCURRENCY: usize = 64;

/// Why one message could not be routed (it is redelivered).
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The directory could not be read.
    #[error(transparent)]
    Directory(#[from] DirectoryError),
    /// Publishing or storing failed.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The status record could not be created.
    #[error("status record: {0}")]
    Status(String),
}

/// The consumer of `MAIL_IN`.
pub struct RouteStage {
    /// Publishes jobs.
    bus: Bus,
    /// Tells local domains from remote ones.
    directory: Directory,
    /// Number of `mail.out.<shard>` subjects.
    shards: u32,
}

/// The domain part of an address, lower-cased.
fn domain_of(address: &str) -> String {
    address
        .rsplit_once('@')
        .map_or(String::new(), |(_, d)| d.to_lowercase())
}

/// FNV-1a: a hash that stays the same across builds, so a domain keeps its shard.
fn shard_of(domain: &str, shards: u32) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in domain.bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % shards.max(1)
}

/// Splits a message into jobs (subject, job), one per destination domain, in the order the
/// domains first appear among the recipients.
pub fn split(
    msg: &AcceptedMessage,
    local_domains: &HashSet<String>,
    shards: u32,
) -> Vec<(String, DeliveryJob)> {
    let mut jobs: Vec<(String, DeliveryJob)> = Vec::new();
    for (index, rcpt) in msg.recipients.iter().enumerate() {
        let domain = domain_of(&rcpt.address);
        let entry = JobRecipient {
            recipient: Some(rcpt.clone()),
            index: u32::try_from(index).unwrap_or(u32::MAX),
        };
        if let Some((_, job)) = jobs.iter_mut().find(|(_, j)| j.domain == domain) {
            job.recipients.push(entry);
            continue;
        }
        let kind = if local_domains.contains(&domain) {
            route::Kind::Local(LocalRoute {})
        } else {
            route::Kind::Remote(RemoteRoute {})
        };
        let job = DeliveryJob {
            job_id: format!("{}.{}", msg.queue_id, jobs.len()),
            queue_id: msg.queue_id.clone(),
            domain: domain.clone(),
            route: Some(Route { kind: Some(kind) }),
            mail_from: msg.mail_from.clone(),
            recipients: vec![entry],
            body: msg.body.clone(),
            received_at: msg.received_at,
            trace: msg.trace.clone(),
        };
        jobs.push((names::mail_out(shard_of(&domain, shards)), job));
    }
    jobs
}

/// The status record of a freshly routed message: every recipient queued.
pub fn initial_status(msg: &AcceptedMessage) -> MessageStatus {
    MessageStatus {
        queue_id: msg.queue_id.clone(),
        sender: msg
            .mail_from
            .as_ref()
            .map(|m| m.address.clone())
            .unwrap_or_default(),
        client_ip: msg.client_ip.clone(),
        received_at: msg.received_at,
        size: msg.body.as_ref().map_or(0, |b| b.size),
        recipients: msg
            .recipients
            .iter()
            .map(|r| RecipientStatus {
                address: r.address.clone(),
                state: RecipientState::Queued as i32,
                updated_at: msg.received_at,
                ..Default::default()
            })
            .collect(),
    }
}

impl RouteStage {
    /// A stage publishing through `bus`.
    pub fn new(bus: Bus, directory: Directory, shards: u32) -> Self {
        Self {
            bus,
            directory,
            shards,
        }
    }

    /// Consumes `MAIL_IN` until `shutdown`.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), BusError> {
        let status = self
            .bus
            .js
            .get_key_value(names::STATUS_BUCKET)
            .await
            .map_err(|e| BusError::Setup {
                name: names::STATUS_BUCKET.into(),
                reason: e.to_string(),
            })?;
        let spec = ConsumerSpec {
            stream: names::MAIL_IN,
            durable: names::ROUTE_CONSUMER,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1024,
            concurrency: CONCURRENCY,
        };
        consume(&self.bus, spec, &shutdown, |msg| self.handle(&status, msg)).await;
        Ok(())
    }

    async fn handle(&self, status: &kv::Store, msg: jetstream::Message) {
        let accepted = match AcceptedMessage::decode(msg.payload.clone()) {
            Ok(a) => a,
            Err(e) => {
                // Not something a retry can fix; keep it out of the way and say so loudly.
                tracing::error!(error = %e, subject = %msg.subject, "undecodable message on MAIL_IN; terminated");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        match self.route(status, &accepted).await {
            Ok(jobs) => {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(queue_id = %accepted.queue_id, error = %e, "ack failed; the message will be routed again");
                } else {
                    tracing::info!(queue_id = %accepted.queue_id, jobs, "routed");
                }
            }
            Err(e) => {
                tracing::warn!(queue_id = %accepted.queue_id, error = %e, "routing failed; will retry");
                let _ = msg
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
            }
        }
    }

    async fn route(&self, status: &kv::Store, msg: &AcceptedMessage) -> Result<usize, RouteError> {
        let mut local = HashSet::new();
        let domains: HashSet<String> = msg
            .recipients
            .iter()
            .map(|r| domain_of(&r.address))
            .collect();
        for domain in domains {
            if self.directory.is_local_domain(&domain).await? {
                local.insert(domain);
            }
        }
        let record = Bytes::from(initial_status(msg).encode_to_vec());
        match status.create(&msg.queue_id, record).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(RouteError::Status(e.to_string())),
        }
        let jobs = split(msg, &local, self.shards);
        let count = jobs.len();
        self.bus
            .publish_all(jobs.into_iter().map(|(subject, job)| {
                let id = job.job_id.clone();
                (subject, id, Bytes::from(job.encode_to_vec()))
            }))
            .await?;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_proto::v1::Recipient;

    fn message(rcpts: &[&str]) -> AcceptedMessage {
        AcceptedMessage {
            queue_id: "Q1".into(),
            recipients: rcpts
                .iter()
                .map(|a| Recipient {
                    address: a.to_string(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn one_job_per_domain_keeping_recipient_indexes() {
        let msg = message(&[
            "a@local.test",
            "x@Remote.test",
            "b@local.test",
            "y@other.test",
        ]);
        let local: HashSet<String> = ["local.test".to_string()].into();
        let jobs = split(&msg, &local, 16);
        assert_eq!(jobs.len(), 3);
        let (subject, first) = &jobs[0];
        assert!(subject.starts_with("mail.out."));
        assert_eq!(first.job_id, "Q1.0");
        assert_eq!(first.domain, "local.test");
        assert!(matches!(
            first.route.as_ref().unwrap().kind,
            Some(route::Kind::Local(_))
        ));
        let idx: Vec<u32> = first.recipients.iter().map(|r| r.index).collect();
        assert_eq!(idx, vec![0, 2]);
        assert_eq!(jobs[1].1.domain, "remote.test");
        assert!(matches!(
            jobs[1].1.route.as_ref().unwrap().kind,
            Some(route::Kind::Remote(_))
        ));
        assert_eq!(jobs[2].1.recipients[0].index, 3);
    }

    #[test]
    fn shards_are_stable_and_in_range() {
        assert_eq!(shard_of("example.test", 16), shard_of("example.test", 16));
        for d in ["a.test", "b.test", "c.test", "example.org"] {
            assert!(shard_of(d, 16) < 16);
        }
        assert_eq!(shard_of("x.test", 0), 0);
    }

    #[test]
    fn initial_status_queues_every_recipient() {
        let st = initial_status(&message(&["a@x.test", "b@y.test"]));
        assert_eq!(st.recipients.len(), 2);
        assert!(
            st.recipients
                .iter()
                .all(|r| r.state() == RecipientState::Queued)
        );
    }
}
