//! The operator's controls: retry now, cancel, and the checks of their arguments.

use std::time::SystemTime;

use bytes::Bytes;
use mailflow_bus::{BusError, Outgoing, load_body, names};
use mailflow_proto::v1::{
    CancelRequest, DeliveryEvent, DeliveryJob, MessageStatus, RecipientState, RemoteReply,
    RetryRequest,
};
use mailflow_report::{Action, RecipientReport};
use prost::Message;
use tonic::Status;

use super::jobs::{self, Waiting};
use super::{QueueService, invalid, pending, queue_id, unavailable};

/// The recipients of `status` an operator's cancel bounced (their latest event carries the
/// cancel's `reply`).
fn bounced_by_cancel(status: &MessageStatus, reply: &RemoteReply) -> Vec<u32> {
    status
        .recipients
        .iter()
        .enumerate()
        .filter(|(_, r)| {
            r.state() == RecipientState::Bounced && r.last_reply.as_ref() == Some(reply)
        })
        .map(|(i, _)| u32::try_from(i).unwrap_or(u32::MAX))
        .collect()
}

/// Jobs moved at once by a retry-now.
const RETRY_BATCH: usize = 256;

/// How many times a cancel reads a recipient again whose state changed under it.
const CANCEL_ROUNDS: usize = 3;

/// A destination domain argument, lower case, or `INVALID_ARGUMENT`.
pub(super) fn domain(domain: &str) -> Result<String, Status> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.contains('@') || d.contains(char::is_whitespace) || !d.contains('.') {
        return Err(invalid("domain", format!("{domain:?} is not a domain")));
    }
    Ok(d)
}

fn bus_error(e: BusError) -> Status {
    unavailable(e)
}

impl QueueService {
    /// Moves the deferred jobs `req` selects from `MAIL_RETRY` back to delivery now;
    /// returns how many moved.
    pub(super) async fn retry_now(&self, req: RetryRequest) -> Result<u32, Status> {
        let chosen = [!req.queue_id.is_empty(), !req.domain.is_empty(), req.all]
            .iter()
            .filter(|c| **c)
            .count();
        if chosen != 1 {
            return Err(invalid(
                "queue_id",
                "give exactly one of queue_id, domain and all",
            ));
        }
        let selector: Box<dyn Fn(&DeliveryJob) -> bool + Send + Sync> = if !req.queue_id.is_empty()
        {
            queue_id(&req.queue_id, "queue_id")?;
            let status = self.routed(&req.queue_id).await?.status;
            if pending(&status).is_empty() {
                return Err(Status::failed_precondition(format!(
                    "message {} has no recipient left to deliver",
                    req.queue_id
                )));
            }
            let id = req.queue_id.clone();
            Box::new(move |job| job.queue_id == id)
        } else if !req.domain.is_empty() {
            let d = domain(&req.domain)?;
            Box::new(move |job| job.domain == d)
        } else {
            Box::new(|_| true)
        };
        let mut retry = self
            .bus
            .js
            .get_stream(names::MAIL_RETRY)
            .await
            .map_err(unavailable)?;
        // In batches: a retry of everything after an outage may find many jobs, each with
        // its body. Only the jobs waiting now: one moved here may be parked again before
        // the scan ends.
        let until = jobs::last_sequence(&mut retry).await.map_err(bus_error)?;
        let (mut moved, mut from) = (0, 0);
        loop {
            let pick = |w: Waiting| selector(&w.job).then_some(w);
            let (waiting, next) = jobs::find(&mut retry, from..=until, RETRY_BATCH, pick)
                .await
                .map_err(bus_error)?;
            for w in &waiting {
                if jobs::move_now(&self.bus, &retry, w)
                    .await
                    .map_err(bus_error)?
                {
                    moved += 1;
                }
            }
            match next {
                Some(next) => from = next,
                None => break,
            }
        }
        tracing::info!(jobs = moved, queue_id = %req.queue_id, domain = %req.domain, all = req.all, "retry now");
        Ok(moved)
    }

