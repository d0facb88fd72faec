//! The scan stage with a real DNS server serving SPF, DKIM and DMARC records: what it
//! records, what it quarantines, how an operator releases or deletes held mail, and DKIM
//! signatures checked by mail-auth as an independent verifier.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mail_auth::{AuthenticatedMessage, DkimResult, MessageAuthenticator};
use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::SmtpClient;
use mailflow_tests::dns::{DnsServer, mx_zone};
use mailflow_tests::mailctl::{self, ok};
use mailflow_tests::peer;
use mailflow_tests::stack::{Stack, last_reply, local_with_zones};
use mailflow_tests::wait;
use mailflow_tests::world::World;

/// A sender domain with an exchanger and more records (zone file lines).
fn sender_zone(domain: &str, records: &str) -> (String, String) {
    let (origin, mut text) = mx_zone(domain, "127.0.0.9");
    text.push_str(records);
    (origin, text)
}

/// Domains whose SPF passes, soft-fails and fails for clients on 127.0.0.1, and one that
/// fails with a DMARC policy of `reject`.
fn zones() -> Vec<(String, String)> {
    vec![
        sender_zone("pass.test", "@ IN TXT \"v=spf1 ip4:127.0.0.1 -all\"\n"),
        sender_zone("soft.test", "@ IN TXT \"v=spf1 ip4:192.0.2.1 ~all\"\n"),
        sender_zone("fail.test", "@ IN TXT \"v=spf1 ip4:192.0.2.1 -all\"\n"),
        sender_zone(
            "reject.test",
            "@ IN TXT \"v=spf1 ip4:192.0.2.1 -all\"\n_dmarc IN TXT \"v=DMARC1; p=reject\"\n",
        ),
    ]
}

