//! Per-destination limits: deliveries to one domain are capped, and the jobs beyond the cap
//! wait at the back of the queue instead of holding up mail for other domains.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::SmtpClient;
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
