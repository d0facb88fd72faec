//! The consumer of `MAIL_OUT`, shared by every relay replica through one durable consumer.
//!
//! A job is acknowledged only after its outcomes are recorded. While a job is being worked
//! on, the relay reports progress so that JetStream does not hand it to another replica;
//! if this replica dies, the job returns to the queue after `ack_wait`. Recipients already
//! in a final state are skipped, so a redelivered job does not deliver them twice.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, AckKind};
use mailflow_bus::{Bus, BusError, ConsumerSpec, consume, keep_alive, load_body, names};
use mailflow_proto::v1::{DeliveryJob, RecipientState};
use mailflow_report::RecipientReport;
use mailflow_runtime::config::Transport;
use prost::Message;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::budget::BodyBudget;
use crate::deliver::{Deliverer, Outcome, Pending};
use crate::destination::{self, Destinations};
use crate::lifetime::Lifetime;
use crate::status::{Current, StatusBook, is_final};
use crate::suspend::Suspensions;
use crate::{notify, retry};

/// The consumer's settings.
pub struct Consumer {
    /// Stream access and publishing.
    pub bus: Bus,
    /// Status records.
    pub status: StatusBook,
    /// Bodies in the object store.
    pub bodies: async_nats::jetstream::object_store::ObjectStore,
    /// Does the delivering.
    pub deliverer: Deliverer,
    /// Jobs at once.
    pub concurrency: usize,
    /// JetStream ack wait.
    pub ack_wait: Duration,
    /// Delays before retries, one retry tier each; the last repeats.
    pub retry_delays: Vec<Duration>,
    /// Queue lifetime and delay warning.
    pub lifetime: Lifetime,
    /// Per-destination concurrency and rate.
    pub destinations: Destinations,
    /// Domains whose delivery an operator suspended.
    pub suspensions: Suspensions,
    /// The octets of bodies the deliveries under way may hold together.
    pub memory: BodyBudget,
}

