//! Faults under load: while clients keep sending, the ingress, the policy service, the
//! relay and nats-server are each killed with SIGKILL in turn and started again. Every
//! message that got a 250 is delivered in the end (counted at the exchanger and in the
//! status records); duplicates are counted and reported; none is left without a final
//! state.

#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mailflow_proto::v1::RecipientState;
use mailflow_tests::client::queue_id;
use mailflow_tests::stack::{INGRESS, POLICY, RELAY};
use mailflow_tests::wait;
use mailflow_tests::world::World;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Client sessions sending at once.
const SENDERS: usize = 3;
/// Messages accepted between two faults.
const BETWEEN_FAULTS: usize = 60;

/// One reply's code and text, or `None` when the connection failed or went silent.
async fn reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Option<(u16, String)> {
    let mut text = String::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
            .await
            .ok()?
            .ok()?;
        if n == 0 || line.len() < 4 {
            return None;
        }
        text.push_str(line.get(4..)?.trim_end());
        if line.as_bytes()[3] != b'-' {
            return Some((line[..3].parse().ok()?, text));
        }
    }
}

/// One message over a fresh connection; its queue id when the end of data got a 250.
/// Anything else (refused connection, a 4xx during an outage, a dropped session) is
/// `None`: the client did not hand the message over.
async fn try_send(addr: SocketAddr, subject: &str) -> Option<String> {
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
        .await
        .ok()?
        .ok()?;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut step = async |line: &str, code: u16| {
        if !line.is_empty() {
            w.write_all(line.as_bytes()).await.ok()?;
        }
        let (got, text) = reply(&mut r).await?;
        (got == code).then_some(text)
    };
    step("", 220).await?;
    step("EHLO client.test\r\n", 250).await?;
    step("MAIL FROM:<sender@client.test>\r\n", 250).await?;
    step("RCPT TO:<carol@remote-a.test>\r\n", 250).await?;
    step("DATA\r\n", 354).await?;
    let text = step(
        &format!("Subject: {subject}\r\n\r\nunder fire\r\n.\r\n"),
        250,
    )
    .await?;
    let _ = step("QUIT\r\n", 221).await;
    Some(queue_id(&text))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_each_part_under_load_loses_nothing() {
    let mut w = World::start().await;
    let accepted: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let refused = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut senders = Vec::new();
    for sender in 0..SENDERS {
        let (accepted, refused, stop) = (accepted.clone(), refused.clone(), stop.clone());
        let addr = w.stack.smtp;
        senders.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                let subject = format!("fault {sender}-{n}");
                match try_send(addr, &subject).await {
                    Some(id) => {
                        accepted.lock().unwrap().insert(subject, id);
                    }
                    None => {
                        refused.fetch_add(1, Ordering::SeqCst);
                        // Not a wait for anything: a pause before trying again, so that
                        // an outage is not met with a tight loop of connections.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }
    let count = || accepted.lock().unwrap().len();
    let progress = async |what: &str| {
        let from = count();
        wait::until(what, Duration::from_secs(60), || async {
            (count() >= from + BETWEEN_FAULTS).then_some(())
        })
        .await;
    };

    progress("load under way").await;
    for victim in [INGRESS, POLICY, RELAY] {
        w.stack.kill(victim).await;
        w.stack.start_service(victim).await;
        progress(&format!("mail accepted again after {victim} was killed")).await;
    }
    w.stack.nats.kill().await;
    w.stack.nats.restart().await;
    progress("mail accepted again after nats-server was killed").await;
    stop.store(true, Ordering::SeqCst);
    for s in senders {
        s.await.unwrap();
    }

    // Every message with a 250 reaches the exchanger.
    let accepted = accepted.lock().unwrap().clone();
    let sink = &w.a;
    let missing = || {
        let received = sink.subjects();
        accepted
            .keys()
            .filter(|s| !received.contains(*s))
            .cloned()
            .collect::<Vec<_>>()
    };
    let outcome = tokio::time::timeout(Duration::from_secs(120), async {
        while !missing().is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        outcome.is_ok(),
        "accepted and never delivered: {:?}",
        missing()
    );
    let received = w.a.received();
    let unique: HashSet<String> = received.iter().map(|d| d.subject()).collect();
    println!(
        "faults: {} messages accepted ({} attempts refused or cut during outages), {} deliveries of {} distinct messages, {} duplicates; {} delivered without a 250 reaching the client",
        accepted.len(),
        refused.load(Ordering::SeqCst),
        received.len(),
        unique.len(),
        received.len() - unique.len(),
        unique.iter().filter(|s| !accepted.contains_key(*s)).count(),
    );

    // Every accepted message's status record is final.
    for id in accepted.values() {
        let status = w.stack.wait_final(id, Duration::from_secs(30)).await;
        assert_eq!(
            status.recipients[0].state(),
            RecipientState::Delivered,
            "{status:?}"
        );
    }
}
