//! The `Queue` service end to end: finding, listing, watching and counting messages, and
//! the operator's controls (retry now, cancel, suspend, resume), through gRPC, through
//! `mailctl`, from a second relay replica, and from Python's grpcio, which learns the
//! contracts by reflection.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use mailflow_proto::v1::{
    CancelRequest, GetMessageRequest, ListMessagesRequest, MessageState, MessageStatus,
    QueueSummaryRequest, RecipientState, RetryRequest, WatchMessageRequest,
    queue_client::QueueClient, watch_update,
};
use mailflow_tests::client::SmtpClient;
use mailflow_tests::mailctl::{self, ok};
use mailflow_tests::stack::{RELAY, last_reply};
use mailflow_tests::wait;
use mailflow_tests::world::World;
use tonic::Code;
use tonic::transport::Channel;

async fn client(addr: SocketAddr) -> QueueClient<Channel> {
    QueueClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// The refusal of a cancel (without bounce) of `id`.
async fn cancel_refused(q: &mut QueueClient<Channel>, id: &str) -> tonic::Status {
    q.cancel(CancelRequest {
        queue_id: id.to_string(),
        bounce: false,
    })
    .await
    .unwrap_err()
}

/// Sends one message from `sender@client.test` with a Message-ID and, when given, an ENVID.
async fn send(w: &World, rcpt: &str, marker: &str, envid: Option<&str>) -> String {
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let mail = match envid {
        Some(e) => format!("MAIL FROM:<sender@client.test> ENVID={e}"),
        None => "MAIL FROM:<sender@client.test>".to_string(),
    };
    c.command(&mail, 250).await;
    c.command(&format!("RCPT TO:<{rcpt}>"), 250).await;
    c.command("DATA", 354).await;
    c.send_raw(
        format!(
            "From: <sender@client.test>\r\nSubject: {marker}\r\nMessage-ID: <{marker}@client.test>\r\n\r\nx\r\n"
        )
        .as_bytes(),
    )
    .await;
    let reply = c.command(".", 250).await;
    mailflow_tests::client::queue_id(&reply.text)
}

/// The queue ids a list request returns once it returns `n` of them.
async fn listed(q: &mut QueueClient<Channel>, req: ListMessagesRequest, n: usize) -> Vec<String> {
    wait::until("the list", Duration::from_secs(30), || {
        let (mut q, req) = (q.clone(), req.clone());
        async move {
            let page = q.list_messages(req).await.ok()?.into_inner();
            let ids: Vec<String> = page.messages.into_iter().map(|m| m.queue_id).collect();
            (ids.len() == n).then_some(ids)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_found_listed_counted_and_errors_are_precise() {
    let w = World::start_with_relay("retry_delays = [\"1h\"]").await;
    let delivered = send(&w, "carol@remote-a.test", "first", Some("env-1")).await;
    w.stack
        .wait_state(&delivered, RecipientState::Delivered)
        .await;
    let deferred = send(&w, "tempfail@remote-b.test", "second", None).await;
    w.stack
        .wait_state(&deferred, RecipientState::Deferred)
        .await;
    let mut q = client(w.stack.queue).await;

    // By queue id, with the attempt history; by Message-ID; by ENVID.
    let by_id = q
        .get_message(GetMessageRequest {
            queue_id: delivered.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(by_id.message_id, "first@client.test");
    assert_eq!(by_id.envid, "env-1");
    assert_eq!(by_id.history.len(), 1);
    assert_eq!(by_id.history[0].state(), RecipientState::Delivered);
    assert_eq!(by_id.history[0].remote_host, "mx.remote-a.test");
    for req in [
        GetMessageRequest {
            message_id: "<first@client.test>".into(),
            ..Default::default()
        },
        GetMessageRequest {
            envid: "env-1".into(),
            ..Default::default()
        },
    ] {
        let found = wait::until("the message by header", Duration::from_secs(10), || {
            let (mut q, req) = (q.clone(), req.clone());
            async move { q.get_message(req).await.ok() }
        })
        .await;
        assert_eq!(found.into_inner().queue_id, delivered);
    }
    let code = |r: Result<tonic::Response<MessageStatus>, tonic::Status>| r.unwrap_err().code();
    let unknown = GetMessageRequest {
        queue_id: "01KB3X8Z4N6Q2V7W9Y0A1B2C3D".into(),
        ..Default::default()
    };
    assert_eq!(code(q.get_message(unknown).await), Code::NotFound);
    let both = GetMessageRequest {
        queue_id: delivered.clone(),
        envid: "env-1".into(),
        ..Default::default()
    };
    assert_eq!(code(q.get_message(both).await), Code::InvalidArgument);

    // Lists: by state, by domain, newest first, a page at a time.
    let deferred_only = ListMessagesRequest {
        state: MessageState::Deferred as i32,
        ..Default::default()
    };
    assert_eq!(
        listed(&mut q, deferred_only, 1).await,
        vec![deferred.clone()]
    );
    let to_a = ListMessagesRequest {
        recipient_domain: "remote-a.test".into(),
        ..Default::default()
    };
    assert_eq!(listed(&mut q, to_a, 1).await, vec![delivered.clone()]);
    let first_page = q
        .list_messages(ListMessagesRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first_page.messages[0].queue_id, deferred, "newest first");
    let second_page = q
        .list_messages(ListMessagesRequest {
            page_size: 1,
            page_token: first_page.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(second_page.messages[0].queue_id, delivered);
    let bad = q
        .list_messages(ListMessagesRequest {
            sender: "not an address".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert!(bad.message().starts_with("sender"), "{}", bad.message());

    // Counts, as qshape shows them.
    let summary = q
        .queue_summary(QueueSummaryRequest {})
        .await
        .unwrap()
        .into_inner();
    let b = summary
        .domains
        .iter()
        .find(|d| d.domain == "remote-b.test")
        .unwrap();
    assert_eq!((b.queued, b.deferred), (0, 1));
    assert!(summary.oldest.is_some());
    // A delivered message cannot be retried.
    let done = q
        .retry(RetryRequest {
            queue_id: delivered.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(done.code(), Code::FailedPrecondition);

    // mailctl shows the same, as tables and as JSON.
    let list = ok(
        &w.stack,
        &["--json", "queue", "list", "--state", "deferred"],
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(json["messages"][0]["queue_id"], deferred.as_str());
    assert_eq!(json["messages"][0]["recipients"][0]["state"], "deferred");
    let table = ok(&w.stack, &["queue", "summary"]).await;
    assert!(
        table.contains("remote-b.test") && table.contains("DEFERRED"),
        "{table}"
    );
    let status = ok(&w.stack, &["status", "--message-id", "first@client.test"]).await;
    assert!(
        status.contains("history:") && status.contains("delivered (attempt 1)"),
        "{status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_follows_a_message_live_until_it_is_delivered() {
    let w = World::start().await;
    w.a.hold();
    let id = send(&w, "carol@remote-a.test", "watched", None).await;
    let mut q = client(w.stack.queue).await;
    let mut updates = wait::until("the routed message", Duration::from_secs(30), || {
        let (mut q, id) = (q.clone(), id.clone());
        async move {
            q.watch_message(WatchMessageRequest { queue_id: id })
                .await
                .ok()
        }
    })
    .await
    .into_inner();
    let first = updates.message().await.unwrap().unwrap();
    let Some(watch_update::Update::Status(status)) = first.update else {
        panic!("the watch starts with the status: {first:?}");
    };
    assert_eq!(status.recipients[0].state(), RecipientState::Queued);
    // The delivery is held at the sink: nothing more yet. Then it completes, live.
    wait::until("the held delivery", Duration::from_secs(30), || async {
        (w.a.arrived() == 1).then_some(())
    })
    .await;
    w.a.release();
    let next = tokio::time::timeout(Duration::from_secs(30), updates.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let Some(watch_update::Update::Event(event)) = next.update else {
        panic!("an event: {next:?}");
    };
    assert_eq!(event.state(), RecipientState::Delivered);
    // Every recipient is final: the stream ends.
    assert!(updates.message().await.unwrap().is_none());
    let unknown = q
        .watch_message(WatchMessageRequest {
            queue_id: "01KB3X8Z4N6Q2V7W9Y0A1B2C3D".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_holds_a_domain_and_resume_releases_it() {
    let w = World::start().await;
    let held = ok(&w.stack, &["queue", "suspend", "remote-a.test"]).await;
    assert!(held.contains("suspended"), "{held}");
    // Listed while nothing waits for it, so that it is not forgotten.
    let out = ok(&w.stack, &["--json", "queue", "summary"]).await;
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let idle = json["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == "remote-a.test")
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        (&idle["suspended"], &idle["queued"]),
        (&true.into(), &0.into())
    );
    let waiting = send(&w, "carol@remote-a.test", "waiting", None).await;
    let other = send(&w, "bob@remote-b.test", "other", None).await;
    w.stack.wait_state(&other, RecipientState::Delivered).await;
    // Several hold cycles pass (the first retry delay is 1 s here) without an attempt.
    let summary = wait::until(
        "the held job to come round",
        Duration::from_secs(30),
        || async {
            let out = ok(&w.stack, &["--json", "queue", "summary"]).await;
            let json: serde_json::Value = serde_json::from_str(&out).unwrap();
            let a = json["domains"]
                .as_array()?
                .iter()
                .find(|d| d["domain"] == "remote-a.test")?
                .clone();
            (a["suspended"] == true && a["queued"] == 1).then_some(a)
        },
    )
    .await;
    assert_eq!(summary["queued"], 1);
    let status = w.stack.get_message(&waiting).await.unwrap();
    assert_eq!(status.recipients[0].state(), RecipientState::Queued);
    assert_eq!(w.a.arrived(), 0);
    let resumed = ok(&w.stack, &["queue", "resume", "remote-a.test"]).await;
    assert!(resumed.contains("resumed"), "{resumed}");
    w.stack
        .wait_state(&waiting, RecipientState::Delivered)
        .await;
    assert_eq!(w.a.arrived(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_now_and_cancel_by_drop_or_bounce() {
    let w = World::start_with_relay("retry_delays = [\"1h\"]").await;
    let id = send(&w, "tempfail@remote-b.test", "stuck", None).await;
    let first = w.stack.wait_state(&id, RecipientState::Deferred).await;
    assert_eq!(first.recipients[0].attempts, 1);
    let moved = ok(&w.stack, &["queue", "retry", &id]).await;
    assert!(moved.contains("1 job(s)"), "{moved}");
    wait::until("a second attempt now", Duration::from_secs(30), || async {
        let s = w.stack.get_message(&id).await.ok()?;
        (s.recipients[0].attempts == 2).then_some(())
    })
    .await;
    // Retry everything for the domain: the job is parked again, and moves again.
    wait::until("the job parked again", Duration::from_secs(30), || async {
        let out = ok(&w.stack, &["queue", "retry", "--domain", "remote-b.test"]).await;
        out.contains("1 job(s)").then_some(())
    })
    .await;

    let dropped = send(&w, "tempfail2@remote-b.test", "dropped", None).await;
    w.stack.wait_state(&dropped, RecipientState::Deferred).await;
    let out = ok(&w.stack, &["queue", "cancel", &dropped]).await;
    assert!(out.contains("1 recipient(s) dropped"), "{out}");
    w.stack
        .wait_state(&dropped, RecipientState::Discarded)
        .await;
    mailctl::refused(
        &w.stack,
        &["queue", "retry", &dropped],
        "FailedPrecondition",
    )
    .await;

    let mut q = client(w.stack.queue).await;
    let bounced = wait::until("a cancel with bounce", Duration::from_secs(30), || {
        let (mut q, id) = (q.clone(), id.clone());
        async move {
            q.cancel(CancelRequest {
                queue_id: id,
                bounce: true,
            })
            .await
            .ok()
        }
    })
    .await;
    assert_eq!(bounced.into_inner().recipients, 1);
    let status = w.stack.wait_state(&id, RecipientState::Bounced).await;
    assert!(last_reply(&status, 0).text.contains("cancelled"));
    let again = cancel_refused(&mut q, &id).await;
    assert_eq!(again.code(), Code::FailedPrecondition);
}

/// Retry-now moves more jobs than one batch holds, each once: the jobs it moved come back
/// deferred and parked again meanwhile, and are not moved a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_now_moves_every_waiting_job_once_in_batches() {
    const JOBS: usize = 300;
    let w = World::start_with_relay("retry_delays = [\"1h\"]").await;
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    for i in 0..JOBS {
        let content = format!("Subject: batch {i}\r\n\r\nx\r\n");
        c.send_mail("sender@client.test", &["tempfail@remote-b.test"], &content)
            .await;
    }
    let nats = async_nats::connect(w.stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    let parked = || async {
        let mut retry = js.get_stream("MAIL_RETRY").await.ok()?;
        Some(retry.info().await.ok()?.state.messages as usize)
    };
    wait::until("every job parked", Duration::from_secs(60), || async {
        (parked().await? == JOBS).then_some(())
    })
    .await;
    let out = ok(&w.stack, &["queue", "retry", "--domain", "remote-b.test"]).await;
    assert!(out.contains(&format!("{JOBS} job(s)")), "{out}");
    wait::until(
        "every job parked again",
        Duration::from_secs(60),
        || async { (parked().await? == JOBS).then_some(()) },
    )
    .await;
    let mut q = client(w.stack.queue).await;
    let all = ListMessagesRequest {
        page_size: 1000,
        ..Default::default()
    };
    let ids = listed(&mut q, all, JOBS).await;
    for id in ids.iter().step_by(37) {
        let status = w.stack.wait_state(id, RecipientState::Deferred).await;
        assert_eq!(status.recipients[0].attempts, 2, "{id}: moved once");
    }
}

/// Sends a message to `user`@remote-a.test, whose exchanger holds the transaction; cancels
/// it (dropped, no bounce) while the attempt is under way, then lets the exchanger answer
/// `reply`. Returns the queue id and a JetStream context once the attempt is over (its job
/// has left MAIL_OUT).
async fn cancelled_during_attempt(
    w: &World,
    user: &str,
    reply: &str,
) -> (String, async_nats::jetstream::Context) {
    w.a.hold();
    let id = send(w, &format!("{user}@remote-a.test"), "in flight", None).await;
    wait::until("the attempt under way", Duration::from_secs(30), || async {
        (w.a.arrived() == 1).then_some(())
    })
    .await;
    let out = ok(&w.stack, &["queue", "cancel", &id]).await;
    assert!(out.contains("1 recipient(s) dropped"), "{out}");
    w.a.release_with(reply);
    let nats = async_nats::connect(w.stack.nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats);
    wait::until("the attempt over", Duration::from_secs(30), || async {
        let mut out = js.get_stream("MAIL_OUT").await.ok()?;
        (out.info().await.ok()?.state.messages == 0).then_some(())
    })
    .await;
    (id, js)
}

/// A cancel made while an attempt is under way stays final: the attempt's deferral, which
/// comes after it, is not recorded and does not park the job for another attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_during_an_attempt_is_not_undone_by_its_deferral() {
    let w = World::start_with_relay("retry_delays = [\"1h\"]").await;
    let (id, js) = cancelled_during_attempt(&w, "dave", "451 4.3.0 Try again later").await;
    let mut retry = js.get_stream("MAIL_RETRY").await.unwrap();
    assert_eq!(
        retry.info().await.unwrap().state.messages,
        0,
        "nothing parked"
    );
    let status = w.stack.get_message(&id).await.unwrap();
    assert_eq!(status.recipients[0].state(), RecipientState::Discarded);
    assert!(w.stack.log(RELAY).contains("outcomes not recorded"));
}

/// A refusal an attempt meets after an operator cancelled the message owes the sender no
/// notice: the cancel is final and the attempt's outcome is not recorded (Postfix bounces
/// nothing for a message deleted from its queue).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_a_cancel_sends_no_notice() {
    let w = World::start().await;
    // A notice would be queued before the attempt is over.
    let (id, _) = cancelled_during_attempt(&w, "erin", "550 5.1.1 No such user").await;
    let status = w.stack.get_message(&id).await.unwrap();
    assert_eq!(status.recipients[0].state(), RecipientState::Discarded);
    let log = w.stack.log(RELAY);
    assert!(log.contains("outcomes not recorded"), "{log}");
    assert!(
        log.contains("no notice for recipients an operator acted on"),
        "{log}"
    );
    assert!(
        !log.contains("delivery status notification queued"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_replica_and_a_python_client_see_the_same() {
    let w = World::start().await;
    let id = send(&w, "carol@remote-a.test", "shared", None).await;
    w.stack.wait_state(&id, RecipientState::Delivered).await;
    let (replica, _child) = w.stack.start_replica(RELAY).await;
    let mut other = client(replica).await;
    let seen = other
        .get_message(GetMessageRequest {
            queue_id: id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mine = w.stack.get_message(&id).await.unwrap();
    assert_eq!(seen.recipients, mine.recipients);
    let ids = listed(&mut other, ListMessagesRequest::default(), 1).await;
    assert_eq!(ids, vec![id.clone()]);

    let python = mailflow_tests::workspace_root().join(".tools/venv/bin/python");
    let script = mailflow_tests::workspace_root().join("tests/peers/grpc_peer.py");
    let server = w.stack.queue.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(["--server", &server, "--queue-id", &id])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for service in ["mailflow.v1.Queue", "grpc.health.v1.Health"] {
        assert!(
            stdout.contains(&format!("service: {service}\n")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("recipient: carol@remote-a.test RECIPIENT_STATE_DELIVERED"),
        "{stdout}"
    );
    assert!(stdout.contains("unknown: NOT_FOUND"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_not_routed_yet_is_found_as_accepted() {
    let (mut stack, _dns) = mailflow_tests::stack::local().await;
    let mut c = SmtpClient::connect(stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let content = "Subject: early\r\n\r\nx\r\n";
    let first = c
        .send_mail("a@client.test", &["demo@example.test"], content)
        .await;
    stack.wait_final(&first, Duration::from_secs(30)).await;
    // With the policy service (and its route stage) stopped, the ingress still accepts on
    // its cached verdicts; the message waits in MAIL_IN.
    stack.kill(mailflow_tests::stack::POLICY).await;
    let waiting = c
        .send_mail("a@client.test", &["demo@example.test"], content)
        .await;
    let status = stack.get_message(&waiting).await.unwrap();
    assert_eq!(status.recipients[0].state(), RecipientState::Accepted);
    let mut q = client(stack.queue).await;
    let accepted = ListMessagesRequest {
        state: MessageState::Accepted as i32,
        ..Default::default()
    };
    assert_eq!(listed(&mut q, accepted, 1).await, vec![waiting.clone()]);
    // Nothing to cancel or retry yet: said so, rather than "no such message".
    let early = cancel_refused(&mut q, &waiting).await;
    assert_eq!(early.code(), Code::FailedPrecondition, "{early:?}");
    assert!(early.message().contains("not routed yet"), "{early:?}");
    mailctl::refused(&stack, &["queue", "retry", &waiting], "FailedPrecondition").await;
    // A watch starts with what was accepted, and follows the message once it is routed.
    let mut updates = q
        .watch_message(WatchMessageRequest {
            queue_id: waiting.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(30), updates.message())
            .await
            .expect("an update in time")
            .unwrap()
            .map(|u| u.update.unwrap())
    };
    let Some(watch_update::Update::Status(accepted)) = next().await else {
        panic!("the watch starts with the accepted status");
    };
    assert_eq!(accepted.recipients[0].state(), RecipientState::Accepted);
    stack.start_service(mailflow_tests::stack::POLICY).await;
    let Some(watch_update::Update::Status(routed)) = next().await else {
        panic!("then the routed status");
    };
    assert_eq!(routed.queue_id, waiting);
    assert_ne!(routed.recipients[0].state(), RecipientState::Accepted);
    let mut last = routed.recipients[0].state();
    while let Some(update) = next().await {
        let watch_update::Update::Event(event) = update else {
            panic!("events after the routed status: {update:?}");
        };
        last = event.state();
    }
    assert_eq!(last, RecipientState::Delivered);
    let status = stack.wait_final(&waiting, Duration::from_secs(30)).await;
    assert_eq!(status.recipients[0].state(), RecipientState::Delivered);
}

/// A job parked in a retry tier that a shorter `retry_delays` no longer has is not stranded:
/// the relay moves it after the last delay configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_in_a_tier_no_longer_configured_come_round() {
    let mut w = World::start_with_relay("retry_delays = [\"1s\", \"1h\"]").await;
    let id = w.send("tempfail@remote-b.test", "stranded").await;
    // Deferred twice: the second retry waits an hour in tier 1.
    w.deferred_with(&id, 2, "Mailbox busy").await;
    w.stack.kill(RELAY).await;
    let (queue, _relay) = w
        .stack
        .start_replica_with(RELAY, &[("RELAY__RETRY_DELAYS", "[\"1s\"]")])
        .await;
    w.stack.queue = queue;
    // The killed relay's mover held the job: it comes back after the movers' one-minute
    // acknowledgement timeout, and the new relay moves it at once (its last delay is over).
    let (stack, id) = (&w.stack, id.as_str());
    let attempts = wait::until("a third attempt", Duration::from_secs(120), || async move {
        let r = stack.get_message(id).await.ok()?.recipients[0].clone();
        (r.attempts >= 3).then_some(r.attempts)
    })
    .await;
    assert!(attempts >= 3);
}

/// A replica that has not seen a `Resume` yet (its view of the suspensions is stale) finds
/// the domain resumed when it reads the bucket again, which the consumer does before
/// holding a job (so that a job `Resume` sent round is delivered, not held for another
/// retry delay), and a suspension stored again is found again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_view_of_a_suspension_is_corrected_by_reading_the_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let nats = mailflow_tests::nats::Nats::start(dir.path()).await;
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let kv = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: mailflow_relay::suspend::BUCKET.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    // No follower: this replica's view changes only through its own calls.
    let stopped = tokio_util::sync::CancellationToken::new();
    stopped.cancel();
    let view = mailflow_relay::suspend::Suspensions::open(kv.clone(), stopped);
    view.set("remote-a.test", true).await.unwrap();
    assert!(view.still_suspended("remote-a.test").await);
    // Another replica resumes the domain.
    kv.purge(mailflow_bus::key_token("remote-a.test"))
        .await
        .unwrap();
    assert!(view.contains("remote-a.test"), "the view is stale");
    assert!(!view.still_suspended("remote-a.test").await);
    kv.put(
        mailflow_bus::key_token("remote-a.test"),
        "remote-a.test".into(),
    )
    .await
    .unwrap();
    assert!(view.still_suspended("remote-a.test").await);
}
