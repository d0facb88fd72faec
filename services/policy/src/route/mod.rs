//! The scan-and-route stage: each accepted message is scanned ([`crate::scan`]), its
//! aliases expanded, and one delivery job per destination domain published.
//!
//! For each message on `MAIL_IN` it scans the content (and stores what the scan added or
//! removed), expands every recipient through the directory's aliases and catch-alls,
//! records the initial status (every final recipient queued, or bounced when its alias
//! cannot be expanded), publishes the jobs to `MAIL_OUT` with their acknowledgements in
//! flight together, and only then acknowledges the message on `MAIL_IN`. A quarantined
//! message is held instead, and a refused one reported to its sender. A crash anywhere in
//! between redelivers the message; the status record is only created if missing and the
//! jobs carry a `Nats-Msg-Id`, so a second pass changes nothing.

mod plan;

pub use plan::{Expanded, domain_of, expand, initial_status, recorded, split};

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, kv};
use bytes::Bytes;
use mailflow_bus::{BodyStore, Bus, BusError, ConsumerSpec, consume, keep_alive, names};
use mailflow_proto::v1::{AcceptedMessage, MessageStatus, RecipientState, RemoteReply, body};
use mailflow_report::{Action, Original, RecipientReport, notice};
use prost::Message;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::directory::{Directory, DirectoryError};
use crate::quarantine::{Quarantine, QuarantineError};
use crate::scan::{Decision, Headline, Origin, Scanner, headline};

/// Messages routed at once by one replica.
const CONCURRENCY: usize = 64;

/// Redelivery of a message after this long without an acknowledgement or progress report.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// The longest wait before a message whose routing failed is tried again.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);

/// A status record read back from KV `mail-status`.
fn decode_record(bytes: Bytes) -> Result<MessageStatus, RouteError> {
    MessageStatus::decode(bytes).map_err(|e| RouteError::Status(e.to_string()))
}

/// True when the record shows the message held in the quarantine.
fn is_held(record: &MessageStatus) -> bool {
    record
        .recipients
        .iter()
        .any(|r| r.state() == RecipientState::Quarantined)
}

/// The decision for a redelivered message: held if the first pass held it (this scan's
/// reason when it agrees), never held otherwise. A refusal needs no such care: the first
/// pass's recipients, failures included, are routed again from its record.
fn as_first_decided(decision: Decision, held_first: bool) -> Decision {
    match decision {
        Decision::Quarantine(reason) if held_first => Decision::Quarantine(reason),
        _ if held_first => Decision::Quarantine("held when first routed".into()),
        Decision::Quarantine(_) => Decision::Deliver,
        other => other,
    }
}

/// The address of the From header field, when it names exactly one mailbox (RFC 5322
/// §3.6.2 allows a list; DMARC then has no single domain to align with).
fn header_from(message: &[u8]) -> Option<String> {
    let parsed = mail_parser::MessageParser::new().parse_headers(message)?;
    let from = parsed.from()?;
    match from.iter().collect::<Vec<_>>().as_slice() {
        [one] => one.address().map(str::to_string),
        _ => None,
    }
}

/// How long a message waits after its `deliveries`-th routing failed: a delay that doubles
/// with each failure from a second, up to [`MAX_RETRY_DELAY`], so that a message that keeps
/// failing does not keep a handler busy.
fn retry_delay(deliveries: i64) -> Duration {
    let doublings = deliveries.clamp(1, 7) - 1;
    Duration::from_secs(1 << doublings).min(MAX_RETRY_DELAY)
}

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
    /// The message could not be quarantined.
    #[error(transparent)]
    Quarantine(#[from] QuarantineError),
}

/// The consumer of `MAIL_IN`.
pub struct RouteStage {
    /// Publishes jobs.
    pub bus: Bus,
    /// Bodies: scanned, rewritten, and returned with failure reports.
    pub bodies: BodyStore,
    /// The name failure reports come from.
    pub hostname: String,
    /// Tells local domains from remote ones, and holds the DKIM keys.
    pub directory: Directory,
    /// Number of `mail.out.<shard>` subjects.
    pub shards: u32,
    /// Checks, verifies and signs each message first.
    pub scanner: Scanner,
    /// Where held messages go.
    pub quarantine: Quarantine,
}

