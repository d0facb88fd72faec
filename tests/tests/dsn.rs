//! Delivery status notifications (RFC 3464) end to end: a bounce goes back to the sender's
//! mailbox as a `multipart/report` that a standard parser (Python's `email`) reads, with
//! the DSN parameters of RFC 3461 honoured.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::{SmtpClient, queue_id};
use mailflow_tests::stack::reply_with;
use mailflow_tests::wait;
use mailflow_tests::world::World;

/// Parses a message with Python's `email` package and prints its structure and the fields
/// of its delivery-status part.
fn parse_report(message: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dsn.eml");
    std::fs::write(&path, message).unwrap();
    let script = r#"
import email, sys
from email import policy
m = email.message_from_binary_file(open(sys.argv[1], "rb"), policy=policy.compat32)
print("type:", m.get_content_type(), m.get_param("report-type"))
for part in m.get_payload():
    print("part:", part.get_content_type())
    if part.get_content_type() == "message/delivery-status":
        for block in part.get_payload():
            for k, v in block.items():
                print(f"{k}: {v}")
    if part.get_content_type() == "message/rfc822":
        print("original subject:", part.get_payload(0)["Subject"])
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Waits for the `n`th message in demo's mailbox and returns them all.
async fn demo_mailbox(w: &World, n: usize) -> Vec<Vec<u8>> {
    wait::until(
        "notifications in demo's mailbox",
        Duration::from_secs(30),
        || async {
            let mail = w.stack.mailbox("example.test", "demo");
            (mail.len() >= n).then_some(mail)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_reaches_the_sender_as_a_standard_report() {
    let w = World::start().await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;

    // NOTIFY=NEVER: the failure is recorded, nobody is told.
    c.command("MAIL FROM:<demo@example.test>", 250).await;
    c.command("RCPT TO:<reject-quietly@remote-a.test> NOTIFY=NEVER", 250)
        .await;
    c.command("DATA", 354).await;
    c.send_raw(b"Subject: quiet\r\n\r\nx\r\n").await;
    let quiet = mailflow_tests::client::queue_id(&c.command(".", 250).await.text);
    let status = w.stack.wait_final(&quiet, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Bounced);

    // The default: failures are reported, with ENVID and ORCPT, and the message returned.
    c.command("MAIL FROM:<demo@example.test> ENVID=trip+2D42", 250)
        .await;
    c.command(
        "RCPT TO:<reject-me@remote-a.test> ORCPT=rfc822;reject-me@remote-a.test",
        250,
    )
    .await;
    c.command("RCPT TO:<ok@remote-a.test>", 250).await;
    c.command("DATA", 354).await;
    c.send_raw(b"Subject: travel plans\r\n\r\nsee you\r\n")
        .await;
    let id = mailflow_tests::client::queue_id(&c.command(".", 250).await.text);
    c.command("QUIT", 221).await;
    w.stack.wait_final(&id, Duration::from_secs(30)).await;

    let mail = demo_mailbox(&w, 1).await;
    assert_eq!(mail.len(), 1, "one notice: none for NOTIFY=NEVER");
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(text.starts_with("Return-Path: <>\r\n"), "{text}");
    let parsed = parse_report(&mail[0]);
    for expected in [
        "type: multipart/report delivery-status",
        "part: text/plain",
        "part: message/delivery-status",
        "part: message/rfc822",
        "Reporting-MTA: dns; relay.example.test",
        "Original-Envelope-Id: trip-42",
        "Original-Recipient: rfc822;reject-me@remote-a.test",
        "Final-Recipient: rfc822; reject-me@remote-a.test",
        "Action: failed",
        "Status: 5.1.1",
        "Remote-MTA: dns; mx.remote-a.test",
        "Diagnostic-Code: smtp; 550 5.1.1 No such user here",
        "original subject: travel plans",
    ] {
        assert!(
            parsed.contains(expected),
            "{expected:?} missing from:\n{parsed}"
        );
    }
    assert!(!parsed.contains("ok@remote-a.test"), "{parsed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_success_gets_a_delivery_report_with_headers_only() {
    let w = World::start().await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    c.command("MAIL FROM:<demo@example.test>", 250).await;
    c.command("RCPT TO:<ok@remote-b.test> NOTIFY=SUCCESS,FAILURE", 250)
        .await;
    c.command("DATA", 354).await;
    c.send_raw(b"Subject: did it arrive\r\n\r\nprivate body\r\n")
        .await;
    c.command(".", 250).await;
    c.command("QUIT", 221).await;
    let mail = demo_mailbox(&w, 1).await;
    let parsed = parse_report(&mail[0]);
    // Sink B does not offer DSN: the notice is the last word on this recipient.
    assert!(parsed.contains("Action: relayed"), "{parsed}");
    assert!(parsed.contains("part: text/rfc822-headers"), "{parsed}");
    let text = String::from_utf8_lossy(&mail[0]);
    assert!(text.contains("Subject: Successful Mail Delivery Report"));
    assert!(!text.contains("private body"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_message_is_announced_once_then_expires_with_a_failure_report() {
    let w =
        World::start_with_relay("max_queue_lifetime = \"4s\"\ndelay_warning_time = \"2s\"").await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let id = c
        .send_mail(
            "demo@example.test",
            &["tempfail@remote-b.test"],
            "Subject: slow one\r\n\r\nbody\r\n",
        )
        .await;
    c.command("QUIT", 221).await;
    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    let r = &status.recipients[0];
    assert_eq!(r.state(), RecipientState::Bounced);
    assert!(r.attempts >= 4, "{r:?}");
    let reply = reply_with(&status, 0, 451, "4.2.0");
    assert!(
        reply.text.starts_with("message expired after 4 seconds"),
        "{reply:?}"
    );

    let mail = demo_mailbox(&w, 2).await;
    let reports: Vec<String> = mail.iter().map(|m| parse_report(m)).collect();
    let delayed = reports
        .iter()
        .filter(|p| p.contains("Action: delayed"))
        .count();
    let failed: Vec<&String> = reports
        .iter()
        .filter(|p| p.contains("Action: failed"))
        .collect();
    assert_eq!(delayed, 1, "{reports:?}");
    assert_eq!(failed.len(), 1, "{reports:?}");
    assert!(failed[0].contains("Status: 4.2.0"), "{}", failed[0]);
    // Nothing more comes: the warning went out once.
    assert_eq!(w.stack.mailbox("example.test", "demo").len(), 2);
}

/// A next hop that offers DSN gets the requests along (RFC 3461 §5.2.2) and owes the notices
/// from then on: none comes from here for a recipient it accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dsn_requests_go_along_to_a_next_hop_offering_dsn() {
    let w = World::start().await;
    w.a.set_dsn(true);
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    c.command(
        "MAIL FROM:<demo@example.test> RET=HDRS ENVID=first+2Bone",
        250,
    )
    .await;
    c.command(
        "RCPT TO:<carol@remote-a.test> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;carol+2Bx@remote-a.test",
        250,
    )
    .await;
    c.command("DATA", 354).await;
    c.send_raw(b"Subject: along\r\n\r\nbody\r\n").await;
    let first = queue_id(&c.command(".", 250).await.text);
    let status = w.stack.wait_final(&first, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    let got = &w.a.received()[0];
    assert!(
        got.mail_params.ends_with(" RET=HDRS ENVID=first+2Bone"),
        "{}",
        got.mail_params
    );
    assert_eq!(
        got.rcpt_params,
        ["NOTIFY=SUCCESS,DELAY ORCPT=rfc822;carol+2Bx@remote-a.test"]
    );

    // Sink B offers none: there the success is reported here, as relayed.
    c.command("MAIL FROM:<demo@example.test> ENVID=second", 250)
        .await;
    c.command("RCPT TO:<ok@remote-b.test> NOTIFY=SUCCESS", 250)
        .await;
    c.command("DATA", 354).await;
    c.send_raw(b"Subject: relayed\r\n\r\nbody\r\n").await;
    c.command(".", 250).await;
    c.command("QUIT", 221).await;
    let mail = demo_mailbox(&w, 1).await;
    let parsed = parse_report(&mail[0]);
    assert!(parsed.contains("Action: relayed"), "{parsed}");
    assert!(parsed.contains("Original-Envelope-Id: second"), "{parsed}");
    // The first message's notice would have been queued before it was recorded delivered,
    // long before the second was sent; it never came.
    let all: Vec<String> = w
        .stack
        .mailbox("example.test", "demo")
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(all.len(), 1, "{all:?}");
    let to_b = &w.b.received()[0];
    assert!(!to_b.mail_params.contains("ENVID"), "{}", to_b.mail_params);
    assert_eq!(to_b.rcpt_params, [""]);
}
