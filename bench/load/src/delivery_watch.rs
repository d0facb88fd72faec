//! `delivery-watch`: follows mailflow's delivery events for the end-to-end benchmark.
//!
//! `delivery-watch <nats url> <n>` subscribes to `mail.events.>` and waits until `n`
//! recipients were delivered, then prints when the last of them was delivered (milliseconds
//! since the epoch, from the events: the caller measures from when its load started, the
//! watcher having started before it) and the latency from acceptance to delivery of each
//! (the queue id is a ULID minted when the message's data began; the event carries the
//! delivery time): `delivered=<n> last_ms=<ms> p50_ms=<x> p99_ms=<y> max_ms=<z>`.

#![forbid(unsafe_code)]

use mailflow_bench as common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use mailflow_proto::v1::{DeliveryEvent, RecipientState};
use prost::Message;

/// Milliseconds since the epoch.
fn millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (url, n) = match args.as_slice() {
        [_, url, n] => (url.clone(), n.parse::<usize>().unwrap_or(0)),
        _ => {
            eprintln!("usage: delivery-watch <nats url> <n>");
            std::process::exit(64);
        }
    };
    let client = match async_nats::connect(url.as_str()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot connect to {url}: {e}");
            std::process::exit(1);
        }
    };
    let mut events = match client.subscribe("mail.events.>").await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot subscribe: {e}");
            std::process::exit(1);
        }
    };
    let mut latencies = Vec::with_capacity(n);
    let mut last = millis(SystemTime::now());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
    while latencies.len() < n {
        let msg = match tokio::time::timeout_at(deadline, events.next()).await {
            Ok(Some(m)) => m,
            _ => {
                eprintln!("only {} of {n} delivered in time", latencies.len());
                std::process::exit(1);
            }
        };
        let Ok(event) = DeliveryEvent::decode(msg.payload) else {
            continue;
        };
        if event.state() != RecipientState::Delivered {
            continue;
        }
        let (Some(at), Ok(id)) = (event.at, ulid::Ulid::from_string(&event.queue_id)) else {
            continue;
        };
        let at = at.seconds * 1000 + i64::from(at.nanos) / 1_000_000;
        last = last.max(at);
        let accepted = id.timestamp_ms() as i64;
        latencies.push(Duration::from_millis((at - accepted).max(0) as u64));
    }
    latencies.sort();
    println!(
        "delivered={n} last_ms={last} p50_ms={} p99_ms={} max_ms={}",
        common::percentile(&latencies, 0.50).as_millis(),
        common::percentile(&latencies, 0.99).as_millis(),
        latencies.last().copied().unwrap_or_default().as_millis(),
    );
}
