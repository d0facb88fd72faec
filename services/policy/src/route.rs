//! The route stage: aliases expanded, then one delivery job per destination domain.
//!
//! For each accepted message it expands every recipient through the directory's aliases
//! and catch-alls, records the initial status (every final recipient queued, or bounced
//! when its alias cannot be expanded),
//! publishes the jobs to `MAIL_OUT` with their acknowledgements in flight together, and only
//! then acknowledges the message on `MAIL_IN`. A crash anywhere in between redelivers the
//! message; the status record is only created if missing and the jobs carry a
//! `Nats-Msg-Id`, so a second pass changes nothing.

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::{self, AckKind, kv};
use bytes::Bytes;
use mailflow_bus::{Bus, BusError, ConsumerSpec, consume, load_body, names};
use mailflow_proto::v1::{
    AcceptedMessage, DeliveryJob, JobRecipient, LocalRoute, MessageStatus, Recipient,
    RecipientState, RecipientStatus, RemoteReply, RemoteRoute, Route, route,
};
use mailflow_report::{Action, Original, RecipientReport, notice};
use prost::Message;
use tokio_util::sync::CancellationToken;

use crate::directory::{Directory, DirectoryError, ExpandError, Snapshot};

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
    /// Bodies in the object store, for returning a message with a failure report.
    bodies: ObjectStore,
    /// The name failure reports come from.
    hostname: String,
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

/// One final recipient of a message, after alias expansion.
#[derive(Debug, Clone, PartialEq)]
pub struct Expanded {
    /// The recipient to deliver to, with the client's DSN parameters; ORCPT names the
    /// address the client gave when an alias changed it (RFC 3461 §4.2).
    pub recipient: Recipient,
    /// The address the client gave, when an alias changed it; empty otherwise.
    pub original: String,
    /// Why the client's address could not be expanded; such a recipient is not delivered.
    pub failure: Option<ExpandError>,
}

/// Expands every recipient of a message through the directory's aliases.
pub fn expand(directory: &Snapshot, recipients: &[Recipient]) -> Vec<Expanded> {
    let mut out: Vec<Expanded> = Vec::with_capacity(recipients.len());
    for rcpt in recipients {
        let finals = match directory.expand(&rcpt.address) {
            Ok(finals) => finals,
            Err(failure) => {
                out.push(Expanded {
                    recipient: rcpt.clone(),
                    original: String::new(),
                    failure: Some(failure),
                });
                continue;
            }
        };
        for address in finals {
            // Two recipients that reach the same mailbox get one copy, as in Postfix.
            if out
                .iter()
                .any(|e| e.failure.is_none() && e.recipient.address.eq_ignore_ascii_case(&address))
            {
                continue;
            }
            let changed = address != rcpt.address;
            let mut recipient = rcpt.clone();
            if changed && recipient.dsn_orcpt.is_empty() {
                recipient.dsn_orcpt = format!("rfc822;{}", rcpt.address);
            }
            recipient.address = address;
            out.push(Expanded {
                recipient,
                original: if changed {
                    rcpt.address.clone()
                } else {
                    String::new()
                },
                failure: None,
            });
        }
    }
    out
}

/// Splits the deliverable recipients into jobs (subject, job), one per destination domain,
/// in the order the domains first appear. A job recipient's index is its position in
/// `recipients`, which is also its position in the status record.
pub fn split(
    msg: &AcceptedMessage,
    recipients: &[Expanded],
    local_domains: &HashSet<String>,
    shards: u32,
) -> Vec<(String, DeliveryJob)> {
    let mut jobs: Vec<(String, DeliveryJob)> = Vec::new();
    for (index, expanded) in recipients.iter().enumerate() {
        if expanded.failure.is_some() {
            continue;
        }
        let rcpt = &expanded.recipient;
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
            attempts_before: 0,
        };
        jobs.push((names::mail_out(shard_of(&domain, shards)), job));
    }
    jobs
}

/// The reply recorded for a recipient whose alias cannot be expanded (RFC 3463: X.4.6
/// routing loop, X.2.4 mailing list expansion problem).
fn expansion_reply(failure: &ExpandError) -> RemoteReply {
    let enhanced = match failure {
        ExpandError::Loop(_) | ExpandError::TooDeep => "5.4.6",
        ExpandError::TooMany => "5.2.4",
    };
    RemoteReply {
        code: 550,
        enhanced: enhanced.into(),
        text: failure.to_string(),
    }
}

/// The status record of a freshly routed message: every final recipient queued, and those
/// whose alias could not be expanded bounced.
pub fn initial_status(msg: &AcceptedMessage, recipients: &[Expanded]) -> MessageStatus {
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
        recipients: recipients
            .iter()
            .map(|r| RecipientStatus {
                address: r.recipient.address.clone(),
                original: r.original.clone(),
                state: match r.failure {
                    None => RecipientState::Queued,
                    Some(_) => RecipientState::Bounced,
                } as i32,
                last_reply: r.failure.as_ref().map(expansion_reply),
                updated_at: msg.received_at,
                ..Default::default()
            })
            .collect(),
    }
}

