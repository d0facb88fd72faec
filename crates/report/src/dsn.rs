//! Delivery status notifications (RFC 3464): a `multipart/report` with a human-readable
//! part, a `message/delivery-status` part with one block per recipient, and the original
//! message or its headers.

use std::fmt::Write as _;
use std::time::SystemTime;

use mailflow_smtp::params::Notify;

use crate::rfc5322_date;

/// What happened to a recipient, in the words of RFC 3464 §2.3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Permanent failure, or given up after the queue lifetime.
    Failed,
    /// Still trying after a delay.
    Delayed,
    /// Delivered into the mailbox.
    Delivered,
    /// Accepted by a next hop that does not take DSN requests along: no more notices will
    /// come for the recipient (RFC 3464 §2.3.3, RFC 3461 §5.2.3).
    Relayed,
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            Action::Delayed => "delayed",
            Action::Delivered => "delivered",
            Action::Relayed => "relayed",
        }
    }
}

/// True when a recipient's NOTIFY= (`None` when it gave none) asks for a notice of
/// `action`. Without NOTIFY= failures and delays are reported (RFC 3461 §4.1 leaves the
/// default to the MTA; this is Postfix's).
pub fn wanted(notify: Option<Notify>, action: Action) -> bool {
    let Some(notify) = notify else {
        return matches!(action, Action::Failed | Action::Delayed);
    };
    !notify.never
        && match action {
            Action::Failed => notify.failure,
            Action::Delayed => notify.delay,
            Action::Delivered | Action::Relayed => notify.success,
        }
}

/// How much of the original message goes back (RET=, RFC 3461 §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReturnContent {
    /// The whole message (the default for failures, as in Postfix), unless it is larger than
    /// [`FULL_RETURN_LIMIT`].
    Full,
    /// Only its header.
    Headers,
}

/// Larger messages are returned as headers only (Postfix's `bounce_size_limit`).
pub const FULL_RETURN_LIMIT: usize = 50_000;

/// One recipient's block.
#[derive(Debug, Clone)]
pub struct RecipientReport {
    /// The address the notice is about.
    pub final_recipient: String,
    /// ORCPT as given (`rfc822;addr`), or empty.
    pub original_recipient: String,
    /// What happened.
    pub action: Action,
    /// The enhanced status code, e.g. `5.1.1`.
    pub status: String,
    /// The host that answered, if one did.
    pub remote_mta: String,
    /// The reply that decided it, e.g. `550 5.1.1 User unknown`.
    pub diagnostic: String,
}

/// A notification about some recipients of one message.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// Our host name: the Reporting-MTA and the From domain.
    pub reporting_mta: &'a str,
    /// The queue id of the original message.
    pub queue_id: &'a str,
    /// ENVID= of the original message (RFC 3461 §4.4), or empty.
    pub envid: &'a str,
    /// When the original message arrived.
    pub arrival: SystemTime,
    /// When this notice is written.
    pub now: SystemTime,
    /// Who gets the notice: the original envelope sender.
    pub to: &'a str,
    /// The recipients it reports on.
    pub recipients: Vec<RecipientReport>,
    /// The original message (header and body, CRLF lines).
    pub original: &'a [u8],
    /// RET= of the original message.
    pub ret: ReturnContent,
    /// A unique token for the Message-ID and the MIME boundary.
    pub unique: &'a str,
}

/// Writes the notification as a complete message (CRLF lines), ready to be queued from the
/// null sender `<>` to [`Report::to`].
pub fn render(r: &Report<'_>) -> Vec<u8> {
    let failed = r.recipients.iter().any(|x| x.action == Action::Failed);
    let delayed = r.recipients.iter().any(|x| x.action == Action::Delayed);
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else if delayed {
        "Delayed Mail (still being retried)"
    } else {
        "Successful Mail Delivery Report"
    };
    let boundary = format!("{}/{}", r.unique, r.reporting_mta);
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "From: Mail Delivery System <MAILER-DAEMON@{mta}>\r\n\
         To: {to}\r\n\
         Subject: {subject}\r\n\
         Date: {date}\r\n\
         Message-ID: <{unique}@{mta}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\
         \tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Description: Notification\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n",
        mta = r.reporting_mta,
        to = r.to,
        date = rfc5322_date(r.now),
        unique = r.unique,
    );
    human_part(&mut out, r, failed, delayed);
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: Delivery report\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n"
    );
    status_part(&mut out, r);
    let headers_only = r.ret == ReturnContent::Headers || r.original.len() > FULL_RETURN_LIMIT;
    let (description, kind) = if headers_only {
        ("Undelivered Message Headers", "text/rfc822-headers")
    } else {
        ("Undelivered Message", "message/rfc822")
    };
    let _ = write!(
        out,
        "\r\n--{boundary}\r\n\
         Content-Description: {description}\r\n\
         Content-Type: {kind}\r\n\
         \r\n"
    );
    let mut bytes = out.into_bytes();
    let original = if headers_only {
        header_of(r.original)
    } else {
        r.original
    };
    bytes.extend_from_slice(original);
    if !original.ends_with(b"\r\n") {
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    bytes
}

