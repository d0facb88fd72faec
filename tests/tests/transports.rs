//! Transports per domain: LMTP into a real Dovecot (read back over IMAP and POP3), a
//! Maildir elsewhere, and a fixed SMTP server for one remote domain.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::SmtpClient;
use mailflow_tests::dovecot::Dovecot;
use mailflow_tests::mailctl::{ok, refused};
use mailflow_tests::peer;
use mailflow_tests::stack::local;
use mailflow_tests::wait;
use mailflow_tests::world::World;

/// The subjects a mail client sees in `user`'s mailbox (`imap-subjects` or `pop3-subjects`).
async fn subjects(
    command: &str,
    server: std::net::SocketAddr,
    user: &str,
    password: &str,
) -> Vec<String> {
    let out = peer::run(
        [
            command,
            "--server",
            &server.to_string(),
            "--user",
            user,
            "--password",
            password,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    )
    .await;
    assert!(out.ok, "{command}: {}{}", out.stdout, out.stderr);
    out.stdout
        .lines()
        .filter_map(|l| l.strip_prefix("subject: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lmtp_into_dovecot_then_read_over_imap_and_pop3() {
    let dovecot = Dovecot::start(&[("demo@example.test", "secret")]).await;
    let (stack, _dns) = local().await;
    let transport = format!("lmtp:{}", dovecot.lmtp);
    let added = ok(
        &stack,
        &["domain", "add", "example.test", "--transport", &transport],
    )
    .await;
    assert!(
        added.contains(&format!("via lmtp:[127.0.0.1]:{}", dovecot.lmtp.port())),
        "{added}"
    );
    assert!(
        ok(&stack, &["domain", "list"])
            .await
            .contains("example.test via lmtp:")
    );
    refused(
        &stack,
        &["domain", "add", "example.test", "--transport", "lmtp:"],
        "InvalidArgument",
    )
    .await;
    // Known to mailflow's directory, unknown to Dovecot: LMTP refuses this one recipient.
    stack.add_user("ghost@example.test", "x").await;

    let mut c = SmtpClient::connect(stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let id = c
        .send_mail(
            "sender@client.test",
            &["demo@example.test", "ghost@example.test"],
            "From: <sender@client.test>\r\nSubject: through LMTP\r\n\r\nHello Dovecot.\r\n",
        )
        .await;
    let status = stack.wait_final(&id, Duration::from_secs(30)).await;
    let demo = &status.recipients[0];
    assert_eq!(
        demo.state(),
        RecipientState::Delivered,
        "{status:?}\n{}",
        dovecot.log()
    );
    assert_eq!(demo.remote_ip, "127.0.0.1");
    let ghost = &status.recipients[1];
    assert_eq!(ghost.state(), RecipientState::Bounced, "{status:?}");
    assert_eq!(ghost.last_reply.as_ref().unwrap().code, 550);

    let imap = subjects("imap-subjects", dovecot.imap, "demo@example.test", "secret").await;
    assert_eq!(imap, vec!["through LMTP".to_string()], "{}", dovecot.log());
    let pop3 = subjects("pop3-subjects", dovecot.pop3, "demo@example.test", "secret").await;
    assert_eq!(pop3, vec!["through LMTP".to_string()]);
    // Nothing went to mailflow's own Maildir.
    assert!(stack.mailbox("example.test", "demo").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_can_have_its_own_maildir_and_a_remote_domain_its_own_smtp_server() {
    let w = World::start_with_relay("[relay.transports]\n\"remote-b.test\" = \"smtp:{sink_a}\"\n")
        .await;
    let elsewhere = tempfile::tempdir().unwrap();
    let transport = format!("maildir:{}", elsewhere.path().display());
    ok(
        &w.stack,
        &["domain", "add", "example.test", "--transport", &transport],
    )
    .await;

    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let local = c
        .send_mail(
            "sender@client.test",
            &["demo@example.test"],
            "Subject: elsewhere\r\n\r\nx\r\n",
        )
        .await;
    let remote = c
        .send_mail(
            "sender@client.test",
            &["bob@remote-b.test"],
            "Subject: rerouted\r\n\r\nx\r\n",
        )
        .await;
    for id in [&local, &remote] {
        let status = w.stack.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(
            status.recipients[0].state(),
            RecipientState::Delivered,
            "{status:?}"
        );
    }
    let new = elsewhere.path().join("example.test/demo/new");
    let files: Vec<_> = std::fs::read_dir(&new).unwrap().collect();
    assert_eq!(files.len(), 1);
    assert!(w.stack.mailbox("example.test", "demo").is_empty());
    // remote-b.test's own exchanger (sink B) got nothing: its transport is sink A.
    wait::until(
        "the rerouted message at sink A",
        Duration::from_secs(10),
        || async {
            w.a.received()
                .iter()
                .any(|d| d.rcpts == ["bob@remote-b.test"])
                .then_some(())
        },
    )
    .await;
    assert_eq!(w.b.arrived(), 0);
}
