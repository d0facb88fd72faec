//! The first path through mailflow, end to end, on real parts: nats-server, a DNS server
//! with MX records for two remote domains, two SMTP servers on loopback, and the service
//! binaries.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::{DeliveryEvent, RecipientState};
use mailflow_tests::client::{SmtpClient, queue_id};
use mailflow_tests::sink::Sink;
use mailflow_tests::stack::RELAY;
use mailflow_tests::stack::reply_with;
use mailflow_tests::wait;
use mailflow_tests::world::World;
use prost::Message;

/// One message from sender@client.test to `rcpt` over a session of its own; its queue id.
async fn send_one(w: &World, rcpt: &str, marker: &str) -> String {
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let id = c
        .send_mail("sender@client.test", &[rcpt], &content(marker))
        .await;
    c.command("QUIT", 221).await;
    id
}

fn content(marker: &str) -> String {
    format!(
        "From: sender@client.test\r\nTo: demo@example.test\r\nSubject: {marker}\r\nMessage-ID: <{marker}@client.test>\r\n\r\nHello from the end-to-end test.\r\n..a line that starts with a dot\r\n\r\nbye\r\n"
    )
}

/// The content a peer received after the headers mailflow added at the top.
fn after_trace_headers(data: &[u8]) -> &[u8] {
    let text = std::str::from_utf8(data).unwrap();
    let start = text
        .find("From: sender@client.test")
        .expect("original headers present");
    &data[start..]
}