impl RouteStage {
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
            durable: names::ROUTE_CONSUMER.into(),
            filter: None,
            ack_wait: ACK_WAIT,
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
        // Verification can wait on slow DNS for a while: keep the message ours meanwhile.
        match keep_alive(&msg, ACK_WAIT, self.route(status, &accepted)).await {
            Ok(()) => {
                if let Err(e) = msg.ack().await {
                    tracing::warn!(queue_id = %accepted.queue_id, error = %e, "ack failed; the message will be routed again");
                }
            }
            Err(e) => {
                let delay = retry_delay(msg.info().map_or(1, |i| i.delivered));
                tracing::warn!(queue_id = %accepted.queue_id, error = %e, retry_in = ?delay, "routing failed; will retry");
                let _ = msg.ack_with(AckKind::Nak(Some(delay))).await;
            }
        }
    }

    async fn route(&self, status: &kv::Store, msg: &AcceptedMessage) -> Result<(), RouteError> {
        let mut msg = msg.clone();
        // A released message was scanned before it was held.
        let span = tracing::info_span!("scan", queue_id = %msg.queue_id);
        let (mut decision, headline) = self.scan(&mut msg).instrument(span).await?;
        let mut recipients = self.directory.view(|d| expand(d, &msg.recipients)).await?;
        for failed in recipients
            .iter()
            .filter_map(|r| r.failure.as_ref().map(|f| (r, f)))
        {
            tracing::warn!(queue_id = %msg.queue_id, recipient = %failed.0.recipient.address, error = %failed.1.text, "alias expansion failed");
        }
        let pending = match &decision {
            Decision::Deliver => RecipientState::Queued,
            Decision::Quarantine(reason) => {
                tracing::warn!(queue_id = %msg.queue_id, %reason, "quarantined");
                RecipientState::Quarantined
            }
            Decision::Reject(reason) => {
                tracing::warn!(queue_id = %msg.queue_id, %reason, "refused by a content rule");
                let reply = RemoteReply {
                    code: 550,
                    enhanced: "5.7.1".into(),
                    text: format!("message content rejected: {reason}"),
                };
                for r in recipients.iter_mut().filter(|r| r.failure.is_none()) {
                    r.failure = Some(reply.clone());
                }
                RecipientState::Queued
            }
        };
        let mut record = initial_status(&msg, &recipients, pending);
        record.message_id = headline.message_id.clone();
        if let Some(first) = self.write_record(status, &msg, record).await? {
            // A redelivery: the first pass decided, and may have published some of its jobs.
            // Its recipients and its verdict stand, whatever this scan or the directory say
            // now (a DNS answer or a rule changed in between).
            recipients = recorded(&msg.recipients, &first);
            decision = as_first_decided(decision, is_held(&first));
        }
        if let Decision::Quarantine(reason) = &decision {
            self.quarantine.hold(&msg, reason, headline.subject).await?;
            return Ok(());
        }
        self.report_failures(&msg, &recipients).await?;
        let local: HashMap<String, String> = self
            .directory
            .view(|d| {
                recipients
                    .iter()
                    .map(|r| domain_of(&r.recipient.address))
                    .filter(|domain| d.is_local(domain))
                    .map(|domain| {
                        let transport = d.transport(&domain).to_string();
                        (domain, transport)
                    })
                    .collect()
            })
            .await?;
        let mut jobs = split(&msg, &recipients, &local, self.shards);
        for (_, job) in &mut jobs {
            job.message_id = headline.message_id.clone();
        }
        let count = jobs.len();
        self.bus
            .publish_all(jobs.into_iter().map(|(subject, job)| {
                let id = job.job_id.clone();
                (subject, id, Bytes::from(job.encode_to_vec()))
            }))
            .await?;
        tracing::info!(
            queue_id = %msg.queue_id,
            message_id = %headline.message_id,
            from = %msg.mail_from.as_ref().map_or("", |m| m.address.as_str()),
            nrcpt = recipients.len(),
            jobs = count,
            "routed"
        );
        Ok(())
    }
}

