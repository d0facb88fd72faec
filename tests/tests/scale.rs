//! Scaling on one NATS: two ingress and three relay processes share 5,000 messages; a
//! relay killed mid-run loses nothing, and a relay added mid-run takes work at once. The
//! exchanger tells the relays apart by their EHLO names.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use futures::StreamExt;
use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::SmtpClient;
use mailflow_tests::stack::{INGRESS, RELAY, get_message_over};
use mailflow_tests::wait;
use mailflow_tests::world::World;

const MESSAGES: usize = 5_000;
/// Client sessions per ingress, each sending its share over one connection.
const SESSIONS_PER_INGRESS: usize = 4;

/// The subject of message `n` of session `session`.
fn subject(session: usize, n: usize) -> String {
    format!("scale {session}-{n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_ingresses_and_three_relays_share_the_work_and_lose_nothing() {
    // A job of the killed relay goes to another after 5 s. No DANE: the test zones are not
    // signed under a root the relays know, and proving that costs each new relay its first
    // seconds here, which would hide how soon it takes work.
    let w = World::start_with_relay("ack_wait = \"5s\"\ndane = false").await;
    let (second_ingress, _ingress) = w.stack.start_replica(INGRESS).await;
    let (_, _relay2) = w
        .stack
        .start_replica_with(RELAY, &[("RELAY__HOSTNAME", "relay-2.example.test")])
        .await;
    let (_, mut relay3) = w
        .stack
        .start_replica_with(RELAY, &[("RELAY__HOSTNAME", "relay-3.example.test")])
        .await;

    // The load: sessions alternate between the two ingresses.
    let sessions = 2 * SESSIONS_PER_INGRESS;
    let per_session = MESSAGES / sessions;
    let mut senders = Vec::new();
    for session in 0..sessions {
        let addr = if session % 2 == 0 {
            w.stack.smtp
        } else {
            second_ingress
        };
        senders.push(tokio::spawn(async move {
            let mut c = SmtpClient::connect(addr).await;
            c.command("EHLO client.test", 250).await;
            let mut ids = Vec::new();
            for n in 0..per_session {
                let content = format!("Subject: {}\r\n\r\nscaling\r\n", subject(session, n));
                ids.push(
                    c.send_mail("sender@client.test", &["carol@remote-a.test"], &content)
                        .await,
                );
            }
            c.command("QUIT", 221).await;
            (addr, ids)
        }));
    }

    // A fifth of the way, once it has delivered some: one relay dies without warning.
    let sink = &w.a;
    let delivered_by = |name: &str| sink.count_where(|d| d.helo == name);
    wait::until("a fifth delivered", Duration::from_secs(120), || async {
        (sink.count_where(|_| true) >= MESSAGES / 5 && delivered_by("relay-3.example.test") > 0)
            .then_some(())
    })
    .await;
    relay3.kill().await.unwrap();

    // Half way: a new relay joins, and delivers within seconds of starting.
    wait::until("half delivered", Duration::from_secs(120), || async {
        (sink.count_where(|_| true) >= MESSAGES / 2).then_some(())
    })
    .await;
    let (_, _relay4) = w
        .stack
        .start_replica_with(RELAY, &[("RELAY__HOSTNAME", "relay-4.example.test")])
        .await;
    let joined = Instant::now();
    let left = MESSAGES - sink.count_where(|_| true);
    wait::until(
        "the new relay delivers",
        Duration::from_secs(10),
        || async { (delivered_by("relay-4.example.test") > 0).then_some(()) },
    )
    .await;
    let first_delivery = joined.elapsed();

    let mut ids = Vec::new();
    let mut by_ingress = BTreeMap::new();
    for sender in senders {
        let (addr, sent) = sender.await.unwrap();
        *by_ingress.entry(addr).or_insert(0) += sent.len();
        ids.extend(sent);
    }
    assert_eq!(ids.len(), MESSAGES);

    // Every accepted message arrives; duplicates are allowed (a killed relay may have
    // delivered a job it could not acknowledge) and counted.
    wait::until(
        "every message delivered",
        Duration::from_secs(180),
        || async {
            let received = sink.subjects();
            (received.len() == MESSAGES).then_some(())
        },
    )
    .await;
    let received = w.a.received();
    let unique: HashSet<String> = received.iter().map(|d| d.subject()).collect();
    let expected: HashSet<String> = (0..sessions)
        .flat_map(|s| (0..per_session).map(move |n| subject(s, n)))
        .collect();
    assert_eq!(unique, expected);
    let mut by_relay = BTreeMap::new();
    for d in &received {
        *by_relay.entry(d.helo.clone()).or_insert(0) += 1;
    }
    println!(
        "scale: {MESSAGES} messages, {} deliveries, {} duplicates; accepted by ingress {:?}; delivered by relay {:?}; the relay added with {left} messages still to deliver delivered its first after {first_delivery:?}",
        received.len(),
        received.len() - MESSAGES,
        by_ingress.values().collect::<Vec<_>>(),
        by_relay,
    );
    assert_eq!(by_ingress.len(), 2);
    for relay in [
        "relay.example.test",
        "relay-2.example.test",
        "relay-3.example.test",
        "relay-4.example.test",
    ] {
        assert!(
            by_relay.get(relay).copied().unwrap_or(0) > 0,
            "{relay} took no share: {by_relay:?}"
        );
    }

    // Every status record is final: delivered.
    let queue = w.stack.queue_client().await.unwrap();
    let states: Vec<RecipientState> = futures::stream::iter(&ids)
        .map(|id| {
            let queue = queue.clone();
            async move { get_message_over(queue, id).await.unwrap().recipients[0].state() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    assert!(
        states.iter().all(|s| *s == RecipientState::Delivered),
        "not all delivered"
    );
}