fn unstuffed(content: &str) -> String {
    content.replace("\r\n..", "\r\n.")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_b_message_reaches_local_and_both_remote_domains_once_with_replies_recorded() {
    let w = World::start().await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let body = content("case-a");
    let id = c
        .send_mail(
            "sender@client.test",
            &[
                "demo@example.test",
                "alice@remote-a.test",
                "bob@remote-b.test",
            ],
            &body,
        )
        .await;
    c.command("QUIT", 221).await;

    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    // (b) every recipient delivered, with the remote server's own reply.
    assert_eq!(status.recipients.len(), 3);
    for r in &status.recipients {
        assert_eq!(r.state(), RecipientState::Delivered, "{r:?}");
        assert_eq!(r.last_reply.as_ref().unwrap().code, 250, "{r:?}");
    }
    let alice = &status.recipients[1];
    assert_eq!(alice.address, "alice@remote-a.test");
    assert_eq!(alice.remote_host, "mx.remote-a.test");
    assert_eq!(alice.remote_ip, "127.0.0.2");
    assert!(
        alice
            .last_reply
            .as_ref()
            .unwrap()
            .text
            .contains("queued as sink-"),
        "{alice:?}"
    );
    // A offers STARTTLS, so that delivery was encrypted and says how; B does not.
    let tls = alice
        .tls
        .as_ref()
        .unwrap_or_else(|| panic!("no TLS for alice: {}", w.stack.log(RELAY)));
    assert!(tls.version.starts_with("TLSv1."), "{tls:?}");
    // The exchanger (rustls) follows the client's order, and ours puts AES-128-GCM first.
    assert_eq!(tls.cipher, "TLS13_AES_128_GCM_SHA256", "{tls:?}");
    let bob = &status.recipients[2];
    assert_eq!(bob.remote_ip, "127.0.0.3");
    assert!(bob.tls.is_none(), "{bob:?}");

    // Each outcome is also an event on MAIL_EVENTS.
    let nats = async_nats::connect(w.stack.nats.url()).await.unwrap();
    let events = async_nats::jetstream::new(nats)
        .get_stream("MAIL_EVENTS")
        .await
        .unwrap();
    let last = events
        .get_last_raw_message_by_subject(&format!("mail.events.{id}.0"))
        .await
        .unwrap();
    let event = DeliveryEvent::decode(last.payload).unwrap();
    assert_eq!(event.queue_id, id);
    assert_eq!(event.state(), RecipientState::Delivered);

    // (a) exactly once each, body intact, a Received header added.
    let expected = unstuffed(&body);
    let local = w.stack.mailbox("example.test", "demo");
    assert_eq!(local.len(), 1, "one local copy");
    assert_eq!(after_trace_headers(&local[0]), expected.as_bytes());
    assert!(String::from_utf8_lossy(&local[0]).contains(&format!("with ESMTP id {id}")));
    for (sink, rcpt) in [(&w.a, "alice@remote-a.test"), (&w.b, "bob@remote-b.test")] {
        let got = sink.received();
        assert_eq!(got.len(), 1, "one copy at {rcpt}'s exchanger");
        assert_eq!(got[0].rcpts, vec![rcpt.to_string()]);
        assert_eq!(got[0].tls, rcpt.contains("remote-a"), "{rcpt} over TLS?");
        assert_eq!(got[0].from, "sender@client.test");
        assert!(
            got[0]
                .data
                .starts_with(b"Received: from client.test ([127.0.0.1])\r\n\tby mx.example.test")
        );
        assert_eq!(after_trace_headers(&got[0].data), expected.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_unknown_local_user_and_unauthorised_relaying_are_refused_at_rcpt() {
    let w = World::start().await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    c.command("MAIL FROM:<sender@client.test>", 250).await;
    let r = c.command("RCPT TO:<nobody@example.test>", 550).await;
    assert!(r.text.starts_with("5.1.1 "), "{r:?}");
    c.command("RCPT TO:<demo@example.test>", 250).await;
    c.command("QUIT", 221).await;

    // From 127.0.0.5, outside relay_networks: local mail yes, relaying no.
    let mut c = SmtpClient::connect_from("127.0.0.5".parse().unwrap(), w.stack.smtp).await;
    c.command("EHLO outsider.test", 250).await;
    c.command("MAIL FROM:<sender@client.test>", 250).await;
    let r = c.command("RCPT TO:<alice@remote-a.test>", 554).await;
    assert!(r.text.starts_with("5.7.1 "), "{r:?}");
    c.command("RCPT TO:<demo@example.test>", 250).await;
    c.command("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_domains_are_refused_in_session() {
    let w = World::start().await;
    // A client allowed to relay: recipients whose domain takes no mail are refused now.
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    c.command("MAIL FROM:<sender@client.test>", 250).await;
    let r = c.command("RCPT TO:<x@nomail.test>", 556).await;
    assert!(r.text.starts_with("5.1.10 "), "{r:?}");
    let r = c.command("RCPT TO:<x@gone.remote-a.test>", 550).await;
    assert!(r.text.starts_with("5.1.2 "), "{r:?}");
    c.command("RCPT TO:<ok@remote-a.test>", 250).await;
    c.command("QUIT", 221).await;

    // An outside client on the MX port: the sender's domain must exist and take mail.
    let mut c = SmtpClient::connect_from("127.0.0.5".parse().unwrap(), w.stack.smtp).await;
    c.command("EHLO outsider.test", 250).await;
    let r = c.command("MAIL FROM:<a@gone.remote-a.test>", 550).await;
    assert!(r.text.starts_with("5.1.8 "), "{r:?}");
    let r = c.command("MAIL FROM:<a@nomail.test>", 550).await;
    assert!(r.text.starts_with("5.7.27 "), "{r:?}");
    c.command("MAIL FROM:<>", 250).await;
    c.command("RSET", 250).await;
    c.command("MAIL FROM:<a@remote-b.test>", 250).await;
    c.command("RCPT TO:<demo@example.test>", 250).await;
    c.command("QUIT", 221).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_nats_down_gives_451_at_end_of_data_then_mail_flows_again() {
    let mut w = World::start().await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    c.command("MAIL FROM:<sender@client.test>", 250).await;
    c.command("RCPT TO:<demo@example.test>", 250).await;
    c.command("DATA", 354).await;
    c.send_raw(content("lost-while-down").as_bytes()).await;
    w.stack.nats.kill().await;
    let r = c.command(".", 451).await;
    assert!(r.text.starts_with("4.3.0 "), "{r:?}");
    c.command("QUIT", 221).await;

    w.stack.nats.restart().await;
    // The services reconnect by themselves; until they have, 4xx is the right answer.
    let id = wait::until(
        "a message accepted after nats-server is back",
        Duration::from_secs(30),
        || async {
            let mut c = SmtpClient::connect(w.stack.smtp).await;
            c.command("EHLO client.test", 250).await;
            if c.command("MAIL FROM:<sender@client.test>", 250).await.code != 250 {
                return None;
            }
            c.send("RCPT TO:<demo@example.test>").await;
            if c.reply().await.code != 250 {
                return None;
            }
            c.command("DATA", 354).await;
            c.send_raw(content("after-restart").as_bytes()).await;
            c.send(".").await;
            let r = c.reply().await;
            (r.code == 250).then(|| queue_id(&r.text))
        },
    )
    .await;
    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    let mailbox = w.stack.mailbox("example.test", "demo");
    let texts: Vec<String> = mailbox
        .iter()
        .map(|m| String::from_utf8_lossy(m).into_owned())
        .collect();
    assert_eq!(
        texts
            .iter()
            .filter(|t| t.contains("Subject: after-restart"))
            .count(),
        1
    );
    // A 451 leaves the message to the client; at worst a lost acknowledgement makes it a
    // duplicate later, never more than one extra copy.
    assert!(
        texts
            .iter()
            .filter(|t| t.contains("Subject: lost-while-down"))
            .count()
            <= 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_relay_killed_while_holding_jobs_loses_nothing() {
    let mut w = World::start().await;
    w.a.hold();
    let mut ids = Vec::new();
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    for i in 0..5 {
        let marker = format!("kill-{i}");
        ids.push((
            marker.clone(),
            c.send_mail(
                "sender@client.test",
                &["carol@remote-a.test"],
                &content(&marker),
            )
            .await,
        ));
    }
    c.command("QUIT", 221).await;
    wait::until(
        "the relay to be in the middle of a delivery",
        Duration::from_secs(30),
        || async { (w.a.arrived() >= 1).then_some(()) },
    )
    .await;
    w.stack.kill(RELAY).await;
    w.a.release();
    w.stack.start_service(RELAY).await;

    for (marker, id) in &ids {
        let status = w.stack.wait_final(id, Duration::from_secs(60)).await;
        assert_eq!(
            status.recipients[0].state(),
            RecipientState::Delivered,
            "{marker}"
        );
        let copies =
            w.a.received()
                .iter()
                .filter(|d| {
                    String::from_utf8_lossy(&d.data).contains(&format!("Subject: {marker}\r\n"))
                })
                .count();
        assert!(copies >= 1, "{marker} was not delivered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_mx_and_permanent_refusals_bounce_and_temporary_ones_defer() {
    let w = World::start().await;
    // A null MX domain is refused at RCPT (below); mail can still meet one after acceptance,
    // through an alias.
    w.stack.add_alias("fwd@example.test", "x@nomail.test").await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let id = c
        .send_mail(
            "sender@client.test",
            &[
                "fwd@example.test",
                "reject-me@remote-a.test",
                "ok@remote-a.test",
            ],
            &content("refusals"),
        )
        .await;
    let tmp = c
        .send_mail(
            "sender@client.test",
            &["tempfail@remote-b.test"],
            &content("tempfail"),
        )
        .await;
    c.command("QUIT", 221).await;
    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    let states: Vec<(RecipientState, u32)> = status
        .recipients
        .iter()
        .map(|r| (r.state(), r.last_reply.as_ref().unwrap().code))
        .collect();
    assert_eq!(
        states,
        vec![
            (RecipientState::Bounced, 556),
            (RecipientState::Bounced, 550),
            (RecipientState::Delivered, 250),
        ]
    );
    assert_eq!(
        status.recipients[0].last_reply.as_ref().unwrap().enhanced,
        "5.1.10"
    );
    let deferred = wait::until(
        "the temporary failure to be recorded",
        Duration::from_secs(30),
        || async {
            let s = w.stack.get_message(&tmp).await.ok()?;
            (s.recipients[0].state() == RecipientState::Deferred).then_some(s)
        },
    )
    .await;
    assert_eq!(
        deferred.recipients[0].last_reply.as_ref().unwrap().code,
        451
    );
    let next = deferred.recipients[0]
        .next_attempt_at
        .expect("a deferral says when the next attempt is due");
    let at = deferred.recipients[0].updated_at.unwrap();
    assert!(next.seconds >= at.seconds, "{next:?} before {at:?}");
    // It is tried again (retry_delays = 1s in the test config).
    wait::until("a second attempt", Duration::from_secs(30), || async {
        let s = w.stack.get_message(&tmp).await.ok()?;
        (s.recipients[0].attempts >= 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_service_errors_are_proper_grpc_statuses() {
    let w = World::start().await;
    let missing = w
        .stack
        .get_message("01AAAAAAAAAAAAAAAAAAAAAAAA")
        .await
        .unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let bad = w.stack.get_message("not an id").await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_messages_to_one_destination_reuse_the_connection() {
    let w = World::start().await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    for i in 0..5 {
        let id = c
            .send_mail(
                "sender@client.test",
                &["dave@remote-b.test"],
                &content(&format!("reuse-{i}")),
            )
            .await;
        w.stack.wait_final(&id, Duration::from_secs(30)).await;
    }
    assert_eq!(w.b.received().len(), 5);
    // One connection carried them all (two if the machine stalled past the reuse window).
    assert!(
        w.b.connections() <= 2,
        "{} connections for 5 messages",
        w.b.connections()
    );
}

/// 8-bit content never reaches a server that lacks 8BITMIME: it bounces with 5.6.3 (no
/// downgrade), while 7-bit content is delivered there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_bit_content_is_not_sent_to_a_server_without_8bitmime() {
    let w = World::start().await;
    w.b.set_8bitmime(false);
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let seven = c
        .send_mail(
            "sender@client.test",
            &["bob@remote-b.test"],
            "Subject: plain\r\n\r\nhello\r\n",
        )
        .await;
    c.command("MAIL FROM:<sender@client.test> BODY=8BITMIME", 250)
        .await;
    c.command("RCPT TO:<bob@remote-b.test>", 250).await;
    c.command("DATA", 354).await;
    c.send_raw("Subject: 8bit\r\n\r\nGr\u{fc}\u{df}e\r\n".as_bytes())
        .await;
    let eight = queue_id(&c.command(".", 250).await.text);
    let plain = w.stack.wait_final(&seven, Duration::from_secs(30)).await;
    assert_eq!(plain.recipients[0].state(), RecipientState::Delivered);
    let status = w.stack.wait_final(&eight, Duration::from_secs(30)).await;
    let r = &status.recipients[0];
    assert_eq!(r.state(), RecipientState::Bounced);
    reply_with(&status, 0, 554, "5.6.3");
    assert_eq!(w.b.received().len(), 1, "only the 7-bit message arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_pipelines_only_with_servers_that_offer_it() {
    let w = World::start().await;
    w.b.set_pipelining(false);
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let mut ids = Vec::new();
    for domain in ["remote-a.test", "remote-b.test"] {
        let rcpts = [format!("ok@{domain}"), format!("reject-me@{domain}")];
        let rcpts: Vec<&str> = rcpts.iter().map(String::as_str).collect();
        ids.push(
            c.send_mail("sender@client.test", &rcpts, &content(domain))
                .await,
        );
    }
    // Nothing is accepted: DATA is refused by a pipelining server, never sent to the other.
    for domain in ["remote-a.test", "remote-b.test"] {
        let rcpt = format!("reject-all@{domain}");
        ids.push(
            c.send_mail("sender@client.test", &[&rcpt], &content("none"))
                .await,
        );
    }
    c.command("QUIT", 221).await;
    for id in &ids[..2] {
        let status = w.stack.wait_final(id, Duration::from_secs(30)).await;
        let codes: Vec<u32> = status
            .recipients
            .iter()
            .map(|r| r.last_reply.as_ref().unwrap().code)
            .collect();
        assert_eq!(codes, vec![250, 550], "{status:?}");
    }
    for id in &ids[2..] {
        let status = w.stack.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(status.recipients[0].state(), RecipientState::Bounced);
    }
    for sink in [&w.a, &w.b] {
        let got = sink.received();
        assert_eq!(got.len(), 1, "only the message with an accepted recipient");
        assert_eq!(got[0].rcpts.len(), 1);
    }
    assert!(w.a.pipelined() >= 2, "MAIL, RCPT and DATA in one write");
    assert_eq!(
        w.b.pipelined(),
        0,
        "one command at a time without PIPELINING"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tls_handshake_falls_back_to_plaintext() {
    let w = World::start().await;
    w.b.offer_broken_starttls();
    let id = send_one(&w, "bob@remote-b.test", "fallback").await;
    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    let bob = &status.recipients[0];
    assert_eq!(bob.state(), RecipientState::Delivered, "{bob:?}");
    assert!(bob.tls.is_none());
    let got = w.b.received();
    assert_eq!((got.len(), got[0].tls), (1, false));
    assert_eq!(
        w.b.connections(),
        2,
        "the failed TLS attempt, then plaintext"
    );
}

/// Deferred jobs wait in `MAIL_RETRY`, not among the relay consumer's unacknowledged
/// messages, so a destination that is down blocks nothing else (no head-of-line blocking).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deferred_jobs_wait_outside_the_delivery_queue() {
    // A long first delay: the deferred jobs stay parked for the whole test.
    let w = World::start_with_relay("retry_delays = [\"1h\"]").await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let mut deferred = Vec::new();
    for i in 0..30 {
        let rcpt = format!("tempfail{i}@remote-b.test");
        deferred.push(
            c.send_mail("sender@client.test", &[&rcpt], &content("down"))
                .await,
        );
    }
    // Mail for a healthy destination is delivered meanwhile.
    let ok = c
        .send_mail("sender@client.test", &["ok@remote-a.test"], &content("up"))
        .await;
    c.command("QUIT", 221).await;
    let status = w.stack.wait_final(&ok, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    for id in &deferred {
        wait::until(
            "the deferral to be recorded",
            Duration::from_secs(30),
            || async {
                let s = w.stack.get_message(id).await.ok()?;
                (s.recipients[0].state() == RecipientState::Deferred).then_some(())
            },
        )
        .await;
    }
    let nats = async_nats::connect(w.stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let parked = wait::until(
        "all deferred jobs parked",
        Duration::from_secs(30),
        || async {
            let mut retry = js.get_stream("MAIL_RETRY").await.ok()?;
            let n = retry.info().await.ok()?.state.messages;
            (n == 30).then_some(n)
        },
    )
    .await;
    assert_eq!(parked, 30);
    let mut relay = js
        .get_stream("MAIL_OUT")
        .await
        .unwrap()
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>("relay")
        .await
        .unwrap();
    let info = relay.info().await.unwrap();
    assert_eq!(
        info.num_ack_pending, 0,
        "no deferred job holds a delivery slot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backup_exchanger_takes_over_when_the_preferred_one_refuses_connections() {
    let w = World::start().await;
    let id = send_one(&w, "carol@fallback.test", "backup").await;
    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    let carol = &status.recipients[0];
    assert_eq!(carol.state(), RecipientState::Delivered, "{carol:?}");
    assert_eq!(carol.remote_host, "mx2.fallback.test");
    assert_eq!(carol.remote_ip, "127.0.0.2");
    assert_eq!(
        w.a.received()[0].rcpts,
        vec!["carol@fallback.test".to_string()]
    );
}

/// An exchanger with only an IPv6 address (AAAA) is reached over IPv6.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_only_exchanger_is_reached_over_ipv6() {
    let w = World::start_with(
        "",
        &[("remote-b.test", "six IN MX 10 mx.six\nmx.six IN AAAA ::1\n")],
        &[],
    )
    .await;
    let six = Sink::bind(std::net::SocketAddr::new(
        "::1".parse().unwrap(),
        w.a.addr.port(),
    ))
    .await;
    let id = send_one(&w, "carol@six.remote-b.test", "ipv6").await;
    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    let carol = &status.recipients[0];
    assert_eq!(carol.state(), RecipientState::Delivered, "{carol:?}");
    assert_eq!(
        (carol.remote_host.as_str(), carol.remote_ip.as_str()),
        ("mx.six.remote-b.test", "::1")
    );
    assert_eq!(six.received().len(), 1);
}

/// A smarthost that wants AUTH: the relay authenticates inside TLS; with a wrong password the
/// mail is deferred (4.7.0), never bounced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smarthost_gets_credentials_over_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    for (password, delivered) in [("s3cret", true), ("wrong", false)] {
        let file = dir.path().join(format!("{password}.txt"));
        std::fs::write(&file, format!("{password}\n")).unwrap();
        let extra = format!(
            "smarthost = \"{{sink_a}}\"\nsmarthost_username = \"relay\"\nsmarthost_password_file = \"{}\"",
            file.display()
        );
        let w = World::start_with_relay(&extra).await;
        w.a.require_auth("relay", "s3cret");
        let id = send_one(&w, "bob@remote-b.test", "smart").await;
        if delivered {
            let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
            assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
            let got = w.a.received();
            assert_eq!(got[0].auth.as_deref(), Some("relay"));
            assert!(got[0].tls);
            assert!(
                w.b.received().is_empty(),
                "all remote mail goes to the smarthost"
            );
        } else {
            let s = wait::until("the deferral", Duration::from_secs(30), || async {
                let s = w.stack.get_message(&id).await.ok()?;
                (s.recipients[0].state() == RecipientState::Deferred).then_some(s)
            })
            .await;
            let reply = reply_with(&s, 0, 451, "4.7.0");
            assert!(reply.text.contains("535"), "{reply:?}");
            assert!(w.a.received().is_empty());
        }
    }
}