impl RouteStage {
    /// Writes the status record of a message routed for the first time, or of a released
    /// one whose record still shows it held; returns the record already there when this
    /// is a redelivery of a message routed before (or released and routed before).
    async fn write_record(
        &self,
        status: &kv::Store,
        msg: &AcceptedMessage,
        record: MessageStatus,
    ) -> Result<Option<MessageStatus>, RouteError> {
        let failed = |e: String| RouteError::Status(e);
        let record = Bytes::from(record.encode_to_vec());
        if msg.released {
            // The release replaces the held record, once: compare-and-set on the revision
            // read, so a redelivered release finds the record it wrote.
            let entry = status
                .entry(&msg.queue_id)
                .await
                .map_err(|e| failed(e.to_string()))?;
            if let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) {
                let existing = decode_record(entry.value.clone())?;
                if !is_held(&existing) {
                    return Ok(Some(existing));
                }
                return match status.update(&msg.queue_id, record, entry.revision).await {
                    Ok(_) => Ok(None),
                    Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                        self.existing_record(status, &msg.queue_id).await
                    }
                    Err(e) => Err(failed(e.to_string())),
                };
            }
        }
        match status.create(&msg.queue_id, record).await {
            Ok(_) => Ok(None),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                self.existing_record(status, &msg.queue_id).await
            }
            Err(e) => Err(failed(e.to_string())),
        }
    }

    /// The status record of `queue_id`, known to exist.
    async fn existing_record(
        &self,
        status: &kv::Store,
        queue_id: &str,
    ) -> Result<Option<MessageStatus>, RouteError> {
        match status.get(queue_id).await {
            Ok(Some(bytes)) => decode_record(bytes).map(Some),
            Ok(None) => Err(RouteError::Status(format!(
                "status record of {queue_id} vanished"
            ))),
            Err(e) => Err(RouteError::Status(e.to_string())),
        }
    }

    /// Scans `msg` and stores what the scan changed in its body: added header fields in the
    /// prefix, a rewritten message inline or as a new object. Returns the decision and the
    /// message's headline. A released message (scanned before it was held) and one written
    /// by mailflow itself are not scanned.
    async fn scan(&self, msg: &mut AcceptedMessage) -> Result<(Decision, Headline), RouteError> {
        let origin = self.scanner.origin(msg);
        if msg.released || origin == Origin::Internal {
            let body = msg.body.clone().unwrap_or_default();
            let headline = match &body.location {
                Some(body::Location::Inline(content)) => headline(content),
                _ => Headline::default(),
            };
            return Ok((Decision::Deliver, headline));
        }
        let body = msg.body.clone().unwrap_or_default();
        let content = self.bodies.load(&body).await?;
        let key = match origin {
            Origin::Own => {
                let sender = msg.mail_from.as_ref().map_or("", |m| m.address.as_str());
                // The From header is read only when there is a key it could choose.
                self.directory
                    .view(|d| {
                        if d.dkim.is_empty() {
                            return None;
                        }
                        let from = header_from(&content);
                        d.signing_key(&msg.auth_identity, sender, from.as_deref())
                            .cloned()
                    })
                    .await?
            }
            Origin::Outside(_) | Origin::Internal => None,
        };
        let scanned = self.scanner.scan(msg, &content, key.as_ref()).await;
        let added = scanned.prefix.len() as u64;
        let mut body = match scanned.rewritten {
            // Under a new name: the original stays, so that a redelivered message is
            // scanned from the original.
            Some(rewritten) => {
                let name = format!("{}.scanned", msg.queue_id);
                self.bodies.put(&name, rewritten).await?
            }
            None => body,
        };
        body.prefix = [scanned.prefix.as_slice(), body.prefix.as_ref()]
            .concat()
            .into();
        body.size += added;
        msg.body = Some(body);
        Ok((scanned.decision, scanned.headline))
    }

    /// Tells the sender about recipients that failed here (an alias that cannot be
    /// expanded, a message refused by a content rule; RFC 3464), as the relay does for
    /// delivery failures. `Nats-Msg-Id = dsn.<queue id>.route`, so a second
    /// pass over the same message sends nothing new.
    async fn report_failures(
        &self,
        msg: &AcceptedMessage,
        recipients: &[Expanded],
    ) -> Result<(), RouteError> {
        let mail_from = msg.mail_from.clone().unwrap_or_default();
        if mail_from.address.is_empty() {
            return Ok(());
        }
        let reports: Vec<RecipientReport> = recipients
            .iter()
            .filter_map(|e| {
                RecipientReport::owed(&e.recipient, Action::Failed, e.failure.as_ref()?, "")
            })
            .collect();
        if reports.is_empty() {
            return Ok(());
        }
        let body = msg.body.clone().unwrap_or_default();
        let content = self.bodies.load(&body).await?;
        let original = Original {
            queue_id: &msg.queue_id,
            mail_from: &mail_from,
            received_at: msg.received_at,
            content: &content,
        };
        let queue_id = ulid::Ulid::generate().to_string();
        let report = notice(&self.hostname, original, reports, &queue_id);
        self.bus
            .publish(
                names::MAIL_IN_SUBJECT.into(),
                &format!("dsn.{}.route", msg.queue_id),
                Bytes::from(report.encode_to_vec()),
            )
            .await?;
        tracing::info!(queue_id = %msg.queue_id, notice = %queue_id, "failure report queued");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redelivered_message_keeps_the_first_verdict() {
        let held = || Decision::Quarantine("dmarc".into());
        assert_eq!(as_first_decided(held(), true), held());
        assert_eq!(
            as_first_decided(Decision::Deliver, true),
            Decision::Quarantine("held when first routed".into())
        );
        assert_eq!(as_first_decided(held(), false), Decision::Deliver);
        assert_eq!(
            as_first_decided(Decision::Deliver, false),
            Decision::Deliver
        );
        let refused = Decision::Reject("rule".into());
        assert_eq!(as_first_decided(refused.clone(), false), refused);
    }

    #[test]
    fn failed_routing_waits_longer_each_time_up_to_a_minute() {
        let delays: Vec<u64> = (0..10).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