    /// Cancels the pending recipients of a message: each gets a final event (discarded, or
    /// bounced with a notice to the sender), and then its waiting jobs are taken out of the
    /// queues. In that order, an interruption never leaves a recipient without a final
    /// state and without a job; a job left behind finds its recipients final when it comes
    /// round (and a second Cancel removes it). A cancel event is recorded only if nothing
    /// happened to its recipient since its state was read (a delivery that finished
    /// meanwhile stays a delivery; such a recipient is read again and, still pending, tried
    /// again; one still changing after [`CANCEL_ROUNDS`] reads ends the call with `ABORTED`
    /// before any job is taken out). A job already in a delivery attempt may still deliver;
    /// its other outcomes do not undo the cancel. A cancel with bounce repeated after a
    /// failure sends the notices the first one could not.
    pub(super) async fn cancel_message(&self, req: CancelRequest) -> Result<u32, Status> {
        queue_id(&req.queue_id, "queue_id")?;
        let mut current = self.routed(&req.queue_id).await?;
        let mut found: Vec<(async_nats::jetstream::stream::Stream, Waiting)> = Vec::new();
        for name in [names::MAIL_RETRY, names::MAIL_OUT] {
            let mut stream = self.bus.js.get_stream(name).await.map_err(unavailable)?;
            let id = req.queue_id.clone();
            let pick = move |w: Waiting| (w.job.queue_id == id).then_some(w);
            for w in jobs::find_all(&mut stream, pick).await.map_err(bus_error)? {
                found.push((stream.clone(), w));
            }
        }
        if pending(&current.status).is_empty() && found.is_empty() {
            return Err(Status::failed_precondition(format!(
                "message {} has no recipient left to cancel",
                req.queue_id
            )));
        }
        let (state, reply) = if req.bounce {
            (
                RecipientState::Bounced,
                RemoteReply {
                    code: 550,
                    enhanced: "5.7.1".into(),
                    text: "delivery cancelled by an operator".into(),
                },
            )
        } else {
            (
                RecipientState::Discarded,
                RemoteReply {
                    code: 550,
                    enhanced: "5.7.1".into(),
                    text: "dropped by an operator".into(),
                },
            )
        };
        // Recipients an earlier cancel with bounce made final: its notice may not have gone
        // out (it failed, and the operator cancels again), and notices are deduplicated.
        let mut cancelled: Vec<u32> = if req.bounce {
            bounced_by_cancel(&current.status, &reply)
        } else {
            Vec::new()
        };
        let at = Some(SystemTime::now().into());
        let mut overtaken = 0;
        for _ in 0..CANCEL_ROUNDS {
            let open: Vec<u32> = pending(&current.status)
                .into_iter()
                .map(|i| u32::try_from(i).unwrap_or(u32::MAX))
                .collect();
            let events: Vec<Outgoing> = open
                .iter()
                .map(|&index| {
                    let event = DeliveryEvent {
                        queue_id: req.queue_id.clone(),
                        recipient: current.status.recipients[index as usize].address.clone(),
                        state: state as i32,
                        reply: Some(reply.clone()),
                        at,
                        ..Default::default()
                    };
                    Outgoing {
                        subject: names::event(&req.queue_id, index),
                        msg_id: format!("{}.{index}.cancel", req.queue_id),
                        payload: Bytes::from(event.encode_to_vec()),
                        after: Some(current.after(index)),
                    }
                })
                .collect();
            let stored = self.bus.publish_guarded(events).await.map_err(bus_error)?;
            overtaken = stored.iter().filter(|s| !**s).count();
            cancelled.extend(open.iter().zip(stored).filter(|(_, s)| *s).map(|(i, _)| *i));
            if overtaken == 0 {
                break;
            }
            current = self.current(&req.queue_id).await?;
        }
        if overtaken > 0 {
            // Their jobs stay: taken out, those recipients would have no job and no final
            // state. The ones cancelled are final; a second Cancel finishes the work.
            return Err(Status::aborted(format!(
                "message {}: {overtaken} recipient(s) kept changing during the cancel; try again",
                req.queue_id
            )));
        }
        if req.bounce {
            let waiting: Vec<&Waiting> = found.iter().map(|(_, w)| w).collect();
            self.notify_cancelled(&waiting, &cancelled, &reply).await?;
        }
        for (stream, w) in &found {
            jobs::remove(stream, w).await.map_err(bus_error)?;
        }
        tracing::info!(queue_id = %req.queue_id, recipients = cancelled.len(), bounce = req.bounce, "cancelled");
        Ok(u32::try_from(cancelled.len()).unwrap_or(u32::MAX))
    }

    /// Tells the sender about the recipients a cancel bounced (`cancelled`, by index), one
    /// notice per job taken out (its `Nats-Msg-Id` uses attempt 0, which no delivery
    /// attempt has).
    async fn notify_cancelled(
        &self,
        removed: &[&Waiting],
        cancelled: &[u32],
        reply: &RemoteReply,
    ) -> Result<(), Status> {
        for w in removed {
            let reports: Vec<RecipientReport> = w
                .job
                .recipients
                .iter()
                .filter(|r| cancelled.contains(&r.index))
                .filter_map(|r| {
                    RecipientReport::owed(r.recipient.as_ref()?, Action::Failed, reply, "")
                })
                .collect();
            if reports.is_empty()
                || w.job
                    .mail_from
                    .as_ref()
                    .is_none_or(|m| m.address.is_empty())
            {
                continue;
            }
            let body = w.job.body.clone().unwrap_or_default();
            let content = load_body(&self.bodies, &body).await.map_err(bus_error)?;
            crate::notify::send(&self.bus, &self.hostname, &w.job, 0, &content, reports)
                .await
                .map_err(bus_error)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::domain;

    #[test]
    fn domains_are_checked() {
        assert_eq!(domain(" Example.COM. ").unwrap(), "example.com");
        for bad in ["", "a@b.test", "local", "two words.test"] {
            assert_eq!(
                domain(bad).unwrap_err().code(),
                tonic::Code::InvalidArgument,
                "{bad}"
            );
        }
    }
}