impl RouteStage {
    /// A stage publishing through `bus`.
    pub fn new(
        bus: Bus,
        bodies: ObjectStore,
        hostname: String,
        directory: Directory,
        shards: u32,
    ) -> Self {
        Self {
            bus,
            bodies,
            hostname,
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
            durable: names::ROUTE_CONSUMER.into(),
            filter: None,
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
        let (recipients, local) = self
            .directory
            .view(|d| {
                let recipients = expand(d, &msg.recipients);
                let local: HashSet<String> = recipients
                    .iter()
                    .map(|r| domain_of(&r.recipient.address))
                    .filter(|domain| d.is_local(domain))
                    .collect();
                (recipients, local)
            })
            .await?;
        for failed in recipients
            .iter()
            .filter_map(|r| r.failure.as_ref().map(|f| (r, f)))
        {
            tracing::warn!(queue_id = %msg.queue_id, recipient = %failed.0.recipient.address, error = %failed.1, "alias expansion failed");
        }
        let record = Bytes::from(initial_status(msg, &recipients).encode_to_vec());
        match status.create(&msg.queue_id, record).await {
            Ok(_) => {}
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {}
            Err(e) => return Err(RouteError::Status(e.to_string())),
        }
        self.report_failures(msg, &recipients).await?;
        let jobs = split(msg, &recipients, &local, self.shards);
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

impl RouteStage {
    /// Tells the sender about recipients whose alias could not be expanded (RFC 3464), as the
    /// relay does for delivery failures. `Nats-Msg-Id = dsn.<queue id>.route`, so a second
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
                let reply = expansion_reply(e.failure.as_ref()?);
                RecipientReport::owed(&e.recipient, Action::Failed, &reply, "")
            })
            .collect();
        if reports.is_empty() {
            return Ok(());
        }
        let body = msg.body.clone().unwrap_or_default();
        let content = load_body(&self.bodies, &body).await?;
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
    use mailflow_proto::v1::AliasInfo;

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
        let recipients = expand(&Snapshot::default(), &msg.recipients);
        let jobs = split(&msg, &recipients, &local, 16);
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
        let msg = message(&["a@x.test", "b@y.test"]);
        let st = initial_status(&msg, &expand(&Snapshot::default(), &msg.recipients));
        assert_eq!(st.recipients.len(), 2);
        assert!(
            st.recipients
                .iter()
                .all(|r| r.state() == RecipientState::Queued && r.original.is_empty())
        );
    }

    fn alias(s: &mut Snapshot, source: &str, targets: &[&str]) {
        let (l, d) = source.split_once('@').unwrap();
        s.aliases.insert(
            (d.into(), l.into()),
            AliasInfo {
                source: source.into(),
                targets: targets.iter().map(|t| t.to_string()).collect(),
            },
        );
    }

    #[test]
    fn aliases_are_expanded_deduplicated_and_loops_bounced() {
        let mut dir = Snapshot::default();
        dir.domains.insert("x.test".into());
        alias(&mut dir, "sales@x.test", &["a@x.test", "far@r.test"]);
        alias(&mut dir, "loop@x.test", &["loop2@x.test"]);
        alias(&mut dir, "loop2@x.test", &["loop@x.test"]);
        let mut msg = message(&["sales@x.test", "A@x.test", "loop@x.test"]);
        msg.recipients[0].dsn_notify = vec![mailflow_proto::v1::DsnNotify::Success as i32];
        let expanded = expand(&dir, &msg.recipients);
        let addresses: Vec<&str> = expanded
            .iter()
            .map(|e| e.recipient.address.as_str())
            .collect();
        assert_eq!(addresses, vec!["a@x.test", "far@r.test", "loop@x.test"]);
        assert_eq!(expanded[0].original, "sales@x.test");
        assert_eq!(expanded[0].recipient.dsn_orcpt, "rfc822;sales@x.test");
        assert_eq!(
            expanded[0].recipient.dsn_notify,
            msg.recipients[0].dsn_notify
        );
        assert!(matches!(expanded[2].failure, Some(ExpandError::Loop(_))));

        let st = initial_status(&msg, &expanded);
        let states: Vec<RecipientState> = st.recipients.iter().map(|r| r.state()).collect();
        assert_eq!(
            states,
            vec![
                RecipientState::Queued,
                RecipientState::Queued,
                RecipientState::Bounced
            ]
        );
        let reply = st.recipients[2].last_reply.as_ref().unwrap();
        assert_eq!((reply.code, reply.enhanced.as_str()), (550, "5.4.6"));

        let local: HashSet<String> = ["x.test".to_string()].into();
        let jobs = split(&msg, &expanded, &local, 4);
        let indexes: Vec<(String, u32)> = jobs
            .iter()
            .flat_map(|(_, j)| j.recipients.iter().map(|r| (j.domain.clone(), r.index)))
            .collect();
        assert_eq!(
            indexes,
            vec![("x.test".to_string(), 0), ("r.test".to_string(), 1)]
        );
    }
}
