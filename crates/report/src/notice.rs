//! A notification as a message to queue: from the null sender to the original envelope
//! sender, its content rendered by [`crate::render`]. Shared by the route stage (aliases
//! that cannot be expanded) and the relay (delivery outcomes).

use std::time::SystemTime;

use bytes::Bytes;
use mailflow_proto::v1::{
    AcceptedMessage, Body, BodyType, DsnNotify, DsnReturn, MailFrom, Recipient, RemoteReply,
    body::Location,
};
use mailflow_smtp::params::Notify;

use crate::dsn::{Action, RecipientReport, Report, ReturnContent, render, wanted};

/// The NOTIFY= a recipient gave, `None` when it gave none.
pub fn notify_of(recipient: &Recipient) -> Option<Notify> {
    if recipient.dsn_notify.is_empty() {
        return None;
    }
    let mut notify = Notify::default();
    for n in &recipient.dsn_notify {
        match DsnNotify::try_from(*n) {
            Ok(DsnNotify::Never) => notify.never = true,
            Ok(DsnNotify::Success) => notify.success = true,
            Ok(DsnNotify::Failure) => notify.failure = true,
            Ok(DsnNotify::Delay) => notify.delay = true,
            _ => {}
        }
    }
    Some(notify)
}

impl RecipientReport {
    /// The block about `recipient`, whose fate (`action`) `reply` from `remote_mta` (empty
    /// when none answered) decided; `None` when the recipient's NOTIFY= asks for no notice
    /// of it.
    pub fn owed(
        recipient: &Recipient,
        action: Action,
        reply: &RemoteReply,
        remote_mta: &str,
    ) -> Option<RecipientReport> {
        if !wanted(notify_of(recipient), action) {
            return None;
        }
        let status = if reply.enhanced.is_empty() {
            format!("{}.0.0", reply.code / 100)
        } else {
            reply.enhanced.clone()
        };
        let diagnostic = [
            reply.code.to_string(),
            reply.enhanced.clone(),
            reply.text.clone(),
        ]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
        Some(RecipientReport {
            final_recipient: recipient.address.clone(),
            original_recipient: recipient.dsn_orcpt.clone(),
            action,
            status,
            remote_mta: remote_mta.to_string(),
            diagnostic,
        })
    }
}

/// What the notice is about: the original message's envelope and content.
#[derive(Debug, Clone, Copy)]
pub struct Original<'a> {
    /// Its queue id.
    pub queue_id: &'a str,
    /// Its reverse path and DSN parameters.
    pub mail_from: &'a MailFrom,
    /// When it arrived.
    pub received_at: Option<prost_types::Timestamp>,
    /// Its content.
    pub content: &'a [u8],
}