/// The text a person reads.
fn human_part(out: &mut String, r: &Report<'_>, failed: bool, delayed: bool) {
    let _ = write!(
        out,
        "This is the mail system at host {}.\r\n\r\n",
        r.reporting_mta
    );
    let lead = if failed {
        "I'm sorry to have to inform you that your message could not\r\n\
         be delivered to one or more recipients. It's attached below."
    } else if delayed {
        "Your message could not be delivered yet to one or more recipients.\r\n\
         Delivery will be tried again; you do not need to send it again."
    } else {
        "Your message was successfully delivered to the destination(s)\r\n\
         listed below."
    };
    let _ = write!(out, "{lead}\r\n\r\n");
    for x in &r.recipients {
        let _ = write!(out, "<{}>: {}\r\n", x.final_recipient, x.diagnostic);
    }
}

/// The machine-readable part (RFC 3464 §2.2, §2.3).
fn status_part(out: &mut String, r: &Report<'_>) {
    let _ = write!(out, "Reporting-MTA: dns; {}\r\n", r.reporting_mta);
    let _ = write!(out, "X-Mailflow-Queue-ID: {}\r\n", r.queue_id);
    // The ingress refuses control characters in ENVID and ORCPT; a value that has them
    // anyway (an older record) is left out rather than allowed to start fields of its own.
    if !r.envid.is_empty() && !r.envid.contains(char::is_control) {
        let _ = write!(out, "Original-Envelope-Id: {}\r\n", r.envid);
    }
    let _ = write!(out, "Arrival-Date: {}\r\n", rfc5322_date(r.arrival));
    for x in &r.recipients {
        out.push_str("\r\n");
        if !x.original_recipient.is_empty() && !x.original_recipient.contains(char::is_control) {
            let _ = write!(out, "Original-Recipient: {}\r\n", x.original_recipient);
        }
        let _ = write!(
            out,
            "Final-Recipient: rfc822; {}\r\nAction: {}\r\nStatus: {}\r\n",
            x.final_recipient,
            x.action.word(),
            x.status
        );
        if !x.remote_mta.is_empty() {
            let _ = write!(out, "Remote-MTA: dns; {}\r\n", x.remote_mta);
        }
        if !x.diagnostic.is_empty() {
            // A reply of the remote MTA is an `smtp` diagnostic (RFC 3464 §2.3.6); one decided
            // here, with no remote MTA (an alias loop, a content rule, a mail loop), goes
            // under our own type, as Postfix's `X-Postfix`.
            let kind = if x.remote_mta.is_empty() {
                "X-mailflow"
            } else {
                "smtp"
            };
            let _ = write!(out, "Diagnostic-Code: {kind}; {}\r\n", x.diagnostic);
        }
    }
}

/// The most of a header section a notice returns: a message without an empty line is
/// all header, and a notice carrying a large one whole would not fit in a bus message.
const HEADER_RETURN_LIMIT: usize = 256 * 1024;

