//! Graceful termination: a stopping ingress lets the transaction in progress finish.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::{SmtpClient, queue_id};
use mailflow_tests::stack::{INGRESS, local};
use mailflow_tests::wait;

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