impl Consumer {
    /// Consumes until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let spec = ConsumerSpec {
            stream: names::MAIL_OUT,
            durable: names::RELAY_CONSUMER.into(),
            filter: None,
            ack_wait: self.ack_wait,
            max_ack_pending: 10_000,
            concurrency: self.concurrency,
        };
        consume(&self.bus, spec, &shutdown, |msg| self.handle(msg)).await;
    }

    async fn handle(&self, msg: jetstream::Message) {
        let job = match DeliveryJob::decode(msg.payload.clone()) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, subject = %msg.subject, "undecodable delivery job; terminated");
                let _ = msg.ack_with(AckKind::Term).await;
                return;
            }
        };
        if self.suspensions.contains(&job.domain)
            && self.suspensions.still_suspended(&job.domain).await
        {
            let ack = match retry::hold(&self.bus, &job, &msg.subject).await {
                Ok(()) => msg.ack().await,
                Err(e) => {
                    tracing::warn!(job_id = %job.job_id, error = %e, "cannot hold the job of a suspended domain");
                    msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                        .await
                }
            };
            if let Err(e) = ack {
                tracing::warn!(job_id = %job.job_id, error = %e, "acknowledgement failed; the job may be held twice");
            }
            return;
        }
        // Room for the body first (it waits as long as it must), and only then a delivery
        // slot of the destination (waited for at most `destination::WAIT`): a job waiting
        // for memory never holds one of the destination's slots idle.
        let memory = self
            .memory
            .reserve(job.body.as_ref().map_or(0, |b| b.size))
            .await;
        // A destination at its limit: the job goes to the back of the queue rather than
        // hold a delivery slot (mail for other destinations keeps flowing). Local Maildir
        // delivery opens no connection and is not limited.
        let transport = self.deliverer.transport(&job);
        let limited = !matches!(transport, Transport::Maildir(_))
            && !self.deliverer.known_unreachable(&job, &transport);
        let permit = if limited {
            match self
                .destinations
                .acquire(&job.domain, destination::WAIT)
                .await
            {
                Some(permit) => Some(permit),
                None => return self.requeue(&msg, &job).await,
            }
        } else {
            None
        };
        // Attempts before this publication of the job, plus this stream's deliveries of it.
        let delivered = msg.info().map_or(1, |i| i.delivered).max(1) as u32;
        let attempt = job.attempts_before + delivered;
        // Keep the job ours while we work on it, reporting progress from this task (no
        // extra task per job).
        let span = tracing::info_span!("delivery", queue_id = %job.queue_id, domain = %job.domain, attempt);
        let work = self
            .work(&job, &transport, attempt, permit, memory)
            .instrument(span);
        let result = keep_alive(&msg, self.ack_wait, work).await;
        let ack = match result {
            Ok(false) => msg.ack().await,
            Ok(true) => {
                let tiers = self.retry_delays.len();
                let sequence = msg.info().map_or(0, |i| i.stream_sequence);
                let out = (msg.subject.as_str(), sequence);
                match retry::park(&self.bus, &job, attempt, out, tiers).await {
                    Ok(()) => msg.ack().await,
                    Err(e) => {
                        // Keep the job here instead; it comes back after the first delay.
                        tracing::warn!(job_id = %job.job_id, error = %e, "cannot park the deferred job; retrying from the delivery queue");
                        let delay = self
                            .retry_delays
                            .first()
                            .copied()
                            .unwrap_or(Duration::from_secs(300));
                        msg.ack_with(AckKind::Nak(Some(delay))).await
                    }
                }
            }
            Err(e) => {
                tracing::warn!(job_id = %job.job_id, error = %e, "delivery attempt not recorded; retrying soon");
                msg.ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await
            }
        };
        if let Err(e) = ack {
            tracing::warn!(job_id = %job.job_id, error = %e, "acknowledgement failed; the job may be delivered again");
        }
    }

    /// Publishes `job` again at the end of its subject and acknowledges this copy. The new
    /// copy has a fresh `Nats-Msg-Id` (this one's stream sequence), so it is not taken for a
    /// duplicate; a crash between the two steps leaves both copies, which can deliver twice
    /// but never loses the job. The copy is marked `requeued`: an operator's cancel may
    /// have missed it while it was on its way, so its attempt reads the recipients' state.
    async fn requeue(&self, msg: &jetstream::Message, job: &DeliveryJob) {
        let (sequence, delivered) = msg
            .info()
            .map_or((0, 1), |i| (i.stream_sequence, i.delivered));
        let id = format!("{}.wait.{sequence}", job.job_id);
        let mut copy = job.clone();
        copy.requeued += 1;
        // Attempts this copy made before (a redelivery after a failed one) keep counting:
        // the copy's attempt numbers, which name its events, do not start again.
        copy.attempts_before += u32::try_from(delivered - 1).unwrap_or(0);
        let published = self
            .bus
            .publish(msg.subject.to_string(), &id, copy.encode_to_vec().into())
            .await;
        let ack = match published {
            Ok(()) => msg.ack().await,
            Err(e) => {
                tracing::warn!(job_id = %job.job_id, error = %e, "cannot requeue; retrying soon");
                msg.ack_with(AckKind::Nak(Some(destination::WAIT))).await
            }
        };
        if let Err(e) = ack {
            tracing::warn!(job_id = %job.job_id, error = %e, "acknowledgement failed; the job may be delivered again");
        }
    }

    /// One attempt; `Ok(true)` when some recipients were deferred. `permit`, the
    /// destination's concurrency slot, is given back as soon as the exchanger has answered:
    /// recording the outcome does not hold up the next delivery to the destination.
    async fn work(
        &self,
        job: &DeliveryJob,
        transport: &Transport,
        attempt: u32,
        permit: Option<OwnedSemaphorePermit>,
        memory: Option<OwnedSemaphorePermit>,
    ) -> Result<bool, BusError> {
        // Room for the body, given back when the attempt is over (its notices need the
        // content too).
        let _memory = memory;
        // On a first attempt no recipient can be final yet: skip the read. Later attempts
        // (a retry, or a redelivery after a crash) and jobs held for a suspended domain or
        // sent round for a busy one (which an operator may have cancelled meanwhile) skip
        // recipients already done.
        let current = if attempt > 1 || job.held > 0 || job.requeued > 0 {
            self.status.get(&job.queue_id).await?
        } else {
            None
        };
        let pending: Vec<Pending> = job
            .recipients
            .iter()
            .filter(|r| {
                current
                    .as_ref()
                    .and_then(|c| c.status.recipients.get(r.index as usize))
                    .is_none_or(|s| !is_final(s.state()))
            })
            .map(|r| {
                (
                    r.index,
                    r.recipient
                        .as_ref()
                        .map(|x| x.address.clone())
                        .unwrap_or_default(),
                )
            })
            .collect();
        if pending.is_empty() {
            return Ok(false);
        }
        let body = job.body.clone().unwrap_or_default();
        let content = load_body(&self.bodies, &body).await?;
        let outcomes = self
            .deliverer
            .deliver(transport, job, &pending, content.clone())
            .await;
        drop(permit);
        let age = age_of(job.received_at, SystemTime::now());
        let mut delayed = Vec::new();
        let mut results: Vec<(u32, String, _)> = pending
            .into_iter()
            .zip(outcomes)
            .map(|((i, a), o)| (i, a, o))
            .collect();
        for (index, _, outcome) in &mut results {
            if self.lifetime.expire(age, outcome) {
                continue;
            }
            let previous = current
                .as_ref()
                .and_then(|c| c.status.recipients.get(*index as usize))
                .and_then(|r| r.updated_at)
                .map(|at| {
                    age_of(
                        job.received_at,
                        SystemTime::try_from(at).unwrap_or(UNIX_EPOCH),
                    )
                });
            if outcome.state == RecipientState::Deferred && self.lifetime.warn_now(age, previous) {
                delayed.push(*index);
            }
        }
        let from = job.mail_from.as_ref().map_or("", |m| m.address.as_str());
        let delay = format!("{:.2}", age.as_secs_f64());
        for (_, to, o) in &results {
            let relay = match (o.remote_host.as_str(), o.remote_ip.as_str()) {
                ("", _) => "local".to_string(),
                (host, "") => host.to_string(),
                (host, ip) => format!("{host}[{ip}]"),
            };
            // The fields of a Postfix maillog delivery line.
            tracing::info!(
                queue_id = %job.queue_id,
                message_id = %job.message_id,
                from = %from,
                to = %to,
                relay = %relay,
                delay = %delay,
                attempt,
                dsn = %o.reply.enhanced,
                status = state_word(o.state),
                tls = %o.tls.as_ref().map_or("", |t| t.version.as_str()),
                reply = %format!("{} {}", o.reply.code, o.reply.text),
                "delivery attempt"
            );
            record_metrics(job, o);
        }
        let retry_in = self
            .retry_delays
            .get(retry::tier(attempt, self.retry_delays.len()))
            .copied()
            .unwrap_or_default();
        let reports = self
            .owed_notices(job, &results, &delayed, current.as_ref())
            .await?;
        if !reports.is_empty() {
            // Queued before the outcomes are recorded: once they are, a redelivered job finds
            // its recipients final and owes nothing, so a notice lost in between would never
            // be sent. If it cannot be queued, nothing is recorded and the job comes back
            // for another attempt; a crash between the two steps can make a second notice
            // (a duplicate, never a loss).
            let notice = notify::send(
                &self.bus,
                &self.deliverer.hostname,
                job,
                attempt,
                &content,
                reports,
            )
            .await?;
            tracing::info!(queue_id = %job.queue_id, notice = %notice, "delivery status notification queued");
        }
        // Outcomes an operator's action overtook during the attempt are not recorded, and a
        // deferral among them does not park the job (`owed_notices` left their failure and
        // delay notices out).
        let overtaken = self
            .status
            .record(job, attempt, &results, retry_in, current.as_ref())
            .await?;
        if !overtaken.is_empty() {
            tracing::info!(queue_id = %job.queue_id, recipients = ?overtaken, "outcomes not recorded: the recipients' state changed during the attempt");
        }
        Ok(results
            .iter()
            .any(|(i, _, o)| o.state == RecipientState::Deferred && !overtaken.contains(i)))
    }

    /// The notices an attempt's `results` owe the sender, but for a failure or a delay of
    /// a recipient an operator acted on during the attempt (a cancel): its outcome will
    /// not be recorded, and the sender hears nothing of it (as Postfix bounces nothing for
    /// a message deleted from its queue). Read again only when such a notice is owed,
    /// which is rare; a cancel landing between this read and the recording can still let
    /// one through, a window of milliseconds instead of the attempt's whole length.
    async fn owed_notices(
        &self,
        job: &DeliveryJob,
        results: &[(u32, String, Outcome)],
        delayed: &[u32],
        before: Option<&Current>,
    ) -> Result<Vec<RecipientReport>, BusError> {
        let reports = notify::owed(job, results, delayed);
        // The outcomes an operator's action can overtake: all but deliveries, as
        // `StatusBook::record` has it (which of them owe a notice is `notify::owed`'s call).
        let overtakable: Vec<u32> = results
            .iter()
            .filter(|(_, _, o)| o.state != RecipientState::Delivered)
            .map(|(i, _, _)| *i)
            .collect();
        if reports.is_empty() || overtakable.is_empty() {
            return Ok(reports);
        }
        let changed = self
            .status
            .changed_since(&job.queue_id, &overtakable, before)
            .await?;
        if changed.is_empty() {
            return Ok(reports);
        }
        tracing::info!(queue_id = %job.queue_id, recipients = ?changed, "no notice for recipients an operator acted on during the attempt");
        let kept: Vec<_> = results
            .iter()
            .filter(|(i, _, _)| !changed.contains(i))
            .cloned()
            .collect();
        Ok(notify::owed(job, &kept, delayed))
    }
}