/// The header of a message: everything up to and including the empty line, cut after the
/// last whole line within [`HEADER_RETURN_LIMIT`].
fn header_of(message: &[u8]) -> &[u8] {
    let end = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(message.len(), |end| end + 4);
    if end <= HEADER_RETURN_LIMIT {
        return &message[..end];
    }
    let within = &message[..HEADER_RETURN_LIMIT];
    match within.windows(2).rposition(|w| w == b"\r\n") {
        Some(line_end) => &message[..line_end + 2],
        None => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn report(ret: ReturnContent, original: &[u8]) -> Vec<u8> {
        render(&Report {
            reporting_mta: "mx.example.test",
            queue_id: "01QUEUE",
            envid: "env-42",
            arrival: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            now: UNIX_EPOCH + Duration::from_secs(1_800_000_060),
            to: "sender@example.test",
            recipients: vec![RecipientReport {
                final_recipient: "bob@remote.test".into(),
                original_recipient: "rfc822;bob@remote.test".into(),
                action: Action::Failed,
                status: "5.1.1".into(),
                remote_mta: "mx.remote.test".into(),
                diagnostic: "550 5.1.1 No such user".into(),
            }],
            original,
            ret,
            unique: "U1",
        })
    }

    #[test]
    fn a_failure_decided_here_has_no_remote_mta_and_our_diagnostic_type() {
        let mut r = Report {
            reporting_mta: "mx.example.test",
            queue_id: "01QUEUE",
            envid: "",
            arrival: UNIX_EPOCH,
            now: UNIX_EPOCH,
            to: "sender@example.test",
            recipients: vec![RecipientReport {
                final_recipient: "bob@remote.test".into(),
                original_recipient: String::new(),
                action: Action::Failed,
                status: "5.4.6".into(),
                remote_mta: String::new(),
                diagnostic: "554 5.4.6 mail for remote.test loops back to myself".into(),
            }],
            original: b"Subject: hi\r\n\r\nbody\r\n",
            ret: ReturnContent::Headers,
            unique: "U2",
        };
        let text = String::from_utf8(render(&r)).unwrap();
        assert!(!text.contains("Remote-MTA"), "{text}");
        assert!(text.contains(
            "Status: 5.4.6\r\nDiagnostic-Code: X-mailflow; 554 5.4.6 mail for remote.test loops back to myself\r\n"
        ), "{text}");
        r.recipients[0].remote_mta = "mx.remote.test".into();
        let text = String::from_utf8(render(&r)).unwrap();
        assert!(text.contains("Diagnostic-Code: smtp; 554"), "{text}");
    }

    #[test]
    fn a_failure_report_has_the_three_parts() {
        let text =
            String::from_utf8(report(ReturnContent::Full, b"Subject: hi\r\n\r\nbody\r\n")).unwrap();
        assert!(text.starts_with("From: Mail Delivery System <MAILER-DAEMON@mx.example.test>\r\n"));
        assert!(text.contains("Subject: Undelivered Mail Returned to Sender\r\n"));
        assert!(text.contains("Auto-Submitted: auto-replied\r\n"));
        assert!(text.contains("Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"U1/mx.example.test\"\r\n"));
        assert!(text.contains("Reporting-MTA: dns; mx.example.test\r\n"));
        assert!(text.contains("Original-Envelope-Id: env-42\r\n"));
        assert!(text.contains("Arrival-Date: Fri, 15 Jan 2027 08:00:00 +0000\r\n"));
        assert!(text.contains(
            "\r\nOriginal-Recipient: rfc822;bob@remote.test\r\nFinal-Recipient: rfc822; bob@remote.test\r\nAction: failed\r\nStatus: 5.1.1\r\nRemote-MTA: dns; mx.remote.test\r\nDiagnostic-Code: smtp; 550 5.1.1 No such user\r\n"
        ));
        assert!(text.contains("Content-Type: message/rfc822\r\n\r\nSubject: hi\r\n\r\nbody\r\n"));
        assert!(text.ends_with("\r\n--U1/mx.example.test--\r\n"));
        // Only CRLF line endings.
        assert!(!text.replace("\r\n", "").contains(['\r', '\n']));
    }

    #[test]
    fn headers_only_when_asked_or_too_big() {
        let text = String::from_utf8(report(
            ReturnContent::Headers,
            b"Subject: hi\r\n\r\nsecret body\r\n",
        ))
        .unwrap();
        assert!(text.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n\r\n"));
        assert!(!text.contains("secret body"));
        let big = format!("Subject: big\r\n\r\n{}", "x".repeat(FULL_RETURN_LIMIT));
        let text = String::from_utf8(report(ReturnContent::Full, big.as_bytes())).unwrap();
        assert!(text.contains("text/rfc822-headers"));
        assert!(text.len() < 5_000);
        // A message that is all header (no empty line), a megabyte of it: the notice
        // returns whole lines up to the limit, and fits in a bus message.
        let all_header = "X-Filler: yes\r\n".repeat(1024 * 1024 / 15);
        let text = report(ReturnContent::Full, all_header.as_bytes());
        assert!(text.len() < HEADER_RETURN_LIMIT + 5_000, "{}", text.len());
        assert!(
            String::from_utf8(text)
                .unwrap()
                .contains("X-Filler: yes\r\n\r\n--")
        );
    }

    #[test]
    fn notify_decides_who_hears_what() {
        assert!(wanted(None, Action::Failed));
        assert!(wanted(None, Action::Delayed));
        assert!(!wanted(None, Action::Delivered));
        assert!(!wanted(None, Action::Relayed));
        let never = Notify {
            never: true,
            ..Notify::default()
        };
        assert!(!wanted(Some(never), Action::Failed));
        let success = Notify {
            success: true,
            ..Notify::default()
        };
        assert!(wanted(Some(success), Action::Delivered));
        assert!(wanted(Some(success), Action::Relayed));
        assert!(!wanted(Some(success), Action::Failed));
    }
}
