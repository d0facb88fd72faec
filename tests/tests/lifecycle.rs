//! The services as processes. Graceful termination: a stopping ingress lets the transaction
//! in progress finish; a stopping relay finishes its deliveries under way and hands the jobs
//! it had fetched to the other replicas at once. And each runs without transparent huge
//! pages.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::{SmtpClient, queue_id};
use mailflow_tests::stack::{INGRESS, POLICY, RELAY, local};
use mailflow_tests::wait;
use mailflow_tests::world::World;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_ingress_finish_the_transaction_in_progress() {
    let (mut stack, _dns) = local().await;
    let mut c = SmtpClient::connect(stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    c.command("MAIL FROM:<a@client.test>", 250).await;
    c.command("RCPT TO:<demo@example.test>", 250).await;
    c.command("DATA", 354).await;
    c.send_raw(b"Subject: drained\r\n\r\nfirst half\r\n").await;
    stack.sigterm(INGRESS);
    // New clients are no longer served...
    let addr = stack.smtp;
    wait::until(
        "the listener to close",
        Duration::from_secs(30),
        || async move {
            tokio::net::TcpStream::connect(addr)
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    // ...but the open transaction completes, and the message is delivered.
    c.send_raw(b"second half\r\n").await;
    let reply = c.command(".", 250).await;
    let id = queue_id(&reply.text);
    // Then the session is closed with 421 4.3.2 (shutting down), as Postfix does.
    let closing = c.command("QUIT", 421).await;
    assert!(closing.text.starts_with("4.3.2"), "{closing:?}");
    let status = stack.wait_exit(INGRESS).await;
    assert!(status.success(), "{status:?}");
    let delivered = stack.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(delivered.recipients[0].state(), RecipientState::Delivered);
    let mail = stack.mailbox("example.test", "demo");
    assert!(
        mail.iter()
            .any(|m| String::from_utf8_lossy(m).contains("first half\r\nsecond half"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_relay_finish_its_deliveries_and_leave_the_rest_to_others() {
    // Four jobs at once per relay, and a minute before an unacknowledged job would go to
    // another replica: a job held by the stopping relay and not started would be late.
    let mut w = World::start_with_relay("concurrency = 4\nack_wait = \"60s\"").await;
    let (other_queue, mut other) = w.stack.start_replica(RELAY).await;
    // The exchanger keeps every delivery waiting for its end-of-data reply.
    w.a.hold();
    let mut ids = Vec::new();
    for n in 0..24 {
        ids.push(w.send("carol@remote-a.test", &format!("drain {n}")).await);
    }
    // Both relays are busy with four deliveries each; a relay fetches no more jobs than it
    // has free handlers, so neither holds one it has not started.
    let a = &w.a;
    wait::until(
        "8 deliveries under way",
        Duration::from_secs(20),
        || async move { (a.arrived() >= 8).then_some(()) },
    )
    .await;
    assert_eq!(w.a.arrived(), 8, "four deliveries per relay");

    w.stack.sigterm(RELAY);
    let stack = &w.stack;
    let released = wait::until("the release", Duration::from_secs(10), || async move {
        let log = stack.log(RELAY);
        let line = log.lines().find(|l| {
            l.contains("fetched messages released") && l.contains("consumer=\"relay\"")
        })?;
        let n: usize = line
            .split("released=")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        Some(n)
    })
    .await;
    assert_eq!(released, 0, "a busy relay holds no job it has not started");
    // Its own deliveries are still under way: it has not exited.
    assert!(w.stack.exited(RELAY).is_none(), "{}", w.stack.log(RELAY));

    // The exchanger answers: the stopping relay completes its four deliveries and exits
    // cleanly; everything else goes through the other replica well within the
    // acknowledgement timeout.
    w.a.release();
    let status = w.stack.wait_exit(RELAY).await;
    assert!(status.success(), "{status:?}");
    // Status questions go to the replica left.
    w.stack.queue = other_queue;
    for id in &ids {
        let s = w.stack.wait_final(id, Duration::from_secs(20)).await;
        assert_eq!(s.recipients[0].state(), RecipientState::Delivered, "{s:?}");
    }
    let received = w.a.received();
    assert_eq!(received.len(), 24, "each message delivered once");
    assert!(
        other.try_wait().unwrap().is_none(),
        "the other replica runs on"
    );
}

/// Each service turns transparent huge pages off for itself as it starts (mimalloc's arenas
/// are advised for them, and memory given back and touched again was zeroed a huge page at a
/// time), whatever the parent process had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_runs_without_transparent_huge_pages() {
    let (stack, _dns) = local().await;
    for name in [INGRESS, POLICY, RELAY] {
        assert_eq!(stack.proc_status(name, "THP_enabled"), "0", "{name}");
    }
    // The test process (their parent) keeps them: the flag is the services' own doing.
    let own = std::fs::read_to_string("/proc/self/status").unwrap();
    assert!(own.contains("THP_enabled:\t1"), "{own}");
}