/// How long after `received` `now` is (zero when unknown or in the future).
fn age_of(received: Option<prost_types::Timestamp>, now: SystemTime) -> Duration {
    received
        .and_then(|r| SystemTime::try_from(r).ok())
        .and_then(|r| now.duration_since(r).ok())
        .unwrap_or_default()
}

/// The word for an outcome, as in logs and metrics (Postfix's `status=`).
fn state_word(state: RecipientState) -> &'static str {
    match state {
        RecipientState::Delivered => "delivered",
        RecipientState::Deferred => "deferred",
        RecipientState::Bounced => "bounced",
        _ => "other",
    }
}

/// Counts one recipient's attempt: by result and destination domain, TLS use, and for a
/// delivery the time since acceptance.
fn record_metrics(job: &DeliveryJob, o: &crate::deliver::Outcome) {
    let result = state_word(o.state);
    metrics::counter!("mailflow_delivery_attempts_total", "result" => result, "domain" => job.domain.clone())
        .increment(1);
    if let Some(tls) = &o.tls {
        metrics::counter!("mailflow_tls_sessions_total", "direction" => "out", "version" => tls.version.clone())
            .increment(1);
    }
    if o.state == RecipientState::Delivered {
        let age = age_of(job.received_at, SystemTime::now());
        metrics::histogram!("mailflow_delivery_latency_seconds").record(age.as_secs_f64());
    }
}
