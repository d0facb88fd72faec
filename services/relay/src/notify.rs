//! Delivery status notifications (RFC 3464) for the outcomes of one attempt: a failure
//! report to the envelope sender for recipients that bounced, and a success report where
//! NOTIFY=SUCCESS asked for one (RFC 3461). The notice is queued like any message, from the
//! null sender, so it is routed, delivered and tracked the same way; mail from `<>` is never
//! answered (RFC 5321 §6.1), which also ends notification loops.

use bytes::Bytes;
use mailflow_bus::{Bus, BusError, names};
use mailflow_proto::v1::{DeliveryJob, Recipient, RecipientState};
use mailflow_report::{Action, Original, RecipientReport, notice};
use prost::Message;

use crate::deliver::{Handoff, Outcome};

/// The recipient of `job` at position `index` of the message.
fn recipient_of(job: &DeliveryJob, index: u32) -> Option<&Recipient> {
    job.recipients
        .iter()
        .find(|r| r.index == index)
        .and_then(|r| r.recipient.as_ref())
}

/// The recipients of this attempt a notice is owed for; `delayed` are the deferred ones
/// whose message just passed the delay warning time.
pub fn owed(
    job: &DeliveryJob,
    results: &[(u32, String, Outcome)],
    delayed: &[u32],
) -> Vec<RecipientReport> {
    let sender = job.mail_from.as_ref().map_or("", |m| m.address.as_str());
    if sender.is_empty() {
        return Vec::new();
    }
    results
        .iter()
        .filter_map(|(index, _, outcome)| {
            let action = match (outcome.state, outcome.handoff) {
                (RecipientState::Bounced, _) => Action::Failed,
                (RecipientState::Delivered, Handoff::Mailbox) => Action::Delivered,
                (RecipientState::Delivered, Handoff::Relayed) => Action::Relayed,
                // The next hop took the request along: its notices are owed from there.
                (RecipientState::Delivered, Handoff::DsnRelayed) => return None,
                (RecipientState::Deferred, _) if delayed.contains(index) => Action::Delayed,
                _ => return None,
            };
            let remote_mta = if outcome.by_remote {
                outcome.remote_host.as_str()
            } else {
                ""
            };
            RecipientReport::owed(
                recipient_of(job, *index)?,
                action,
                &outcome.reply,
                remote_mta,
            )
        })
        .collect()
}

/// Queues the notice for `reports` (from [`owed`]) about `job`, whose content is
/// `content`. Its `Nats-Msg-Id` is derived from the job and attempt, so a repeated call for
/// the same attempt queues it once.
pub async fn send(
    bus: &Bus,
    hostname: &str,
    job: &DeliveryJob,
    attempt: u32,
    content: &[u8],
    reports: Vec<RecipientReport>,
) -> Result<String, BusError> {
    let mail_from = job.mail_from.clone().unwrap_or_default();
    let queue_id = ulid::Ulid::generate().to_string();
    let original = Original {
        queue_id: &job.queue_id,
        mail_from: &mail_from,
        received_at: job.received_at,
        content,
    };
    let message = notice(hostname, original, reports, &queue_id);
    bus.publish(
        names::MAIL_IN_SUBJECT.into(),
        &format!("dsn.{}.{attempt}", job.job_id),
        Bytes::from(message.encode_to_vec()),
    )
    .await?;
    Ok(queue_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailflow_proto::v1::{DsnNotify, JobRecipient, MailFrom, RemoteReply};

    fn job(sender: &str, notify: Vec<DsnNotify>) -> DeliveryJob {
        DeliveryJob {
            job_id: "Q.0".into(),
            mail_from: Some(MailFrom {
                address: sender.into(),
                ..Default::default()
            }),
            recipients: vec![JobRecipient {
                recipient: Some(Recipient {
                    address: "bob@remote.test".into(),
                    dsn_notify: notify.into_iter().map(|n| n as i32).collect(),
                    dsn_orcpt: "rfc822;bob@remote.test".into(),
                }),
                index: 3,
            }],
            ..Default::default()
        }
    }

    fn outcome(state: RecipientState, code: u32, enhanced: &str) -> Vec<(u32, String, Outcome)> {
        vec![(
            3,
            "bob@remote.test".into(),
            Outcome {
                state,
                reply: RemoteReply {
                    code,
                    enhanced: enhanced.into(),
                    text: "said so".into(),
                },
                remote_host: "mx.remote.test".into(),
                remote_ip: "192.0.2.1".into(),
                tls: None,
                handoff: Handoff::Relayed,
                by_remote: true,
            },
        )]
    }

    #[test]
    fn failures_are_reported_by_default_with_orcpt() {
        let owed = owed(
            &job("a@x.test", vec![]),
            &outcome(RecipientState::Bounced, 550, "5.1.1"),
            &[],
        );
        assert_eq!(owed.len(), 1);
        assert_eq!(owed[0].action, Action::Failed);
        assert_eq!(owed[0].status, "5.1.1");
        assert_eq!(owed[0].original_recipient, "rfc822;bob@remote.test");
        assert_eq!(owed[0].diagnostic, "550 5.1.1 said so");
        assert_eq!(owed[0].remote_mta, "mx.remote.test");
        // A failure decided here (the host was only tried) names no remote MTA.
        let mut ours = outcome(RecipientState::Bounced, 554, "5.4.6");
        ours[0].2.by_remote = false;
        let owed = super::owed(&job("a@x.test", vec![]), &ours, &[]);
        assert_eq!(owed[0].remote_mta, "");
        assert_eq!(owed[0].diagnostic, "554 5.4.6 said so");
    }

    #[test]
    fn nothing_for_the_null_sender_never_or_plain_success() {
        let bounced = outcome(RecipientState::Bounced, 550, "5.1.1");
        assert!(owed(&job("", vec![]), &bounced, &[]).is_empty());
        assert!(owed(&job("a@x.test", vec![DsnNotify::Never]), &bounced, &[]).is_empty());
        let delivered = outcome(RecipientState::Delivered, 250, "");
        assert!(owed(&job("a@x.test", vec![]), &delivered, &[]).is_empty());
        let asked = owed(&job("a@x.test", vec![DsnNotify::Success]), &delivered, &[]);
        assert_eq!(
            (asked[0].action, asked[0].status.as_str()),
            (Action::Relayed, "2.0.0")
        );
        let mut handed_on = delivered.clone();
        handed_on[0].2.handoff = Handoff::DsnRelayed;
        assert!(owed(&job("a@x.test", vec![DsnNotify::Success]), &handed_on, &[]).is_empty());
        let mut into_mailbox = delivered.clone();
        into_mailbox[0].2.handoff = Handoff::Mailbox;
        let asked = owed(
            &job("a@x.test", vec![DsnNotify::Success]),
            &into_mailbox,
            &[],
        );
        assert_eq!(asked[0].action, Action::Delivered);
        let deferred = outcome(RecipientState::Deferred, 451, "4.2.0");
        assert!(owed(&job("a@x.test", vec![]), &deferred, &[]).is_empty());
        let late = owed(&job("a@x.test", vec![]), &deferred, &[3]);
        assert_eq!(late[0].action, Action::Delayed);
        let failure_only = job("a@x.test", vec![DsnNotify::Failure]);
        assert!(owed(&failure_only, &deferred, &[3]).is_empty());
    }
}
