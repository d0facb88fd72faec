//! Larger bodies are stored once when routed: delivery jobs (and their retries) carry a
//! reference, every copy delivered is the original, and the stored body goes when the
//! message is done.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::SmtpClient;
use mailflow_tests::wait;
use mailflow_tests::world::World;

/// The message count and size of stream `name`.
async fn stream(js: &async_nats::jetstream::Context, name: &str) -> (u64, u64) {
    let info = js
        .get_stream(name)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .clone();
    (info.state.messages, info.state.bytes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_is_stored_once_and_removed_when_its_message_is_done() {
    let w = World::start_with_relay("max_queue_lifetime = \"4s\"").await;
    let js = async_nats::jetstream::new(async_nats::connect(w.stack.nats.url()).await.unwrap());
    // 100 KB of lines, one recipient delivered at once, one deferred until it expires.
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    let content = format!("Subject: large\r\n\r\n{}", line.repeat(1400));
    let mut c = SmtpClient::connect(w.stack.smtp).await;
    c.command("EHLO client.test", 250).await;
    let id = c
        .send_mail(
            "sender@client.test",
            &["carol@remote-a.test", "tempfail@remote-b.test"],
            &content,
        )
        .await;
    c.command("QUIT", 221).await;

    // Delivered whole where it could be.
    let sink = &w.a;
    let delivered = wait::until("delivery to A", Duration::from_secs(30), || async {
        sink.received().into_iter().next()
    })
    .await;
    let text = String::from_utf8(delivered.data).unwrap();
    assert!(text.ends_with(&content), "the content arrives unchanged");

    // While the other recipient waits for a retry, the body is kept, once, and the job
    // waiting in the retry stream is small.
    let stack = &w.stack;
    let deferred = wait::until("B deferred", Duration::from_secs(30), || async {
        let s = stack.get_message(&id).await.ok()?;
        (s.recipients[1].state() == RecipientState::Deferred).then_some(s)
    })
    .await;
    assert_eq!(deferred.recipients[0].state(), RecipientState::Delivered);
    let (bodies, bytes) = stream(&js, "MAIL_BODIES").await;
    assert_eq!(bodies, 1);
    assert!(bytes > 100_000, "{bytes}");
    let js_ref = &js;
    let (_, retry_bytes) = wait::until(
        "the job parked for retry",
        Duration::from_secs(10),
        || async move {
            let (n, bytes) = stream(js_ref, "MAIL_RETRY").await;
            (n > 0).then_some((n, bytes))
        },
    )
    .await;
    assert!(
        retry_bytes < 10_000,
        "the parked job carries the body: {retry_bytes} octets"
    );

    // Once the last recipient is final (it bounces at the end of the queue lifetime), the
    // stored body goes.
    let done = w.stack.wait_final(&id, Duration::from_secs(30)).await;
    assert_eq!(done.recipients[1].state(), RecipientState::Bounced);
    wait::until(
        "the stored body removed",
        Duration::from_secs(10),
        || async move { (stream(js_ref, "MAIL_BODIES").await.0 == 0).then_some(()) },
    )
    .await;
}