/// The notice about `reports` for `original`, as a message with queue id `queue_id` ready
/// to be published to `mail.in`.
pub fn notice(
    hostname: &str,
    original: Original<'_>,
    reports: Vec<RecipientReport>,
    queue_id: &str,
) -> AcceptedMessage {
    let mail_from = original.mail_from;
    let only_failures_absent = reports.iter().all(|r| r.action != Action::Failed);
    // A success or delay notice returns headers unless RET=FULL asked for more (RFC 3461
    // §4.3): the sender still has the message, or it is still on its way.
    let ret = match mail_from.dsn_ret() {
        DsnReturn::Headers => ReturnContent::Headers,
        DsnReturn::Full => ReturnContent::Full,
        DsnReturn::Unspecified if only_failures_absent => ReturnContent::Headers,
        DsnReturn::Unspecified => ReturnContent::Full,
    };
    let now = SystemTime::now();
    let arrival = original
        .received_at
        .and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(now);
    let message = render(&Report {
        reporting_mta: hostname,
        queue_id: original.queue_id,
        envid: &mail_from.dsn_envid,
        arrival,
        now,
        to: &mail_from.address,
        recipients: reports,
        original: original.content,
        ret,
        unique: queue_id,
    });
    let size = message.len() as u64;
    // The notice declares what it carries, as any message must (RFC 6152 §3): the
    // returned content may be 8-bit, and a UTF-8 sender address (or a message that was
    // sent with SMTPUTF8) needs SMTPUTF8 on the way back; the relay asks for it only where
    // the envelope or header section really needs it.
    let body = if message.is_ascii() {
        BodyType::Unspecified
    } else {
        BodyType::EightBitMime
    };
    AcceptedMessage {
        queue_id: queue_id.to_string(),
        mail_from: Some(MailFrom {
            body: body as i32,
            smtputf8: mail_from.smtputf8 || !mail_from.address.is_ascii(),
            ..Default::default()
        }),
        recipients: vec![Recipient {
            address: mail_from.address.clone(),
            ..Default::default()
        }],
        helo: hostname.to_string(),
        received_at: Some(prost_types::Timestamp::from(now)),
        body: Some(Body {
            location: Some(Location::Inline(Bytes::from(message))),
            size,
            ..Default::default()
        }),
        listener: "notification".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_goes_from_the_null_sender_to_the_original_sender() {
        let from = MailFrom {
            address: "a@x.test".into(),
            ..Default::default()
        };
        let msg = notice(
            "mx.x.test",
            Original {
                queue_id: "Q",
                mail_from: &from,
                received_at: None,
                content: b"Subject: s\r\n\r\nb\r\n",
            },
            vec![RecipientReport {
                final_recipient: "b@y.test".into(),
                original_recipient: String::new(),
                action: Action::Failed,
                status: "5.4.6".into(),
                remote_mta: String::new(),
                diagnostic: "550 5.4.6 alias loop".into(),
            }],
            "N1",
        );
        assert_eq!(msg.queue_id, "N1");
        assert_eq!(msg.mail_from.unwrap().address, "");
        assert_eq!(msg.recipients[0].address, "a@x.test");
        let Some(Location::Inline(body)) = msg.body.unwrap().location else {
            panic!("inline body");
        };
        assert!(String::from_utf8_lossy(&body).contains("Status: 5.4.6"));
    }

    #[test]
    fn a_notice_declares_eight_bit_content_and_utf8_addresses() {
        let report = || RecipientReport {
            final_recipient: "b@y.test".into(),
            original_recipient: String::new(),
            action: Action::Failed,
            status: "5.1.1".into(),
            remote_mta: String::new(),
            diagnostic: "550 5.1.1 unknown".into(),
        };
        let send = |address: &str, content: &'static [u8]| {
            let from = MailFrom {
                address: address.into(),
                smtputf8: !address.is_ascii(),
                ..Default::default()
            };
            let original = Original {
                queue_id: "Q",
                mail_from: &from,
                received_at: None,
                content,
            };
            notice("mx.x.test", original, vec![report()], "N")
                .mail_from
                .unwrap()
        };
        let plain = send("a@x.test", b"Subject: s\r\n\r\nb\r\n");
        assert_eq!(
            (plain.body(), plain.smtputf8),
            (BodyType::Unspecified, false)
        );
        let eight = send("a@x.test", "Subject: s\r\n\r\nsch\u{f6}n\r\n".as_bytes());
        assert_eq!(
            (eight.body(), eight.smtputf8),
            (BodyType::EightBitMime, false)
        );
        let utf8 = send("j\u{f6}rg@x.test", b"Subject: s\r\n\r\nb\r\n");
        assert!(utf8.smtputf8);
        assert_eq!(utf8.address, "", "still from the null sender");
    }

    #[test]
    fn notify_flags() {
        let r = Recipient {
            dsn_notify: vec![DsnNotify::Success as i32, DsnNotify::Failure as i32],
            ..Default::default()
        };
        let n = notify_of(&r).unwrap();
        assert!(n.success && n.failure && !n.delay && !n.never);
        assert!(notify_of(&Recipient::default()).is_none());
    }
}