/// Sends one message from outside (the MX port, 127.0.0.1) to demo; returns its queue id.
async fn send(stack: &Stack, from: &str, subject: &str, extra: &str) -> String {
    let mut c = SmtpClient::connect(stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let content = format!(
        "{extra}From: <{from}>\r\nTo: <demo@example.test>\r\nSubject: {subject}\r\nMessage-ID: <{subject}@client.test>\r\n\r\nHello.\r\n"
    );
    c.send_mail(from, &["demo@example.test"], &content).await
}

/// The message in demo's mailbox whose subject is `subject`.
async fn delivered(stack: &Stack, subject: &str) -> String {
    let marker = format!("Subject: {subject}\r\n");
    wait::until(
        &format!("{subject} in the mailbox"),
        Duration::from_secs(30),
        || async {
            stack
                .mailbox("example.test", "demo")
                .into_iter()
                .map(|m| String::from_utf8_lossy(&m).into_owned())
                .find(|m| m.contains(&marker))
        },
    )
    .await
}

/// The `Authentication-Results` field our host added.
fn our_results(message: &str) -> &str {
    let start = message
        .find("Authentication-Results: mx.example.test")
        .unwrap_or_else(|| panic!("no Authentication-Results in {message}"));
    let rest = &message[start..];
    let mut end = 0;
    for line in rest.split_inclusive("\r\n") {
        if end > 0 && !line.starts_with([' ', '\t']) {
            break;
        }
        end += line.len();
    }
    &rest[..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spf_results_are_recorded_and_a_dmarc_reject_is_held_until_released() {
    let (stack, _dns) = local_with_zones("", &zones()).await;
    for (domain, result) in [("pass", "pass"), ("soft", "softfail"), ("fail", "fail")] {
        send(&stack, &format!("a@{domain}.test"), domain, "").await;
        let message = delivered(&stack, domain).await;
        let results = our_results(&message);
        assert!(results.contains(&format!("spf={result}")), "{results}");
        assert!(results.contains(&format!("smtp.mailfrom=a@{domain}.test")));
        // Unsigned mail from a domain without a DMARC record.
        assert!(!results.contains("dkim="), "{results}");
        assert!(results.contains("dmarc=none"), "{results}");
    }

    let held = send(&stack, "ceo@reject.test", "forged", "").await;
    let status = stack.wait_state(&held, RecipientState::Quarantined).await;
    assert_eq!(status.recipients[0].address, "demo@example.test");
    let list = ok(&stack, &["quarantine", "list"]).await;
    assert!(list.contains(&held), "{list}");
    assert!(
        list.contains("DMARC policy reject for reject.test"),
        "{list}"
    );
    assert!(list.contains("\"forged\""), "{list}");
    assert!(
        !stack
            .mailbox("example.test", "demo")
            .iter()
            .any(|m| String::from_utf8_lossy(m).contains("Subject: forged")),
        "a held message was delivered"
    );

    let released = ok(&stack, &["quarantine", "release", &held]).await;
    assert!(released.contains(&format!("{held} released")));
    let message = delivered(&stack, "forged").await;
    let results = our_results(&message);
    assert!(results.contains("dmarc=fail") && results.contains("spf=fail"));
    stack.wait_state(&held, RecipientState::Delivered).await;
    assert!(!ok(&stack, &["quarantine", "list"]).await.contains(&held));
    mailctl::refused(&stack, &["quarantine", "release", &held], "NotFound").await;
    // Not a queue id at all: the caller's mistake, not the store's trouble.
    mailctl::refused(&stack, &["quarantine", "release", "a b"], "InvalidArgument").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enforced_spf_refuses_a_failing_sender_at_mail_from() {
    let (stack, _dns) = local_with_zones("spf_enforce = true", &zones()).await;
    let mut c = SmtpClient::connect(stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let refused = c.command("MAIL FROM:<a@fail.test>", 550).await;
    assert!(refused.text.starts_with("5.7.23"), "{refused:?}");
    // A soft failure is only recorded.
    c.command("MAIL FROM:<a@soft.test>", 250).await;
    c.command("RSET", 250).await;
    c.command("MAIL FROM:<a@pass.test>", 250).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loops_and_executables_are_held_forged_results_removed_and_deletion_discards() {
    let (stack, _dns) = local_with_zones("", &zones()).await;
    let looping = send(
        &stack,
        "a@pass.test",
        "loop",
        &"Received: from elsewhere by somewhere; Sat, 28 Nov 2026 12:00:00 +0000\r\n".repeat(50),
    )
    .await;
    stack
        .wait_state(&looping, RecipientState::Quarantined)
        .await;

    let mut c = SmtpClient::connect(stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let attachment = "From: <a@pass.test>\r\nTo: <demo@example.test>\r\nSubject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nPlease pay.\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"invoice.pdf.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--b--\r\n";
    let executable = c
        .send_mail("a@pass.test", &["demo@example.test"], attachment)
        .await;
    stack
        .wait_state(&executable, RecipientState::Quarantined)
        .await;

    let list = ok(&stack, &["quarantine", "list"]).await;
    assert!(list.contains("mail loop: 51 Received headers"), "{list}");
    assert!(list.contains("\"invoice.pdf.exe\""), "{list}");

    let deleted = ok(&stack, &["quarantine", "delete", &executable]).await;
    assert!(deleted.contains(&format!("{executable} deleted")));
    let status = stack
        .wait_state(&executable, RecipientState::Discarded)
        .await;
    assert!(
        last_reply(&status, 0)
            .text
            .contains("deleted from quarantine")
    );
    let list = ok(&stack, &["quarantine", "list"]).await;
    assert!(
        !list.contains(&executable) && list.contains(&looping),
        "{list}"
    );
    let shown = ok(&stack, &["status", &executable]).await;
    assert!(shown.contains("discarded"), "{shown}");

    // A field claiming our host name is removed; the one we add is the only one left.
    send(
        &stack,
        "a@fail.test",
        "forged-results",
        "Authentication-Results: mx.example.test; spf=pass (forged-marker)\r\nAuthentication-Results: other.test; spf=pass\r\n",
    )
    .await;
    let message = delivered(&stack, "forged-results").await;
    assert!(!message.contains("forged-marker"), "{message}");
    assert_eq!(
        message
            .matches("Authentication-Results: mx.example.test")
            .count(),
        1
    );
    assert!(our_results(&message).contains("spf=fail"));
    assert!(message.contains("Authentication-Results: other.test; spf=pass"));
}

/// Generates a key with `mailctl dkim generate`, sends as demo through submission to a
/// remote domain, and verifies what arrived with mail-auth against a DNS server serving
/// exactly the record `mailctl` printed.
async fn signed_and_verified(w: &World, algorithm: &str, selector: &str) {
    let printed = ok(
        &w.stack,
        &[
            "dkim",
            "generate",
            "example.test",
            "--selector",
            selector,
            "--algorithm",
            algorithm,
        ],
    )
    .await;
    let line = printed.trim();
    assert!(
        line.starts_with(&format!(
            "{selector}._domainkey.example.test. IN TXT \"v=DKIM1;"
        )),
        "{line}"
    );
    let before = w.a.arrived();
    peer::submit(
        &w.stack,
        w.stack.submission,
        "someone@remote-a.test",
        selector,
        &[],
    )
    .await;
    wait::until("delivery to sink A", Duration::from_secs(30), || async {
        (w.a.arrived() > before).then_some(())
    })
    .await;
    let data = w.a.received().last().unwrap().data.clone();
    let text = String::from_utf8_lossy(&data);
    assert!(
        text.starts_with("DKIM-Signature: v=1;"),
        "not signed first: {text}"
    );
    assert!(!text.contains("Authentication-Results: mx.example.test"));

    let zone = format!(
        "$ORIGIN example.test.\n$TTL 60\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.1\n{line}\n"
    );
    let published = DnsServer::start(&[("example.test", zone)]).await;
    let resolver = mailflow_dns::MxResolver::new(&[published.addr], 25).unwrap();
    let verifier = MessageAuthenticator(resolver.hickory());
    let message = AuthenticatedMessage::parse(&data).unwrap();
    let results = verifier.verify_dkim(&message).await;
    assert_eq!(results.len(), 1);
    assert_eq!(
        results[0].result(),
        &DkimResult::Pass,
        "{algorithm}: {results:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_from_our_users_is_dkim_signed_and_verifies_with_the_printed_record() {
    let w = World::start().await;
    signed_and_verified(&w, "rsa", "rsa1").await;
    // A new key replaces the old one: the next message is signed with it.
    signed_and_verified(&w, "ed25519", "ed1").await;
    let keys = ok(&w.stack, &["dkim", "list"]).await;
    assert!(keys.contains("ed1._domainkey.example.test.") && !keys.contains("rsa1"));
    ok(&w.stack, &["dkim", "rm", "example.test"]).await;
    assert!(ok(&w.stack, &["dkim", "list"]).await.trim().is_empty());
}
