//! Per-destination limits: deliveries to one domain are capped, and the jobs beyond the cap
//! wait at the back of the queue instead of holding up mail for other domains.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::SmtpClient;
use mailflow_tests::sink::BlackHole;
use mailflow_tests::stack::reply_with;
use mailflow_tests::wait;
use mailflow_tests::world::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_to_one_domain_are_capped_and_other_domains_are_not_held_up() {
    let w = World::start_with_relay("destination_concurrency = 2").await;
    // Sink A keeps every transaction open at the end of DATA until released.
    w.a.hold();
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let mut held = Vec::new();
    for i in 0..8 {
        let rcpt = format!("user{i}@remote-a.test");
        held.push(
            c.send_mail(
                "sender@client.test",
                &[&rcpt],
                "Subject: capped\r\n\r\nx\r\n",
            )
            .await,
        );
    }
    wait::until(
        "two deliveries in progress",
        Duration::from_secs(10),
        || async { (w.a.arrived() >= 2).then_some(()) },
    )
    .await;
    // Another destination is served while remote-a is at its cap.
    let other = c
        .send_mail(
            "sender@client.test",
            &["bob@remote-b.test"],
            "Subject: free\r\n\r\nx\r\n",
        )
        .await;
    let status = w.stack.wait_final(&other, Duration::from_secs(10)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    assert_eq!(
        w.a.arrived(),
        2,
        "more than two deliveries to remote-a at once"
    );
    assert!(
        w.a.peak_connections() <= 2,
        "{} connections",
        w.a.peak_connections()
    );

    w.a.release();
    for id in &held {
        let status = w.stack.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    }
    assert_eq!(w.a.received().len(), 8);
    assert!(
        w.a.peak_connections() <= 2,
        "{} connections",
        w.a.peak_connections()
    );
}

/// Head-of-line isolation at scale: a destination that swallows connections without a word,
/// with thousands of messages for it, does not delay mail for a healthy destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_destination_with_thousands_of_messages_delays_nobody_else() {
    const MESSAGES: usize = 2000;
    // hole.remote-b.test's exchanger accepts connections on 127.0.0.6 and never answers.
    let w = World::start_with(
        "destination_backoff = \"10m\"\nretry_delays = [\"1h\"]",
        &[(
            "remote-b.test",
            "hole IN MX 10 mx.hole\nmx.hole IN A 127.0.0.6\n",
        )],
        &[],
    )
    .await;
    let hole = BlackHole::start(SocketAddr::new([127, 0, 0, 6].into(), w.a.addr.port())).await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let mut swallowed = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let rcpt = format!("user{i}@hole.remote-b.test");
        swallowed.push(
            c.send_mail("sender@client.test", &[&rcpt], "Subject: lost\r\n\r\nx\r\n")
                .await,
        );
    }
    let sent = Instant::now();
    let ok = c
        .send_mail(
            "sender@client.test",
            &["carol@remote-a.test"],
            "Subject: fine\r\n\r\nx\r\n",
        )
        .await;
    let status = w.stack.wait_final(&ok, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(10),
        "the healthy message took {took:?}"
    );
    // Every swallowed message ends up deferred, and the black hole saw few connections:
    // once it was found unreachable, its mail was deferred without connecting.
    for id in [
        &swallowed[0],
        &swallowed[MESSAGES / 2],
        &swallowed[MESSAGES - 1],
    ] {
        wait::until("a deferral", Duration::from_secs(60), || async {
            let s = w.stack.get_message(id).await.ok()?;
            (s.recipients[0].state() == RecipientState::Deferred).then_some(())
        })
        .await;
    }
    assert!(
        hole.connections() <= 20,
        "{} connections",
        hole.connections()
    );
}

/// Jobs a busy relay has fetched but not started keep their claim: JetStream is told they
/// are being worked on, so waiting for a free slot longer than the acknowledgement timeout
/// hands none of them out again, and each message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_jobs_waiting_for_a_slot_are_not_handed_out_again() {
    let w = World::start_with_relay("concurrency = 2\nack_wait = \"2s\"").await;
    w.a.hold();
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(
            w.send(&format!("carol{i}@remote-a.test"), &format!("wait {i}"))
                .await,
        );
    }
    wait::until(
        "both slots held at the exchanger",
        Duration::from_secs(30),
        || async { (w.a.arrived() >= 2).then_some(()) },
    )
    .await;
    let nats = async_nats::connect(w.stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream("MAIL_OUT")
        .await
        .unwrap()
        .get_consumer("relay")
        .await
        .unwrap();
    // Three acknowledgement timeouts with every slot busy: nothing is redelivered.
    let watch_until = Instant::now() + Duration::from_secs(6);
    while Instant::now() < watch_until {
        let info = consumer.info().await.unwrap();
        assert_eq!(info.num_redelivered, 0, "{info:?}");
        assert!(w.a.arrived() <= 2, "a slot was freed while held");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    w.a.release();
    for id in &ids {
        let status = w.stack.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    }
    let mut subjects: Vec<String> = w.a.received().iter().map(|d| d.subject()).collect();
    subjects.sort();
    assert_eq!(subjects.len(), 6, "{subjects:?}");
    subjects.dedup();
    assert_eq!(subjects.len(), 6, "a message arrived twice");
}

/// The bodies deliveries hold at once stay within `body_memory`: with room for one 700 KB
/// body, a second delivery waits (counted in `mailflow_relay_body_memory_waiting`) while
/// the first is held at the exchanger, and goes once it is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_wait_for_room_in_the_body_memory_budget() {
    let w = World::start_with_relay("body_memory = 1048576").await;
    w.a.hold();
    let line = format!("{}\r\n", "z".repeat(98));
    let content = |n: u32| format!("Subject: big {n}\r\n\r\n{}", line.repeat(7_000));
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let first = c
        .send_mail("sender@client.test", &["ann@remote-a.test"], &content(1))
        .await;
    wait::until(
        "the first delivery held",
        Duration::from_secs(30),
        || async { (w.a.arrived() == 1).then_some(()) },
    )
    .await;
    let second = c
        .send_mail("sender@client.test", &["bea@remote-a.test"], &content(2))
        .await;
    let stack = &w.stack;
    wait::until(
        "the second delivery waiting",
        Duration::from_secs(30),
        || async {
            let metrics = stack.scrape(mailflow_tests::stack::RELAY).await;
            (metrics.get("mailflow_relay_body_memory_waiting") == Some(&1.0)).then_some(())
        },
    )
    .await;
    assert_eq!(w.a.arrived(), 1, "the second body did not wait for room");
    w.a.release();
    for id in [first, second] {
        let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
        assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
    }
    let metrics = w.stack.scrape(mailflow_tests::stack::RELAY).await;
    assert_eq!(
        metrics.get("mailflow_relay_body_memory_waiting"),
        Some(&0.0)
    );
}

/// A mail exchanger that calls itself by our ingress' name is ourselves (an MX pointing at
/// us): as Postfix's "loops back to myself", the mail is returned at once with 5.4.6 when
/// that is the best MX, instead of going round until the hop count stops it, and deferred
/// with 4.4.6 when a better MX (down for now) may still take it. Nothing is delivered there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_for_a_destination_that_loops_back_to_us_is_returned() {
    // backup.remote-b.test: an address where nothing listens first, then sink B.
    let w = World::start_with(
        "",
        &[(
            "remote-b.test",
            "backup IN MX 10 mx.none\nbackup IN MX 20 mx\nmx.none IN A 127.0.0.7\n\
             dnsfail IN MX 10 servfail\ndnsfail IN MX 20 mx\n",
        )],
        &[],
    )
    .await;
    w.b.set_name("mx.example.test");
    let id = w.send("ann@backup.remote-b.test", "looping behind").await;
    let status = w.stack.wait_state(&id, RecipientState::Deferred).await;
    reply_with(&status, 0, 451, "4.4.6");

    let id = w.send("bob@remote-b.test", "looping").await;
    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Bounced);
    let reply = reply_with(&status, 0, 554, "5.4.6");
    assert!(reply.text.contains("loops back"), "{reply:?}");
    assert!(w.b.received().is_empty());
    // The best MX cannot be looked up for now (SERVFAIL): it still outranks us, so a
    // backup that is ourselves defers the mail rather than return it.
    let hiccup = w
        .send("cid@dnsfail.remote-b.test", "looping behind a DNS hiccup")
        .await;
    let status = w.stack.wait_state(&hiccup, RecipientState::Deferred).await;
    reply_with(&status, 0, 451, "4.4.6");
    // The same exchanger under its own name takes mail again.
    w.b.set_name("sink.test");
    let id = w.send("bob@remote-b.test", "not looping").await;
    let status = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
}

/// A server that greets with a permanent refusal is skipped and the mail deferred, not
/// bounced (Postfix's smtp_skip_5xx_greeting); and a destination one of whose servers
/// answered is not taken for down because another one never did: its next message is
/// tried again rather than deferred without a connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unwelcoming_server_defers_and_does_not_make_its_destination_dead() {
    // mixed.remote-b.test: sink B (refusing to greet) first, then an address where nothing
    // listens (connection refused: no answer).
    let w = World::start_with(
        "destination_backoff = \"10m\"",
        &[(
            "remote-b.test",
            "mixed IN MX 10 mx\nmixed IN MX 20 mx.none\nmx.none IN A 127.0.0.7\n",
        )],
        &[],
    )
    .await;
    w.b.refuse_greeting("554 5.7.1 not today");

    let single = w.send("bob@remote-b.test", "unwelcome").await;
    let status = w.deferred_with(&single, 1, "refused to talk to us").await;
    reply_with(&status, 0, 451, "4.4.0");

    let first = w.send("ann@mixed.remote-b.test", "mixed 1").await;
    w.stack.wait_state(&first, RecipientState::Deferred).await;
    let before = w.b.connections();
    let second = w.send("bea@mixed.remote-b.test", "mixed 2").await;
    w.stack.wait_state(&second, RecipientState::Deferred).await;
    assert!(
        w.b.connections() > before,
        "the second message was not tried: the destination was taken for down"
    );
}
